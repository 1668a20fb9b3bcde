// A fake QEMU guest agent (qemu-ga 7.2) on one stream socket, with hostile modes for tests.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/steady_timer.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <map>
#include <memory>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "options.hpp"
#include "qemu_json.hpp"
#include "qmp/endpoint.hpp"

namespace stackemu::fake {

// What a program run by guest-exec did. Nothing real runs: see agent::add_program.
struct program_result {
    int exit_code = 0;
    std::optional<int> signal;  // set: the process was killed by this signal
    std::string out;
    std::string err;
};

using program =
    std::function<program_result(const std::vector<std::string>& args, const std::string& input)>;

struct agent_options {
    std::string version = "7.2.22";
    // guest-get-osinfo's reply (Debian 12's by default).
    value osinfo = {{"name", "Debian GNU/Linux"},
                    {"kernel-release", "6.1.0-18-amd64"},
                    {"version", "12 (bookworm)"},
                    {"pretty-name", "Debian GNU/Linux 12 (bookworm)"},
                    {"version-id", "12"},
                    {"kernel-version", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.76-1 (2024-02-01)"},
                    {"machine", "x86_64"},
                    {"id", "debian"}};
    // How long a guest-exec'd process "runs": guest-exec-status says exited=false until then.
    std::chrono::milliseconds exec_duration{0};
    // qemu-ga keeps at most 16 MiB of each captured stream (GUEST_EXEC_MAX_OUTPUT).
    std::size_t max_output = 16u << 20;
    // qemu-ga echoes a request's "id"; off, it behaves like an agent that does not.
    bool echo_id = true;
    // Close the channel after guest-shutdown, as QEMU does when the guest powers off.
    bool close_after_shutdown = false;
};

// Serves the guest-agent protocol as qemu-ga does: one request at a time, in order; a 0xFF byte
// resets the parser (and, as a lexical error, is answered with an id-less GenericError);
// guest-sync-delimited's reply is preceded by 0xFF; guest-shutdown and guest-suspend-* never
// reply on success. Replies are written as QEMU's qobject_to_json writes them, one per line.
//
// Built-in programs for guest-exec: /bin/echo ARGS, /bin/cat (echoes input-data), /bin/true,
// /bin/false, and /bin/sh -c SCRIPT where SCRIPT is `;`-separated `echo WORDS [>&2]`,
// `cat`, `true`, `false`, `exit N` and `kill -N $$`. Other paths fail as a missing file does.
//
// State (files, clock, processes) outlives connections, as the guest's does.
class agent {
  public:
    explicit agent(agent_options options = {});
    agent(const agent&) = delete;
    agent& operator=(const agent&) = delete;
    ~agent();

    // Serves `socket` until the peer closes it, stop() or a hostile mode ends it. A second
    // serve() closes the first connection (QEMU's chardev serves one client at a time). The
    // agent must outlive the returned coroutine.
    asio::awaitable<void> serve(qmp::stream_socket socket);
    // Same, on a socket the caller keeps (fake QEMU's agent_channel handler); it must outlive
    // the returned coroutine.
    asio::awaitable<void> serve_borrowed(qmp::stream_socket& socket);
    // Closes the current connection (and ends a delay in progress).
    void stop();

    // ---- the guest ----
    void add_program(std::string path, program p);
    void set_file(std::string path, std::string contents);
    std::optional<std::string> file(const std::string& path) const;
    void remove_file(const std::string& path);
    std::vector<std::string> file_names() const;
    // Called with the mode when guest-shutdown is accepted (e.g. the fake QEMU emits SHUTDOWN).
    void on_shutdown(std::function<void(const std::string& mode)> callback);
    // The guest's clock, in ns since the epoch (host clock plus what guest-set-time changed).
    std::int64_t guest_time_ns() const;

    // ---- hostile modes ----
    // Bytes already in the channel when the next connection starts: an earlier client's
    // leftovers (half a message, old replies, old sentinels).
    void preload(std::string bytes);
    // No agent runs in the guest: requests are read and recorded, never answered.
    void set_silent(bool silent);
    // The agent takes `delay` before answering `command` (and, being synchronous, everything
    // sent after it waits too).
    void delay(std::string command, std::chrono::milliseconds delay);
    // The channel closes when `command` arrives, before any answer.
    void close_on(std::string command);
    // `command` fails with GenericError `desc`.
    void fail(std::string command, std::string desc);
    // `command` is answered with these raw bytes instead of its reply (garbage, a wrong id).
    void reply_raw(std::string command, std::string bytes);

    // The fake QEMU's "fault" option: from now on, requests are counted and the fault.at-th
    // gets the fault (logged to `log`); a cut calls `cut` to close the host's connection.
    void arm_fault(wire_fault fault, std::function<void(const std::string&)> log,
                   std::function<void()> cut);
    void disarm_fault();

    // ---- observation ----
    // Every request parsed, in order, including those a hostile mode did not answer.
    const std::vector<value>& received() const { return received_; }
    // The names of the requests received, in order.
    std::vector<std::string> received_names() const;
    std::size_t connections() const { return connections_; }

  private:
    struct open_file {
        std::string path;
        std::size_t position = 0;
        bool readable = false;
        bool writable = false;
        bool append = false;
    };
    struct process {
        std::chrono::steady_clock::time_point exits_at;
        program_result outcome;
        bool capture = false;
    };
    // A reply, an error, or nothing (commands that never reply on success).
    struct outcome {
        enum class kind { reply, error, none } what = kind::reply;
        value result;
        std::string error_class;
        std::string desc;
        bool delimited = false;  // precede the reply with 0xFF (guest-sync-delimited)
    };

    asio::awaitable<void> serve_connection(std::shared_ptr<qmp::stream_socket> sock);
    asio::awaitable<bool> handle(qmp::stream_socket& socket, std::string text);
    asio::awaitable<bool> send(qmp::stream_socket& socket, std::string bytes);
    outcome dispatch(const std::string& name, const value& args);
    bool fault_strikes(const std::string& name);
    outcome exec(const value& args);
    outcome exec_status(const value& args);
    outcome file_open(const value& args);
    outcome file_read(const value& args);
    outcome file_write(const value& args);
    outcome file_seek(const value& args);
    outcome file_close(const value& args);
    outcome info() const;
    std::optional<program_result> run_program(const std::string& path,
                                              const std::vector<std::string>& args,
                                              const std::string& input) const;

    agent_options options_;
    std::shared_ptr<qmp::stream_socket> socket_;
    std::shared_ptr<asio::steady_timer> busy_;  // a delayed command in progress
    std::string preload_;
    bool silent_ = false;
    std::map<std::string, std::chrono::milliseconds> delays_;
    std::set<std::string> close_on_;
    std::map<std::string, std::string> failures_;
    std::map<std::string, std::string> raw_replies_;
    std::function<void(const std::string&)> on_shutdown_;

    std::map<std::string, program> programs_;
    std::map<std::string, std::string> files_;
    std::map<std::int64_t, open_file> handles_;
    std::int64_t next_handle_ = 1000;  // QGA_PSTATE_DEFAULT_FD_COUNTER
    std::map<std::int64_t, process> processes_;
    std::int64_t next_pid_ = 4242;
    std::int64_t clock_offset_ns_ = 0;

    struct armed_fault {
        wire_fault fault;
        std::function<void(const std::string&)> log;
        std::function<void()> cut;
        std::size_t seen = 0;
    };
    std::optional<armed_fault> fault_;

    std::vector<value> received_;
    std::size_t connections_ = 0;
};

}  // namespace stackemu::fake
