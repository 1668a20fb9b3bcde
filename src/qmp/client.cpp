// The QMP client: a reader and a writer coroutine around one socket; commands wait on timers.
#include "qmp/client.hpp"

#include <fmt/format.h>
#include <sys/socket.h>

#include <algorithm>
#include <array>
#include <asio/co_spawn.hpp>
#include <asio/experimental/as_tuple.hpp>
#include <asio/redirect_error.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <stdexcept>

#include "qmp/session.hpp"

namespace stackemu::qmp {

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

// Detached coroutines must not swallow programming errors.
void rethrow(const std::exception_ptr& e) {
    if (e) std::rethrow_exception(e);
}

}  // namespace

bool event_filter::matches(std::string_view name) const {
    return names.empty() || std::ranges::find(names, name) != names.end();
}

namespace detail {

session::session(stream_socket socket, client_options options)
    : socket_(std::move(socket)),
      options_(std::move(options)),
      framer_(options_.max_message_bytes),
      greeting_wake_(socket_.get_executor()),
      writer_wake_(socket_.get_executor()) {
    asio::error_code ignored;
    socket_.non_blocking(true, ignored);
}

asio::awaitable<result<void>> session::handshake() {
    auto self = shared_from_this();
    asio::co_spawn(socket_.get_executor(), reader(), rethrow);
    asio::co_spawn(socket_.get_executor(), writer(), rethrow);

    asio::error_code ec;
    if (!greeting_ && !end_) {
        greeting_wake_.expires_after(options_.greeting_timeout);
        co_await greeting_wake_.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    }
    if (!greeting_) {
        if (end_) {
            if (end_->code == errc::bad_greeting) co_return fail(*end_);
            co_return fail(end_->code,
                           "the connection ended before the QMP greeting: " + end_->message);
        }
        error why =
            ec == asio::error::operation_aborted
                ? make_error(errc::cancelled, "cancelled while waiting for the QMP greeting")
                : make_error(errc::timeout,
                             fmt::format("no QMP greeting within {} ms: QEMU serves one "
                                         "client per monitor, so another client may be "
                                         "connected, or QEMU is hung",
                                         options_.greeting_timeout.count()));
        end(why);
        co_return fail(why);
    }

    // Bytes after the greeting may already have ended the session (garbage, EOF): report
    // that, and never move an ended session back to a live phase.
    if (end_)
        co_return fail(end_->code,
                       "the connection ended right after the QMP greeting: " + end_->message);
    phase_ = phase::negotiating;
    json arguments = json::object();
    const bool want_oob = options_.request_oob && greeting_->offers("oob");
    if (want_oob) arguments["enable"] = json::array({"oob"});
    auto negotiated = co_await execute("qmp_capabilities", arguments, options_.greeting_timeout);
    if (!negotiated) {
        error why = negotiated.error();
        why.message = "capability negotiation failed: " + why.message;
        end(why);
        co_return fail(why);
    }
    oob_ = want_oob;
    // The reply may have been followed at once by the end of the connection: the next
    // command reports it.
    if (phase_ != phase::ended) phase_ = phase::running;
    co_return result<void>{};
}

asio::awaitable<result<json>> session::execute(std::string name, json arguments,
                                               std::optional<milliseconds> timeout) {
    auto self = shared_from_this();
    if (phase_ == phase::ended) co_return fail(*end_);
    if (waiting_.size() >= options_.max_queued)
        co_return fail(errc::too_many_in_flight,
                       fmt::format("{} commands already wait to be sent to QEMU", waiting_.size()));

    auto req = std::make_shared<request_state>(socket_.get_executor());
    req->name = name;
    req->arguments = std::move(arguments);
    if (waiting_.empty() && slots_used() < options_.max_in_flight)
        send(req);
    else
        waiting_.push_back(req);

    const milliseconds limit = timeout.value_or(options_.command_timeout);
    // send() may already have failed the request (a write error ends the connection).
    if (req->outcome) co_return std::move(*req->outcome);
    req->wake.expires_after(limit);
    asio::error_code ec;
    co_await req->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (req->outcome) co_return std::move(*req->outcome);

    // Timed out or cancelled by the caller: a reply may still come and must be recognised.
    if (req->sent) {
        in_flight_.erase(req->id);
        abandoned_ids_.insert(req->id);
    } else {
        std::erase(waiting_, req);
    }
    if (ec == asio::error::operation_aborted)
        co_return fail(errc::cancelled, fmt::format("{} was cancelled", name));
    co_return fail(errc::timeout,
                   fmt::format("QEMU did not answer {} within {} ms", name, limit.count()));
}

std::uint64_t session::smallest_free_id() const {
    std::uint64_t id = 0;
    while (in_flight_.contains(id) || abandoned_ids_.contains(id))
        ++id;
    return id;
}

void session::send(const std::shared_ptr<request_state>& req) {
    req->id = smallest_free_id();
    req->bytes = encode_command_compact(req->name, req->arguments, req->id);
    req->sent = true;
    in_flight_.emplace(req->id, req);
    ++stats_.commands_sent;
    if (req->name == "quit") quit_sent_ = true;
    if (options_.trace) options_.trace(true, req->bytes);
    write(req->bytes);
}

void session::pump() {
    while (!waiting_.empty() && slots_used() < options_.max_in_flight && phase_ != phase::ended) {
        auto req = std::move(waiting_.front());
        waiting_.pop_front();
        send(req);
    }
}

void session::write(std::string_view bytes) {
    // Fast path: nothing queued, so write straight away and spare a trip through the writer.
    if (!writing_ && write_buffer_.empty()) {
        asio::error_code ec;
        std::size_t n = socket_.write_some(asio::buffer(bytes.data(), bytes.size()), ec);
        if (ec && ec != asio::error::would_block && ec != asio::error::try_again) {
            end(make_error(quit_sent_ ? errc::disconnected_after_quit : errc::disconnected,
                           "writing to QEMU failed: " + ec.message()));
            return;
        }
        bytes.remove_prefix(ec ? 0 : n);
        if (bytes.empty()) return;
    }
    write_buffer_.append(bytes);
    writer_wake_.cancel();
}

asio::awaitable<void> session::writer() {
    auto self = shared_from_this();
    std::string out;
    while (phase_ != phase::ended) {
        if (write_buffer_.empty()) {
            writer_wake_.expires_at(asio::steady_timer::time_point::max());
            asio::error_code ignored;
            co_await writer_wake_.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
            continue;
        }
        out.clear();
        out.swap(write_buffer_);
        writing_ = true;
        auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(out), as_tuple_awaitable);
        writing_ = false;
        if (ec) {
            end(make_error(quit_sent_ ? errc::disconnected_after_quit : errc::disconnected,
                           "writing to QEMU failed: " + ec.message()));
            co_return;
        }
    }
}

