// events.jsonl's writer: every event of the controller's monitor while a command holds it.
#pragma once

#include <asio/awaitable.hpp>
#include <cstdint>
#include <memory>

#include "lifecycle/instance_paths.hpp"
#include "qmp/client.hpp"

namespace stackemu::lifecycle {

// Subscribes to every event of `monitor` and appends each one to `paths.events` as it comes,
// in batches. The subscription is bounded (capacity events; state events are never dropped):
// when it had to drop, the log says so at that point, {"record":"events dropped","count":N}.
// What is still queued when the log is flushed or destroyed (the command is done, or the
// connection ended) is written too: a command's last events are never lost (issue 17).
class event_log {
  public:
    static constexpr std::size_t default_capacity = 65536;

    event_log(qmp::client& monitor, instance_paths paths, std::size_t capacity = default_capacity);
    event_log(const event_log&) = delete;
    event_log& operator=(const event_log&) = delete;
    ~event_log();  // flush()

    // Writes every queued event now.
    void flush();
    std::uint64_t written() const;

  private:
    struct state;
    static asio::awaitable<void> keep_writing(std::shared_ptr<state> s);
    std::shared_ptr<state> state_;
};

}  // namespace stackemu::lifecycle
