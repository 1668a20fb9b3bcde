// The guest-agent client against the fake agent over a socketpair: sync, commands, hostile agents.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <asio/experimental/awaitable_operators.hpp>
#include <catch2/catch.hpp>
#include <filesystem>

#include "fake-qemu/agent.hpp"
#include "qmp/qga.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;

namespace {

qga::client_options fast() {
    qga::client_options o;
    o.sync_timeout = 2000ms;
    o.command_timeout = 2000ms;
    o.no_reply_grace = 100ms;
    return o;
}

// The io_context outlives the agent, whose destructor closes its socket.
struct channel {
    asio::io_context ctx;
    fake::agent agent;

    explicit channel(fake::agent_options options = {}) : agent(std::move(options)) {}

    // Serves the agent on one end of a socketpair; returns a client on the other.
    qga::client open(qga::client_options options = fast()) {
        auto [mine, theirs] = test::socket_pair(ctx);
        asio::co_spawn(ctx, agent.serve(std::move(theirs)), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
        return qga::client::attach(std::move(mine), std::move(options));
    }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 30s);
    }
};

std::size_t count(const std::vector<std::string>& names, std::string_view name) {
    return static_cast<std::size_t>(std::ranges::count(names, name));
}

}  // namespace

TEST_CASE("the first command resynchronises with 0xFF and guest-sync-delimited") {
    channel t;
    std::vector<std::string> sent;
    auto options = fast();
    options.trace = [&](bool outgoing, std::string_view text) {
        if (outgoing) sent.emplace_back(text);
    };
    auto c = t.open(options);
    REQUIRE(c.needs_resync());
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto pong = co_await qga::ping(cl);
        REQUIRE_OK(pong);
    }(c));
    CHECK_FALSE(c.needs_resync());
    CHECK(c.stats().syncs == 1);
    c.close();
    REQUIRE(test::drains(t.ctx));

    const auto& received = t.agent.received();
    REQUIRE(received.size() == 2);
    CHECK(received[0]["execute"] == "guest-sync-delimited");
    CHECK(received[0]["arguments"]["id"].is_number_unsigned());
    CHECK(received[0]["arguments"]["id"].get<std::uint64_t>() > 0);
    CHECK_FALSE(received[0].contains("id"));
    CHECK(sent.at(1) == "{\"execute\":\"guest-ping\",\"id\":1}\n");
}

TEST_CASE("two clients draw different sync tokens") {
    channel t;
    auto a = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto ok = co_await cl.sync();
        REQUIRE_OK(ok);
    }(a));
    auto b = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto ok = co_await cl.sync();
        REQUIRE_OK(ok);
    }(b));
    a.close();
    b.close();
    REQUIRE(test::drains(t.ctx));
    const auto& received = t.agent.received();
    REQUIRE(received.size() == 2);
    CHECK(received[0]["arguments"]["id"] != received[1]["arguments"]["id"]);
}

