// The QMP client against a scripted peer over a socketpair: every path, deterministically.
#include <fmt/format.h>
#include <unistd.h>

#include <asio/experimental/awaitable_operators.hpp>
#include <catch2/catch.hpp>

#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;
using test::script;

namespace {

struct conversation {
    asio::io_context ctx;
    test::peer_outcome peer;
    bool peer_done = false;

    // Starts the peer with `s` and returns the client side of the socketpair.
    stream_socket start(script s, std::size_t cut_after = std::numeric_limits<std::size_t>::max()) {
        auto [mine, theirs] = test::socket_pair(ctx);
        asio::co_spawn(ctx, test::run_peer(std::move(theirs), std::move(s), cut_after),
                       [this](std::exception_ptr e, test::peer_outcome o) {
                           if (e) std::rethrow_exception(e);
                           peer = std::move(o);
                           peer_done = true;
                       });
        return std::move(mine);
    }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 30s);
    }
};

// The id of every command the peer received, in order.
std::vector<json> ids_sent(const test::peer_outcome& peer) {
    std::vector<json> ids;
    for (const auto& command : peer.received)
        ids.push_back(command.value("id", json()));
    return ids;
}

// The handshake, then `n` query-status commands, each answered "running".
script status_replies(int n) {
    script s;
    s.handshake();
    for (int i = 0; i < n; ++i)
        s.expect("query-status").reply({{"status", "running"}, {"running", true}});
    s.hold();
    return s;
}

client_options fast() {
    client_options o;
    o.greeting_timeout = 2000ms;
    o.command_timeout = 2000ms;
    return o;
}

}  // namespace

TEST_CASE("the handshake sends qmp_capabilities without arguments and exposes the version") {
    conversation t;
    auto sock = t.start(script().handshake().hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE(c.has_value());
    CHECK(c->version() == qemu_version{7, 2, 22, {}});
    CHECK(c->server_greeting().offers("oob"));
    CHECK_FALSE(c->oob_enabled());
    c->close();
    REQUIRE(test::drains(t.ctx));
    REQUIRE(t.peer.received.size() == 1);
    CHECK(t.peer.received[0] == json::parse(R"({"execute":"qmp_capabilities","id":0})"));
}

TEST_CASE("oob is enabled only when requested and offered") {
    conversation t;
    auto options = fast();
    options.request_oob = true;
    auto sock = t.start(script().handshake().hold());
    auto c = t.run(client::attach(std::move(sock), options));
    REQUIRE(c.has_value());
    CHECK(c->oob_enabled());
    c->close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.peer.received[0]["arguments"] == json::parse(R"({"enable":["oob"]})"));
}

TEST_CASE("oob is not requested from a QEMU that does not offer it") {
    conversation t;
    auto options = fast();
    options.request_oob = true;
    auto greeting_without_oob =
        R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 7}, "package": ""}, "capabilities": []}})"
        "\r\n";
    auto sock =
        t.start(script().send(greeting_without_oob).expect("qmp_capabilities").reply().hold());
    auto c = t.run(client::attach(std::move(sock), options));
    REQUIRE(c.has_value());
    CHECK_FALSE(c->oob_enabled());
    c->close();
    REQUIRE(test::drains(t.ctx));
    CHECK_FALSE(t.peer.received[0].contains("arguments"));
}

