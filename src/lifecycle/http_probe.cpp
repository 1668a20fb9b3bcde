// libcurl's multi interface on Asio: curl says which sockets to watch and when its timer is
// due (CURLMOPT_SOCKETFUNCTION, CURLMOPT_TIMERFUNCTION); Asio waits and calls
// curl_multi_socket_action. Completed transfers wake their get() through a steady_timer.
#include "lifecycle/http_probe.hpp"

#include <curl/curl.h>
#include <fmt/format.h>

#include <algorithm>
#include <asio/error.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdint>
#include <optional>
#include <unordered_map>
#include <utility>

namespace stackemu::lifecycle {

using std::chrono::milliseconds;

namespace detail {
namespace {

// Our own deadline fires this long after curl's CURLOPT_TIMEOUT_MS, as a backstop only.
constexpr milliseconds backstop_grace{500};
// The least time wait_healthy() gives one attempt, even past its deadline.
constexpr milliseconds min_attempt{100};
constexpr int want_read = 1;
constexpr int want_write = 2;

void init_curl_once() {
    // curl_global_init is thread-safe in curl >= 7.84; this runs it once per process anyway.
    [[maybe_unused]] static const CURLcode init = curl_global_init(CURL_GLOBAL_DEFAULT);
}

CURLM* new_multi() {
    init_curl_once();
    return curl_multi_init();
}

// One GET from get() until its answer, failure, cancellation or the prober's end.
struct transfer {
    transfer(const asio::any_io_executor& ex, std::string u, milliseconds to)
        : easy(curl_easy_init()), url(std::move(u)), timeout(to), wake(ex) {}
    transfer(const transfer&) = delete;
    transfer& operator=(const transfer&) = delete;
    ~transfer() {
        if (easy) curl_easy_cleanup(easy);
    }

    CURL* easy;
    std::string url;
    milliseconds timeout;
    std::string body;
    bool truncated = false;
    bool attached = false;  // added to the multi handle
    char errbuf[CURL_ERROR_SIZE]{};
    std::optional<result<probe_outcome>> outcome;
    asio::steady_timer wake;  // waits for the backstop deadline; cancelled when `outcome` is set
};

// One of curl's sockets, watched but never owned: release() gives it back without closing.
struct socket_watch {
    socket_watch(const asio::any_io_executor& ex, curl_socket_t s) : fd(s), descriptor(ex) {}
    socket_watch(const socket_watch&) = delete;
    socket_watch& operator=(const socket_watch&) = delete;
    ~socket_watch() { release(); }

    void release() {
        released = true;
        if (descriptor.is_open()) (void)descriptor.release();  // cancels waits, keeps the fd
    }

    curl_socket_t fd;
    asio::posix::stream_descriptor descriptor;
    int wanted = 0;   // what curl asked for: want_read | want_write
    int pending = 0;  // waits in progress
    bool released = false;
};

std::size_t on_body(char* data, std::size_t size, std::size_t count, void* userp) {
    auto* t = static_cast<transfer*>(userp);
    const std::size_t n = size * count;
    const std::size_t room = max_probe_body - std::min(max_probe_body, t->body.size());
    t->body.append(data, std::min(n, room));
    if (n <= room) return n;
    // Enough for diagnostics: stop reading (curl ends with CURLE_WRITE_ERROR, seen as success).
    t->truncated = true;
    return 0;
}

std::string errno_text(long os_errno) {
    return std::error_code(static_cast<int>(os_errno), std::generic_category()).message();
}

error failure_of(transfer& t, CURLcode rc) {
    const std::string detail = t.errbuf[0] != '\0' ? std::string(t.errbuf) : curl_easy_strerror(rc);
    long os_errno = 0;
    curl_easy_getinfo(t.easy, CURLINFO_OS_ERRNO, &os_errno);
    switch (rc) {
        case CURLE_COULDNT_CONNECT:
            if (os_errno == ECONNREFUSED)
                return make_error(errc::connect_failed,
                                  fmt::format("{}: connection refused", t.url));
            return make_error(errc::connect_failed,
                              fmt::format("{}: could not connect ({})", t.url, detail));
        case CURLE_COULDNT_RESOLVE_HOST:
            return make_error(errc::connect_failed,
                              fmt::format("{}: could not resolve the host ({})", t.url, detail));
        case CURLE_OPERATION_TIMEDOUT:
            return make_error(errc::timeout, fmt::format("{}: no answer within {} ms ({})", t.url,
                                                         t.timeout.count(), detail));
        case CURLE_GOT_NOTHING:
            return make_error(
                errc::io_error,
                fmt::format("{}: the server closed the connection without answering", t.url));
        case CURLE_RECV_ERROR:
        case CURLE_SEND_ERROR:
            if (os_errno == ECONNRESET)
                return make_error(errc::io_error,
                                  fmt::format("{}: connection reset by peer", t.url));
            if (os_errno != 0)
                return make_error(errc::io_error,
                                  fmt::format("{}: {} ({})", t.url, errno_text(os_errno), detail));
            return make_error(errc::io_error, fmt::format("{}: {}", t.url, detail));
        case CURLE_UNSUPPORTED_PROTOCOL:
        case CURLE_URL_MALFORMAT:
            return make_error(
                errc::invalid_argument,
                fmt::format("{}: not a usable http or https URL ({})", t.url, detail));
        default:
            return make_error(errc::io_error, fmt::format("{}: {}", t.url, detail));
    }
}

result<probe_outcome> outcome_of(transfer& t, CURLcode rc) {
    if (rc != CURLE_OK && (rc != CURLE_WRITE_ERROR || !t.truncated))
        return std::unexpected(failure_of(t, rc));
    long status = 0;
    curl_off_t micros = 0;
    curl_easy_getinfo(t.easy, CURLINFO_RESPONSE_CODE, &status);
    curl_easy_getinfo(t.easy, CURLINFO_TOTAL_TIME_T, &micros);
    probe_outcome out;
    out.status = static_cast<int>(status);
    out.total_time = std::chrono::microseconds(micros);
    out.body = std::move(t.body);
    out.body_truncated = t.truncated;
    return out;
}

}  // namespace

class prober_state : public std::enable_shared_from_this<prober_state> {
  public:
    explicit prober_state(asio::any_io_executor ex)
        : executor_(std::move(ex)), multi_(new_multi()), timer_(executor_) {
        if (!multi_) return;
        curl_multi_setopt(multi_, CURLMOPT_SOCKETFUNCTION, &prober_state::on_socket);
        curl_multi_setopt(multi_, CURLMOPT_SOCKETDATA, this);
        curl_multi_setopt(multi_, CURLMOPT_TIMERFUNCTION, &prober_state::on_timer);
        curl_multi_setopt(multi_, CURLMOPT_TIMERDATA, this);
    }
    prober_state(const prober_state&) = delete;
    prober_state& operator=(const prober_state&) = delete;
    ~prober_state() { shutdown(); }

