// Plain HTTP/1.1 GETs on Asio: a probe connects, sends one request with Connection: close,
// and reads the status line, the headers and at most max_probe_body bytes of the body
// (Content-Length, chunked, or up to the close). Probes go to loopback ports forwarded to the
// guest; no libcurl, so the one-shot `stackemu status` does not load it and its TLS stack.
#include "lifecycle/http_probe.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <asio/co_spawn.hpp>
#include <asio/connect.hpp>
#include <asio/detached.hpp>
#include <asio/error.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <cctype>
#include <charconv>
#include <optional>
#include <string_view>
#include <unordered_map>
#include <utility>

namespace stackemu::lifecycle {

using asio::ip::tcp;
using std::chrono::milliseconds;

namespace detail {
namespace {

// The least time wait_healthy() gives one attempt, even past its deadline.
constexpr milliseconds min_attempt{100};
// A status line and headers longer than this are not a probe's answer.
constexpr std::size_t max_header = 64 * 1024;

struct target {
    std::string host;  // without IPv6 brackets
    std::string port;  // decimal
    unsigned short port_number = 80;
    std::string authority;  // the Host header
    std::string path;       // path and query
};

result<target> parse_url(const std::string& url) {
    const auto unusable = [&](std::string_view why) {
        return fail(errc::invalid_argument,
                    fmt::format("{}: not a usable http URL ({})", url, why));
    };
    constexpr std::string_view scheme = "http://";
    if (url.size() < scheme.size() ||
        !std::equal(scheme.begin(), scheme.end(), url.begin(), [](char a, char b) {
            return a == std::tolower(static_cast<unsigned char>(b));
        }))
        return unusable("probes speak plain HTTP: http://HOST[:PORT]/PATH");
    std::string_view rest = std::string_view(url).substr(scheme.size());
    rest = rest.substr(0, rest.find('#'));
    const auto slash = rest.find_first_of("/?");
    target t;
    t.authority = std::string(rest.substr(0, slash));
    const std::string_view path = slash == std::string_view::npos ? "" : rest.substr(slash);
    t.path = path.empty() ? "/" : path.front() == '?' ? "/" + std::string(path) : std::string(path);
    std::string_view auth = t.authority;
    if (auth.find('@') != std::string_view::npos) return unusable("no user names in probe URLs");
    std::string_view port;
    if (auth.starts_with('[')) {
        const auto close = auth.find(']');
        if (close == std::string_view::npos) return unusable("unclosed [ in the host");
        t.host = std::string(auth.substr(1, close - 1));
        const auto after = auth.substr(close + 1);
        if (!after.empty() && !after.starts_with(':')) return unusable("bad port");
        if (!after.empty()) port = after.substr(1);
    } else {
        const auto colon = auth.rfind(':');
        t.host = std::string(auth.substr(0, colon));
        if (colon != std::string_view::npos) port = auth.substr(colon + 1);
    }
    if (t.host.empty()) return unusable("no host");
    unsigned number = 80;
    if (!port.empty()) {
        const auto [end, ec] = std::from_chars(port.data(), port.data() + port.size(), number);
        if (ec != std::errc{} || end != port.data() + port.size() || number == 0 || number > 65535)
            return unusable("bad port");
    }
    t.port = std::to_string(number);
    t.port_number = static_cast<unsigned short>(number);
    return t;
}

// One GET from get() until its answer, failure, cancellation or the prober's end.
struct transfer {
    transfer(const asio::any_io_executor& ex, std::string u, milliseconds to)
        : url(std::move(u)), timeout(to), resolver(ex), socket(ex), wake(ex) {}
    transfer(const transfer&) = delete;
    transfer& operator=(const transfer&) = delete;

    // Ends the exchange's I/O; its coroutine then finds the transfer ended and returns.
    void stop_io() {
        resolver.cancel();
        asio::error_code ignored;
        socket.close(ignored);
    }