TEST_CASE("an event before the greeting is tolerated") {
    conversation t;
    auto sock = t.start(script().event("RESUME").handshake().hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE(c.has_value());
    CHECK(c->stats().events_before_greeting == 1);
    c->close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("the client refuses a greeting without a version") {
    conversation t;
    auto sock = t.start(script().send("{\"QMP\": {\"capabilities\": []}}\r\n").hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::bad_greeting);
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a reply before the greeting is a bad greeting") {
    conversation t;
    auto sock = t.start(script().send("{\"return\": {}}\r\n").hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::bad_greeting);
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("no greeting within the deadline is a timeout that mentions the one-client rule") {
    conversation t;
    auto options = fast();
    options.greeting_timeout = 100ms;
    auto sock = t.start(script().hold());
    auto c = t.run(client::attach(std::move(sock), options));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::timeout);
    CHECK(c.error().message.find("one client per monitor") != std::string::npos);
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a refused negotiation fails the connection with QEMU's class") {
    conversation t;
    auto sock = t.start(
        script().greeting().expect("qmp_capabilities").reply_error("GenericError", "nope").hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::qemu_error);
    CHECK(c.error().qemu_class == "GenericError");
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("execute returns the reply's value and sends the exact command") {
    conversation t;
    auto sock =
        t.start(script()
                    .handshake()
                    .expect("query-status")
                    .reply({{"status", "running"}, {"singlestep", false}, {"running", true}})
                    .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto status = co_await query_status(*c);
        REQUIRE(status.has_value());
        CHECK(status->running);
        CHECK(status->status == "running");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(t.peer.received[1] == json::parse(R"({"execute":"query-status","id":0})"));
}

TEST_CASE("an error reply keeps QEMU's class and desc and leaves the connection usable") {
    conversation t;
    auto sock =
        t.start(script()
                    .handshake()
                    .expect("frobnicate")
                    .reply_error("CommandNotFound", "The command frobnicate has not been found")
                    .expect("query-name")
                    .reply({{"name", "vm"}})
                    .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto r = co_await c->execute("frobnicate");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::qemu_error);
        CHECK(r.error().qemu_class == "CommandNotFound");
        CHECK(r.error().qemu_desc == "The command frobnicate has not been found");
        CHECK_FALSE(r.error().is_fatal());
        CHECK(r.error().what() ==
              "QEMU refused frobnicate: QEMU CommandNotFound: The command frobnicate has not been "
              "found");
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(*name == std::optional<std::string>("vm"));
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("query-name without a name gives nullopt") {
    conversation t;
    auto sock = t.start(script().handshake().expect("query-name").reply().hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK_FALSE(name->has_value());
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a reply to a command that timed out is recognised and dropped") {
    conversation t;
    // The peer answers query-status only after the client has sent query-name, i.e. after
    // query-status timed out; then it answers query-name.
    auto sock = t.start(
        script()
            .handshake()
            .expect("query-status")
            .expect("query-name")
            .send(test::crlf({{"return", {{"status", "running"}, {"running", true}}}, {"id", 0}}))
            .reply({{"name", "late-test"}})
            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto slow = co_await c->execute("query-status", json::object(), 50ms);
        REQUIRE_FALSE(slow.has_value());
        CHECK(slow.error().code == errc::timeout);
        CHECK_FALSE(slow.error().is_fatal());
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(**name == "late-test");
        CHECK(c->stats().late_replies == 1);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a reply with an unknown id is dropped and counted") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("query-name")
                            .send(test::crlf({{"return", {}}, {"id", 999}}))
                            .send(test::crlf({{"return", {}}, {"id", "text-id"}}))
                            .reply({{"name", "x"}})
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(**name == "x");
        CHECK(c->stats().unknown_replies == 2);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("an error without an id does not desynchronise replies") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("query-name")
                            .send(test::crlf({{"error",
                                               {{"class", "GenericError"},
                                                {"desc", "JSON parse error, expecting value"}}}}))
                            .reply({{"name", "in-sync"}})
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(**name == "in-sync");
        CHECK(c->stats().idless_errors == 1);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("events reach subscribers whose filter matches in order") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("stop")
                            .event("STOP")
                            .reply()
                            .expect("cont")
                            .event("RESUME")
                            .reply()
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto all = c->subscribe();
        auto resumes = c->subscribe({{"RESUME"}});
        auto stopped = co_await stop(*c);
        REQUIRE_OK(stopped);
        auto resumed = co_await cont(*c);
        REQUIRE_OK(resumed);
        auto first = co_await all.next(1000ms);
        auto second = co_await all.next(1000ms);
        REQUIRE(first.has_value());
        REQUIRE(second.has_value());
        CHECK(first->name == "STOP");
        CHECK(second->name == "RESUME");
        CHECK(first->seconds == 1795887742);
        auto only = co_await resumes.next(1000ms);
        REQUIRE(only.has_value());
        CHECK(only->name == "RESUME");
        CHECK(resumes.queued() == 0);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    INFO(t.peer.failure);
    CHECK(t.peer.failure.empty());
}

TEST_CASE("a full subscription drops its oldest events and keeps the newest") {
    conversation t;
    script s;
    // The events come after the client subscribed (it sends query-name only then).
    s.handshake().expect("query-name");
    for (int i = 0; i < 10; ++i)
        s.event("JOB_STATUS_CHANGE", {{"id", "j"}, {"status", std::to_string(i)}});
    s.reply().hold();
    auto sock = t.start(std::move(s));
    t.run([](stream_socket sk) -> asio::awaitable<void> {
        auto options = fast();
        options.event_queue_capacity = 3;
        auto c = co_await client::attach(std::move(sk), options);
        REQUIRE(c.has_value());
        auto sub = c->subscribe({{"JOB_STATUS_CHANGE"}});
        // query-name's reply comes after the events, so all ten have been dispatched.
        auto name = co_await query_name(*c);
        REQUIRE_OK(name);
        CHECK(sub.queued() == 3);
        CHECK(sub.dropped() == 7);
        auto ev = sub.try_next();
        REQUIRE(ev);
        CHECK(ev->data["status"] == "7");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a full subscription keeps a panic that a burst of repeatable events follows") {
    conversation t;
    script s;
    s.handshake().expect("query-name");
    std::string burst =
        test::crlf(json{{"event", "GUEST_PANICKED"}, {"data", {{"action", "pause"}}}});
    for (int i = 0; i < 1000; ++i)
        burst += test::crlf(json{{"event", "BLOCK_IO_ERROR"}, {"data", {{"n", i}}}});
    burst += test::crlf(json{{"event", "STOP"}});
    s.send(burst).reply().hold();
    auto sock = t.start(std::move(s));
    t.run([](stream_socket sk) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(sk), fast());
        REQUIRE(c.has_value());
        auto sub = c->subscribe();
        auto name = co_await query_name(*c);
        REQUIRE_OK(name);
        CHECK(sub.queued() == 256);
        CHECK(sub.dropped() == 1002 - 256);
        auto first = sub.try_next();
        REQUIRE(first);
        CHECK(first->name == "GUEST_PANICKED");
        // The newest repeatable events survive, then the state event that ended the burst.
        auto second = sub.try_next();
        REQUIRE(second);
        CHECK(second->data["n"] == 1000 - 254);
        while (sub.queued() > 1)
            (void)sub.try_next();
        auto last = sub.try_next();
        REQUIRE(last);
        CHECK(last->name == "STOP");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a subscription full of state events counts a repeatable event as dropped") {
    conversation t;
    script s;
    s.handshake().expect("query-name");
    s.event("STOP").event("RESUME").event("BLOCK_IO_ERROR").event("SHUTDOWN");
    s.reply().hold();
    auto sock = t.start(std::move(s));
    t.run([](stream_socket sk) -> asio::awaitable<void> {
        auto options = fast();
        options.event_queue_capacity = 2;
        auto c = co_await client::attach(std::move(sk), options);
        REQUIRE(c.has_value());
        auto sub = c->subscribe();
        auto name = co_await query_name(*c);
        REQUIRE_OK(name);
        CHECK(sub.dropped() == 1);
        std::vector<std::string> names;
        while (auto ev = sub.try_next())
            names.push_back(ev->name);
        CHECK(names == std::vector<std::string>{"STOP", "RESUME", "SHUTDOWN"});
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("waiting for an event that does not come is a timeout") {
    conversation t;
    auto sock = t.start(script().handshake().hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto sub = c->subscribe({{"SHUTDOWN"}});
        auto ev = co_await sub.next(30ms);
        REQUIRE_FALSE(ev.has_value());
        CHECK(ev.error().code == errc::timeout);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("execute_and_wait catches an event that arrives before the command's reply") {
    conversation t;
    auto sock =
        t.start(script().handshake().expect("system_powerdown").event("POWERDOWN").reply().hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto ev = co_await c->execute_and_wait("system_powerdown", json::object(), "POWERDOWN", {},
                                               1000ms);
        REQUIRE(ev.has_value());
        CHECK(ev->name == "POWERDOWN");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("execute_and_wait skips events that do not satisfy the predicate") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("system_reset")
                            .event("RESET", {{"guest", false}, {"reason", "host-qmp-system-reset"}})
                            .reply()
                            .event("RESET", {{"guest", true}, {"reason", "guest-reset"}})
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto ev = co_await c->execute_and_wait(
            "system_reset", json::object(), "RESET",
            [](const event& e) { return e.data.value("guest", false); }, 1000ms);
        REQUIRE(ev.has_value());
        CHECK(ev->data["reason"] == "guest-reset");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a disconnect fails every pending command and ends subscriptions") {
    conversation t;
    auto sock = t.start(script().handshake().expect("query-status").close());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto sub = c->subscribe();
        auto r = co_await c->execute("query-status");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::disconnected);
        CHECK(r.error().is_fatal());
        auto ev = co_await sub.next(1000ms);
        REQUIRE_FALSE(ev.has_value());
        CHECK(ev.error().code == errc::disconnected);
        CHECK_FALSE(c->is_open());
        auto after = co_await c->execute("query-status");
        CHECK(after.error().code == errc::disconnected);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("EOF after quit is quit's success; other pending commands learn quit was sent") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("query-status")
                            .expect("quit")
                            .event("SHUTDOWN", {{"guest", false}, {"reason", "host-qmp-quit"}})
                            .close());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto c = co_await client::attach(std::move(s), fast());
        auto sub = c->subscribe({{"SHUTDOWN"}});
        auto [status, quitted] = co_await (c->execute("query-status") && quit(*c));
        REQUIRE(quitted.has_value());
        REQUIRE_FALSE(status.has_value());
        CHECK(status.error().code == errc::disconnected_after_quit);
        auto shutdown = co_await sub.next(1000ms);
        REQUIRE(shutdown.has_value());
        CHECK(shutdown->data["reason"] == "host-qmp-quit");
        auto ended = co_await sub.next(1000ms);
        CHECK(ended.error().code == errc::disconnected_after_quit);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("close fails pending commands with errc::closed") {
    conversation t;
    auto sock = t.start(script().handshake().hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto c = co_await client::attach(std::move(s), fast());
        asio::steady_timer soon(co_await asio::this_coro::executor, 20ms);
        auto closer = [&]() -> asio::awaitable<void> {
            co_await soon.async_wait(asio::use_awaitable);
            c->close();
        };
        auto r = co_await (c->execute("query-status") && closer());
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::closed);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a caller's cancellation ends execute with errc::cancelled and keeps the session") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("query-status")
                            .expect("query-name")
                            .send(test::crlf({{"return", {}}, {"id", 0}}))
                            .reply({{"name", "after-cancel"}})
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto c = co_await client::attach(std::move(s), fast());
        asio::steady_timer soon(co_await asio::this_coro::executor, 20ms);
        auto raced = co_await (c->execute("query-status") || soon.async_wait(asio::use_awaitable));
        CHECK(raced.index() == 1);
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(**name == "after-cancel");
        CHECK(c->stats().late_replies == 1);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("at most eight commands are unanswered at any time; the rest queue") {
    conversation t;
    auto sock = t.start(status_replies(20));
    int outstanding = 0, worst = 0;
    bool negotiated = false;
    auto options = fast();
    options.trace = [&](bool outgoing, std::string_view text) {
        auto msg = json::parse(text);
        if (!negotiated) {  // the greeting and the negotiation
            negotiated = !outgoing && msg.contains("return");
            return;
        }
        if (outgoing)
            ++outstanding;
        else if (msg.contains("return"))
            --outstanding;
        worst = std::max(worst, outstanding);
    };
    t.run([](stream_socket sk, client_options o) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(sk), o);
        REQUIRE(c.has_value());
        auto ex = co_await asio::this_coro::executor;
        asio::steady_timer all_done(ex, std::chrono::steady_clock::time_point::max());
        int done = 0;
        auto one = [&]() -> asio::awaitable<void> {
            auto r = co_await query_status(*c);
            CHECK(r.has_value());
            if (++done == 20) all_done.cancel();
        };
        for (int i = 0; i < 20; ++i)
            asio::co_spawn(ex, one(), asio::detached);
        asio::error_code ec;
        co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }(std::move(sock), options));
    REQUIRE(test::drains(t.ctx));
    CHECK(worst == 8);
    CHECK(t.peer.received.size() == 21);
}

TEST_CASE("a reply over the size cap is a distinct fatal error") {
    conversation t;
    auto sock = t.start(
        script().handshake().expect("query-qmp-schema").reply(std::string(2 << 20, 'x')).hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto options = fast();
        options.max_message_bytes = 1 << 20;
        auto c = co_await client::attach(std::move(s), options);
        auto r = co_await c->execute("query-qmp-schema");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::message_too_large);
        CHECK(r.error().is_fatal());
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a 10 MB reply is received whole under the default cap") {
    conversation t;
    auto sock = t.start(
        script().handshake().expect("query-qmp-schema").reply(std::string(10 << 20, 'x')).hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        // A ceiling against hangs only: under the sanitizers, on a busy machine, moving and
        // parsing 10 MB takes longer than fast()'s 2 s.
        auto options = fast();
        options.command_timeout = 60000ms;
        auto c = co_await client::attach(std::move(s), options);
        auto r = co_await c->execute("query-qmp-schema");
        INFO((r ? std::string() : r.error().what()));
        REQUIRE(r.has_value());
        CHECK(r->get<std::string>().size() == std::size_t(10 << 20));
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("garbage from the peer is a fatal protocol error") {
    conversation t;
    auto sock =
        t.start(script().handshake().expect("query-status").send("<html>oops</html>\r\n").hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto r = co_await c->execute("query-status");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::protocol_error);
        CHECK(r.error().is_fatal());
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("invalid UTF-8 ends the session with a cause that names the offset and bytes") {
    conversation t;
    // The bad byte follows the handshake and the 37 bytes of the event before it.
    const std::size_t offset = test::script_size(script().handshake()) + 37;
    auto sock = t.start(script()
                            .handshake()
                            .expect("query-status")
                            .send("{\"event\": \"BLOCK_IO_ERROR\", \"data\": \"\xff\"}\r\n")
                            .hold());
    t.run([](stream_socket s, std::size_t at) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto sub = c->subscribe();
        auto r = co_await c->execute("query-status");
        REQUIRE_FALSE(r.has_value());
        const std::string cause =
            fmt::format("malformed message from QEMU at byte offset {}: ff 22 7d (not UTF-8)", at);
        CHECK(r.error().code == errc::protocol_error);
        CHECK(r.error().message == cause);
        auto ev = co_await sub.next(1000ms);
        REQUIRE_FALSE(ev.has_value());
        CHECK(ev.error().message == cause);
        CHECK_FALSE(c->is_open());
    }(std::move(sock), offset));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("sequential commands all use id 0: ids do not grow with a connection's age") {
    conversation t;
    auto sock = t.start(status_replies(1000));
    std::size_t longest = 0;
    auto options = fast();
    options.trace = [&](bool outgoing, std::string_view text) {
        if (outgoing && text.starts_with(R"({"execute":"query-status")"))
            longest = std::max(longest, text.size());
    };
    t.run([](stream_socket sk, client_options o) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(sk), o);
        REQUIRE(c.has_value());
        for (int i = 0; i < 1000; ++i) {
            auto r = co_await query_status(*c);
            REQUIRE(r.has_value());
        }
    }(std::move(sock), options));
    REQUIRE(test::drains(t.ctx));
    REQUIRE(t.peer.received.size() == 1001);
    for (const auto& sent : t.peer.received)
        CHECK(sent["id"] == 0);
    CHECK(longest == std::string(R"({"execute":"query-status","id":0})").size());
}

TEST_CASE("pipelined commands take the smallest free ids") {
    conversation t;
    auto sock = t.start(
        script()
            .handshake()
            .expect("query-status")
            .expect("query-name")
            .send(test::crlf({{"return", {{"name", "second"}}}, {"id", 1}}))
            .send(test::crlf({{"return", {{"status", "running"}, {"running", true}}}, {"id", 0}}))
            .expect("query-name")
            .reply({{"name", "third"}})
            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto [status, name] = co_await (query_status(*c) && query_name(*c));
        REQUIRE(status.has_value());
        REQUIRE(name.has_value());
        CHECK(**name == "second");
        auto third = co_await query_name(*c);
        REQUIRE(third.has_value());
        CHECK(**third == "third");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(ids_sent(t.peer) == std::vector<json>{0, 0, 1, 0});
}

TEST_CASE("a late reply to a quarantined id is never taken as a new command's reply") {
    conversation t;
    // query-status (id 0) times out; id 0 stays quarantined, so query-name gets id 1 and the
    // late reply to 0 is dropped. Once it came, 0 is free again for the next command.
    auto sock =
        t.start(script()
                    .handshake()
                    .expect("query-status")
                    .expect("query-name")
                    .send(test::crlf({{"return", {{"name", "late-status-reply"}}}, {"id", 0}}))
                    .reply({{"name", "own-reply"}})
                    .expect("query-name")
                    .reply({{"name", "reused"}})
                    .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        REQUIRE(c.has_value());
        auto slow = co_await c->execute("query-status", json::object(), 50ms);
        REQUIRE_FALSE(slow.has_value());
        CHECK(slow.error().code == errc::timeout);
        auto name = co_await query_name(*c);
        REQUIRE(name.has_value());
        CHECK(**name == "own-reply");
        CHECK(c->stats().late_replies == 1);
        auto again = co_await query_name(*c);
        REQUIRE(again.has_value());
        CHECK(**again == "reused");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(ids_sent(t.peer) == std::vector<json>{0, 0, 1, 0});
}

TEST_CASE("the peer of a socketpair is this process") {
    conversation t;
    auto sock = t.start(script().handshake().hold());
    auto c = t.run(client::attach(std::move(sock), fast()));
    REQUIRE(c.has_value());
    CHECK(c->peer_pid() == std::optional<pid_t>(::getpid()));
    c->close();
    REQUIRE(test::drains(t.ctx));
}

// ---- fail at step N ----

namespace {

script conversation_until_quit() {
    return script()
        .handshake()
        .expect("query-status")
        .reply({{"status", "running"}, {"singlestep", false}, {"running", true}})
        .expect("stop")
        .event("STOP")
        .reply()
        .expect("query-name")
        .reply({{"name", "vm"}});
}

script full_conversation() {
    return conversation_until_quit()
        .expect("quit")
        .event("SHUTDOWN", {{"guest", false}, {"reason", "host-qmp-quit"}})
        .reply()
        .close();
}

// The controller's sequence; returns the first error, or nothing when all went through.
asio::awaitable<std::optional<error>> controller_sequence(stream_socket s) {
    auto c = co_await client::attach(std::move(s), fast());
    if (!c) co_return c.error();
    auto sub = c->subscribe({{"STOP"}});
    if (auto r = co_await query_status(*c); !r) co_return r.error();
    if (auto r = co_await stop(*c); !r) co_return r.error();
    if (auto r = co_await sub.next(1000ms); !r) co_return r.error();
    if (auto r = co_await query_name(*c); !r) co_return r.error();
    if (auto r = co_await quit(*c); !r) co_return r.error();
    co_return std::nullopt;
}

}  // namespace

TEST_CASE("cutting the connection at every byte ends each step in a typed error") {
    const std::size_t total = test::script_size(full_conversation());
    const std::size_t before_quit = test::script_size(conversation_until_quit());
    REQUIRE(total > 300);
    for (std::size_t cut = 0; cut < total; ++cut) {
        conversation t;
        auto sock = t.start(full_conversation(), cut);
        auto outcome = t.run(controller_sequence(std::move(sock)));
        INFO("cut after byte " << cut << " of " << total);
        REQUIRE(test::drains(t.ctx));
        if (!outcome) {
            // Success is only possible once query-name's reply was whole, so that the client
            // sent quit: EOF after quit is quit's success.
            CHECK(cut >= before_quit - 2);
            continue;
        }
        const auto code = outcome->code;
        const bool typed = code == errc::disconnected || code == errc::disconnected_after_quit ||
                           code == errc::bad_greeting || code == errc::protocol_error;
        CHECK(typed);
        if (!typed) FAIL(outcome->what());
    }
}

TEST_CASE("the uncut conversation completes") {
    conversation t;
    auto sock = t.start(full_conversation());
    auto outcome = t.run(controller_sequence(std::move(sock)));
    CHECK_FALSE(outcome.has_value());
    REQUIRE(test::drains(t.ctx));
    CHECK(t.peer.script_completed);
}

TEST_CASE("a socket path over the sun_path limit is refused before connecting") {
    asio::io_context ctx;
    // fmt, not chained operator+ (GCC 12 -O3 -Warray-bounds false positive).
    const std::string path = fmt::format("/tmp/{}.sock", std::string(120, 'a'));
    auto c = test::run(ctx, client::connect(unix_endpoint{path}, fast()));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::invalid_endpoint);
    CHECK(c.error().message.find("over the 107-byte limit") != std::string::npos);
}

TEST_CASE("connecting to a missing socket is connect_failed") {
    asio::io_context ctx;
    auto c =
        test::run(ctx, client::connect(unix_endpoint{"/nonexistent/stackemu-test.sock"}, fast()));
    REQUIRE_FALSE(c.has_value());
    CHECK(c.error().code == errc::connect_failed);
}

TEST_CASE("endpoints parse from their text forms") {
    CHECK(std::get<unix_endpoint>(*parse_endpoint("unix:/run/qmp.sock")).path == "/run/qmp.sock");
    CHECK(std::get<unix_endpoint>(*parse_endpoint("/run/qmp.sock")).path == "/run/qmp.sock");
    auto tcp = std::get<tcp_endpoint>(*parse_endpoint("tcp:127.0.0.1:4444"));
    CHECK(tcp.host == "127.0.0.1");
    CHECK(tcp.port == 4444);
    CHECK(std::get<tcp_endpoint>(*parse_endpoint("tcp:[::1]:5")).host == "::1");
    CHECK(std::get<fd_endpoint>(*parse_endpoint("fd:7")).fd == 7);
    CHECK(parse_endpoint("tcp:host").error().code == errc::invalid_endpoint);
    CHECK(parse_endpoint("tcp:host:99999").error().code == errc::invalid_endpoint);
    CHECK(parse_endpoint("fd:x").error().code == errc::invalid_endpoint);
    CHECK(parse_endpoint("").error().code == errc::invalid_endpoint);
}

// ---- block jobs ----

namespace {

json job_event(const char* status) {
    return {{"status", status}, {"id", "j1"}};
}

}  // namespace

TEST_CASE("a snapshot job whose events precede the reply runs to concluded and is dismissed") {
    conversation t;
    auto sock = t.start(
        script()
            .handshake()
            .expect("snapshot-save")
            .event("JOB_STATUS_CHANGE", job_event("created"))
            .event("JOB_STATUS_CHANGE", job_event("running"))
            .event("STOP")
            .event("RESUME")
            .reply()
            .event("JOB_STATUS_CHANGE", job_event("waiting"))
            .event("JOB_STATUS_CHANGE", job_event("pending"))
            .event("JOB_STATUS_CHANGE", job_event("concluded"))
            .expect("query-jobs")
            .reply(json::parse(
                R"([{"current-progress": 1, "status": "concluded", "total-progress": 1, "type": "snapshot-save", "id": "j1"}])"))
            .expect("job-dismiss")
            .event("JOB_STATUS_CHANGE", job_event("null"))
            .reply()
            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        json args = {{"tag", "clean"}, {"vmstate", "disk0"}, {"devices", {"disk0"}}};
        auto r = co_await run_job(*c, "snapshot-save", args, "j1", 2000ms);
        REQUIRE(r.has_value());
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(
        t.peer.received[1] ==
        json::parse(
            R"({"execute":"snapshot-save","arguments":{"devices":["disk0"],"job-id":"j1","tag":"clean","vmstate":"disk0"},"id":0})"));
    CHECK(t.peer.received[3] ==
          json::parse(R"({"execute":"job-dismiss","arguments":{"id":"j1"},"id":0})"));
}

TEST_CASE("a failed snapshot job surfaces QEMU's error text and is still dismissed") {
    conversation t;
    auto sock = t.start(
        script()
            .handshake()
            .expect("snapshot-load")
            .event("JOB_STATUS_CHANGE", job_event("created"))
            .event("JOB_STATUS_CHANGE", job_event("running"))
            .event("STOP")
            .reply()
            .event("JOB_STATUS_CHANGE", job_event("aborting"))
            .event("JOB_STATUS_CHANGE", job_event("concluded"))
            .expect("query-jobs")
            .reply(json::parse(
                R"([{"current-progress": 1, "status": "concluded", "total-progress": 1, "type": "snapshot-load", "id": "j1", "error": "Snapshot 'missing' does not exist in one or more devices"}])"))
            .expect("job-dismiss")
            .reply()
            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        json args = {{"tag", "missing"}, {"vmstate", "disk0"}, {"devices", {"disk0"}}};
        auto r = co_await run_job(*c, "snapshot-load", args, "j1", 2000ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::job_failed);
        CHECK(r.error().qemu_desc == "Snapshot 'missing' does not exist in one or more devices");
        CHECK(r.error().what() ==
              "snapshot-load failed: Snapshot 'missing' does not exist in one or more devices");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(t.peer.received.back()["execute"] == "job-dismiss");
}

TEST_CASE("a job that never concludes ends at its deadline and is cancelled") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("snapshot-save")
                            .event("JOB_STATUS_CHANGE", job_event("created"))
                            .event("JOB_STATUS_CHANGE", job_event("running"))
                            .reply()
                            .expect("job-cancel")
                            .reply()
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        json args = {{"tag", "t"}, {"vmstate", "disk0"}, {"devices", {"disk0"}}};
        auto r = co_await run_job(*c, "snapshot-save", args, "j1", 100ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::timeout);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
    CHECK(t.peer.received.back() ==
          json::parse(R"({"execute":"job-cancel","arguments":{"id":"j1"},"id":0})"));
}

TEST_CASE("a disconnect in the middle of a job is reported as a disconnect") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("snapshot-save")
                            .event("JOB_STATUS_CHANGE", job_event("created"))
                            .reply()
                            .close());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        json args = {{"tag", "t"}, {"vmstate", "disk0"}, {"devices", {"disk0"}}};
        auto r = co_await run_job(*c, "snapshot-save", args, "j1", 2000ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::disconnected);
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a job command QEMU refuses fails with QEMU's error and creates no job") {
    conversation t;
    auto sock = t.start(script()
                            .handshake()
                            .expect("snapshot-delete")
                            .reply_error("GenericError", "Parameter 'devices' is missing")
                            .hold());
    t.run([](stream_socket s) -> asio::awaitable<void> {
        auto c = co_await client::attach(std::move(s), fast());
        auto r = co_await run_job(*c, "snapshot-delete", json::object(), "j1", 2000ms);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::qemu_error);
        CHECK(r.error().qemu_desc == "Parameter 'devices' is missing");
    }(std::move(sock)));
    REQUIRE(test::drains(t.ctx));
}
