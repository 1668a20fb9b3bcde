// An asynchronous QMP client: greeting, negotiation, pipelined commands matched by id, events.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qmp/endpoint.hpp"
#include "qmp/framer.hpp"
#include "qmp/message.hpp"

namespace stackemu::qmp {

using std::chrono::milliseconds;

struct client_options {
    milliseconds connect_timeout{5000};
    milliseconds greeting_timeout{5000};
    milliseconds command_timeout{30000};  // default for execute() without its own timeout
    std::size_t max_message_bytes = default_max_message;
    // QEMU queues at most 8 in-band commands before it stops reading (qmp.md).
    std::size_t max_in_flight = 8;
    // Commands waiting for a slot beyond max_in_flight; more fail with too_many_in_flight.
    std::size_t max_queued = 4096;
    // Ask for out-of-band execution; enabled only when the greeting offers it.
    bool request_oob = false;
    // Per-subscription queue length (see event_subscription for the overflow policy).
    std::size_t event_queue_capacity = 256;
    // Observes every message sent (outgoing=true) and received, e.g. for --trace.
    std::function<void(bool outgoing, std::string_view text)> trace;
};

struct client_stats {
    std::uint64_t commands_sent = 0;
    std::uint64_t replies = 0;
    std::uint64_t late_replies = 0;     // replies to commands that had already timed out
    std::uint64_t unknown_replies = 0;  // replies whose id we never sent (dropped)
    std::uint64_t idless_errors = 0;    // errors QEMU could not tie to a request (dropped)
    std::uint64_t events = 0;
    std::uint64_t events_before_greeting = 0;
};

// Which events a subscription wants: all when `names` is empty.
struct event_filter {
    std::vector<std::string> names;
    bool matches(std::string_view name) const;
};

namespace detail {
class session;
struct subscription_state;
}  // namespace detail

// A bounded queue of events. Overflow policy: state events (is_state_event: SHUTDOWN,
// GUEST_PANICKED, RESET, STOP, RESUME...) are never discarded. When the queue is full, the
// *oldest* queued repeatable event is discarded and counted in dropped(); a new event is kept
// too, so a waiter for a final event (SHUTDOWN, a job's `concluded`) never misses it, unless
// the queue holds only state events and the new one is repeatable (then it is the one counted).
class event_subscription {
  public:
    event_subscription(event_subscription&&) noexcept;
    event_subscription& operator=(event_subscription&&) noexcept;
    event_subscription(const event_subscription&) = delete;
    event_subscription& operator=(const event_subscription&) = delete;
    ~event_subscription();

    // The next event; timeout when none arrives in time; disconnected/closed when the
    // connection ends and the queue is empty.
    asio::awaitable<result<event>> next(milliseconds timeout);
    // The next event matching `pred`, skipping others, within one overall deadline.
    asio::awaitable<result<event>> wait_for(std::function<bool(const event&)> pred,
                                            milliseconds timeout);
    std::optional<event> try_next();
    std::size_t queued() const;
    std::uint64_t dropped() const;

  private:
    friend class detail::session;
    explicit event_subscription(std::shared_ptr<detail::subscription_state> state);
    std::shared_ptr<detail::subscription_state> state_;
};

class client {
  public:
    // Connects, waits for the greeting (events before it are tolerated), validates it and
    // negotiates capabilities. The whole handshake is bounded by the options' deadlines.
    static asio::awaitable<result<client>> connect(const endpoint& ep, client_options options = {});
    // Same, over a socket that is already connected.
    static asio::awaitable<result<client>> attach(stream_socket socket,
                                                  client_options options = {});

    // A handle with no connection (is_open() is false); connect() or attach() give real ones.
    client() = default;
    client(client&&) noexcept;
    client& operator=(client&&) noexcept;
    client(const client&) = delete;
    client& operator=(const client&) = delete;
    ~client();  // closes the connection

    // Sends a command and waits for its reply. QEMU's error replies come back as
    // errc::qemu_error with QEMU's class and desc. A timeout leaves the connection usable: a
    // late reply is recognised and dropped.
    asio::awaitable<result<json>> execute(std::string_view name, json arguments = json::object(),
                                          std::optional<milliseconds> timeout = std::nullopt);

    // Subscribes before anything is sent, so an event caused by a later command is never lost.
    // `capacity` 0 is client_options::event_queue_capacity.
    event_subscription subscribe(event_filter filter = {}, std::size_t capacity = 0);

    // Subscribes to `event_name`, sends the command, then waits for an event of that name that
    // satisfies `pred` (any, if empty), all within `timeout`. E.g. system_powerdown -> POWERDOWN.
    asio::awaitable<result<event>> execute_and_wait(std::string_view name, json arguments,
                                                    std::string event_name,
                                                    std::function<bool(const event&)> pred,
                                                    milliseconds timeout);

    const greeting& server_greeting() const;
    const qemu_version& version() const { return server_greeting().version; }
    bool oob_enabled() const;
    bool is_open() const;
    // The process on the other end of a Unix socket (SO_PEERCRED): how stackemu identifies
    // QEMU without a PID file.
    std::optional<pid_t> peer_pid() const;
    const client_stats& stats() const;
    // The connection's executor (the io_context it runs on); throws on a client never connected.
    asio::any_io_executor executor() const;
    // Closes the connection: pending commands fail with errc::closed.
    void close();

  private:
    explicit client(std::shared_ptr<detail::session> session);
    std::shared_ptr<detail::session> session_;
};

}  // namespace stackemu::qmp
