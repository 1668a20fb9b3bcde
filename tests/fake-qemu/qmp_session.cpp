// A QMP connection: a reader loop feeding the dispatcher, a writer loop shaping the output.
#include "qmp_session.hpp"

#include <fmt/format.h>
#include <linux/sockios.h>
#include <sys/ioctl.h>

#include <asio/experimental/as_tuple.hpp>

namespace stackemu::fake {

namespace {

using namespace std::chrono_literals;

constexpr auto tuple = asio::experimental::as_tuple(asio::use_awaitable);

std::string command_of(const json_reader::item& item) {
    if (!item.json || !item.json->is_object()) return {};
    auto it = item.json->find("execute");
    if (it == item.json->end() || !it->is_string()) return {};
    return it->get<std::string>();
}

}  // namespace

qmp_session::qmp_session(socket_type socket, vm& machine, bool pretty, logger log, bool primary)
    : socket_(std::move(socket)),
      vm_(machine),
      options_(machine.config()),
      log_(std::move(log)),
      dispatcher_(machine),
      shaper_(machine.config(), pretty),
      wake_(socket_.get_executor()),
      fault_(machine.claim_fault(wire_fault::channel::qmp)),
      primary_(primary) {
}

bool qmp_session::fault_strikes(std::size_t step, std::string_view what) {
    if (!fault_) return false;
    const bool strikes = step == fault_->at;
    if (log_)
        log_(fmt::format("fault: qmp step {}: {}{}", step, what,
                         strikes ? fmt::format(" ({})", to_string(fault_->what)) : ""));
    return strikes;
}

// The step is held back this long; a closed session (QEMU exiting) ends the wait early.
asio::awaitable<void> qmp_session::fault_delay() {
    asio::steady_timer t(socket_.get_executor());
    const auto until = std::chrono::steady_clock::now() + fault_->delay;
    while (!closed_ && std::chrono::steady_clock::now() < until) {
        t.expires_at(std::min(until, std::chrono::steady_clock::now() + 100ms));
        co_await t.async_wait(tuple);
    }
}

namespace {
// What the garbage and wrong_id faults send.
constexpr std::string_view fault_garbage = "#fault: not JSON at all#\r\n";
}  // namespace

void qmp_session::enqueue(std::string bytes) {
    if (closing_ || closed_) return;
    queue_.push_back(std::move(bytes));
    wake_.cancel();
}

void qmp_session::close_after_flush() {
    closing_ = true;
    wake_.cancel();
}

void qmp_session::close_now() {
    queue_.clear();
    shut();
}

void qmp_session::shut() {
    if (closed_) return;
    closed_ = true;
    std::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);
    wake_.cancel();
}

asio::awaitable<void> qmp_session::write_bytes(std::string_view bytes) {
    auto [ec, n] = co_await asio::async_write(socket_, asio::buffer(bytes), tuple);
    if (ec) shut();
}

// With one write per byte the peer could still read several at once; waiting until the
// kernel says the peer has consumed everything (SIOCOUTQ == 0) makes each read one byte.
asio::awaitable<void> qmp_session::wait_until_read() {
    asio::steady_timer t(socket_.get_executor());
    const auto give_up = std::chrono::steady_clock::now() + 2s;
    while (!closed_ && std::chrono::steady_clock::now() < give_up) {
        int pending = 0;
        if (::ioctl(socket_.native_handle(), SIOCOUTQ, &pending) != 0 || pending == 0) co_return;
        t.expires_after(100us);
        co_await t.async_wait(tuple);
    }
}

asio::awaitable<void> qmp_session::writer() {
    while (!closed_) {
        if (queue_.empty()) {
            if (closing_) break;
            wake_.expires_at(asio::steady_timer::time_point::max());
            co_await wake_.async_wait(tuple);
            continue;
        }
        if (options_.close_after_messages && messages_sent_ >= *options_.close_after_messages)
            break;
        // Which messages go out in this write.
        std::size_t take = options_.coalesce ? queue_.size() : 1;
        if (options_.close_after_messages)
            take = std::min(take, *options_.close_after_messages - messages_sent_);
        if (options_.close_mid_message && messages_sent_ < *options_.close_mid_message)
            take = std::min(take, *options_.close_mid_message - messages_sent_);
        std::string chunk;
        std::size_t last_size = 0;
        for (std::size_t i = 0; i < take; ++i) {
            last_size = queue_.front().size();
            chunk += queue_.front();
            queue_.pop_front();
        }
        messages_sent_ += take;
        // close_mid_message: message N (the last of this chunk) goes out only half.
        const bool cut_mid =
            options_.close_mid_message && messages_sent_ == *options_.close_mid_message;
        std::size_t limit = chunk.size();
        if (cut_mid) limit = chunk.size() - last_size + std::max<std::size_t>(1, last_size / 2);
        const std::string_view out(chunk.data(), limit);
        if (options_.byte_by_byte) {
            for (std::size_t i = 0; i < out.size() && !closed_; ++i) {
                co_await write_bytes(out.substr(i, 1));
                co_await wait_until_read();
            }
        } else {
            co_await write_bytes(out);
        }
        if (cut_mid ||
            (options_.close_after_messages && messages_sent_ >= *options_.close_after_messages)) {
            if (log_) log_(fmt::format("qmp: closing after {} messages (hostile)", messages_sent_));
            shut();
        }
    }
    shut();
}