    const asio::any_io_executor& executor() const { return executor_; }
    bool closed() const { return closed_; }
    std::size_t in_flight() const { return transfers_.size(); }

    static result<void> configure(transfer& t) {
        if (!t.easy) return fail(errc::internal, fmt::format("{}: curl_easy_init failed", t.url));
        CURL* e = t.easy;
        const long ms = static_cast<long>(t.timeout.count());
        const CURLcode codes[] = {
            curl_easy_setopt(e, CURLOPT_URL, t.url.c_str()),
            curl_easy_setopt(e, CURLOPT_HTTPGET, 1L),
            curl_easy_setopt(e, CURLOPT_NOSIGNAL, 1L),
            curl_easy_setopt(e, CURLOPT_NOPROXY, "*"),
            curl_easy_setopt(e, CURLOPT_FOLLOWLOCATION, 0L),
            curl_easy_setopt(e, CURLOPT_PROTOCOLS_STR, "http,https"),
            curl_easy_setopt(e, CURLOPT_REDIR_PROTOCOLS_STR, "http,https"),
            curl_easy_setopt(e, CURLOPT_TIMEOUT_MS, ms),
            curl_easy_setopt(e, CURLOPT_CONNECTTIMEOUT_MS, ms),
            // Every probe sees the server as it is now, not a kept-alive connection.
            curl_easy_setopt(e, CURLOPT_FORBID_REUSE, 1L),
            curl_easy_setopt(e, CURLOPT_USERAGENT, "stackemu-probe"),
            curl_easy_setopt(e, CURLOPT_WRITEFUNCTION, &on_body),
            curl_easy_setopt(e, CURLOPT_WRITEDATA, &t),
            curl_easy_setopt(e, CURLOPT_ERRORBUFFER, t.errbuf),
        };
        for (CURLcode c : codes) {
            if (c != CURLE_OK)
                return fail(errc::internal,
                            fmt::format("{}: curl_easy_setopt: {}", t.url, curl_easy_strerror(c)));
        }
        return {};
    }

    result<void> attach(const std::shared_ptr<transfer>& t) {
        if (closed_)
            return fail(errc::cancelled, fmt::format("GET {}: the prober is closed", t->url));
        if (!multi_) return fail(errc::internal, fmt::format("{}: curl_multi_init failed", t->url));
        transfers_.emplace(t->easy, t);
        t->attached = true;
        const CURLMcode mc = curl_multi_add_handle(multi_, t->easy);
        if (mc != CURLM_OK) {
            transfers_.erase(t->easy);
            t->attached = false;
            return fail(errc::internal, fmt::format("{}: curl_multi_add_handle: {}", t->url,
                                                    curl_multi_strerror(mc)));
        }
        return {};
    }

    // Removes a transfer that has not completed (cancelled, timed out, or its awaiter gone).
    // Never called from inside a curl callback.
    void detach(transfer& t) {
        if (!t.attached) return;
        t.attached = false;
        transfers_.erase(t.easy);
        if (multi_ && !closed_) curl_multi_remove_handle(multi_, t.easy);
    }

