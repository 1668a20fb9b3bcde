// events.jsonl's writer against a scripted peer: every event, and a count when it had to drop.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>

#include "lifecycle/event_log.hpp"
#include "qmp/commands.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

struct log_file {
    fs::path path =
        fs::temp_directory_path() / ("stackemu-event-log-" + std::to_string(::getpid()) + ".jsonl");
    log_file() { fs::remove(path); }
    ~log_file() { fs::remove(path); }
    std::vector<json> records() const {
        std::ifstream in(path);
        std::vector<json> out;
        for (std::string line; std::getline(in, line);)
            out.push_back(json::parse(line));
        return out;
    }
};

// A peer sends ten events in one write, then the reply to query-name; an event_log of
// `capacity` watches the connection until the client lets go. Returns what the log wrote.
std::uint64_t log_ten_events(const fs::path& file, std::size_t capacity) {
    std::string burst;
    for (int i = 0; i < 10; ++i)
        burst += test::crlf(json{{"event", "BLOCK_IO_ERROR"}, {"data", {{"n", i}}}});
    auto s = test::script().handshake().expect("query-name").send(burst).reply().hold();
    asio::io_context ctx;
    auto [mine, theirs] = test::socket_pair(ctx);
    asio::co_spawn(ctx, test::run_peer(std::move(theirs), std::move(s)), asio::detached);
    std::uint64_t written = 0;
    test::run(
        ctx,
        [](qmp::stream_socket sock, fs::path path, std::size_t cap,
           std::uint64_t& out) -> asio::awaitable<void> {
            auto c = co_await qmp::client::attach(std::move(sock));
            REQUIRE(c.has_value());
            lifecycle::instance_paths paths;
            paths.events = path;
            lifecycle::event_log log(*c, paths, cap);
            auto name = co_await qmp::query_name(*c);
            REQUIRE(name.has_value());
            c->close();  // what is still queued is written all the same
            log.flush();
            out = log.written();
        }(std::move(mine), file, capacity, written),
        30s);
    REQUIRE(test::drains(ctx));
    return written;
}

}  // namespace

TEST_CASE("the event log writes every event still queued when the command lets go") {
    log_file file;
    CHECK(log_ten_events(file.path, lifecycle::event_log::default_capacity) == 10);
    auto records = file.records();
    REQUIRE(records.size() == 10);
    for (std::size_t i = 0; i < records.size(); ++i)
        CHECK(records[i]["data"]["n"] == i);
}

TEST_CASE("an event log that had to drop says how many events it dropped") {
    log_file file;
    CHECK(log_ten_events(file.path, 3) == 3);
    auto records = file.records();
    REQUIRE(records.size() == 4);
    CHECK(records[0]["record"] == "events dropped");
    CHECK(records[0]["count"] == 7);
    CHECK(records[1]["data"]["n"] == 7);
    CHECK(records[3]["data"]["n"] == 9);
}
