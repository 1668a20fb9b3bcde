// The guest-agent client: a turnstile serialises commands; each one reads its own reply.
#include "qmp/qga.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <deque>
#include <limits>
#include <random>

#include "common/base64.hpp"
#include "qmp/qga_sync.hpp"

namespace stackemu::qmp::qga {

namespace {

using clock = std::chrono::steady_clock;
constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

// Commands that end (or suspend) the guest and therefore never reply on success (qga-schema).
bool never_replies(std::string_view name) {
    return name == "guest-shutdown" || name == "guest-suspend-disk" ||
           name == "guest-suspend-ram" || name == "guest-suspend-hybrid";
}

milliseconds ms_until(clock::time_point deadline) {
    return std::max(std::chrono::duration_cast<milliseconds>(deadline - clock::now()),
                    milliseconds(0));
}

}  // namespace

namespace detail {

// One caller waiting for its turn at the agent.
struct turn_waiter {
    explicit turn_waiter(const asio::any_io_executor& ex) : wake(ex) {}
    asio::steady_timer wake;  // waits until the caller's deadline; cancelled to hand over the turn
    bool granted = false;
};

class agent_session : public std::enable_shared_from_this<agent_session> {
  public:
    agent_session(stream_socket socket, client_options options)
        : socket_(std::move(socket)),
          options_(std::move(options)),
          framer_(options_.max_message_bytes),
          timer_(socket_.get_executor()),
          rng_(seeded_generator()) {}

    asio::awaitable<result<json>> execute(std::string name, json arguments,
                                          std::optional<milliseconds> timeout);
    asio::awaitable<result<void>> sync(std::optional<milliseconds> timeout);

    bool is_open() const { return !end_; }
    bool needs_resync() const { return needs_resync_; }
    const client_stats& stats() const { return stats_; }
    void close() {
        end(make_error(errc::closed, "the guest agent channel was closed by this client"));
    }

  private:
    // Releases the turn when the command ends, however it ends.
    class turn {
      public:
        explicit turn(std::shared_ptr<agent_session> s) : s_(std::move(s)) {}
        turn(const turn&) = delete;
        turn& operator=(const turn&) = delete;
        ~turn() { s_->release(); }

      private:
        std::shared_ptr<agent_session> s_;
    };

    // What one read from the channel gave.
    enum class read_status { data, timed_out, cancelled, ended };

    // Sync tokens must differ between clients, including two in one process.
    static std::mt19937_64 seeded_generator() {
        std::random_device device;
        std::seed_seq seq{device(), device(), device(), device()};
        return std::mt19937_64(seq);
    }

    asio::awaitable<result<void>> acquire(clock::time_point deadline, std::string what);
    void release();
    asio::awaitable<result<void>> resync(milliseconds limit);
    asio::awaitable<result<json>> await_reply(std::string name, std::uint64_t id,
                                              clock::time_point deadline, milliseconds limit);
    asio::awaitable<result<json>> await_no_reply(std::string name, std::uint64_t id);
    asio::awaitable<result<void>> write(std::string bytes, clock::time_point deadline,
                                        std::string what);
    asio::awaitable<read_status> read(clock::time_point deadline);
    // The reply for command `id` among the framed messages, if one is complete; stale replies
    // are dropped. An error means a protocol error.
    result<std::optional<result<json>>> next_reply(std::string_view name, std::uint64_t id);
    error failure_after_read(read_status status, std::string_view what);
    void end(error why);

    stream_socket socket_;
    client_options options_;
    framer framer_;
    asio::steady_timer timer_;  // deadline of the one read or write in progress
    std::array<char, 65536> buffer_{};
    std::string_view last_read_;  // what the last read() gave, inside buffer_
    std::optional<error> end_;
    bool needs_resync_ = true;

    bool busy_ = false;
    std::deque<std::shared_ptr<turn_waiter>> waiters_;