    std::string url;
    milliseconds timeout;
    tcp::resolver resolver;
    tcp::socket socket;
    bool attached = false;  // counted in in_flight()
    std::optional<result<probe_outcome>> outcome;
    asio::steady_timer
        wake;  // get() waits on it until the deadline; cancelled when `outcome` is set
};

error read_failure(const std::string& url, const asio::error_code& ec, bool got_any) {
    if (ec == asio::error::eof)
        return make_error(errc::io_error,
                          got_any
                              ? fmt::format("{}: the server closed the connection mid-answer", url)
                              : fmt::format("{}: the server closed the connection without "
                                            "answering",
                                            url));
    if (ec == asio::error::connection_reset || ec == asio::error::broken_pipe)
        return make_error(errc::io_error, fmt::format("{}: connection reset by peer", url));
    return make_error(errc::io_error, fmt::format("{}: {}", url, ec.message()));
}

// Reads more bytes onto `buffer`.
asio::awaitable<asio::error_code> read_more(tcp::socket& socket, std::string& buffer) {
    char chunk[4096];
    asio::error_code ec;
    const std::size_t n = co_await socket.async_read_some(
        asio::buffer(chunk), asio::redirect_error(asio::use_awaitable, ec));
    buffer.append(chunk, n);
    co_return n > 0 ? asio::error_code{} : ec;
}

bool iequals(std::string_view a, std::string_view b) {
    return a.size() == b.size() && std::equal(a.begin(), a.end(), b.begin(), [](char x, char y) {
               return std::tolower(static_cast<unsigned char>(x)) ==
                      std::tolower(static_cast<unsigned char>(y));
           });
}

std::string_view trim(std::string_view s) {
    while (!s.empty() && (s.front() == ' ' || s.front() == '\t'))
        s.remove_prefix(1);
    while (!s.empty() && (s.back() == ' ' || s.back() == '\t' || s.back() == '\r'))
        s.remove_suffix(1);
    return s;
}

struct head {
    int status = 0;
    std::optional<std::size_t> content_length;
    bool chunked = false;
};

// The status line and headers of `text` (which ends before the blank line).
std::optional<head> parse_head(std::string_view text) {
    const auto eol = text.find("\r\n");
    const std::string_view status_line = text.substr(0, eol);
    if (!status_line.starts_with("HTTP/1.") || status_line.size() < 12 || status_line[8] != ' ')
        return std::nullopt;
    head h;
    const auto code = status_line.substr(9, 3);
    const auto [end, ec] = std::from_chars(code.data(), code.data() + 3, h.status);
    if (ec != std::errc{} || end != code.data() + 3 || h.status < 100) return std::nullopt;
    std::string_view rest = eol == std::string_view::npos ? "" : text.substr(eol + 2);
    while (!rest.empty()) {
        const auto line_end = rest.find("\r\n");
        const std::string_view line = rest.substr(0, line_end);
        rest = line_end == std::string_view::npos ? "" : rest.substr(line_end + 2);
        const auto colon = line.find(':');
        if (colon == std::string_view::npos) continue;
        const auto name = trim(line.substr(0, colon));
        const auto value = trim(line.substr(colon + 1));
        if (iequals(name, "content-length")) {
            std::size_t n = 0;
            const auto [e, c] = std::from_chars(value.data(), value.data() + value.size(), n);
            if (c != std::errc{} || e != value.data() + value.size()) return std::nullopt;
            h.content_length = n;
        } else if (iequals(name, "transfer-encoding")) {
            h.chunked = value.size() >= 7 && iequals(value.substr(value.size() - 7), "chunked");
        }
    }
    return h;
}

// Keeps up to max_probe_body bytes of the body; true when that is full and more came.
bool keep(probe_outcome& out, std::string_view bytes) {
    const std::size_t room = max_probe_body - std::min(max_probe_body, out.body.size());
    out.body.append(bytes.substr(0, room));
    if (bytes.size() > room) out.body_truncated = true;
    return out.body_truncated;
}

// The body after the head, already partly in `buffer`: chunked, by length, or up to the close.
asio::awaitable<result<void>> read_body(transfer& t, const head& h, std::string& buffer,
                                        probe_outcome& out) {
    const std::string& url = t.url;
    if ((h.status >= 100 && h.status < 200) || h.status == 204 || h.status == 304)
        co_return result<void>{};
    if (h.chunked) {
        for (;;) {
            std::size_t eol;
            while ((eol = buffer.find("\r\n")) == std::string::npos) {
                if (buffer.size() > max_header)
                    co_return fail(errc::io_error, fmt::format("{}: a bad chunk header", url));
                if (auto ec = co_await read_more(t.socket, buffer))
                    co_return fail(read_failure(url, ec, true));
            }
            std::size_t size = 0;
            const auto [end, ec] = std::from_chars(buffer.data(), buffer.data() + eol, size, 16);
            if (ec != std::errc{} || end == buffer.data())
                co_return fail(errc::io_error, fmt::format("{}: a bad chunk header", url));
            if (size == 0) co_return result<void>{};  // trailers are not needed
            buffer.erase(0, eol + 2);
            while (buffer.size() < size + 2 && buffer.size() <= max_probe_body) {
                if (auto rec = co_await read_more(t.socket, buffer))
                    co_return fail(read_failure(url, rec, true));
            }
            if (keep(out, std::string_view(buffer).substr(0, size))) co_return result<void>{};
            buffer.erase(0, size + 2);
        }
    }
    if (h.content_length) {
        const std::size_t wanted = std::min(*h.content_length, max_probe_body);
        while (buffer.size() < wanted) {
            if (auto ec = co_await read_more(t.socket, buffer))
                co_return fail(read_failure(url, ec, true));
        }
        out.body = buffer.substr(0, wanted);
        out.body_truncated = *h.content_length > max_probe_body;
        co_return result<void>{};
    }
    for (;;) {
        if (keep(out, buffer)) co_return result<void>{};
        buffer.clear();
        if (auto ec = co_await read_more(t.socket, buffer)) {
            if (ec == asio::error::eof) co_return result<void>{};
            co_return fail(read_failure(url, ec, true));
        }
    }
}

asio::awaitable<result<probe_outcome>> exchange(transfer& t, const target& to) {
    const auto t0 = std::chrono::steady_clock::now();
    asio::error_code ec;
    std::vector<tcp::endpoint> endpoints;
    if (auto address = asio::ip::make_address(to.host, ec); !ec) {
        endpoints.emplace_back(address, to.port_number);
    } else {
        ec = {};
        auto found = co_await t.resolver.async_resolve(
            to.host, to.port, asio::redirect_error(asio::use_awaitable, ec));
        if (ec)
            co_return fail(errc::connect_failed,
                           fmt::format("{}: could not resolve the host ({})", t.url, ec.message()));
        for (const auto& e : found)
            endpoints.push_back(e.endpoint());
    }
    co_await asio::async_connect(t.socket, endpoints,
                                 asio::redirect_error(asio::use_awaitable, ec));
    if (ec == asio::error::connection_refused)
        co_return fail(errc::connect_failed, fmt::format("{}: connection refused", t.url));
    if (ec)
        co_return fail(errc::connect_failed,
                       fmt::format("{}: could not connect ({})", t.url, ec.message()));

    const std::string request = fmt::format(
        "GET {} HTTP/1.1\r\nHost: {}\r\nUser-Agent: stackemu-probe\r\nAccept: */*\r\n"
        "Connection: close\r\n\r\n",
        to.path, to.authority);
    co_await asio::async_write(t.socket, asio::buffer(request),
                               asio::redirect_error(asio::use_awaitable, ec));
    if (ec) co_return fail(read_failure(t.url, ec, false));

    std::string buffer;
    for (;;) {  // informational (1xx) heads come before the answer's
        std::size_t end;
        while ((end = buffer.find("\r\n\r\n")) == std::string::npos) {
            if (buffer.size() > max_header)
                co_return fail(errc::io_error, fmt::format("{}: the answer's head is longer than "
                                                           "{} KiB",
                                                           t.url, max_header / 1024));
            if (auto rec = co_await read_more(t.socket, buffer))
                co_return fail(read_failure(t.url, rec, !buffer.empty()));
        }
        const auto h = parse_head(std::string_view(buffer).substr(0, end));
        if (!h) {
            const auto first =
                std::string_view(buffer).substr(0, std::min<std::size_t>(buffer.find('\r'), 80));
            co_return fail(errc::io_error, fmt::format("{}: not an HTTP answer: {}", t.url, first));
        }
        buffer.erase(0, end + 4);
        if (h->status < 200) continue;
        probe_outcome out;
        out.status = h->status;
        if (auto body = co_await read_body(t, *h, buffer, out); !body) co_return fail(body.error());
        out.total_time = std::chrono::duration_cast<std::chrono::microseconds>(
            std::chrono::steady_clock::now() - t0);
        co_return out;
    }
}

}  // namespace

class prober_state : public std::enable_shared_from_this<prober_state> {
  public:
    explicit prober_state(asio::any_io_executor ex) : executor_(std::move(ex)) {}
    prober_state(const prober_state&) = delete;
    prober_state& operator=(const prober_state&) = delete;
    ~prober_state() { shutdown(); }

