// HTTP readiness probes against a tiny in-process HTTP/1.1 server on 127.0.0.1: answers,
// refusals, silence, resets, many probes at once, wait_healthy, cancellation and teardown.
#include <fmt/format.h>

#include <algorithm>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <catch2/catch.hpp>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "lifecycle/http_probe.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using namespace std::chrono_literals;
using asio::ip::tcp;

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

enum class reply {
    answer,         // read the request, answer status and body, close
    never,          // read the request and stay silent until the client goes away
    close_at_once,  // close the connection as soon as it is accepted
};

struct server_config {
    reply mode = reply::answer;
    int status = 200;
    std::string body = "ok";
    std::string extra_headers;  // e.g. "Location: /elsewhere\r\n"
    std::string raw;            // when set, the whole answer as sent (status line and all)
    int failures_first = 0;     // this many connections first get `failure` instead
    reply failure = reply::answer;
    int failure_status = 503;
};

struct server_state {
    server_state(asio::io_context& ctx, server_config c) : acceptor(ctx), config(std::move(c)) {}
    tcp::acceptor acceptor;
    server_config config;
    int accepted = 0;
    int closed_by_client = 0;  // silent connections the client closed
    std::vector<std::string> requests;
};

const char* reason(int status) {
    switch (status) {
        case 200:
            return "OK";
        case 302:
            return "Found";
        case 404:
            return "Not Found";
        case 503:
            return "Service Unavailable";
        default:
            return "Whatever";
    }
}

asio::awaitable<void> serve_one(std::shared_ptr<server_state> s, tcp::socket socket, int number) {
    const bool failing = number <= s->config.failures_first;
    const reply mode = failing ? s->config.failure : s->config.mode;
    if (mode == reply::close_at_once) {
        asio::error_code ignored;
        socket.close(ignored);
        co_return;
    }
    std::string request;
    auto [rec, rn] = co_await asio::async_read_until(socket, asio::dynamic_buffer(request),
                                                     "\r\n\r\n", as_tuple_awaitable);
    if (rec) co_return;
    s->requests.push_back(request.substr(0, rn));
    if (mode == reply::never) {
        char buffer[512];
        for (;;) {
            auto [ec, n] =
                co_await socket.async_read_some(asio::buffer(buffer), as_tuple_awaitable);
            if (ec) break;
        }
        ++s->closed_by_client;
        co_return;
    }
    const int status = failing ? s->config.failure_status : s->config.status;
    const std::string body = failing ? std::string("down") : s->config.body;
    std::string response =
        !s->config.raw.empty()
            ? s->config.raw
            : fmt::format(
                  "HTTP/1.1 {} {}\r\nContent-Type: text/plain\r\nContent-Length: "
                  "{}\r\n{}Connection: "
                  "close\r\n\r\n{}",
                  status, reason(status), body.size(), s->config.extra_headers, body);
    auto [wec, wn] = co_await asio::async_write(socket, asio::buffer(response), as_tuple_awaitable);
    if (wec) co_return;
    asio::error_code ignored;
    socket.shutdown(tcp::socket::shutdown_send, ignored);
    // Let the client read to the end before the close (no reset under unread data).
    char drain[512];
    for (;;) {
        auto [ec, n] = co_await socket.async_read_some(asio::buffer(drain), as_tuple_awaitable);
        if (ec) break;
    }
}

asio::awaitable<void> accept_loop(std::shared_ptr<server_state> s) {
    for (;;) {
        auto [ec, socket] = co_await s->acceptor.async_accept(as_tuple_awaitable);
        if (ec) co_return;
        const int number = ++s->accepted;
        asio::co_spawn(s->acceptor.get_executor(), serve_one(s, std::move(socket), number),
                       asio::detached);
    }
}

// A small HTTP/1.1 server on 127.0.0.1 (port 0 picks a free one). Declare it after the
// io_context; its destructor stops accepting.
class test_server {
  public:
    explicit test_server(asio::io_context& ctx, server_config config = {}, unsigned short port = 0)
        : state_(std::make_shared<server_state>(ctx, std::move(config))) {
        const tcp::endpoint where(asio::ip::make_address("127.0.0.1"), port);
        state_->acceptor.open(where.protocol());
        state_->acceptor.set_option(tcp::acceptor::reuse_address(true));
        state_->acceptor.bind(where);
        state_->acceptor.listen();
        port_ = state_->acceptor.local_endpoint().port();
        asio::co_spawn(ctx, accept_loop(state_), asio::detached);
    }
    test_server(const test_server&) = delete;
    test_server& operator=(const test_server&) = delete;
    ~test_server() { stop(); }