asio::awaitable<void> session::reader() {
    auto self = shared_from_this();
    std::array<char, 65536> buffer{};
    while (phase_ != phase::ended) {
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buffer), as_tuple_awaitable);
        if (phase_ == phase::ended) co_return;
        if (ec) {
            const bool eof = ec == asio::error::eof || ec == asio::error::connection_reset;
            std::string what =
                eof ? "QEMU closed the connection" : "reading from QEMU failed: " + ec.message();
            // After `quit`, QEMU closes (or resets) the socket: that is the expected end.
            end(make_error(quit_sent_ ? errc::disconnected_after_quit : errc::disconnected,
                           quit_sent_ ? "QEMU closed the connection after quit" : what));
            co_return;
        }
        framer_.feed(std::string_view(buffer.data(), n));
        while (phase_ != phase::ended) {
            auto next = framer_.next();
            if (!next) {
                end(next.error());
                co_return;
            }
            if (!*next) break;
            if (options_.trace) options_.trace(false, **next);
            auto msg = parse_message(**next, framer_.message_offset());
            if (!msg) {
                // Ended, not skipped: the bad text may be a reply (its command would then wait
                // out its whole timeout) or a state event, and a peer that writes broken JSON
                // has lost our trust. Ending fails every waiter at once with this cause.
                end(msg.error());
                co_return;
            }
            dispatch(std::move(*msg));
        }
    }
}