TEST_CASE("the sync skips stale bytes before the sentinel and stale replies after an old one") {
    channel t;
    // An earlier client left: a whole reply, half a reply, then its own sync's sentinel and
    // reply, then an error nobody read.
    t.agent.preload(
        "{\"return\": {}, \"id\": 7}\n{\"return\": {\"na"
        "\xff{\"return\": 12345}\n"
        "{\"error\": {\"class\": \"GenericError\", \"desc\": \"old\"}}\n");
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto os = co_await qga::get_osinfo(cl);
        REQUIRE_OK(os);
        CHECK(os->name == "Debian GNU/Linux");
        CHECK(os->version_id == "12");
        CHECK(os->kernel_release == "6.1.0-18-amd64");
        CHECK(os->machine == "x86_64");
    }(c));
    // Parsed and dropped: {"return": 12345}, the old error, and the agent's id-less
    // "JSON parse error, stray" answer to our own 0xFF. Bytes before the first sentinel are
    // dropped unparsed.
    CHECK(c.stats().stale_replies == 3);
    CHECK(c.stats().syncs == 1);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE(
    "a silent agent makes the first command fail with agent_unavailable at the sync deadline") {
    channel t;
    t.agent.set_silent(true);
    auto options = fast();
    options.sync_timeout = 100ms;
    options.command_timeout = 10000ms;
    auto c = t.open(options);
    const auto start = std::chrono::steady_clock::now();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto pong = co_await qga::ping(cl);
        REQUIRE_FALSE(pong.has_value());
        CHECK(pong.error().code == errc::agent_unavailable);
        CHECK(pong.error().message ==
              "the guest agent did not answer within 100 ms: is qemu-guest-agent running in the "
              "guest?");
        CHECK_FALSE(pong.error().is_fatal());
    }(c));
    const auto elapsed = std::chrono::steady_clock::now() - start;
    CHECK(elapsed >= 100ms);
    CHECK(elapsed < 5s);  // bounded by the sync deadline, not the 10 s command timeout
    CHECK(c.is_open());
    CHECK(c.needs_resync());
    CHECK(c.stats().failed_syncs == 1);
    CHECK(t.agent.received_names() == std::vector<std::string>{"guest-sync-delimited"});
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a late reply to a timed-out command is not taken for the next command's reply") {
    // Without ids, the late {"return": <time>} would otherwise look like the next reply.
    fake::agent_options no_ids;
    no_ids.echo_id = false;
    channel t(no_ids);
    t.agent.delay("guest-get-time", 600ms);
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto slow = co_await cl.execute("guest-get-time", json::object(), 50ms);
        REQUIRE_FALSE(slow.has_value());
        CHECK(slow.error().code == errc::timeout);
        CHECK(slow.error().message == "the guest agent did not answer guest-get-time within 50 ms");
        CHECK_FALSE(slow.error().is_fatal());
        CHECK(cl.needs_resync());
        auto os = co_await qga::get_osinfo(cl);
        REQUIRE_OK(os);
        CHECK(os->id == "debian");
    }(c));
    CHECK(c.stats().syncs == 2);
    CHECK(t.agent.received_names() ==
          std::vector<std::string>{"guest-sync-delimited", "guest-get-time", "guest-sync-delimited",
                                   "guest-get-osinfo"});
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a caller's cancellation ends the command and the next command resynchronises") {
    channel t;
    t.agent.delay("guest-get-time", 600ms);
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        asio::steady_timer soon(co_await asio::this_coro::executor, 30ms);
        auto raced =
            co_await (cl.execute("guest-get-time") || soon.async_wait(asio::use_awaitable));
        CHECK(raced.index() == 1);
        CHECK(cl.needs_resync());
        auto pong = co_await qga::ping(cl);
        REQUIRE_OK(pong);
    }(c));
    CHECK(c.stats().syncs == 2);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("garbage from the agent is a protocol error and the next command resynchronises") {
    channel t;
    t.agent.reply_raw("guest-get-time", "Segmentation fault\n");
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto r = co_await qga::get_time(cl);
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::protocol_error);
        CHECK(cl.needs_resync());
        CHECK(cl.is_open());
        auto pong = co_await qga::ping(cl);
        REQUIRE_OK(pong);
    }(c));
    CHECK(c.stats().syncs == 2);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a reply with another id is dropped and the right one is taken") {
    channel t;
    t.agent.reply_raw("guest-get-time",
                      "{\"return\": 5, \"id\": 99}\n{\"return\": 6, \"id\": 1}\n");
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto r = co_await qga::get_time(cl);
        REQUIRE_OK(r);
        CHECK(*r == 6);
    }(c));
    CHECK(c.stats().stale_replies == 1);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("a reply over the size cap is message_too_large and the next command resynchronises") {
    channel t;
    auto options = fast();
    options.max_message_bytes = 256;  // guest-info's reply is about 1.5 KB
    auto c = t.open(options);
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto info = co_await qga::get_info(cl);
        REQUIRE_FALSE(info.has_value());
        CHECK(info.error().code == errc::message_too_large);
        auto pong = co_await qga::ping(cl);
        REQUIRE_OK(pong);
    }(c));
    CHECK(c.stats().syncs == 2);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("an unknown command is CommandNotFound with the agent's text") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto r = co_await cl.execute("guest-frobnicate");
        REQUIRE_FALSE(r.has_value());
        CHECK(r.error().code == errc::qemu_error);
        CHECK(r.error().qemu_class == "CommandNotFound");
        CHECK(r.error().qemu_desc == "The command guest-frobnicate has not been found");
        CHECK(r.error().what() ==
              "the guest agent refused guest-frobnicate: QEMU CommandNotFound: The command "
              "guest-frobnicate has not been found");
        CHECK_FALSE(cl.needs_resync());
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("guest-info lists the commands and which of them never reply") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto info = co_await qga::get_info(cl);
        REQUIRE_OK(info);
        CHECK(info->version == "7.2.22");
        CHECK(info->supports("guest-exec"));
        CHECK_FALSE(info->supports("guest-fsfreeze-freeze"));
        auto shutdown = std::ranges::find(info->commands, std::string("guest-shutdown"),
                                          &qga::command_info::name);
        REQUIRE(shutdown != info->commands.end());
        CHECK_FALSE(shutdown->success_response);
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("exec sends the exact request and exec-status decodes output and exit code") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        qga::exec_request req;
        req.path = "/bin/sh";
        req.args = {"-c", "echo out; echo oops >&2; exit 3"};
        auto pid = co_await qga::exec(cl, req);
        REQUIRE_OK(pid);
        auto status = co_await qga::exec_status(cl, *pid);
        REQUIRE_OK(status);
        CHECK(status->exited);
        CHECK(status->exit_code == std::optional<int>(3));
        CHECK_FALSE(status->signal.has_value());
        CHECK(status->out_data == "out\n");
        CHECK(status->err_data == "oops\n");
        CHECK_FALSE(status->out_truncated);
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
    const auto& received = t.agent.received();
    REQUIRE(received.size() == 3);
    CHECK(
        received[1].dump() ==
        R"({"execute":"guest-exec","arguments":{"arg":["-c","echo out; echo oops >&2; exit 3"],"capture-output":true,"path":"/bin/sh"},"id":1})");
    CHECK(received[2]["arguments"]["pid"] == 4242);
}