asio::awaitable<void> qmp_session::process(const json_reader::item& item) {
    const std::string name = command_of(item);
    if (log_) log_(fmt::format("qmp: <- {}", item.json ? to_qemu_json(*item.json) : item.error));
    const bool faulted = fault_strikes(++commands_seen_ + 1, name.empty() ? "(no command)" : name);
    if (faulted && fault_->what == wire_fault::kind::cut) {
        shut();
        co_return;
    }
    if (faulted && fault_->what == wire_fault::kind::delay) {
        co_await fault_delay();
        if (closed_) co_return;
    }
    if (!name.empty() && options_.never_answer && name == *options_.never_answer) {
        if (log_) log_(fmt::format("qmp: swallowing {} (never_answer)", name));
        co_return;
    }
    auto response = dispatcher_.handle(item);
    if (!response.reply) co_return;
    const bool huge = options_.huge && response.command == options_.huge->command &&
                      response.reply->contains("return");
    // The huge list is spliced into the framed reply as text, in place of this placeholder.
    static constexpr std::string_view huge_placeholder = "x-fake-huge-reply";
    if (huge) (*response.reply)["return"] = huge_placeholder;
    if (options_.delay_reply && response.command == options_.delay_reply->command) {
        asio::steady_timer t(socket_.get_executor());
        t.expires_after(options_.delay_reply->delay);
        co_await t.async_wait(tuple);
    }
    if (options_.error_without_id_before && response.command == *options_.error_without_id_before) {
        value e = value::object();
        e["class"] = "GenericError";
        e["desc"] = "JSON parse error, expecting value";
        value message = value::object();
        message["error"] = std::move(e);
        enqueue(shaper_.frame(message));
    }
    if (faulted && fault_->what == wire_fault::kind::garbage) {
        enqueue(std::string(fault_garbage));
        co_return;
    }
    if (faulted && fault_->what == wire_fault::kind::wrong_id)
        (*response.reply)["id"] = "fault-wrong-id";
    auto framed = shaper_.frame(*response.reply);
    if (huge) {
        const auto quoted = fmt::format("\"{}\"", huge_placeholder);
        if (const auto at = framed.find(quoted); at != std::string::npos)
            framed.replace(at, quoted.size(), huge_schema_text(options_.huge->bytes));
    }
    enqueue(std::move(framed));
}

asio::awaitable<void> qmp_session::run() {
    auto self = shared_from_this();
    const auto subscription =
        vm_.subscribe_events([this](const value& event, std::string_view raw) {
            // No events before negotiation (qmp.md, "Session").
            if (!dispatcher_.negotiated()) return;
            enqueue(raw.empty() ? shaper_.frame(event) : std::string(raw));
        });
    asio::co_spawn(
        socket_.get_executor(), [self]() { return self->writer(); }, asio::detached);
    if (primary_ && options_.greeting_delay && !options_.hang_qmp) {
        // A loaded host: the greeting comes late; a client that leaves meanwhile ends it.
        if (log_) log_("qmp: greeting delayed (greeting_delay_ms)");
        asio::steady_timer t(socket_.get_executor(), *options_.greeting_delay);
        co_await t.async_wait(tuple);
    }
    if (!options_.hang_qmp) {
        if (options_.event_before_greeting)
            enqueue(shaper_.frame(make_event(*options_.event_before_greeting)));
        if (!fault_strikes(1, "greeting")) {
            enqueue(shaper_.frame(dispatcher_.greeting()));
        } else if (fault_->what == wire_fault::kind::cut) {
            shut();
        } else if (fault_->what == wire_fault::kind::delay) {
            co_await fault_delay();
            enqueue(shaper_.frame(dispatcher_.greeting()));
        } else if (fault_->what == wire_fault::kind::garbage) {
            enqueue(std::string(fault_garbage));
        } else {
            // A reply where the greeting belongs.
            value reply = value::object();
            reply["return"] = value::object();
            reply["id"] = "fault-wrong-id";
            enqueue(shaper_.frame(reply));
        }
    }
    std::string buffer(64 * 1024, '\0');
    std::vector<json_reader::item> items;
    while (!closed_) {
        auto [ec, n] = co_await socket_.async_read_some(asio::buffer(buffer), tuple);
        if (ec) break;
        // hang_qmp_after_ms: the main loop is wedged, the monitor's own thread still reads.
        if (vm_.qmp_hung() || closing_) continue;
        items.clear();
        reader_.feed(std::string_view(buffer.data(), n), items);
        for (const auto& item : items) {
            if (closed_ || closing_ || vm_.qmp_hung()) break;
            co_await process(item);
            // Let work the command posted (a job's later transitions) run before the next
            // command, as QEMU's main loop does between two in-band commands.
            co_await asio::post(socket_.get_executor(), asio::use_awaitable);
        }
    }
    vm_.unsubscribe_events(subscription);
    // The client left: drop what it did not read.
    queue_.clear();
    shut();
}

}  // namespace stackemu::fake
