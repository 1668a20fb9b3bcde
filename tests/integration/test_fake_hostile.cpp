// The QMP client against the in-process fake QEMU over a socketpair: the faithful default, every
// hostile wire mode, and a disconnect at every step of a session.
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <catch2/catch.hpp>
#include <functional>
#include <string>
#include <vector>

#include "fake-qemu/options.hpp"
#include "fake-qemu/server.hpp"
#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "qmp/framer.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

// Deadlines that only a hang reaches; tests that expect a timeout set a short one themselves.
// The hang ceiling of every test (test::run, 60 s) is far above them.
client_options generous() {
    client_options o;
    o.greeting_timeout = 10000ms;
    o.command_timeout = 10000ms;
    return o;
}

// Options as the fake-qemu executable reads them from STACKEMU_FAKE_QEMU.
fake::options configured(std::string_view text) {
    auto o = fake::parse_options(nlohmann::json::parse(text));
    REQUIRE_OK(o);
    return *o;
}

// One fake QEMU on one io_context. The io_context outlives the server, whose destructor
// closes its sockets.
struct rig {
    asio::io_context ctx;
    fake::server server;

    explicit rig(fake::options o = {}) : server(ctx.get_executor(), std::move(o)) {}

    // Serves a QMP session on one end of a socketpair; returns the other end.
    stream_socket plug(bool pretty = false) {
        auto [mine, theirs] = test::socket_pair(ctx);
        server.serve_qmp(std::move(theirs), pretty);
        server.start();
        return std::move(mine);
    }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 60s);
    }

    // Ends the fake (SIGTERM, if it still runs) and checks that nothing is left pending: no
    // reader, writer, timer or session of the client or of the fake.
    bool wind_down() {
        server.host_signal();
        return test::drains(ctx);
    }
};

// What a raw peer saw until the fake's greeting was complete.
struct raw_reads {
    std::vector<std::size_t> sizes;  // bytes returned by each read
    std::vector<std::string> texts;  // every message framed, in order
    std::string bytes;               // everything read
};

asio::awaitable<raw_reads> read_through_greeting(stream_socket* s) {
    raw_reads out;
    framer f;
    std::array<char, 65536> buffer;
    for (bool greeted = false; !greeted;) {
        auto [ec, n] = co_await s->async_read_some(asio::buffer(buffer), as_tuple_awaitable);
        if (ec) break;
        out.sizes.push_back(n);
        out.bytes.append(buffer.data(), n);
        f.feed(std::string_view(buffer.data(), n));
        for (;;) {
            auto next = f.next();
            if (!next || !*next) break;
            out.texts.emplace_back(**next);
            if (nlohmann::json::parse(out.texts.back()).contains("QMP")) greeted = true;
        }
    }
    co_return out;
}

bool is_shutdown(const event& ev, bool guest, std::string_view reason) {
    return ev.name == "SHUTDOWN" && ev.data.value("guest", !guest) == guest &&
           ev.data.value("reason", "") == reason;
}

// A short session that touches replies, events and a job: every wire mode must pass it.
asio::awaitable<void> ordinary_session(client* c) {
    auto status = co_await query_status(*c);
    REQUIRE_OK(status);
    CHECK(status->status == "running");
    auto name = co_await query_name(*c);
    REQUIRE_OK(name);
    CHECK_FALSE(name->has_value());
    auto version = co_await query_version(*c);
    REQUIRE_OK(version);
    CHECK(*version == qemu_version{7, 2, 22, {}});

    auto sub = c->subscribe();
    auto stopped = co_await stop(*c);
    REQUIRE_OK(stopped);
    auto stop_event = sub.try_next();
    REQUIRE(stop_event.has_value());
    CHECK(stop_event->name == "STOP");
    auto resumed = co_await cont(*c);
    REQUIRE_OK(resumed);
    auto resume_event = sub.try_next();
    REQUIRE(resume_event.has_value());
    CHECK(resume_event->name == "RESUME");

    snapshot_target target{"wire", "disk0", {"disk0"}};
    auto saved = co_await snapshot_save(*c, target, 10000ms);
    REQUIRE_OK(saved);
    auto listing = co_await human_monitor_command(*c, "info snapshots");
    REQUIRE_OK(listing);
    CHECK(listing->find(" wire ") != std::string::npos);
    CHECK(listing->find("\r\n") != std::string::npos);
}

}  // namespace