    const asio::any_io_executor& executor() const { return executor_; }
    bool closed() const { return closed_; }
    std::size_t in_flight() const { return transfers_.size(); }

    result<void> attach(const std::shared_ptr<transfer>& t, target to) {
        if (closed_)
            return fail(errc::cancelled, fmt::format("GET {}: the prober is closed", t->url));
        transfers_.emplace(t.get(), t);
        t->attached = true;
        asio::co_spawn(executor_, run(weak_from_this(), t, std::move(to)), asio::detached);
        return {};
    }

    // Removes a transfer that has not completed (cancelled, timed out, or its awaiter gone).
    void detach(transfer& t) {
        if (!t.attached) return;
        t.attached = false;
        transfers_.erase(&t);
        t.stop_io();
    }

    // Ends every transfer with errc::cancelled and closes its connection. Idempotent.
    void shutdown() {
        if (closed_) return;
        closed_ = true;
        auto transfers = std::move(transfers_);
        transfers_.clear();
        for (auto& [key, t] : transfers) {
            t->attached = false;
            t->outcome = fail(errc::cancelled,
                              fmt::format("GET {} was cancelled: the prober was closed", t->url));
            t->stop_io();
            t->wake.cancel();
        }
    }

  private:
    static asio::awaitable<void> run(std::weak_ptr<prober_state> weak, std::shared_ptr<transfer> t,
                                     target to) {
        auto answer = co_await exchange(*t, to);
        if (!t->attached) co_return;  // timed out, cancelled or the prober closed meanwhile
        t->outcome = std::move(answer);
        if (auto s = weak.lock()) s->detach(*t);  // closes the connection: Connection: close
        t->wake.cancel();
    }