    std::mt19937_64 rng_;
    std::uint64_t next_id_ = 1;
    client_stats stats_;
};

asio::awaitable<result<void>> agent_session::acquire(clock::time_point deadline, std::string what) {
    if (!busy_) {
        busy_ = true;
        co_return result<void>{};
    }
    auto waiter = std::make_shared<turn_waiter>(socket_.get_executor());
    waiters_.push_back(waiter);
    waiter->wake.expires_at(deadline);
    asio::error_code ec;
    co_await waiter->wake.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (waiter->granted) {
        if (clock::now() < deadline || end_) co_return result<void>{};
        // The turn came as the deadline passed: hand it on without sending anything.
        release();
        ec = {};
    } else {
        std::erase(waiters_, waiter);
    }
    if (end_) co_return fail(*end_);
    if (ec == asio::error::operation_aborted)
        co_return fail(errc::cancelled, fmt::format("{} was cancelled", what));
    co_return fail(
        errc::timeout,
        fmt::format("{} waited in vain for earlier guest-agent commands to finish", what));
}

void agent_session::release() {
    if (waiters_.empty()) {
        busy_ = false;
        return;
    }
    auto next = std::move(waiters_.front());
    waiters_.pop_front();
    next->granted = true;
    next->wake.cancel();
}

asio::awaitable<result<json>> agent_session::execute(std::string name, json arguments,
                                                     std::optional<milliseconds> timeout) {
    auto self = shared_from_this();
    const milliseconds limit = timeout.value_or(options_.command_timeout);
    const auto deadline = clock::now() + limit;
    if (end_) co_return fail(*end_);
    if (auto ok = co_await acquire(deadline, name); !ok) co_return fail(ok.error());
    turn held(self);
    if (end_) co_return fail(*end_);

    if (needs_resync_) {
        if (auto ok = co_await resync(options_.sync_timeout); !ok) co_return fail(ok.error());
    }
    const std::uint64_t id = next_id_++;
    std::string bytes = encode_command(name, arguments, id);
    if (options_.trace) options_.trace(true, bytes);
    ++stats_.commands_sent;
    if (auto ok = co_await write(std::move(bytes), deadline, name); !ok) co_return fail(ok.error());
    if (never_replies(name)) co_return co_await await_no_reply(std::move(name), id);
    co_return co_await await_reply(std::move(name), id, deadline, limit);
}

asio::awaitable<result<void>> agent_session::sync(std::optional<milliseconds> timeout) {
    auto self = shared_from_this();
    const milliseconds limit = timeout.value_or(options_.sync_timeout);
    if (end_) co_return fail(*end_);
    // Waiting for the turn is bounded by the commands ahead; the sync itself by `limit`.
    if (auto ok = co_await acquire(clock::time_point::max(), "guest-sync-delimited"); !ok)
        co_return fail(ok.error());
    turn held(self);
    if (end_) co_return fail(*end_);
    co_return co_await resync(limit);
}

// 0xFF first, so that the agent drops any half-read request of an earlier client; then
// guest-sync-delimited, whose reply the agent precedes with 0xFF. Everything before that byte is
// stale, and so is any reply after it that does not carry our token: an earlier client's sync
// may still be queued in the channel (qga-schema.json, guest-sync-delimited).
asio::awaitable<result<void>> agent_session::resync(milliseconds limit) {
    ++stats_.syncs;
    needs_resync_ = true;
    const auto deadline = clock::now() + limit;
    const std::int64_t token =
        std::uniform_int_distribution<std::int64_t>(1, (std::int64_t{1} << 53) - 1)(rng_);
    framer_.reset();
    sync_reader answer(
        token, options_.trace ? std::function<void(std::string_view)>(
                                    [this](std::string_view text) { options_.trace(false, text); })
                              : nullptr);
    const std::uint64_t stale_before = stats_.stale_replies;

    json request = {{"execute", "guest-sync-delimited"}, {"arguments", {{"id", token}}}};
    std::string text = request.dump() + "\n";
    if (options_.trace) options_.trace(true, text);
    auto sent = co_await write(sync_sentinel + text, deadline, "guest-sync-delimited");
    if (!sent) {
        ++stats_.failed_syncs;
        if (sent.error().code == errc::timeout) {
            co_return fail(errc::agent_unavailable,
                           fmt::format("the guest agent channel did not take a sync request "
                                       "within {} ms: is qemu-guest-agent running in the guest?",
                                       limit.count()));
        }
        co_return fail(sent.error());
    }
    for (;;) {
        const auto status = co_await read(deadline);
        if (status != read_status::data) {
            ++stats_.failed_syncs;
            if (status == read_status::timed_out)
                co_return fail(errc::agent_unavailable,
                               fmt::format("the guest agent did not answer within {} ms: is "
                                           "qemu-guest-agent running in the guest?",
                                           limit.count()));
            co_return fail(failure_after_read(status, "guest-sync-delimited"));
        }
        const bool answered = answer.feed(last_read_, framer_);
        stats_.stale_replies = stale_before + answer.stale_replies();
        if (answered) {
            needs_resync_ = false;
            co_return result<void>{};
        }
    }
}

asio::awaitable<result<json>> agent_session::await_reply(std::string name, std::uint64_t id,
                                                         clock::time_point deadline,
                                                         milliseconds limit) {
    for (;;) {
        auto reply = next_reply(name, id);
        if (!reply) {
            needs_resync_ = true;
            co_return fail(reply.error());
        }
        if (*reply) co_return std::move(**reply);
        const auto status = co_await read(deadline);
        if (status == read_status::data) {
            framer_.feed(last_read_);
            continue;
        }
        if (status == read_status::timed_out) {
            needs_resync_ = true;
            co_return fail(
                errc::timeout,
                fmt::format("the guest agent did not answer {} within {} ms", name, limit.count()));
        }
        co_return fail(failure_after_read(status, name));
    }
}

// guest-shutdown and guest-suspend-*: an error reply comes at once; success never replies, and
// the channel may close as the guest goes down. Either way the stream is in an unknown state.
asio::awaitable<result<json>> agent_session::await_no_reply(std::string name, std::uint64_t id) {
    const auto deadline = clock::now() + options_.no_reply_grace;
    needs_resync_ = true;
    for (;;) {
        auto reply = next_reply(name, id);
        if (!reply) co_return json::object();  // noise from a guest going down is not an error
        if (*reply) {
            if (!**reply) co_return std::move(**reply);
            co_return json::object();
        }
        const auto status = co_await read(deadline);
        if (status == read_status::data) {
            framer_.feed(last_read_);
            continue;
        }
        if (status == read_status::cancelled) co_return fail(failure_after_read(status, name));
        // The grace period passed without an error, or the channel closed: success.
        if (status == read_status::ended && end_ && end_->code == errc::closed)
            co_return fail(*end_);
        co_return json::object();
    }
}

result<std::optional<result<json>>> agent_session::next_reply(std::string_view name,
                                                              std::uint64_t id) {
    for (;;) {
        auto next = framer_.next();
        if (!next) return fail(next.error());
        if (!*next) return std::optional<result<json>>{};
        if (options_.trace) options_.trace(false, **next);
        auto msg = parse_message(**next);
        if (!msg) return fail(msg.error());
        // Matched by id when the agent echoes it; otherwise in order, which is safe because the
        // agent runs one command at a time and the stream was resynchronised.
        std::optional<json> reply_id;
        result<json> outcome;
        if (auto* ok = std::get_if<success_reply>(&*msg)) {
            reply_id = ok->id;
            outcome = std::move(ok->value);
        } else if (auto* err = std::get_if<error_reply>(&*msg)) {
            reply_id = err->id;
            outcome = fail(make_qemu_error(err->error_class, err->desc,
                                           fmt::format("the guest agent refused {}", name)));
        } else {
            return fail(
                errc::protocol_error,
                fmt::format("the guest agent sent something other than a reply: {:.200}", **next));
        }
        if (reply_id && (!reply_id->is_number_unsigned() || reply_id->get<std::uint64_t>() != id)) {
            ++stats_.stale_replies;
            continue;
        }
        return std::optional<result<json>>(std::move(outcome));
    }
}

asio::awaitable<result<void>> agent_session::write(std::string bytes, clock::time_point deadline,
                                                   std::string what) {
    using namespace asio::experimental::awaitable_operators;
    timer_.expires_at(deadline);
    auto outcome = co_await (asio::async_write(socket_, asio::buffer(bytes), as_tuple_awaitable) ||
                             timer_.async_wait(as_tuple_awaitable));
    if (end_) co_return fail(*end_);
    if (outcome.index() == 1) {
        // Part of a request may be in the channel: the agent must be resynchronised.
        needs_resync_ = true;
        auto [ec] = std::get<1>(outcome);
        if (ec) co_return fail(errc::cancelled, fmt::format("{} was cancelled", what));
        co_return fail(errc::timeout,
                       fmt::format("the guest agent channel did not take {} in time", what));
    }
    auto [ec, n] = std::get<0>(outcome);
    if (ec == asio::error::operation_aborted) {
        needs_resync_ = true;
        co_return fail(errc::cancelled, fmt::format("{} was cancelled", what));
    }
    if (ec) {
        error why =
            make_error(errc::disconnected,
                       fmt::format("writing {} to the guest agent failed: {}", what, ec.message()));
        end(why);
        co_return fail(why);
    }
    co_return result<void>{};
}

// When the deadline and the data arrive together, `||` may drop the data. That is harmless:
// a timeout always leads to a resync, which discards everything before its sentinel anyway.
asio::awaitable<agent_session::read_status> agent_session::read(clock::time_point deadline) {
    using namespace asio::experimental::awaitable_operators;
    last_read_ = {};
    timer_.expires_at(deadline);
    auto outcome = co_await (socket_.async_read_some(asio::buffer(buffer_), as_tuple_awaitable) ||
                             timer_.async_wait(as_tuple_awaitable));
    if (end_) co_return read_status::ended;
    if (outcome.index() == 1) {
        auto [ec] = std::get<1>(outcome);
        co_return ec ? read_status::cancelled : read_status::timed_out;
    }
    auto [ec, n] = std::get<0>(outcome);
    if (ec == asio::error::operation_aborted) co_return read_status::cancelled;
    if (ec) {
        const bool eof = ec == asio::error::eof || ec == asio::error::connection_reset;
        end(make_error(errc::disconnected,
                       eof ? "the guest agent channel was closed"
                           : "reading from the guest agent failed: " + ec.message()));
        co_return read_status::ended;
    }
    last_read_ = std::string_view(buffer_.data(), n);
    co_return read_status::data;
}

error agent_session::failure_after_read(read_status status, std::string_view what) {
    if (status == read_status::cancelled) {
        needs_resync_ = true;
        return make_error(errc::cancelled, fmt::format("{} was cancelled", what));
    }
    if (end_) {
        error why = *end_;
        if (why.code == errc::disconnected)
            why.message = fmt::format("{} while waiting for {}", why.message, what);
        return why;
    }
    return make_error(errc::internal, fmt::format("no outcome for {}", what));
}

void agent_session::end(error why) {
    if (end_) return;
    end_ = std::move(why);
    asio::error_code ignored;
    socket_.shutdown(asio::socket_base::shutdown_both, ignored);
    socket_.close(ignored);
    timer_.cancel();
    auto waiting = std::move(waiters_);
    for (auto& w : waiting)
        w->wake.cancel();
}

}  // namespace detail

// ---- client ----

namespace {
const client_stats no_stats{};
}  // namespace

client::client(std::shared_ptr<detail::agent_session> session) : session_(std::move(session)) {
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

asio::awaitable<result<client>> client::connect(endpoint ep, client_options options) {
    auto socket = co_await open_stream(ep, options.connect_timeout);
    if (!socket) co_return fail(socket.error());
    co_return attach(std::move(*socket), std::move(options));
}

client client::attach(stream_socket socket, client_options options) {
    return client(std::make_shared<detail::agent_session>(std::move(socket), std::move(options)));
}

namespace {
asio::awaitable<result<json>> not_connected_json() {
    co_return fail(errc::closed, "this guest-agent client is not connected");
}
asio::awaitable<result<void>> not_connected_void() {
    co_return fail(errc::closed, "this guest-agent client is not connected");
}
}  // namespace

asio::awaitable<result<json>> client::execute(std::string_view name, json arguments,
                                              std::optional<milliseconds> timeout) {
    if (!session_) return not_connected_json();
    return session_->execute(std::string(name), std::move(arguments), timeout);
}

asio::awaitable<result<void>> client::sync(std::optional<milliseconds> timeout) {
    if (!session_) return not_connected_void();
    return session_->sync(timeout);
}

bool client::is_open() const {
    return session_ && session_->is_open();
}
bool client::needs_resync() const {
    return !session_ || session_->needs_resync();
}
const client_stats& client::stats() const {
    return session_ ? session_->stats() : no_stats;
}
void client::close() {
    if (session_) session_->close();
}

// ---- typed helpers ----

namespace {

std::unexpected<error> bad_reply(std::string_view command, std::string_view what, const json& v) {
    return fail(errc::protocol_error,
                fmt::format("the guest agent's reply to {} {}: {:.200}", command, what, v.dump()));
}

std::string string_field(const json& obj, const char* key) {
    auto it = obj.find(key);
    return it != obj.end() && it->is_string() ? it->get<std::string>() : std::string{};
}

bool bool_field(const json& obj, const char* key, bool fallback = false) {
    auto it = obj.find(key);
    return it != obj.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

std::optional<int> int_field(const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end() || !it->is_number_integer()) return std::nullopt;
    return it->get<int>();
}

// Decodes a base64 member, naming the command when the agent sent something undecodable.
result<std::string> bytes_field(std::string_view command, const json& obj, const char* key) {
    auto it = obj.find(key);
    if (it == obj.end()) return std::string{};
    if (!it->is_string()) return bad_reply(command, fmt::format("has a non-string {}", key), obj);
    auto bytes = base64_decode(it->get<std::string>());
    if (!bytes)
        return fail(errc::protocol_error,
                    fmt::format("the guest agent's {} in {} is not base64: {}", key, command,
                                bytes.error().message));
    return bytes;
}

result<std::int64_t> int64_reply(std::string_view command, const json& v) {
    if (!v.is_number_integer()) return bad_reply(command, "is not an integer", v);
    return v.get<std::int64_t>();
}

}  // namespace

bool agent_info::supports(std::string_view command) const {
    return std::ranges::any_of(
        commands, [&](const command_info& ci) { return ci.name == command && ci.enabled; });
}

asio::awaitable<result<void>> ping(client& c) {
    auto r = co_await c.execute("guest-ping");
    if (!r) co_return fail(r.error());
    co_return result<void>{};
}

asio::awaitable<result<agent_info>> get_info(client& c) {
    auto r = co_await c.execute("guest-info");
    if (!r) co_return fail(r.error());
    if (!r->is_object()) co_return bad_reply("guest-info", "is not an object", *r);
    agent_info info;
    info.version = string_field(*r, "version");
    if (auto cmds = r->find("supported_commands"); cmds != r->end() && cmds->is_array()) {
        for (const auto& cmd : *cmds) {
            if (!cmd.is_object()) continue;
            info.commands.push_back({string_field(cmd, "name"), bool_field(cmd, "enabled", true),
                                     bool_field(cmd, "success-response", true)});
        }
    }
    co_return info;
}

asio::awaitable<result<os_info>> get_osinfo(client& c) {
    auto r = co_await c.execute("guest-get-osinfo");
    if (!r) co_return fail(r.error());
    if (!r->is_object()) co_return bad_reply("guest-get-osinfo", "is not an object", *r);
    os_info os;
    os.id = string_field(*r, "id");
    os.name = string_field(*r, "name");
    os.pretty_name = string_field(*r, "pretty-name");
    os.version = string_field(*r, "version");
    os.version_id = string_field(*r, "version-id");
    os.variant = string_field(*r, "variant");
    os.variant_id = string_field(*r, "variant-id");
    os.kernel_release = string_field(*r, "kernel-release");
    os.kernel_version = string_field(*r, "kernel-version");
    os.machine = string_field(*r, "machine");
    co_return os;
}

asio::awaitable<result<std::int64_t>> exec(client& c, exec_request request) {
    json arguments = {{"path", request.path}, {"capture-output", request.capture_output}};
    if (!request.args.empty()) arguments["arg"] = request.args;
    if (!request.env.empty()) arguments["env"] = request.env;
    if (request.input_data) arguments["input-data"] = base64_encode(*request.input_data);
    auto r = co_await c.execute("guest-exec", std::move(arguments));
    if (!r) co_return fail(r.error());
    auto pid = r->is_object() ? r->find("pid") : r->end();
    if (pid == r->end() || !pid->is_number_integer())
        co_return bad_reply("guest-exec", "lacks an integer pid", *r);
    co_return pid->get<std::int64_t>();
}

namespace {

result<exec_result> decode_exec_status(const json& r) {
    if (!r.is_object() || !r.contains("exited"))
        return bad_reply("guest-exec-status", "lacks exited", r);
    exec_result out;
    out.exited = bool_field(r, "exited");
    out.exit_code = int_field(r, "exitcode");
    out.signal = int_field(r, "signal");
    auto out_data = bytes_field("guest-exec-status", r, "out-data");
    if (!out_data) return fail(out_data.error());
    auto err_data = bytes_field("guest-exec-status", r, "err-data");
    if (!err_data) return fail(err_data.error());
    out.out_data = std::move(*out_data);
    out.err_data = std::move(*err_data);
    out.out_truncated = bool_field(r, "out-truncated");
    out.err_truncated = bool_field(r, "err-truncated");
    return out;
}

}  // namespace

asio::awaitable<result<exec_result>> exec_status(client& c, std::int64_t pid) {
    json arguments = {{"pid", pid}};
    auto r = co_await c.execute("guest-exec-status", std::move(arguments));
    if (!r) co_return fail(r.error());
    co_return decode_exec_status(*r);
}

asio::awaitable<result<exec_result>> run(client& c, exec_request request, milliseconds timeout) {
    const auto deadline = clock::now() + timeout;
    const std::string path = request.path;
    auto pid = co_await exec(c, std::move(request));
    if (!pid) co_return fail(pid.error());
    auto too_slow = [&] {
        return fail(errc::timeout, fmt::format("{} (pid {} in the guest) did not exit within {} ms",
                                               path, *pid, timeout.count()));
    };
    asio::steady_timer pause(co_await asio::this_coro::executor);
    milliseconds interval{10};
    for (;;) {
        json arguments = {{"pid", *pid}};
        auto reply = co_await c.execute("guest-exec-status", std::move(arguments),
                                        std::max(ms_until(deadline), milliseconds(1)));
        if (!reply) {
            if (reply.error().code == errc::timeout) co_return too_slow();
            co_return fail(reply.error());
        }
        // The agent forgets a process once it has reported it exited: decode this very reply.
        auto status = decode_exec_status(*reply);
        if (!status || status->exited) co_return status;
        if (clock::now() + interval >= deadline) co_return too_slow();
        pause.expires_after(interval);
        asio::error_code ec;
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ec));
        if (ec) co_return fail(errc::cancelled, fmt::format("running {} was cancelled", path));
        interval = std::min(interval * 2, milliseconds(200));
    }
}

