// The fake QEMU's guest agent on its agent channel: up only while the fake guest is, and
// guest-shutdown powers the fake guest off as a cooperative guest would.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <string>

#include "fake-qemu/server.hpp"
#include "qmp/client.hpp"
#include "qmp/qga.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

fake::options configured(std::string_view text) {
    auto o = fake::parse_options(nlohmann::json::parse(text));
    REQUIRE_OK(o);
    return *o;
}

// A short directory under /tmp for the agent socket, removed at the end.
struct socket_dir {
    fs::path path;
    socket_dir() {
        static int counter = 0;
        path = fs::path("/tmp") /
               ("stackemu-fa-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~socket_dir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

// One fake QEMU with its agent channel on a Unix socket and a QMP session on a socketpair.
// The io_context outlives the server.
struct rig {
    asio::io_context ctx;
    socket_dir dir;
    fake::server server;
    std::string agent_path;
    qmp::client monitor;

    explicit rig(fake::options o)
        : server(ctx.get_executor(), std::move(o)), agent_path((dir.path / "qga.sock").string()) {
        REQUIRE_OK(server.listen_agent(agent_path));
        auto [mine, theirs] = test::socket_pair(ctx);
        server.serve_qmp(std::move(theirs));
        server.start();
        auto attached = run(qmp::client::attach(std::move(mine)));
        REQUIRE_OK(attached);
        monitor = std::move(*attached);
    }
    ~rig() {
        monitor.close();
        if (!server.exited()) server.host_signal();
        (void)test::drains(ctx);
    }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 60s);
    }

    // Connects to the agent and resynchronises within `timeout`.
    result<void> sync(std::chrono::milliseconds timeout) {
        return run(
            [](std::string path, std::chrono::milliseconds t) -> asio::awaitable<result<void>> {
                qga::client_options o;
                o.connect_timeout = 5000ms;
                o.sync_timeout = t;
                const qmp::endpoint ep = qmp::unix_endpoint{path};
                auto agent = co_await qga::client::connect(ep, o);
                if (!agent) co_return fail(agent.error());
                co_return co_await agent->sync();
            }(agent_path, timeout));
    }

    // QMP `cont` on the fake.
    void cont() {
        auto r = run(monitor.execute("cont"));
        REQUIRE_OK(r);
    }
};

// Sends guest-shutdown through the agent; then the next SHUTDOWN event within `wait`.
asio::awaitable<result<event>> agent_shutdown(std::string path, qmp::client* monitor,
                                              std::chrono::milliseconds wait) {
    auto events = monitor->subscribe(event_filter{{"SHUTDOWN"}});
    qga::client_options o;
    o.sync_timeout = 10000ms;
    o.no_reply_grace = 200ms;
    const qmp::endpoint ep = qmp::unix_endpoint{path};
    auto agent = co_await qga::client::connect(ep, o);
    if (!agent) co_return fail(agent.error());
    auto sent = co_await qga::shutdown(*agent, "powerdown");
    if (!sent) co_return fail(sent.error());
    co_return co_await events.wait_for([](const event&) { return true; }, wait);
}

}  // namespace

TEST_CASE("fake agent stays mute until the fake guest has booted", "[fake][agent]") {
    // -S: the CPUs have not run, so the guest has not booted.
    rig t(configured(R"({"start_paused": true,
                         "console": [{"after_ms": 50, "line": "booting"},
                                     {"after_ms": 50, "action": "ready"}]})"));
    auto before = t.sync(300ms);
    REQUIRE_FALSE(before.has_value());
    CHECK(before.error().code == errc::agent_unavailable);

    t.cont();
    auto after = t.sync(10000ms);
    CHECK_OK(after);
    CHECK(t.server.machine().guest_ready());
}

TEST_CASE("fake agent without a console script answers at once", "[fake][agent]") {
    rig t(configured(R"({})"));
    auto r = t.sync(10000ms);
    CHECK_OK(r);
}

TEST_CASE("fake agent freezes while the CPUs are stopped", "[fake][agent]") {
    rig t(configured(R"({})"));
    REQUIRE_OK(t.sync(10000ms));
    auto stopped = t.run(t.monitor.execute("stop"));
    REQUIRE_OK(stopped);
    auto frozen = t.sync(300ms);
    REQUIRE_FALSE(frozen.has_value());
    CHECK(frozen.error().code == errc::agent_unavailable);
    t.cont();
    auto thawed = t.sync(10000ms);
    CHECK_OK(thawed);
}

TEST_CASE("fake agent false: the channel accepts and stays mute", "[fake][agent]") {
    rig t(configured(R"({"agent": false})"));
    CHECK(t.server.guest_agent() == nullptr);
    auto r = t.sync(300ms);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::agent_unavailable);
}

TEST_CASE("fake agent guest-shutdown powers the guest off and the fake exits", "[fake][agent]") {
    rig t(configured(R"({"powerdown_delay_ms": 20})"));
    auto shutdown = t.run(agent_shutdown(t.agent_path, &t.monitor, 10000ms));
    REQUIRE_OK(shutdown);
    CHECK(shutdown->name == "SHUTDOWN");
    CHECK(shutdown->data == json{{"guest", true}, {"reason", "guest-shutdown"}});
    auto status = t.run(t.server.wait_exit());
    CHECK(status.code == 0);
    CHECK(status.signal == 0);
}

TEST_CASE("fake agent guest-shutdown is ignored by an uncooperative guest", "[fake][agent]") {
    rig t(configured(R"({"powerdown_delay_ms": 20, "cooperative_guest": false})"));
    auto shutdown = t.run(agent_shutdown(t.agent_path, &t.monitor, 1000ms));
    REQUIRE_FALSE(shutdown.has_value());
    CHECK(shutdown.error().code == errc::timeout);
    CHECK_FALSE(t.server.exited());
    CHECK(t.server.machine().running());
}

TEST_CASE("fake hang_qmp_after_ms: the monitor greets but answers nothing", "[fake][agent]") {
    // The hang starts when the guest is ready, after `cont`.
    rig t(configured(R"({"start_paused": true, "hang_qmp_after_ms": 0,
                         "console": [{"after_ms": 50, "action": "ready"}]})"));
    t.cont();
    t.run([](fake::vm* machine) -> asio::awaitable<void> {
        asio::steady_timer tick(co_await asio::this_coro::executor);
        while (!machine->qmp_hung()) {
            tick.expires_after(10ms);
            co_await tick.async_wait(asio::use_awaitable);
        }
    }(&t.server.machine()));
    // The session negotiated before the hang stops answering.
    auto status = t.run(t.monitor.execute("query-status", json::object(), 300ms));
    REQUIRE_FALSE(status.has_value());
    CHECK(status.error().code == errc::timeout);
    // The agent lives in the guest, not in QEMU's main loop.
    CHECK_OK(t.sync(10000ms));
}