    void stop() {
        asio::error_code ignored;
        state_->acceptor.close(ignored);
    }
    std::string url(std::string_view path = "/health") const {
        return fmt::format("http://127.0.0.1:{}{}", port_, path);
    }
    unsigned short port() const { return port_; }
    int accepted() const { return state_->accepted; }
    int closed_by_client() const { return state_->closed_by_client; }
    const std::vector<std::string>& requests() const { return state_->requests; }

  private:
    std::shared_ptr<server_state> state_;
    unsigned short port_ = 0;
};

// A port on 127.0.0.1 that was bound, listened on, then closed: connecting is refused.
unsigned short closed_port(asio::io_context& ctx) {
    tcp::acceptor a(ctx, tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const unsigned short port = a.local_endpoint().port();
    a.close();
    return port;
}

std::string url_at(unsigned short port, std::string_view path = "/health") {
    return fmt::format("http://127.0.0.1:{}{}", port, path);
}

// Runs handlers until `done` holds; false if the ceiling (a hang) came first.
bool run_until(asio::io_context& ctx, const std::function<bool()>& done,
               std::chrono::steady_clock::duration ceiling = 30s) {
    const auto deadline = std::chrono::steady_clock::now() + ceiling;
    ctx.restart();
    while (!done()) {
        if (std::chrono::steady_clock::now() >= deadline) return false;
        if (ctx.run_one_until(deadline) == 0 && ctx.stopped()) return done();
    }
    return true;
}

void rethrow(std::exception_ptr e) {
    if (e) std::rethrow_exception(e);
}

using outcomes = std::vector<result<probe_outcome>>;

asio::awaitable<void> probe_into(http_prober& p, std::string url, std::chrono::milliseconds timeout,
                                 std::shared_ptr<outcomes> out) {
    auto r = co_await p.get(std::move(url), timeout);
    out->push_back(std::move(r));
}

// The probe races a short timer; the timer wins against a silent server.
asio::awaitable<bool> probe_cancelled_by_timer(http_prober& p, std::string url) {
    using namespace asio::experimental::awaitable_operators;
    asio::steady_timer timer(co_await asio::this_coro::executor, 200ms);
    auto winner =
        co_await (p.get(std::move(url), 20000ms) || timer.async_wait(asio::use_awaitable));
    co_return winner.index() == 1;
}

asio::awaitable<void> open_later(std::optional<test_server>& slot, asio::io_context& ctx,
                                 unsigned short port) {
    asio::steady_timer pause(ctx, 300ms);
    co_await pause.async_wait(asio::use_awaitable);
    slot.emplace(ctx, server_config{}, port);
}

std::chrono::steady_clock::time_point in(std::chrono::milliseconds d) {
    return std::chrono::steady_clock::now() + d;
}

bool contains(const std::string& text, std::string_view part) {
    return text.find(part) != std::string::npos;
}

// The io_context outlives the prober, which is destroyed first.
struct rig {
    asio::io_context ctx;
    std::optional<http_prober> prober;

    rig() { prober.emplace(ctx.get_executor()); }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 60s);
    }
};

}  // namespace

TEST_CASE("a probe returns the status and the start of the body") {
    rig r;
    server_config config;
    config.body = "healthy";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url("/health?db=1"), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 200);
    CHECK(answer->body == "healthy");
    CHECK_FALSE(answer->body_truncated);
    CHECK(answer->total_time >= 0us);
    CHECK(r.prober->in_flight() == 0);
    REQUIRE(server.requests().size() == 1);
    CHECK(server.requests()[0].starts_with("GET /health?db=1 HTTP/1.1\r\n"));
}