// ---- The faithful default ----

TEST_CASE("fake default: a cooperative guest answers the power button with SHUTDOWN") {
    rig t;
    auto sock = t.plug();
    t.run([](fake::server* fake_qemu, stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto sub = c->subscribe();
        auto pressed = co_await system_powerdown(*c);
        REQUIRE_OK(pressed);
        // QEMU sends POWERDOWN before the command's reply.
        auto powerdown = sub.try_next();
        REQUIRE(powerdown.has_value());
        CHECK(powerdown->name == "POWERDOWN");
        auto shutdown = co_await sub.next(10000ms);
        REQUIRE_OK(shutdown);
        CHECK(is_shutdown(*shutdown, true, "guest-shutdown"));
        CHECK(shutdown->data == json::parse(R"({"guest":true,"reason":"guest-shutdown"})"));
        // Without -no-shutdown QEMU exits and closes the monitor.
        auto after = co_await sub.next(10000ms);
        REQUIRE_FALSE(after.has_value());
        CHECK(after.error().code == errc::disconnected);
        CHECK_FALSE(c->is_open());
        auto status = co_await fake_qemu->wait_exit();
        CHECK(status.code == 0);
        CHECK_FALSE(status.abrupt);
    }(&t.server, std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("fake default: stop and cont send STOP and RESUME before their replies") {
    rig t;
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto sub = c->subscribe();
        auto before = co_await query_status(*c);
        REQUIRE_OK(before);
        CHECK(before->running);
        CHECK(before->status == "running");

        auto stopped = co_await stop(*c);
        REQUIRE_OK(stopped);
        auto stop_event = sub.try_next();
        REQUIRE(stop_event.has_value());
        CHECK(stop_event->name == "STOP");
        auto paused = co_await query_status(*c);
        REQUIRE_OK(paused);
        CHECK_FALSE(paused->running);
        CHECK(paused->status == "paused");
        // A second stop changes nothing: QEMU sends STOP only when the CPUs ran.
        auto again = co_await stop(*c);
        REQUIRE_OK(again);
        CHECK(sub.queued() == 0);

        auto resumed = co_await cont(*c);
        REQUIRE_OK(resumed);
        auto resume_event = sub.try_next();
        REQUIRE(resume_event.has_value());
        CHECK(resume_event->name == "RESUME");
        auto running = co_await query_status(*c);
        REQUIRE_OK(running);
        CHECK(running->running);
        CHECK(sub.queued() == 0);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("fake default: the snapshot job helpers save load and delete") {
    rig t;
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        snapshot_target target{"clean", "disk0", {"disk0"}};
        auto saved = co_await snapshot_save(*c, target, 10000ms);
        REQUIRE_OK(saved);
        auto listing = co_await human_monitor_command(*c, "info snapshots");
        REQUIRE_OK(listing);
        CHECK(listing->starts_with("List of snapshots present on all disks:\r\n"));
        CHECK(listing->find(" clean ") != std::string::npos);

        auto loaded = co_await snapshot_load(*c, target, 10000ms);
        REQUIRE_OK(loaded);
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
        CHECK(status->status == "running");

        std::vector<std::string> devices{"disk0"};
        auto deleted = co_await snapshot_delete(*c, "clean", devices, 10000ms);
        REQUIRE_OK(deleted);
        auto empty = co_await human_monitor_command(*c, "info snapshots");
        REQUIRE_OK(empty);
        CHECK(*empty == "There is no snapshot available.\r\n");
        // Every job was dismissed.
        auto jobs = co_await query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("fake default: loading a missing snapshot surfaces the job's error") {
    rig t;
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        snapshot_target target{"missing", "disk0", {"disk0"}};
        auto loaded = co_await snapshot_load(*c, target, 10000ms);
        REQUIRE_FALSE(loaded.has_value());
        CHECK(loaded.error().code == errc::job_failed);
        CHECK(loaded.error().qemu_desc ==
              "Snapshot 'missing' does not exist in one or more devices");
        CHECK_FALSE(loaded.error().is_fatal());
        // The failed job was dismissed all the same, and the connection is still usable.
        auto jobs = co_await query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());
        // QEMU stops the VM before the load can fail and leaves it stopped.
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
        CHECK_FALSE(status->running);
        CHECK(status->status == "restore-vm");
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

// ---- Hostile wire modes ----

TEST_CASE("hostile byte_by_byte: every read returns one byte and a session still works") {
    rig t(configured(R"({"byte_by_byte": true})"));
    auto raw = t.plug();
    auto seen = t.run(read_through_greeting(&raw));
    REQUIRE(seen.texts.size() == 1);
    CHECK(seen.sizes.size() == seen.bytes.size());
    CHECK(std::ranges::all_of(seen.sizes, [](std::size_t n) { return n == 1; }));
    raw.close();

    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        co_await ordinary_session(&*c);
        CHECK(c->stats().unknown_replies == 0);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile coalesce: several messages in one write") {
    rig t(configured(R"({"coalesce": true, "event_before_greeting": "RESUME"})"));
    // The event and the greeting are queued together, so they leave in one write.
    auto raw = t.plug();
    auto seen = t.run(read_through_greeting(&raw));
    REQUIRE(seen.texts.size() == 2);
    CHECK(seen.sizes.size() == 1);
    CHECK(nlohmann::json::parse(seen.texts[0])["event"] == "RESUME");
    raw.close();

    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        CHECK(c->stats().events_before_greeting == 1);
        co_await ordinary_session(&*c);
        // Eight commands in flight at once: their replies come back batched.
        auto ex = co_await asio::this_coro::executor;
        asio::steady_timer all_done(ex, std::chrono::steady_clock::time_point::max());
        int done = 0;
        int ok = 0;
        client* cl = &*c;
        auto one = [&]() -> asio::awaitable<void> {
            auto r = co_await query_status(*cl);
            if (r) ++ok;
            if (++done == 8) all_done.cancel();
        };
        for (int i = 0; i < 8; ++i)
            asio::co_spawn(ex, one(), asio::detached);
        asio::error_code ec;
        co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        CHECK(ok == 8);
        CHECK(c->stats().unknown_replies == 0);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile pretty: multi-line messages from the pretty option") {
    rig t(configured(R"({"pretty": true})"));
    auto raw = t.plug();
    auto seen = t.run(read_through_greeting(&raw));
    REQUIRE(seen.texts.size() == 1);
    // QEMU's pretty printer: one member per line, CRLF line ends, 4-space indent.
    CHECK(seen.bytes.starts_with("{\r\n    \"QMP\": {\r\n"));
    CHECK(seen.bytes.ends_with("}\r\n"));
    raw.close();

    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        CHECK(c->version() == qemu_version{7, 2, 22, {}});
        co_await ordinary_session(&*c);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile pretty: a monitor with pretty=on") {
    rig t;
    auto sock = t.plug(true);
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        co_await ordinary_session(&*c);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile noise: whitespace and blank lines between messages") {
    rig t(configured(R"({"noise": true})"));
    // Blank lines and whitespace follow each message, the greeting included.
    auto raw = t.plug();
    auto seen = t.run(read_through_greeting(&raw));
    REQUIRE(seen.texts.size() == 1);
    CHECK(seen.bytes.ends_with("}\r\n\r\n"));
    raw.close();

    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        co_await ordinary_session(&*c);
        CHECK(c->stats().unknown_replies == 0);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile garbage: bytes that are not JSON end the session with a protocol error") {
    rig t(configured(R"({"garbage": true})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_FALSE(c.has_value());
        INFO(test::describe(c));
        CHECK(c.error().code == errc::protocol_error);
        CHECK(c.error().is_fatal());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile error_without_id_before: the id-less error is counted and dropped") {
    rig t(configured(R"({"error_without_id_before": "query-name"})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto name = co_await query_name(*c);
        REQUIRE_OK(name);
        CHECK_FALSE(name->has_value());
        CHECK(c->stats().idless_errors == 1);
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
        auto again = co_await query_name(*c);
        REQUIRE_OK(again);
        CHECK(c->stats().idless_errors == 2);
        CHECK(c->stats().unknown_replies == 0);
        CHECK(c->is_open());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile delay_reply: past the timeout the reply is late and dropped") {
    rig t(configured(R"({"delay_reply": {"command": "query-name", "ms": 1500}})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto name = co_await c->execute("query-name", json::object(), 100ms);
        REQUIRE_FALSE(name.has_value());
        CHECK(name.error().code == errc::timeout);
        CHECK_FALSE(name.error().is_fatal());
        CHECK(c->is_open());
        // QEMU runs commands in order: this reply follows the late one, which is dropped.
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
        CHECK(status->status == "running");
        CHECK(c->stats().late_replies == 1);
        CHECK(c->stats().unknown_replies == 0);
        auto version = co_await query_version(*c);
        REQUIRE_OK(version);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile delay_reply: within the timeout the reply is awaited") {
    rig t(configured(R"({"delay_reply": {"command": "query-name", "ms": 100}})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto name = co_await c->execute("query-name", json::object(), 10000ms);
        REQUIRE_OK(name);
        CHECK(*name == json::object());
        CHECK(c->stats().late_replies == 0);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile never_answer: the command times out and the connection stays usable") {
    rig t(configured(R"({"never_answer": "query-name"})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto options = generous();
        options.command_timeout = 200ms;
        auto c = co_await client::attach(std::move(s), options);
        REQUIRE_OK(c);
        auto name = co_await query_name(*c);
        REQUIRE_FALSE(name.has_value());
        CHECK(name.error().code == errc::timeout);
        CHECK_FALSE(name.error().is_fatal());
        auto status = co_await c->execute("query-status", json::object(), 10000ms);
        REQUIRE_OK(status);
        CHECK(c->stats().late_replies == 0);
        CHECK(c->is_open());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile event_before_greeting: the early event is tolerated and counted") {
    rig t(configured(R"({"event_before_greeting": "MEMORY_DEVICE_SIZE_CHANGE"})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        CHECK(c->stats().events_before_greeting == 1);
        CHECK(c->stats().events == 1);
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile huge_reply: 10 MB arrive whole under the default cap") {
    rig t(configured(R"({"huge_reply": {}})"));
    auto sock = t.plug();
    std::size_t largest = 0;
    auto options = generous();
    options.command_timeout = 60000ms;
    options.trace = [&largest](bool outgoing, std::string_view text) {
        if (!outgoing) largest = std::max(largest, text.size());
    };
    t.run([](stream_socket s, client_options o) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), o);
        REQUIRE_OK(c);
        auto schema = co_await c->execute("query-qmp-schema");
        REQUIRE_OK(schema);
        REQUIRE(schema->is_array());
        CHECK(schema->size() > 10000);
        CHECK(schema->front()["name"] == "x-fake-padding-type-00000000");
        // The connection goes on after it.
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
    }(std::move(sock), options));
    CHECK(largest >= std::size_t{10} << 20);
    CHECK(largest < default_max_message);
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile huge_reply: a lower cap fails with message_too_large") {
    rig t(configured(R"({"huge_reply": {"command": "query-qmp-schema", "bytes": 10485760}})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto options = generous();
        options.max_message_bytes = 1u << 20;
        // The fake builds the 10 MB reply before its first byte: ~10 s under ASan in Debug,
        // so the ceiling against a hang must be well above that.
        options.command_timeout = 120000ms;
        auto c = co_await client::attach(std::move(s), options);
        REQUIRE_OK(c);
        auto schema = co_await c->execute("query-qmp-schema");
        REQUIRE_FALSE(schema.has_value());
        CHECK(schema.error().code == errc::message_too_large);
        CHECK(schema.error().is_fatal());
        CHECK_FALSE(c->is_open());
        auto after = co_await query_status(*c);
        REQUIRE_FALSE(after.has_value());
        CHECK(after.error().code == errc::message_too_large);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile wrong_greeting: a greeting without a version is a bad greeting") {
    rig t(configured(R"({"wrong_greeting": true})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_FALSE(c.has_value());
        CHECK(c.error().code == errc::bad_greeting);
        CHECK(c.error().is_fatal());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile greeting: something that is no greeting at all is a protocol error") {
    rig t(configured(R"({"greeting": {"hello": "world"}})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_FALSE(c.has_value());
        CHECK(c.error().code == errc::protocol_error);
        CHECK(c.error().is_fatal());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile hang_qmp: no greeting ends in a greeting timeout") {
    rig t(configured(R"({"hang_qmp": true})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto options = generous();
        options.greeting_timeout = 200ms;
        auto c = co_await client::attach(std::move(s), options);
        REQUIRE_FALSE(c.has_value());
        CHECK(c.error().code == errc::timeout);
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile cooperative_guest false: the power button is ignored until quit") {
    rig t(configured(R"({"cooperative_guest": false})"));
    auto sock = t.plug();
    t.run([](fake::server* fake_qemu, stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto sub = c->subscribe();
        std::function<bool(const event&)> any;
        auto powerdown = co_await c->execute_and_wait("system_powerdown", json::object(),
                                                      "POWERDOWN", any, 10000ms);
        REQUIRE_OK(powerdown);
        std::function<bool(const event&)> is_shutdown_event = [](const event& ev) {
            return ev.name == "SHUTDOWN";
        };
        auto shutdown = co_await sub.wait_for(is_shutdown_event, 500ms);
        REQUIRE_FALSE(shutdown.has_value());
        CHECK(shutdown.error().code == errc::timeout);
        auto status = co_await query_status(*c);
        REQUIRE_OK(status);
        CHECK(status->status == "running");

        auto quitted = co_await quit(*c);
        REQUIRE_OK(quitted);
        auto host_quit = co_await sub.wait_for(is_shutdown_event, 10000ms);
        REQUIRE_OK(host_quit);
        CHECK(is_shutdown(*host_quit, false, "host-qmp-quit"));
        // Then EOF, which after quit is the expected end.
        auto after = co_await sub.next(10000ms);
        REQUIRE_FALSE(after.has_value());
        CHECK(after.error().code == errc::disconnected_after_quit);
        CHECK_FALSE(c->is_open());
        auto again = co_await quit(*c);
        CHECK_OK(again);
        auto exit = co_await fake_qemu->wait_exit();
        CHECK(exit.code == 0);
    }(&t.server, std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile job_error: a failing snapshot job gives job_failed with QEMU's text") {
    rig t(configured(
        R"({"job_error": "Device 'disk0' is writable but does not support snapshots"})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        snapshot_target target{"clean", "disk0", {"disk0"}};
        auto saved = co_await snapshot_save(*c, target, 10000ms);
        REQUIRE_FALSE(saved.has_value());
        CHECK(saved.error().code == errc::job_failed);
        CHECK(saved.error().qemu_desc ==
              "Device 'disk0' is writable but does not support snapshots");
        auto jobs = co_await query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE(
    "hostile job_never_concludes: the job helper times out then cancels and dismisses the job") {
    rig t(configured(R"({"job_never_concludes": true})"));
    auto sock = t.plug();
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        snapshot_target target{"clean", "disk0", {"disk0"}};
        auto saved = co_await snapshot_save(*c, target, 300ms);
        REQUIRE_FALSE(saved.has_value());
        CHECK(saved.error().code == errc::timeout);
        CHECK(saved.error().message.find("it was cancelled") != std::string::npos);
        CHECK(c->is_open());
        // The cancelled job concluded ("Operation canceled") and was dismissed.
        auto jobs = co_await query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("hostile crash_after_ms: a crash mid-session is a disconnect") {
    rig t(configured(R"({"crash_after_ms": 300})"));
    auto sock = t.plug();
    t.run([](fake::server* fake_qemu, stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), generous());
        // Normally the crash comes after the handshake; on a stalled machine it may not.
        if (!c) {
            CHECK(c.error().code == errc::disconnected);
        } else {
            auto sub = c->subscribe();
            auto ended = co_await sub.next(10000ms);
            REQUIRE_FALSE(ended.has_value());
            CHECK(ended.error().code == errc::disconnected);
            auto status = co_await query_status(*c);
            REQUIRE_FALSE(status.has_value());
            CHECK(status.error().code == errc::disconnected);
        }
        auto exit = co_await fake_qemu->wait_exit();
        CHECK(exit.code == 1);
        CHECK(exit.abrupt);
    }(&t.server, std::move(sock)));
    REQUIRE(t.wind_down());
}

// ---- A disconnect at every step ----

namespace {

// The session the fake's messages are counted against (the greeting is message 1):
//   step 0 connect      greeting (1), qmp_capabilities reply (2)
//   step 1 query-status reply (3)
//   step 2 query-name   reply (4)
//   step 3 stop         STOP (5), reply (6)
//   step 4 cont         RESUME (7), reply (8)
//   step 5 query-status reply (9)
constexpr std::array<int, 10> step_of_message{-1, 0, 0, 1, 2, 3, 3, 4, 4, 5};
constexpr std::size_t last_message = step_of_message.size() - 1;

struct step_failure {
    int step = -1;  // -1: every step succeeded
    error why;
};

step_failure failed_at(int step, error why) {
    step_failure f;
    f.step = step;
    f.why = std::move(why);
    return f;
}

asio::awaitable<step_failure> stepped_session(stream_socket s) {
    auto c = co_await client::attach(std::move(s), generous());
    if (!c) co_return failed_at(0, c.error());
    auto status = co_await query_status(*c);
    if (!status) co_return failed_at(1, status.error());
    auto name = co_await query_name(*c);
    if (!name) co_return failed_at(2, name.error());
    auto stopped = co_await stop(*c);
    if (!stopped) co_return failed_at(3, stopped.error());
    auto resumed = co_await cont(*c);
    if (!resumed) co_return failed_at(4, resumed.error());
    auto last = co_await query_status(*c);
    if (!last) co_return failed_at(5, last.error());
    co_return step_failure();
}

// Cuts the session at message `message` (`mid`: halfway through it; otherwise just before
// it) and checks that the step waiting for that message fails with a disconnect, in time.
void cut_at(std::string_view wire, bool mid, std::size_t message) {
    nlohmann::json j = nlohmann::json::parse(wire);
    if (mid)
        j["close_mid_message"] = message;
    else
        j["close_after_messages"] = message - 1;
    INFO("options " << j.dump());
    rig t(configured(j.dump()));
    auto sock = t.plug();
    const auto outcome = t.run(stepped_session(std::move(sock)));
    CHECK(outcome.step == step_of_message.at(message));
    CHECK(to_string(outcome.why.code) == to_string(errc::disconnected));
    CHECK(outcome.why.is_fatal());
    CHECK(t.wind_down());
}

}  // namespace

TEST_CASE("fail at step N: close_after_messages at every message") {
    for (std::size_t m = 1; m <= last_message; ++m)
        cut_at("{}", false, m);
}

TEST_CASE("fail at step N: close_mid_message at every message") {
    for (std::size_t m = 1; m <= last_message; ++m)
        cut_at("{}", true, m);
}

TEST_CASE("fail at step N: close_after_messages with coalesced writes") {
    for (std::size_t m = 1; m <= last_message; ++m)
        cut_at(R"({"coalesce": true})", false, m);
}

TEST_CASE("fail at step N: close_mid_message with coalesced writes") {
    for (std::size_t m = 1; m <= last_message; ++m)
        cut_at(R"({"coalesce": true})", true, m);
}

TEST_CASE("fail at step N: close_mid_message byte by byte in pretty print") {
    for (std::size_t m = 1; m <= last_message; ++m)
        cut_at(R"({"byte_by_byte": true, "pretty": true})", true, m);
}

// ---- Client regressions found with the fake ----

TEST_CASE("garbage right after the negotiation reply leaves the client closed") {
    asio::io_context ctx;
    auto [mine, theirs] = test::socket_pair(ctx);
    // The reply and the garbage in one write, so the client reads both before it resumes.
    auto s = test::script()
                 .greeting()
                 .expect("qmp_capabilities")
                 .send("{\"return\": {}, \"id\": 0}\r\n#garbage\r\n")
                 .hold();
    asio::co_spawn(ctx, test::run_peer(std::move(theirs), std::move(s)), asio::detached);
    test::run(
        ctx,
        [](stream_socket sock) -> asio::awaitable<void> {
            auto c = co_await client::attach(std::move(sock), generous());
            REQUIRE_OK(c);
            CHECK_FALSE(c->is_open());
            auto status = co_await query_status(*c);
            REQUIRE_FALSE(status.has_value());
            CHECK(status.error().code == errc::protocol_error);
        }(std::move(mine)),
        60s);
    REQUIRE(test::drains(ctx));
}

TEST_CASE("close_mid_message counts messages from 1") {
    auto zero = fake::parse_options(nlohmann::json::parse(R"({"close_mid_message": 0})"));
    REQUIRE_FALSE(zero.has_value());
    CHECK(zero.error().code == errc::invalid_argument);
}