asio::awaitable<result<void>> shutdown(client& c, std::string mode) {
    json arguments = {{"mode", mode}};
    auto r = co_await c.execute("guest-shutdown", std::move(arguments));
    if (!r) co_return fail(r.error());
    co_return result<void>{};
}

asio::awaitable<result<void>> set_time(client& c, std::optional<std::int64_t> ns_since_epoch) {
    json arguments = json::object();
    if (ns_since_epoch) arguments["time"] = *ns_since_epoch;
    auto r = co_await c.execute("guest-set-time", std::move(arguments));
    if (!r) co_return fail(r.error());
    co_return result<void>{};
}

asio::awaitable<result<std::int64_t>> get_time(client& c) {
    auto r = co_await c.execute("guest-get-time");
    if (!r) co_return fail(r.error());
    co_return int64_reply("guest-get-time", *r);
}

asio::awaitable<result<std::int64_t>> file_open(client& c, std::string path, std::string mode) {
    json arguments = {{"path", path}, {"mode", mode}};
    auto r = co_await c.execute("guest-file-open", std::move(arguments));
    if (!r) co_return fail(r.error());
    co_return int64_reply("guest-file-open", *r);
}

asio::awaitable<result<file_chunk>> file_read(client& c, std::int64_t handle, std::size_t count) {
    json arguments = {{"handle", handle}, {"count", count}};
    auto r = co_await c.execute("guest-file-read", std::move(arguments));
    if (!r) co_return fail(r.error());
    if (!r->is_object()) co_return bad_reply("guest-file-read", "is not an object", *r);
    auto bytes = bytes_field("guest-file-read", *r, "buf-b64");
    if (!bytes) co_return fail(bytes.error());
    co_return file_chunk{std::move(*bytes), bool_field(*r, "eof")};
}