void session::dispatch(message&& msg) {
    if (auto* g = std::get_if<greeting>(&msg)) {
        if (phase_ != phase::greeting) {
            end(make_error(errc::protocol_error, "QEMU sent a second greeting"));
            return;
        }
        greeting_ = std::move(*g);
        greeting_wake_.cancel();
        return;
    }
    if (auto* ev = std::get_if<event>(&msg)) {
        // Some QEMU versions send an event before the greeting: tolerate it.
        if (phase_ == phase::greeting) ++stats_.events_before_greeting;
        ++stats_.events;
        deliver(std::move(*ev));
        return;
    }
    if (phase_ == phase::greeting) {
        end(make_error(errc::bad_greeting, "QEMU sent a reply before its greeting"));
        return;
    }
    if (auto* ok = std::get_if<success_reply>(&msg)) {
        handle_reply(ok->id, std::move(ok->value), false);
        return;
    }
    auto& err = std::get<error_reply>(msg);
    handle_reply(err.id, fail(make_qemu_error(err.error_class, err.desc)), true);
}

void session::handle_reply(const std::optional<json>& id, result<json> outcome, bool is_error) {
    ++stats_.replies;
    if (!id) {
        // QEMU could not read that request's id. We match by id only, so nothing desynchronises;
        // the request it belonged to (if any) ends at its own deadline.
        ++(is_error ? stats_.idless_errors : stats_.unknown_replies);
        return;
    }
    if (!id->is_number_unsigned()) {
        ++stats_.unknown_replies;
        return;
    }
    const auto n = id->get<std::uint64_t>();
    if (auto it = in_flight_.find(n); it != in_flight_.end()) {
        auto req = std::move(it->second);
        in_flight_.erase(it);
        if (!outcome && !req->name.empty())
            outcome.error().message = fmt::format("QEMU refused {}", req->name);
        req->outcome = std::move(outcome);
        req->wake.cancel();
        pump();
        return;
    }
    if (abandoned_ids_.erase(n) != 0) {
        ++stats_.late_replies;
        pump();
        return;
    }
    ++stats_.unknown_replies;
}

void session::deliver(event&& ev) {
    std::erase_if(subscribers_, [](const auto& weak) { return weak.expired(); });
    for (const auto& weak : subscribers_) {
        auto sub = weak.lock();
        if (!sub->filter.matches(ev.name)) continue;
        if (sub->queue.size() >= sub->capacity) {
            // A burst of repeatable events (BLOCK_IO_ERROR...) must not push out a panic
            // queued before it (issue 16, finding 3): the oldest repeatable one goes.
            auto victim = std::ranges::find_if(
                sub->queue, [](const event& queued) { return !is_state_event(queued.name); });
            if (victim != sub->queue.end()) {
                sub->queue.erase(victim);
                ++sub->dropped;
            } else if (!is_state_event(ev.name)) {
                ++sub->dropped;  // only state events are queued: they outrank this one
                continue;
            }
        }
        sub->queue.push_back(ev);
        sub->wake.cancel();
    }
}

event_subscription session::subscribe(event_filter filter, std::size_t capacity) {
    auto state = std::make_shared<subscription_state>(
        socket_.get_executor(), std::move(filter),
        std::max<std::size_t>(1, capacity != 0 ? capacity : options_.event_queue_capacity));
    if (end_) state->ended = end_;
    subscribers_.push_back(state);
    return event_subscription(state);
}