TEST_CASE("input data travels base64-encoded and comes back byte for byte") {
    channel t;
    auto c = t.open();
    const std::string input("bin\0ary\xff\xfe\n", 10);
    t.run([](qga::client& cl, std::string data) -> asio::awaitable<void> {
        qga::exec_request req;
        req.path = "/bin/cat";
        req.input_data = data;
        auto pid = co_await qga::exec(cl, req);
        REQUIRE_OK(pid);
        auto status = co_await qga::exec_status(cl, *pid);
        REQUIRE_OK(status);
        CHECK(status->out_data == data);
        CHECK(status->exit_code == std::optional<int>(0));
    }(c, input));
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received()[1]["arguments"]["input-data"] == "YmluAGFyef/+Cg==");
}

TEST_CASE("a process killed by a signal reports the signal and no exit code") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        qga::exec_request req{"/bin/sh", {"-c", "kill -9 $$"}, {}, {}, true};
        auto status = co_await qga::run(cl, req, 5s);
        REQUIRE_OK(status);
        CHECK(status->exited);
        CHECK(status->signal == std::optional<int>(9));
        CHECK_FALSE(status->exit_code.has_value());
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("run polls exec-status until the process has exited") {
    fake::agent_options slow;
    slow.exec_duration = 400ms;
    channel t(slow);
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        qga::exec_request req{"/bin/echo", {"hello", "world"}, {}, {}, true};
        auto status = co_await qga::run(cl, req, 5s);
        REQUIRE_OK(status);
        CHECK(status->exited);
        CHECK(status->exit_code == std::optional<int>(0));
        CHECK(status->out_data == "hello world\n");
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(count(t.agent.received_names(), "guest-exec-status") >= 2);
}

TEST_CASE("run gives up at its deadline while the process keeps running") {
    fake::agent_options slow;
    slow.exec_duration = 60s;
    channel t(slow);
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        qga::exec_request req{"/bin/true", {}, {}, {}, false};
        auto status = co_await qga::run(cl, req, 100ms);
        REQUIRE_FALSE(status.has_value());
        CHECK(status.error().code == errc::timeout);
        CHECK(status.error().message ==
              "/bin/true (pid 4242 in the guest) did not exit within 100 ms");
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("exec of a missing program surfaces the agent's error") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        qga::exec_request req{"/no/such/program", {}, {}, {}, true};
        auto pid = co_await qga::exec(cl, req);
        REQUIRE_FALSE(pid.has_value());
        CHECK(pid.error().code == errc::qemu_error);
        CHECK(pid.error().qemu_class == "GenericError");
        CHECK(pid.error().qemu_desc.find("No such file or directory") != std::string::npos);
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("guest-shutdown succeeds when no reply comes within the grace period") {
    channel t;
    std::string mode;
    t.agent.on_shutdown([&](const std::string& m) { mode = m; });
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto down = co_await qga::shutdown(cl);
        REQUIRE_OK(down);
        CHECK(cl.needs_resync());
        CHECK(cl.is_open());
    }(c));
    CHECK(mode == "powerdown");
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received().at(1).dump() ==
          R"({"execute":"guest-shutdown","arguments":{"mode":"powerdown"},"id":1})");
}