TEST_CASE("a host name is resolved without blocking the io_context") {
    rig r;
    test_server server(r.ctx);
    const std::string url = fmt::format("http://localhost:{}/health", server.port());
    auto answer = r.run(r.prober->get(url, 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 200);
}

TEST_CASE("a 503 is an answer and not an error") {
    rig r;
    server_config config;
    config.status = 503;
    config.body = "starting";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 503);
    CHECK(answer->body == "starting");
}

TEST_CASE("a refused connection is connect_failed and names the URL") {
    rig r;
    const std::string url = url_at(closed_port(r.ctx));
    auto answer = r.run(r.prober->get(url, 10000ms));
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == errc::connect_failed);
    CHECK(answer.error().message == url + ": connection refused");
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("a server that never answers times out") {
    rig r;
    server_config config;
    config.mode = reply::never;
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 300ms));
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == errc::timeout);
    CHECK(contains(answer.error().message, server.url()));
    CHECK(contains(answer.error().message, "no answer within 300 ms"));
    CHECK(r.prober->in_flight() == 0);
    // curl closed its connection: the server sees the end of it.
    CHECK(run_until(r.ctx, [&] { return server.closed_by_client() == 1; }));
}

TEST_CASE("a server that closes at once is an io_error") {
    rig r;
    server_config config;
    config.mode = reply::close_at_once;
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == errc::io_error);
    CHECK(contains(answer.error().message, server.url()));
}

TEST_CASE("only the first 4 KiB of the body are kept") {
    rig r;
    server_config config;
    config.body = std::string(10000, 'x');
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 200);
    CHECK(answer->body.size() == max_probe_body);
    CHECK(answer->body_truncated);
}

TEST_CASE("redirects are reported and not followed") {
    rig r;
    server_config config;
    config.status = 302;
    config.body = "";
    config.extra_headers = "Location: /elsewhere\r\n";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 302);
    CHECK(server.accepted() == 1);
}

TEST_CASE("only http and https URLs are probed") {
    rig r;
    for (const std::string url :
         {"ftp://127.0.0.1:1/", "file:///etc/hostname", "", "gopher://127.0.0.1:1/"}) {
        INFO(url);
        auto answer = r.run(r.prober->get(url, 2000ms));
        REQUIRE_FALSE(answer);
        CHECK(answer.error().code == errc::invalid_argument);
    }
    auto zero = r.run(r.prober->get("http://127.0.0.1:1/", 0ms));
    REQUIRE_FALSE(zero);
    CHECK(zero.error().code == errc::invalid_argument);
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("an https URL is refused: probes speak plain HTTP to forwarded ports") {
    rig r;
    auto answer = r.run(r.prober->get("https://127.0.0.1:1/health", 2000ms));
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == errc::invalid_argument);
    CHECK(contains(answer.error().message, "https://127.0.0.1:1/health: not a usable http URL"));
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("a chunked body is decoded") {
    rig r;
    server_config config;
    config.raw =
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
        "chunked\r\n\r\n4\r\nheal\r\n3;x=y\r\nthy\r\n0\r\n\r\n";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 200);
    CHECK(answer->body == "healthy");
    CHECK_FALSE(answer->body_truncated);
}

TEST_CASE("a body without a length is read up to the close, after an interim 100") {
    rig r;
    server_config config;
    config.raw = "HTTP/1.1 100 Continue\r\n\r\nHTTP/1.0 503 Service Unavailable\r\n\r\nnot yet";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 503);
    CHECK(answer->body == "not yet");
}

TEST_CASE("an answer that is not HTTP is an io_error naming the URL") {
    rig r;
    server_config config;
    config.raw = "SSH-2.0-OpenSSH_9.2\r\n\r\n";
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_FALSE(answer);
    CHECK(answer.error().code == errc::io_error);
    CHECK(answer.error().message == server.url() + ": not an HTTP answer: SSH-2.0-OpenSSH_9.2");
}