    // Ends every transfer with errc::cancelled, gives all sockets back to curl, which closes
    // them in curl_multi_cleanup. Idempotent.
    void shutdown() {
        if (closed_) return;
        closed_ = true;  // curl callbacks from here on are ignored
        auto transfers = std::move(transfers_);
        transfers_.clear();
        for (auto& [easy, t] : transfers) {
            if (multi_) curl_multi_remove_handle(multi_, easy);
            t->attached = false;
            t->outcome = fail(errc::cancelled,
                              fmt::format("GET {} was cancelled: the prober was closed", t->url));
            t->wake.cancel();
        }
        for (auto& [fd, w] : sockets_)
            w->release();
        sockets_.clear();
        timer_.cancel();
        if (multi_) curl_multi_cleanup(multi_);
        multi_ = nullptr;
    }

  private:
    static int on_socket(CURL*, curl_socket_t s, int what, void* userp, void*) {
        auto* self = static_cast<prober_state*>(userp);
        if (self->closed_) return 0;
        if (what == CURL_POLL_REMOVE) {
            self->forget(s);
            return 0;
        }
        auto& w = self->sockets_[s];
        if (!w) {
            w = std::make_shared<socket_watch>(self->executor_, s);
            asio::error_code ec;
            w->descriptor.assign(s, ec);
            if (ec) {
                self->forget(s);
                return -1;  // curl fails the transfers on this socket
            }
        }
        w->wanted =
            ((what & CURL_POLL_IN) ? want_read : 0) | ((what & CURL_POLL_OUT) ? want_write : 0);
        self->arm(w);
        return 0;
    }

    static int on_timer(CURLM*, long timeout_ms, void* userp) {
        auto* self = static_cast<prober_state*>(userp);
        if (self->closed_) return 0;
        const std::uint64_t generation = ++self->timer_generation_;
        if (timeout_ms < 0) {
            self->timer_.cancel();
            return 0;
        }
        // Not called from here: curl wants socket_action after its callback returns.
        self->timer_.expires_after(milliseconds(timeout_ms));
        self->timer_.async_wait(
            [weak = self->weak_from_this(), generation](const asio::error_code& ec) {
                if (ec) return;
                auto s = weak.lock();
                if (!s || s->closed_ || s->timer_generation_ != generation) return;
                s->on_timeout();
            });
        return 0;
    }

    void forget(curl_socket_t s) {
        auto it = sockets_.find(s);
        if (it == sockets_.end()) return;
        it->second->release();
        sockets_.erase(it);
    }

    void arm(const std::shared_ptr<socket_watch>& w) {
        for (const int direction : {want_read, want_write}) {
            if (!(w->wanted & direction) || (w->pending & direction)) continue;
            w->pending |= direction;
            const auto wait = direction == want_read ? asio::posix::stream_descriptor::wait_read
                                                     : asio::posix::stream_descriptor::wait_write;
            w->descriptor.async_wait(
                wait, [weak = weak_from_this(), w, direction](const asio::error_code& ec) {
                    w->pending &= ~direction;
                    if (auto s = weak.lock()) s->on_ready(w, direction, ec);
                });
        }
    }

    void on_ready(const std::shared_ptr<socket_watch>& w, int direction,
                  const asio::error_code& ec) {
        if (ec == asio::error::operation_aborted || w->released || closed_) return;
        if (!(w->wanted & direction)) return;  // curl changed its mind meanwhile
        const int flags =
            ec ? CURL_CSELECT_ERR : (direction == want_read ? CURL_CSELECT_IN : CURL_CSELECT_OUT);
        int running = 0;
        curl_multi_socket_action(multi_, w->fd, flags, &running);
        complete_finished();
        // After an error curl closes or reports the socket; waiting again would spin.
        if (!ec && !w->released && !closed_) arm(w);
    }

    void on_timeout() {
        int running = 0;
        curl_multi_socket_action(multi_, CURL_SOCKET_TIMEOUT, 0, &running);
        complete_finished();
    }

    void complete_finished() {
        int left = 0;
        while (!closed_) {
            CURLMsg* msg = curl_multi_info_read(multi_, &left);
            if (!msg) break;
            if (msg->msg != CURLMSG_DONE) continue;
            CURL* easy = msg->easy_handle;
            const CURLcode rc = msg->data.result;  // msg is invalid after remove_handle
            auto it = transfers_.find(easy);
            if (it == transfers_.end()) {
                curl_multi_remove_handle(multi_, easy);
                continue;
            }
            auto t = it->second;
            transfers_.erase(it);
            t->outcome = outcome_of(*t, rc);
            t->attached = false;
            curl_multi_remove_handle(multi_, easy);
            t->wake.cancel();
        }
    }

    asio::any_io_executor executor_;
    CURLM* multi_ = nullptr;
    asio::steady_timer timer_;
    std::uint64_t timer_generation_ = 0;
    std::unordered_map<curl_socket_t, std::shared_ptr<socket_watch>> sockets_;
    std::unordered_map<CURL*, std::shared_ptr<transfer>> transfers_;
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

    auto t = std::make_shared<transfer>(state->executor(), std::move(url), timeout);
    if (auto configured = detail::prober_state::configure(*t); !configured)
        co_return fail(configured.error());
    if (auto added = state->attach(t); !added) co_return fail(added.error());
    attachment guard(state, t);

    t->wake.expires_after(timeout + backstop_grace);
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
