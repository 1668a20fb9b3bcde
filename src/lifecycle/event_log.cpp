// events.jsonl's writer: one subscription, one coroutine, batched appends.
#include "lifecycle/event_log.hpp"

#include <asio/co_spawn.hpp>
#include <chrono>
#include <vector>

#include "lifecycle/controller_detail.hpp"

namespace stackemu::lifecycle {

using nlohmann::json;
using namespace std::chrono_literals;

struct event_log::state {
    state(qmp::event_subscription s, instance_paths p)
        : events(std::move(s)), paths(std::move(p)) {}
    qmp::event_subscription events;
    instance_paths paths;
    std::uint64_t dropped_logged = 0;
    std::uint64_t written = 0;

    // Appends `first` (if any) and everything queued behind it in one write.
    void write_queued(std::optional<qmp::event> first) {
        std::vector<json> records;
        if (const auto dropped = events.dropped(); dropped > dropped_logged) {
            records.push_back(json{{"record", "events dropped"},
                                   {"count", dropped - dropped_logged},
                                   {"at", detail::now_iso8601()}});
            dropped_logged = dropped;
        }
        auto add = [&](const qmp::event& ev) {
            records.push_back(json{{"event", ev.name},
                                   {"data", ev.data},
                                   {"seconds", ev.seconds},
                                   {"microseconds", ev.microseconds}});
            ++written;
        };
        if (first) add(*first);
        while (auto ev = events.try_next())
            add(*ev);
        if (!records.empty()) detail::append_events(paths, records);
    }
};

asio::awaitable<void> event_log::keep_writing(std::shared_ptr<state> s) {
    for (;;) {
        auto ev = co_await s->events.next(24h);
        if (!ev && ev.error().code == errc::timeout) continue;
        s->write_queued(ev ? std::optional(std::move(*ev)) : std::nullopt);
        if (!ev) co_return;  // the connection ended: everything queued is written
    }
}

event_log::event_log(qmp::client& monitor, instance_paths paths, std::size_t capacity)
    : state_(std::make_shared<state>(monitor.subscribe({}, capacity), std::move(paths))) {
    asio::co_spawn(monitor.executor(), keep_writing(state_), [](const std::exception_ptr& e) {
        if (e) std::rethrow_exception(e);  // a programming error, not an outcome
    });
}

event_log::~event_log() {
    flush();
}

void event_log::flush() {
    state_->write_queued(std::nullopt);
}

std::uint64_t event_log::written() const {
    return state_->written;
}

}  // namespace stackemu::lifecycle