void session::end(const error& why) {
    if (phase_ == phase::ended) return;
    phase_ = phase::ended;
    end_ = why;
    asio::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);

    auto pending = std::move(in_flight_);
    for (auto& [id, req] : pending) {
        // EOF after quit is quit's success.
        if (req->name == "quit" && why.code == errc::disconnected_after_quit)
            req->outcome = json::object();
        else
            req->outcome = fail(why);
        req->wake.cancel();
    }
    for (auto& req : waiting_) {
        req->outcome = fail(why);
        req->wake.cancel();
    }
    waiting_.clear();
    abandoned_ids_.clear();
    for (const auto& weak : subscribers_) {
        if (auto sub = weak.lock()) {
            sub->ended = why;
            sub->wake.cancel();
        }
    }
    greeting_wake_.cancel();
    writer_wake_.cancel();
}

void session::close() {
    end(make_error(errc::closed, "the connection to QEMU was closed by this client"));
}

std::optional<pid_t> session::peer_pid() const {
    ucred cred{};
    socklen_t len = sizeof(cred);
    if (phase_ == phase::ended) return std::nullopt;
    // NOLINTNEXTLINE(cppcoreguidelines-pro-type-const-cast): Asio's native_handle() is not const
    auto fd = const_cast<stream_socket&>(socket_).native_handle();
    if (::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) != 0 || cred.pid <= 0)
        return std::nullopt;
    return cred.pid;
}

}  // namespace detail

// ---- event_subscription ----

event_subscription::event_subscription(std::shared_ptr<detail::subscription_state> state)
    : state_(std::move(state)) {
}
event_subscription::event_subscription(event_subscription&&) noexcept = default;
event_subscription& event_subscription::operator=(event_subscription&&) noexcept = default;
event_subscription::~event_subscription() = default;

namespace {

std::optional<event> pop(detail::subscription_state& state) {
    if (state.queue.empty()) return std::nullopt;
    event ev = std::move(state.queue.front());
    state.queue.pop_front();
    return ev;
}

// Works on the shared state, not on the handle, which the caller may move while we wait.
asio::awaitable<result<event>> next_event(std::shared_ptr<detail::subscription_state> state,
                                          milliseconds timeout) {
    if (!state) co_return fail(errc::wrong_state, "the subscription was moved from");
    if (auto ev = pop(*state)) co_return std::move(*ev);
    if (state->ended) co_return fail(*state->ended);
    state->wake.expires_after(timeout);
    asio::error_code ec;
    co_await state->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (auto ev = pop(*state)) co_return std::move(*ev);
    if (state->ended) co_return fail(*state->ended);
    if (ec == asio::error::operation_aborted)
        co_return fail(errc::cancelled, "waiting for an event was cancelled");
    co_return fail(errc::timeout, fmt::format("no event within {} ms", timeout.count()));
}

asio::awaitable<result<event>> wait_for_event(std::shared_ptr<detail::subscription_state> state,
                                              std::function<bool(const event&)> pred,
                                              milliseconds timeout) {
    const auto deadline = std::chrono::steady_clock::now() + timeout;
    for (;;) {
        auto left =
            std::chrono::duration_cast<milliseconds>(deadline - std::chrono::steady_clock::now());
        auto ev = co_await next_event(state, std::max(left, milliseconds(0)));
        if (!ev) {
            if (ev.error().code == errc::timeout)
                co_return fail(
                    errc::timeout,
                    fmt::format("the awaited event did not come within {} ms", timeout.count()));
            co_return ev;
        }
        if (!pred || pred(*ev)) co_return ev;
    }
}

}  // namespace

asio::awaitable<result<event>> event_subscription::next(milliseconds timeout) {
    return next_event(state_, timeout);
}

asio::awaitable<result<event>> event_subscription::wait_for(std::function<bool(const event&)> pred,
                                                            milliseconds timeout) {
    return wait_for_event(state_, std::move(pred), timeout);
}

