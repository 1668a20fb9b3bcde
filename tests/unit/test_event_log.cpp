// events.jsonl's writer against a scripted peer: every event, and a count when it had to drop.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <sstream>

#include "lifecycle/event_log.hpp"
#include "qmp/commands.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

std::vector<json> read_log(const fs::path& file) {
    std::ifstream in(file);
    std::vector<json> out;
    for (std::string line; std::getline(in, line);)
        out.push_back(json::parse(line));
    return out;
}

struct log_file {
    fs::path path =
        fs::temp_directory_path() / ("stackemu-event-log-" + std::to_string(::getpid()) + ".jsonl");
    log_file() { fs::remove(path); }
    ~log_file() { fs::remove(path); }
};

// Ten events in one write, then the reply to query-name.
test::script burst_of_ten() {
    std::string burst;
    for (int i = 0; i < 10; ++i)
        burst += test::crlf(json{{"event", "BLOCK_IO_ERROR"}, {"data", {{"n", i}}}});
    return std::move(test::script().handshake().expect("query-name").send(burst).reply().hold());
}

}  // namespace

TEST_CASE("the event log writes every event still queued when the command lets go") {
    asio::io_context ctx;
    log_file file;
    auto [mine, theirs] = test::socket_pair(ctx);
    asio::co_spawn(ctx, test::run_peer(std::move(theirs), burst_of_ten()), asio::detached);
    test::run(
        ctx,
        [](qmp::stream_socket s, fs::path path) -> asio::awaitable<void> {
            auto c = co_await qmp::client::attach(std::move(s));
            REQUIRE(c.has_value());
            lifecycle::instance_paths paths;
            paths.events = path;
            lifecycle::event_log log(*c, paths);
            auto name = co_await qmp::query_name(*c);
            REQUIRE(name.has_value());
            c->close();
        }(std::move(mine), file.path),
        30s);
    REQUIRE(test::drains(ctx));
    auto records = read_log(file.path);
    REQUIRE(records.size() == 10);
    for (int i = 0; i < 10; ++i)
        CHECK(records[static_cast<std::size_t>(i)]["data"]["n"] == i);
}

TEST_CASE("an event log that had to drop says how many events it dropped") {
    asio::io_context ctx;
    log_file file;
    auto [mine, theirs] = test::socket_pair(ctx);
    asio::co_spawn(ctx, test::run_peer(std::move(theirs), burst_of_ten()), asio::detached);
    test::run(
        ctx,
        [](qmp::stream_socket s, fs::path path) -> asio::awaitable<void> {
            auto c = co_await qmp::client::attach(std::move(s));
            REQUIRE(c.has_value());
            lifecycle::instance_paths paths;
            paths.events = path;
            lifecycle::event_log log(*c, paths, 3);
            auto name = co_await qmp::query_name(*c);
            REQUIRE(name.has_value());
            log.flush();
            CHECK(log.written() + 7 == 10);
        }(std::move(mine), file.path),
        30s);
    REQUIRE(test::drains(ctx));
    auto records = read_log(file.path);
    REQUIRE(records.size() == 4);
    CHECK(records[0]["record"] == "events dropped");
    CHECK(records[0]["count"] == 7);
    CHECK(records[1]["data"]["n"] == 7);
    CHECK(records[3]["data"]["n"] == 9);
}
