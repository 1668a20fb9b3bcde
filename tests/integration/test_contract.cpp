// The same QMP contract, run against real `qemu-system-x86_64 -M none -nodefaults` and against
// the fake-qemu executable with the same argv. Where they disagree, the fake is wrong.
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <string>
#include <vector>

#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "qmp/framer.hpp"
#include "qmp/message.hpp"
#include "support/process.hpp"
#include "support/run.hpp"

extern char** environ;

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A daemonized QEMU (or fake) with a QMP socket in a private directory. The test harness (not
// the product) uses -pidfile, only to clean up after a failed test.
struct launched {
    fs::path dir;
    std::string socket;
    pid_t daemon = -1;

    explicit launched(const std::string& program) {
        dir = fs::temp_directory_path() / ("stackemu-contract-" + std::to_string(::getpid()) + "-" +
                                           std::to_string(counter()++));
        fs::create_directories(dir);
        socket = (dir / "qmp.sock").string();
        const std::string pidfile = (dir / "qemu.pid").string();
        std::vector<std::string> args = {
            program,    "-M",    "none",      "-nodefaults",
            "-display", "none",  "-qmp",      "unix:" + socket + ",server=on,wait=off",
            "-pidfile", pidfile, "-daemonize"};
        std::vector<char*> argv;
        for (auto& a : args)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        pid_t launcher = -1;
        if (::posix_spawnp(&launcher, program.c_str(), nullptr, nullptr, argv.data(), environ) != 0)
            throw std::runtime_error("cannot spawn " + program);
        int status = 0;
        ::waitpid(launcher, &status, 0);
        if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
            throw std::runtime_error(program + " -daemonize failed");
        std::ifstream in(pidfile);
        in >> daemon;
    }
    ~launched() {
        if (daemon > 0 && ::kill(daemon, 0) == 0) ::kill(daemon, SIGKILL);
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    bool alive() const { return daemon > 0 && ::kill(daemon, 0) == 0; }

    static int& counter() {
        static int n = 0;
        return n;
    }
};

std::string program_for(const std::string& backend) {
    return backend == "qemu" ? std::string("qemu-system-x86_64")
                             : std::string(STACKEMU_FAKE_QEMU_EXE);
}

// A raw blocking exchange that skips the client, to see what the server does before negotiation.
std::vector<json> raw_exchange(const std::string& path, const std::string& send, std::size_t want) {
    int fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
    if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) {
        ::close(fd);
        return {};
    }
    if (::write(fd, send.data(), send.size()) != static_cast<ssize_t>(send.size())) {
        ::close(fd);
        return {};
    }
    framer f;
    std::vector<json> out;
    char buf[4096];
    while (out.size() < want) {
        ssize_t n = ::read(fd, buf, sizeof(buf));
        if (n <= 0) break;
        f.feed(std::string_view(buf, static_cast<std::size_t>(n)));
        for (;;) {
            auto next = f.next();
            if (!next || !*next) break;
            out.push_back(json::parse(**next));
        }
    }
    ::close(fd);
    return out;
}

// A coroutine function, not a capturing lambda: the lambda object would die before its frame.
asio::awaitable<void> ask_name(client* c, int* answered, int* done, asio::steady_timer* all) {
    auto r = co_await query_name(*c);
    if (r) ++*answered;
    if (++*done == 8) all->cancel();
}

bool wait_gone(const launched& q) {
    return q.daemon <= 0 || stackemu::test::wait_gone(q.daemon, 5000ms);
}

}  // namespace

TEST_CASE("contract: greeting and negotiation") {
    const std::string backend = GENERATE("qemu", "fake");
    INFO("backend " << backend);
    launched q(program_for(backend));
    // Before qmp_capabilities every other command is refused with CommandNotFound.
    auto messages = raw_exchange(q.socket, "{\"execute\":\"query-status\",\"id\":7}\r\n", 2);
    REQUIRE(messages.size() == 2);
    CHECK(messages[0]["QMP"]["version"]["qemu"]["major"].get<int>() >= 7);
    CHECK(messages[0]["QMP"]["capabilities"] == json::array({"oob"}));
    CHECK(messages[1]["error"]["class"] == "CommandNotFound");
    CHECK(messages[1]["id"] == 7);

    asio::io_context ctx;
    auto version = test::run(ctx, [](std::string path) -> asio::awaitable<std::string> {
        const endpoint ep = unix_endpoint{path};
        auto c = co_await client::connect(ep);
        if (!c) co_return "connect failed: " + c.error().what();
        auto quit_result = co_await quit(*c);
        if (!quit_result) co_return "quit failed: " + quit_result.error().what();
        co_return c->version().to_string();
    }(q.socket));
    CHECK(version.rfind("7.", 0) == 0);
    CHECK(wait_gone(q));
}