asio::awaitable<result<std::size_t>> file_write(client& c, std::int64_t handle, std::string bytes) {
    json arguments = {{"handle", handle}, {"buf-b64", base64_encode(bytes)}};
    auto r = co_await c.execute("guest-file-write", std::move(arguments));
    if (!r) co_return fail(r.error());
    auto count = r->is_object() ? r->find("count") : r->end();
    if (count == r->end() || !count->is_number_unsigned())
        co_return bad_reply("guest-file-write", "lacks a count", *r);
    co_return count->get<std::size_t>();
}

asio::awaitable<result<seek_result>> file_seek(client& c, std::int64_t handle, std::int64_t offset,
                                               seek_whence whence) {
    const char* names[] = {"set", "cur", "end"};
    json arguments = {
        {"handle", handle}, {"offset", offset}, {"whence", names[static_cast<int>(whence)]}};
    auto r = co_await c.execute("guest-file-seek", std::move(arguments));
    if (!r) co_return fail(r.error());
    auto position = r->is_object() ? r->find("position") : r->end();
    if (position == r->end() || !position->is_number_integer())
        co_return bad_reply("guest-file-seek", "lacks a position", *r);
    co_return seek_result{position->get<std::int64_t>(), bool_field(*r, "eof")};
}

asio::awaitable<result<void>> file_close(client& c, std::int64_t handle) {
    json arguments = {{"handle", handle}};
    auto r = co_await c.execute("guest-file-close", std::move(arguments));
    if (!r) co_return fail(r.error());
    co_return result<void>{};
}

}  // namespace stackemu::qmp::qga