TEST_CASE("guest-shutdown succeeds at once when the channel closes") {
    fake::agent_options closes;
    closes.close_after_shutdown = true;
    channel t(closes);
    auto options = fast();
    options.no_reply_grace = 20s;
    auto c = t.open(options);
    const auto start = std::chrono::steady_clock::now();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto down = co_await qga::shutdown(cl, "halt");
        REQUIRE_OK(down);
        CHECK_FALSE(cl.is_open());
        auto after = co_await qga::ping(cl);
        REQUIRE_FALSE(after.has_value());
        CHECK(after.error().code == errc::disconnected);
    }(c));
    CHECK(std::chrono::steady_clock::now() - start < 10s);
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("guest-shutdown's error reply is surfaced with the agent's class and desc") {
    channel t;
    auto options = fast();
    options.no_reply_grace = 20s;  // the error comes at once: a long grace costs nothing
    auto c = t.open(options);
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto down = co_await qga::shutdown(cl, "sideways");
        REQUIRE_FALSE(down.has_value());
        CHECK(down.error().code == errc::qemu_error);
        CHECK(down.error().qemu_class == "GenericError");
        CHECK(down.error().qemu_desc ==
              "Parameter 'mode' expects 'halt', 'powerdown', or 'reboot'");
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("the command after a shutdown resynchronises first") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto down = co_await qga::shutdown(cl, "reboot");
        REQUIRE_OK(down);
        auto pong = co_await qga::ping(cl);
        REQUIRE_OK(pong);
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received_names() ==
          std::vector<std::string>{"guest-sync-delimited", "guest-shutdown", "guest-sync-delimited",
                                   "guest-ping"});
}

TEST_CASE("a file written through the agent reads back byte for byte") {
    channel t;
    auto c = t.open();
    const std::string bytes("line 1\n\0\xff\x80 end", 14);
    t.run([](qga::client& cl, std::string data) -> asio::awaitable<void> {
        auto w = co_await qga::file_open(cl, "/tmp/probe", "w");
        REQUIRE_OK(w);
        auto written = co_await qga::file_write(cl, *w, data);
        REQUIRE_OK(written);
        CHECK(*written == data.size());
        auto closed = co_await qga::file_close(cl, *w);
        REQUIRE_OK(closed);

        auto r = co_await qga::file_open(cl, "/tmp/probe");
        REQUIRE_OK(r);
        auto chunk = co_await qga::file_read(cl, *r, 4096);
        REQUIRE_OK(chunk);
        CHECK(chunk->bytes == data);
        CHECK(chunk->eof);
        auto closed_again = co_await qga::file_close(cl, *r);
        REQUIRE_OK(closed_again);
    }(c, bytes));
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.file("/tmp/probe") == bytes);
}