    asio::any_io_executor executor_;
    std::unordered_map<transfer*, std::shared_ptr<transfer>> transfers_;
    bool closed_ = false;
};

namespace {

// Detaches the transfer however the get() frame ends, including its destruction.
struct attachment {
    std::shared_ptr<prober_state> state;
    std::shared_ptr<transfer> t;
    attachment(std::shared_ptr<prober_state> s, std::shared_ptr<transfer> tr)
        : state(std::move(s)), t(std::move(tr)) {}
    attachment(const attachment&) = delete;
    attachment& operator=(const attachment&) = delete;
    ~attachment() { state->detach(*t); }
};

asio::awaitable<result<probe_outcome>> perform_get(std::shared_ptr<prober_state> state,
                                                   std::string url, milliseconds timeout) {
    if (!state)
        co_return fail(errc::cancelled, fmt::format("GET {}: the prober was moved from", url));
    if (url.empty()) co_return fail(errc::invalid_argument, "probe URL is empty");
    if (timeout <= milliseconds::zero())
        co_return fail(
            errc::invalid_argument,
            fmt::format("{}: probe timeout must be positive, not {} ms", url, timeout.count()));
    if (state->closed())
        co_return fail(errc::cancelled, fmt::format("GET {}: the prober is closed", url));
    auto to = parse_url(url);
    if (!to) co_return fail(to.error());

    auto t = std::make_shared<transfer>(state->executor(), std::move(url), timeout);
    if (auto added = state->attach(t, std::move(*to)); !added) co_return fail(added.error());
    attachment guard(state, t);

    t->wake.expires_after(timeout);
    asio::error_code ec;
    co_await t->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (t->outcome) co_return std::move(*t->outcome);
    state->detach(*t);
    if (ec == asio::error::operation_aborted)
        co_return fail(errc::cancelled, fmt::format("GET {} was cancelled", t->url));
    co_return fail(errc::timeout,
                   fmt::format("{}: no answer within {} ms", t->url, timeout.count()));
}

// "HTTP 503: first line of the body" for the failure report.
std::string describe_status(const std::string& url, const probe_outcome& out) {
    std::string line;
    for (char c : out.body) {
        if (c == '\n' || c == '\r' || line.size() >= 200) break;
        line.push_back(static_cast<unsigned char>(c) < 0x20 ? ' ' : c);
    }
    if (line.empty()) return fmt::format("{}: HTTP {}", url, out.status);
    return fmt::format("{}: HTTP {}: {}", url, out.status, line);
}

asio::awaitable<result<void>> perform_wait_healthy(std::shared_ptr<prober_state> state,
                                                   std::string url,
                                                   std::chrono::steady_clock::time_point deadline,
                                                   probe_backoff backoff) {
    using clock = std::chrono::steady_clock;
    if (!state)
        co_return fail(errc::cancelled, fmt::format("GET {}: the prober was moved from", url));
    const milliseconds ceiling = std::max(backoff.max, milliseconds(1));
    milliseconds delay = std::clamp(backoff.initial, milliseconds(1), ceiling);
    const milliseconds attempt_limit = std::max(backoff.attempt_timeout, milliseconds(1));
    asio::steady_timer pause(state->executor());
    std::optional<error> last;
    int attempts = 0;

    for (;;) {
        // At least one attempt, even when the deadline has already passed; an attempt gets
        // at least min_attempt so that a refusal is told apart from a timeout.
        const auto left = std::chrono::ceil<milliseconds>(deadline - clock::now());
        const milliseconds limit =
            std::clamp(left, std::min(min_attempt, attempt_limit), attempt_limit);
        ++attempts;
        auto answer = co_await perform_get(state, url, limit);
        if (answer && answer->status >= 200 && answer->status < 400) co_return result<void>{};
        if (!answer && (answer.error().code == errc::cancelled ||
                        answer.error().code == errc::invalid_argument))
            co_return fail(answer.error());
        last = answer ? make_error(errc::io_error, describe_status(url, *answer)) : answer.error();

        const auto now = clock::now();
        if (now >= deadline) break;
        pause.expires_after(std::min<clock::duration>(delay, deadline - now));
        asio::error_code ec;
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return fail(errc::cancelled, fmt::format("waiting for {} was cancelled", url));
        delay = std::min(delay * 2, ceiling);
    }
    const std::string count = attempts == 1 ? std::string("the only attempt")
                                            : fmt::format("last of {} attempts", attempts);
    co_return fail(errc::timeout, fmt::format("{} ({})", last->message, count));
}

}  // namespace
}  // namespace detail

http_prober::http_prober(asio::any_io_executor executor)
    : state_(std::make_shared<detail::prober_state>(std::move(executor))) {
}

http_prober::http_prober(http_prober&&) noexcept = default;

http_prober& http_prober::operator=(http_prober&& other) noexcept {
    if (this != &other) {
        if (state_) state_->shutdown();
        state_ = std::move(other.state_);
    }
    return *this;
}

http_prober::~http_prober() {
    if (state_) state_->shutdown();
}

asio::awaitable<result<probe_outcome>> http_prober::get(std::string url, milliseconds timeout) {
    // Only the state is used after the first suspension: the prober may be gone by then.
    std::shared_ptr<detail::prober_state> state = state_;
    co_return co_await detail::perform_get(std::move(state), std::move(url), timeout);
}

asio::awaitable<result<void>> http_prober::wait_healthy(
    std::string url, std::chrono::steady_clock::time_point deadline, probe_backoff backoff) {
    std::shared_ptr<detail::prober_state> state = state_;
    co_return co_await detail::perform_wait_healthy(std::move(state), std::move(url), deadline,
                                                    backoff);
}

std::size_t http_prober::in_flight() const {
    return state_ ? state_->in_flight() : 0;
}

asio::any_io_executor http_prober::get_executor() const {
    return state_ ? state_->executor() : asio::any_io_executor{};
}

}  // namespace stackemu::lifecycle