std::optional<event> event_subscription::try_next() {
    return state_ ? pop(*state_) : std::nullopt;
}

std::size_t event_subscription::queued() const {
    return state_ ? state_->queue.size() : 0;
}
std::uint64_t event_subscription::dropped() const {
    return state_ ? state_->dropped : 0;
}

// ---- client ----

namespace {
const greeting no_greeting{};
const client_stats no_stats{};
asio::awaitable<result<json>> not_connected() {
    co_return fail(errc::closed, "this QMP client is not connected");
}
}  // namespace

client::client(std::shared_ptr<detail::session> session) : session_(std::move(session)) {
}
client::client(client&&) noexcept = default;
client& client::operator=(client&& other) noexcept {
    if (this != &other) {
        if (session_) session_->close();
        session_ = std::move(other.session_);
    }
    return *this;
}
client::~client() {
    if (session_) session_->close();
}

asio::awaitable<result<client>> client::connect(const endpoint& ep, client_options options) {
    auto socket = co_await open_stream(ep, options.connect_timeout);
    if (!socket) co_return fail(socket.error());
    co_return co_await attach(std::move(*socket), std::move(options));
}

asio::awaitable<result<client>> client::attach(stream_socket socket, client_options options) {
    auto s = std::make_shared<detail::session>(std::move(socket), std::move(options));
    auto ok = co_await s->handshake();
    if (!ok) co_return fail(ok.error());
    co_return client(std::move(s));
}

asio::awaitable<result<json>> client::execute(std::string_view name, json arguments,
                                              std::optional<milliseconds> timeout) {
    if (!session_) return not_connected();
    return session_->execute(std::string(name), std::move(arguments), timeout);
}

event_subscription client::subscribe(event_filter filter, std::size_t capacity) {
    if (!session_) throw std::logic_error("subscribe() on a QMP client that was never connected");
    return session_->subscribe(std::move(filter), capacity);
}

asio::any_io_executor client::executor() const {
    if (!session_) throw std::logic_error("executor() on a QMP client that was never connected");
    return session_->executor();
}

namespace {

// Takes everything by value: it runs after the caller's arguments may be gone.
asio::awaitable<result<event>> execute_then_wait(std::shared_ptr<detail::session> s,
                                                 std::string name, json arguments,
                                                 std::string event_name,
                                                 std::function<bool(const event&)> pred,
                                                 milliseconds timeout) {
    if (!s) co_return fail(errc::closed, "this QMP client is not connected");
    auto sub = s->subscribe(event_filter{{std::move(event_name)}}, 0);
    const auto start = std::chrono::steady_clock::now();
    auto reply = co_await s->execute(std::move(name), std::move(arguments), timeout);
    if (!reply) co_return fail(reply.error());
    auto used = std::chrono::duration_cast<milliseconds>(std::chrono::steady_clock::now() - start);
    co_return co_await sub.wait_for(std::move(pred), std::max(timeout - used, milliseconds(0)));
}

}  // namespace

asio::awaitable<result<event>> client::execute_and_wait(std::string_view name, json arguments,
                                                        std::string event_name,
                                                        std::function<bool(const event&)> pred,
                                                        milliseconds timeout) {
    return execute_then_wait(session_, std::string(name), std::move(arguments),
                             std::move(event_name), std::move(pred), timeout);
}

const greeting& client::server_greeting() const {
    return session_ && session_->has_greeting() ? session_->server_greeting() : no_greeting;
}
bool client::oob_enabled() const {
    return session_->oob_enabled();
}
bool client::is_open() const {
    return session_ && session_->is_open();
}
std::optional<pid_t> client::peer_pid() const {
    return session_ ? session_->peer_pid() : std::nullopt;
}
const client_stats& client::stats() const {
    return session_ ? session_->stats() : no_stats;
}
void client::close() {
    if (session_) session_->close();
}

}  // namespace stackemu::qmp
