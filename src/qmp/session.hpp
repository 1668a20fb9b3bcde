// The state behind a qmp::client: one socket, a reader and a writer coroutine, pending commands.
#pragma once

#include <asio/steady_timer.hpp>
#include <deque>
#include <memory>
#include <optional>
#include <string>
#include <unordered_map>
#include <unordered_set>
#include <vector>

#include "qmp/client.hpp"

namespace stackemu::qmp::detail {

// One command from execute() until its reply, timeout or the end of the connection.
struct request_state {
    explicit request_state(const asio::any_io_executor& ex) : wake(ex) {}
    std::uint64_t id = 0;  // given when it is sent
    std::string name;
    json arguments;
    std::string bytes;
    bool sent = false;
    std::optional<result<json>> outcome;
    asio::steady_timer wake;  // waits until the deadline; cancelled when `outcome` is set
};

struct subscription_state {
    subscription_state(const asio::any_io_executor& ex, event_filter f, std::size_t cap)
        : filter(std::move(f)), capacity(cap), wake(ex) {}
    event_filter filter;
    std::size_t capacity;
    std::deque<event> queue;
    std::uint64_t dropped = 0;
    std::optional<error> ended;
    asio::steady_timer wake;
};

class session : public std::enable_shared_from_this<session> {
  public:
    session(stream_socket socket, client_options options);

    // Spawns the reader and writer, then waits for the greeting and negotiates.
    asio::awaitable<result<void>> handshake();
    asio::awaitable<result<json>> execute(std::string name, json arguments,
                                          std::optional<milliseconds> timeout);
    event_subscription subscribe(event_filter filter, std::size_t capacity);
    asio::any_io_executor executor() { return socket_.get_executor(); }
    void close();

    bool has_greeting() const { return greeting_.has_value(); }
    const greeting& server_greeting() const { return *greeting_; }
    bool oob_enabled() const { return oob_; }
    bool is_open() const { return phase_ != phase::ended; }
    std::optional<pid_t> peer_pid() const;
    const client_stats& stats() const { return stats_; }

  private:
    enum class phase { greeting, negotiating, running, ended };

    asio::awaitable<void> reader();
    asio::awaitable<void> writer();
    void dispatch(message&& msg);
    void handle_reply(const std::optional<json>& id, result<json> outcome, bool is_error);
    void deliver(event&& ev);
    void send(const std::shared_ptr<request_state>& req);
    void pump();
    void write(std::string_view bytes);
    void end(const error& why);
    std::size_t slots_used() const { return in_flight_.size() + abandoned_ids_.size(); }
    std::uint64_t smallest_free_id() const;

    stream_socket socket_;
    client_options options_;
    framer framer_;
    phase phase_ = phase::greeting;
    std::optional<greeting> greeting_;
    asio::steady_timer greeting_wake_;
    bool oob_ = false;
    bool quit_sent_ = false;
    std::optional<error> end_;

    // Ids are the smallest not in flight nor quarantined (issue 15): one digit on a connection
    // of any age, since at most max_in_flight + abandoned ids are taken at once.
    std::unordered_map<std::uint64_t, std::shared_ptr<request_state>> in_flight_;
    std::deque<std::shared_ptr<request_state>> waiting_;  // beyond max_in_flight, not yet sent
    // Sent, timed out, not yet answered: QEMU still holds a queue slot for each, and the id is
    // quarantined until its late reply comes, so that reply is never taken for a new command's.
    std::unordered_set<std::uint64_t> abandoned_ids_;

    std::vector<std::weak_ptr<subscription_state>> subscribers_;

    std::string write_buffer_;
    bool writing_ = false;
    asio::steady_timer writer_wake_;

    client_stats stats_;
};

}  // namespace stackemu::qmp::detail