TEST_CASE("a chunked body over 4 KiB keeps its first 4 KiB") {
    rig r;
    server_config config;
    const std::string chunk(3000, 'x');
    config.raw = fmt::format(
        "HTTP/1.1 200 OK\r\nTransfer-Encoding: "
        "chunked\r\n\r\n{:x}\r\n{}\r\n{:x}\r\n{}\r\n0\r\n\r\n",
        chunk.size(), chunk, chunk.size(), chunk);
    test_server server(r.ctx, config);
    auto answer = r.run(r.prober->get(server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->body == std::string(max_probe_body, 'x'));
    CHECK(answer->body_truncated);
}

TEST_CASE("twenty concurrent probes all complete") {
    rig r;
    test_server server(r.ctx);
    auto out = std::make_shared<outcomes>();
    for (int i = 0; i < 20; ++i)
        asio::co_spawn(r.ctx, probe_into(*r.prober, server.url(), 10000ms, out), rethrow);
    REQUIRE(run_until(r.ctx, [&] { return out->size() == 20; }));
    for (const auto& answer : *out) {
        REQUIRE_OK(answer);
        CHECK(answer->status == 200);
    }
    CHECK(server.accepted() == 20);
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("concurrent probes to different servers get their own answers") {
    rig r;
    server_config down;
    down.status = 503;
    down.body = "down";
    server_config silent;
    silent.mode = reply::never;
    test_server up_server(r.ctx);
    test_server down_server(r.ctx, down);
    test_server silent_server(r.ctx, silent);
    const std::string refused = url_at(closed_port(r.ctx));
    auto ups = std::make_shared<outcomes>();
    auto downs = std::make_shared<outcomes>();
    auto silents = std::make_shared<outcomes>();
    auto refusals = std::make_shared<outcomes>();
    for (int i = 0; i < 5; ++i) {
        asio::co_spawn(r.ctx, probe_into(*r.prober, up_server.url(), 10000ms, ups), rethrow);
        asio::co_spawn(r.ctx, probe_into(*r.prober, down_server.url(), 10000ms, downs), rethrow);
        asio::co_spawn(r.ctx, probe_into(*r.prober, silent_server.url(), 500ms, silents), rethrow);
        asio::co_spawn(r.ctx, probe_into(*r.prober, refused, 10000ms, refusals), rethrow);
    }
    REQUIRE(run_until(r.ctx, [&] {
        return ups->size() + downs->size() + silents->size() + refusals->size() == 20;
    }));
    for (const auto& a : *ups)
        CHECK((a && a->status == 200));
    for (const auto& a : *downs)
        CHECK((a && a->status == 503 && a->body == "down"));
    for (const auto& a : *silents)
        CHECK((!a && a.error().code == errc::timeout));
    for (const auto& a : *refusals)
        CHECK((!a && a.error().code == errc::connect_failed));
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("wait_healthy succeeds once the server stops failing") {
    rig r;
    server_config config;
    config.failures_first = 3;
    test_server server(r.ctx, config);
    auto healthy = r.run(r.prober->wait_healthy(server.url(), in(30000ms)));
    REQUIRE_OK(healthy);
    CHECK(server.accepted() == 4);
}

TEST_CASE("wait_healthy rides out resets and closes before the server is ready") {
    rig r;
    server_config config;
    config.failures_first = 2;
    config.failure = reply::close_at_once;
    test_server server(r.ctx, config);
    auto healthy = r.run(r.prober->wait_healthy(server.url(), in(30000ms)));
    REQUIRE_OK(healthy);
    CHECK(server.accepted() == 3);
}

TEST_CASE("wait_healthy waits for a server that starts listening later") {
    rig r;
    const unsigned short port = closed_port(r.ctx);
    std::optional<test_server> server;
    asio::co_spawn(r.ctx, open_later(server, r.ctx, port), rethrow);
    auto healthy = r.run(r.prober->wait_healthy(url_at(port), in(30000ms)));
    REQUIRE_OK(healthy);
    REQUIRE(server.has_value());
    CHECK(server->accepted() >= 1);
}

TEST_CASE("wait_healthy gives the last failure at the deadline") {
    rig r;
    SECTION("connection refused") {
        const std::string url = url_at(closed_port(r.ctx), "/health?db=1");
        auto healthy = r.run(r.prober->wait_healthy(url, in(600ms)));
        REQUIRE_FALSE(healthy);
        CHECK(healthy.error().code == errc::timeout);
        const std::string& m = healthy.error().message;
        INFO(m);
        CHECK(m.starts_with(url + ": connection refused (last of "));
        CHECK(m.ends_with(" attempts)"));
    }
    SECTION("an unhealthy status") {
        server_config config;
        config.status = 503;
        config.body = "database not ready\nmore";
        test_server server(r.ctx, config);
        auto healthy = r.run(r.prober->wait_healthy(server.url(), in(600ms)));
        REQUIRE_FALSE(healthy);
        CHECK(healthy.error().code == errc::timeout);
        const std::string& m = healthy.error().message;
        INFO(m);
        CHECK(m.starts_with(server.url() + ": HTTP 503: database not ready (last of "));
    }
    SECTION("a server that never answers") {
        server_config config;
        config.mode = reply::never;
        test_server server(r.ctx, config);
        probe_backoff backoff;
        backoff.attempt_timeout = 200ms;
        auto healthy = r.run(r.prober->wait_healthy(server.url(), in(700ms), backoff));
        REQUIRE_FALSE(healthy);
        CHECK(healthy.error().code == errc::timeout);
        const std::string& m = healthy.error().message;
        INFO(m);
        CHECK(m.starts_with(server.url() + ": no answer within "));
        CHECK(contains(m, "attempt"));
    }
    CHECK(r.prober->in_flight() == 0);
}

TEST_CASE("a deadline already past still makes one attempt") {
    rig r;
    const std::string url = url_at(closed_port(r.ctx));
    auto healthy = r.run(r.prober->wait_healthy(url, in(-10ms)));
    REQUIRE_FALSE(healthy);
    CHECK(healthy.error().code == errc::timeout);
    CHECK(healthy.error().message == url + ": connection refused (the only attempt)");
}

TEST_CASE("a cancelled probe is removed from curl and the prober stays usable") {
    rig r;
    server_config silent;
    silent.mode = reply::never;
    test_server silent_server(r.ctx, silent);
    test_server up_server(r.ctx);
    const bool timer_won = r.run(probe_cancelled_by_timer(*r.prober, silent_server.url()));
    CHECK(timer_won);
    CHECK(r.prober->in_flight() == 0);
    CHECK(run_until(r.ctx, [&] { return silent_server.closed_by_client() == 1; }));
    auto answer = r.run(r.prober->get(up_server.url(), 10000ms));
    REQUIRE_OK(answer);
    CHECK(answer->status == 200);
}

TEST_CASE("destroying the prober ends the probes in flight") {
    rig r;
    server_config silent;
    silent.mode = reply::never;
    test_server server(r.ctx, silent);
    auto out = std::make_shared<outcomes>();
    for (int i = 0; i < 5; ++i)
        asio::co_spawn(r.ctx, probe_into(*r.prober, server.url(), 20000ms, out), rethrow);
    REQUIRE(run_until(r.ctx, [&] { return server.requests().size() == 5; }));
    CHECK(r.prober->in_flight() == 5);
    r.prober.reset();
    REQUIRE(run_until(r.ctx, [&] { return out->size() == 5; }));
    for (const auto& a : *out) {
        REQUIRE_FALSE(a);
        CHECK(a.error().code == errc::cancelled);
        CHECK(contains(a.error().message, server.url()));
    }
    // curl closed every connection, and nothing of the prober is left on the io_context.
    CHECK(run_until(r.ctx, [&] { return server.closed_by_client() == 5; }));
    server.stop();
    CHECK(test::drains(r.ctx));
}

TEST_CASE("tearing everything down with probes in flight is safe") {
    // The prober goes first, then the io_context destroys the suspended coroutines.
    auto ctx = std::make_unique<asio::io_context>();
    auto prober = std::make_unique<http_prober>(ctx->get_executor());
    auto out = std::make_shared<outcomes>();
    {
        server_config silent;
        silent.mode = reply::never;
        test_server server(*ctx, silent);
        for (int i = 0; i < 3; ++i)
            asio::co_spawn(*ctx, probe_into(*prober, server.url(), 20000ms, out), asio::detached);
        REQUIRE(run_until(*ctx, [&] { return server.requests().size() == 3; }));
        asio::co_spawn(*ctx, prober->wait_healthy(server.url(), in(20000ms)), asio::detached);
        ctx->poll();
    }
    prober.reset();
    ctx.reset();
    CHECK(out->empty());
}
