// A client for the QEMU guest agent (QGA): resynchronisation, one command at a time, typed helpers.
#pragma once

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

// The agent speaks QMP's JSON dispatcher but has no greeting, no negotiation and no events; it
// runs one command at a time, and its channel outlives clients, so it may hold stale bytes and
// replies of an earlier client (qmp.md, "Guest agent (QGA) over virtio-serial").
namespace stackemu::qmp::qga {

using std::chrono::milliseconds;

struct client_options {
    milliseconds connect_timeout{5000};
    // Each resynchronisation (guest-sync-delimited) has its own deadline. A connect succeeds
    // even when no agent runs in the guest: this is what turns that into an error.
    milliseconds sync_timeout{5000};
    // Default for execute() without its own timeout: from the call until the reply, including
    // the time spent queued behind earlier commands, excluding a resync before sending.
    milliseconds command_timeout{30000};
    // guest-shutdown and guest-suspend-* never reply on success: how long to wait for an error.
    milliseconds no_reply_grace{1000};
    std::size_t max_message_bytes = default_max_message;
    // Observes every message sent (outgoing=true) and received, e.g. for --trace.
    std::function<void(bool outgoing, std::string_view text)> trace;
};

struct client_stats {
    std::uint64_t syncs = 0;          // guest-sync-delimited exchanges started
    std::uint64_t failed_syncs = 0;   // ... that ended without the agent's answer
    std::uint64_t commands_sent = 0;  // not counting syncs
    std::uint64_t stale_replies = 0;  // replies dropped: another id, or an earlier sync's answer
};

namespace detail {
class agent_session;
}

class client {
  public:
    // Opens the channel. No bytes are exchanged: the first command resynchronises first.
    static asio::awaitable<result<client>> connect(endpoint ep, client_options options = {});
    // Same, over a socket that is already connected.
    static client attach(stream_socket socket, client_options options = {});

    // A handle with no connection (is_open() is false).
    client() = default;
    client(client&&) noexcept;
    client& operator=(client&&) noexcept;
    client(const client&) = delete;
    client& operator=(const client&) = delete;
    ~client();  // closes the connection

    // Sends a command after the commands already queued, resynchronising first when needed, and
    // waits for its reply. The agent's error replies come back as errc::qemu_error with its
    // class and desc. A timeout or protocol error leaves the connection usable: the next command
    // resynchronises first, so a late reply is never taken for another command's.
    // guest-shutdown and guest-suspend-* succeed when no error comes within no_reply_grace, or
    // when the channel closes.
    asio::awaitable<result<json>> execute(std::string_view name, json arguments = json::object(),
                                          std::optional<milliseconds> timeout = std::nullopt);

    // Resynchronises now (queued like a command): errc::agent_unavailable when the agent does
    // not answer within `timeout` (default: the options' sync_timeout). Useful to wait for an
    // agent that is starting: call again after a failure.
    asio::awaitable<result<void>> sync(std::optional<milliseconds> timeout = std::nullopt);

    bool is_open() const;
    // True until the first successful sync, and after any timeout or protocol error.
    bool needs_resync() const;
    const client_stats& stats() const;
    // Closes the connection: the running and queued commands fail with errc::closed.
    void close();

  private:
    explicit client(std::shared_ptr<detail::agent_session> session);
    std::shared_ptr<detail::agent_session> session_;
};

// ---- typed helpers (qapi/qga-schema.json) ----

asio::awaitable<result<void>> ping(client& c);

struct command_info {
    std::string name;
    bool enabled = true;
    bool success_response = true;  // false for commands that never reply on success
};

struct agent_info {
    std::string version;
    std::vector<command_info> commands;
    bool supports(std::string_view command) const;
};

asio::awaitable<result<agent_info>> get_info(client& c);

// guest-get-osinfo; every field is optional in the schema and empty when absent.
struct os_info {
    std::string id;           // "debian"
    std::string name;         // "Debian GNU/Linux"
    std::string pretty_name;  // "Debian GNU/Linux 12 (bookworm)"
    std::string version;      // "12 (bookworm)"
    std::string version_id;   // "12"
    std::string variant;
    std::string variant_id;
    std::string kernel_release;  // "6.1.0-18-amd64"
    std::string kernel_version;  // "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"
    std::string machine;         // "x86_64"
};

asio::awaitable<result<os_info>> get_osinfo(client& c);

struct exec_request {
    std::string path;
    std::vector<std::string> args;
    std::vector<std::string> env;           // "NAME=value"
    std::optional<std::string> input_data;  // bytes for stdin; base64-encoded on the wire
    bool capture_output = true;
};

// guest-exec-status. out_data and err_data are the decoded bytes (only with capture_output).
struct exec_result {
    bool exited = false;
    std::optional<int> exit_code;  // set when the process exited normally
    std::optional<int> signal;     // set when a signal ended it
    std::string out_data;
    std::string err_data;
    bool out_truncated = false;  // the agent caps captured output (16 MiB in QEMU 7.2)
    bool err_truncated = false;
};

// Starts a process in the guest; returns its pid.
asio::awaitable<result<std::int64_t>> exec(client& c, exec_request request);
// Once it has reported exited=true, the agent forgets the pid.
asio::awaitable<result<exec_result>> exec_status(client& c, std::int64_t pid);
// exec, then poll exec_status (10 ms, backing off to 200 ms: the protocol has no completion
// event) until the process exits, all within `timeout`. A process still running then gives
// errc::timeout; it keeps running in the guest.
asio::awaitable<result<exec_result>> run(client& c, exec_request request, milliseconds timeout);

// mode: "powerdown" (ACPI-like, default), "halt" or "reboot". Success means the agent accepted
// it (no error within the grace period); watch QMP for SHUTDOWN to know the guest obeyed.
asio::awaitable<result<void>> shutdown(client& c, std::string mode = "powerdown");

// Sets the guest's clock to `ns_since_epoch`, or, without it, from the hardware clock (RTC).
asio::awaitable<result<void>> set_time(client& c, std::optional<std::int64_t> ns_since_epoch);
// The guest's clock, in nanoseconds since the Unix epoch.
asio::awaitable<result<std::int64_t>> get_time(client& c);

// Files in the guest. mode is fopen()'s: "r", "w", "a", "r+", "w+", "a+" (optionally with "b").
asio::awaitable<result<std::int64_t>> file_open(client& c, std::string path,
                                                std::string mode = "r");

struct file_chunk {
    std::string bytes;
    bool eof = false;  // as feof(): true once a read has hit the end
};

asio::awaitable<result<file_chunk>> file_read(client& c, std::int64_t handle,
                                              std::size_t count = 4096);
// Returns the number of bytes written.
asio::awaitable<result<std::size_t>> file_write(client& c, std::int64_t handle, std::string bytes);

enum class seek_whence { set, cur, end };

struct seek_result {
    std::int64_t position = 0;
    bool eof = false;
};

asio::awaitable<result<seek_result>> file_seek(client& c, std::int64_t handle, std::int64_t offset,
                                               seek_whence whence = seek_whence::set);
asio::awaitable<result<void>> file_close(client& c, std::int64_t handle);

}  // namespace stackemu::qmp::qga