TEST_CASE("contract: query-status then 1000 sequential and 8 concurrent commands") {
    const std::string backend = GENERATE("qemu", "fake");
    INFO("backend " << backend);
    launched q(program_for(backend));
    asio::io_context ctx;
    auto outcome = test::run(ctx, [](std::string path) -> asio::awaitable<std::string> {
        const endpoint ep = unix_endpoint{path};
        auto c = co_await client::connect(ep);
        if (!c) co_return "connect: " + c.error().what();
        auto st = co_await query_status(*c);
        if (!st) co_return "query-status: " + st.error().what();
        if (!st->running || st->status != "running") co_return "status " + st->status;
        for (int i = 0; i < 1000; ++i) {
            auto r = co_await c->execute("query-status");
            if (!r) co_return "sequential " + std::to_string(i) + ": " + r.error().what();
        }
        // Eight at once: all answered, each with its own reply.
        auto ex = co_await asio::this_coro::executor;
        int answered = 0, done = 0;
        asio::steady_timer all(ex, std::chrono::steady_clock::time_point::max());
        for (int w = 0; w < 8; ++w) {
            asio::co_spawn(ex, ask_name(&*c, &answered, &done, &all), asio::detached);
        }
        asio::error_code ec;
        co_await all.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (answered != 8) co_return "concurrent answered " + std::to_string(answered);
        if (c->stats().unknown_replies != 0) co_return "unknown replies";
        auto bye = co_await quit(*c);
        if (!bye) co_return "quit: " + bye.error().what();
        co_return "ok";
    }(q.socket));
    CHECK(outcome == "ok");
}

TEST_CASE("contract: stop and cont emit STOP and RESUME before their replies") {
    const std::string backend = GENERATE("qemu", "fake");
    INFO("backend " << backend);
    launched q(program_for(backend));
    asio::io_context ctx;
    auto outcome = test::run(ctx, [](std::string path) -> asio::awaitable<std::string> {
        const endpoint ep = unix_endpoint{path};
        auto c = co_await client::connect(ep);
        if (!c) co_return "connect: " + c.error().what();
        event_filter filter;
        filter.names = {"STOP", "RESUME"};
        auto events = c->subscribe(filter);
        auto stopped = co_await stop(*c);
        if (!stopped) co_return "stop: " + stopped.error().what();
        // The event arrived before the reply, so it is queued already.
        auto first = events.try_next();
        if (!first || first->name != "STOP") co_return "no STOP before the reply";
        auto st = co_await query_status(*c);
        if (!st || st->status != "paused") co_return "not paused";
        auto resumed = co_await cont(*c);
        if (!resumed) co_return "cont: " + resumed.error().what();
        auto second = events.try_next();
        if (!second || second->name != "RESUME") co_return "no RESUME before the reply";
        auto bye = co_await quit(*c);
        if (!bye) co_return "quit: " + bye.error().what();
        co_return "ok";
    }(q.socket));
    CHECK(outcome == "ok");
}

TEST_CASE(
    "contract: quit emits SHUTDOWN host-qmp-quit then the process exits and the socket goes") {
    const std::string backend = GENERATE("qemu", "fake");
    INFO("backend " << backend);
    launched q(program_for(backend));
    asio::io_context ctx;
    auto outcome = test::run(ctx, [](std::string path) -> asio::awaitable<std::string> {
        const endpoint ep = unix_endpoint{path};
        auto c = co_await client::connect(ep);
        if (!c) co_return "connect: " + c.error().what();
        event_filter filter;
        filter.names = {"SHUTDOWN"};
        auto events = c->subscribe(filter);
        auto bye = co_await quit(*c);
        if (!bye) co_return "quit: " + bye.error().what();
        auto ev = co_await events.next(5000ms);
        if (!ev) co_return "no SHUTDOWN: " + ev.error().what();
        if (ev->data.value("guest", true) != false ||
            ev->data.value("reason", "") != "host-qmp-quit")
            co_return "SHUTDOWN data " + ev->data.dump();
        co_return "ok";
    }(q.socket));
    CHECK(outcome == "ok");
    CHECK(wait_gone(q));
    CHECK_FALSE(fs::exists(q.socket));
}