TEST_CASE("seek moves the read position and eof comes only from reading past the end") {
    channel t;
    t.agent.set_file("/etc/hostname", "guest-1\n");
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto h = co_await qga::file_open(cl, "/etc/hostname");
        REQUIRE_OK(h);
        auto moved = co_await qga::file_seek(cl, *h, 6);
        REQUIRE_OK(moved);
        CHECK(moved->position == 6);
        auto exact = co_await qga::file_read(cl, *h, 2);
        REQUIRE_OK(exact);
        CHECK(exact->bytes == "1\n");
        CHECK_FALSE(exact->eof);
        auto past = co_await qga::file_read(cl, *h, 2);
        REQUIRE_OK(past);
        CHECK(past->bytes.empty());
        CHECK(past->eof);
        auto from_end = co_await qga::file_seek(cl, *h, -2, qga::seek_whence::end);
        REQUIRE_OK(from_end);
        CHECK(from_end->position == 6);
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("opening a missing file is the agent's GenericError") {
    channel t;
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto h = co_await qga::file_open(cl, "/no/such/file");
        REQUIRE_FALSE(h.has_value());
        CHECK(h.error().code == errc::qemu_error);
        CHECK(h.error().qemu_desc ==
              "failed to open file '/no/such/file' (mode: 'r'): No such file or directory");
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("set_time moves the guest clock that get_time reads") {
    channel t;
    auto c = t.open();
    static constexpr std::int64_t then = 1'700'000'000'000'000'000;
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        auto set = co_await qga::set_time(cl, then);
        REQUIRE_OK(set);
        auto now = co_await qga::get_time(cl);
        REQUIRE_OK(now);
        CHECK(*now >= then);
        CHECK(*now < then + std::int64_t{60'000'000'000});
    }(c));
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received().at(1)["arguments"]["time"] == then);
}

TEST_CASE("three concurrent commands are sent one at a time and each caller gets its own reply") {
    channel t;
    t.agent.delay("guest-sync", 20ms);
    int outstanding = 0;
    int worst = 0;
    auto options = fast();
    options.trace = [&](bool outgoing, std::string_view) {
        outstanding += outgoing ? 1 : -1;
        worst = std::max(worst, outstanding);
    };
    auto c = t.open(options);
    std::vector<std::int64_t> answers(3, -1);
    t.run([](qga::client& cl, std::vector<std::int64_t>& out) -> asio::awaitable<void> {
        auto ex = co_await asio::this_coro::executor;
        asio::steady_timer all_done(ex, std::chrono::steady_clock::time_point::max());
        int done = 0;
        auto one = [&](int k) -> asio::awaitable<void> {
            json arguments = {{"id", 100 + k}};
            auto r = co_await cl.execute("guest-sync", std::move(arguments));
            if (r && r->is_number_integer())
                out[static_cast<std::size_t>(k)] = r->get<std::int64_t>();
            if (++done == 3) all_done.cancel();
        };
        for (int k = 0; k < 3; ++k)
            asio::co_spawn(ex, one(k), asio::detached);
        asio::error_code ec;
        co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }(c, answers));
    CHECK(answers == std::vector<std::int64_t>{100, 101, 102});
    CHECK(worst == 1);
    c.close();
    REQUIRE(test::drains(t.ctx));
    const auto& received = t.agent.received();
    REQUIRE(received.size() == 4);
    for (int k = 0; k < 3; ++k) {
        CHECK(received[static_cast<std::size_t>(k) + 1]["arguments"]["id"] == 100 + k);
        CHECK(received[static_cast<std::size_t>(k) + 1]["id"] == k + 1);
    }
}

TEST_CASE("a disconnect in the middle of a command fails it and the commands queued behind it") {
    channel t;
    t.agent.close_on("guest-get-osinfo");
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        auto [os, pong] = co_await (qga::get_osinfo(cl) && qga::ping(cl));
        REQUIRE_FALSE(os.has_value());
        CHECK(os.error().code == errc::disconnected);
        CHECK(os.error().is_fatal());
        REQUIRE_FALSE(pong.has_value());
        CHECK(pong.error().code == errc::disconnected);
        CHECK_FALSE(cl.is_open());
    }(c));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("closing the client fails the running command with closed") {
    channel t;
    t.agent.delay("guest-ping", 500ms);
    auto c = t.open();
    t.run([](qga::client& cl) -> asio::awaitable<void> {
        using namespace asio::experimental::awaitable_operators;
        asio::steady_timer soon(co_await asio::this_coro::executor, 30ms);
        auto closer = [&]() -> asio::awaitable<void> {
            co_await soon.async_wait(asio::use_awaitable);
            cl.close();
        };
        auto pong = co_await (qga::ping(cl) && closer());
        REQUIRE_FALSE(pong.has_value());
        CHECK(pong.error().code == errc::closed);
    }(c));
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("connect reaches an agent listening on a Unix socket path") {
    channel t;
    const auto dir =
        std::filesystem::temp_directory_path() / ("stackemu-qga-" + std::to_string(::getpid()));
    std::filesystem::create_directories(dir);
    const std::string path = (dir / "qga.sock").string();
    std::filesystem::remove(path);
    asio::local::stream_protocol::acceptor acceptor(t.ctx,
                                                    asio::local::stream_protocol::endpoint(path));
    auto serve_one = [](asio::local::stream_protocol::acceptor& a,
                        fake::agent& agent) -> asio::awaitable<void> {
        auto peer = co_await a.async_accept(asio::use_awaitable);
        stream_socket s(peer.get_executor());
        s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), peer.release());
        co_await agent.serve(std::move(s));
    };
    asio::co_spawn(t.ctx, serve_one(acceptor, t.agent), asio::detached);
    t.run([](std::string p) -> asio::awaitable<void> {
        endpoint ep = unix_endpoint{p};
        auto c = co_await qga::client::connect(ep, fast());
        REQUIRE_OK(c);
        auto pong = co_await qga::ping(*c);
        REQUIRE_OK(pong);
    }(path));
    REQUIRE(test::drains(t.ctx));
    std::filesystem::remove_all(dir);
}
