// What a fake QEMU is asked to be: version, guest behaviour, console script and hostile modes.
#pragma once

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "qemu_json.hpp"

namespace stackemu::fake {

// Events a console step sends right after its action, in the same turn (so one write with
// "coalesce"): `count` events named `event` with data {"n": i}; with `invalid_utf8` each
// event's data holds a string that is not UTF-8, sent as raw bytes (QEMU itself would escape it).
struct event_burst {
    std::string event = "BLOCK_IO_ERROR";
    std::size_t count = 0;
    bool invalid_utf8 = false;
};

// One step of the fake guest's serial console, `after_ms` after the previous step.
struct console_step {
    enum class kind { line, ready, panic, crash, poweroff, reboot };
    std::chrono::milliseconds after{0};
    kind what = kind::line;
    std::string line;           // for kind::line
    std::optional<value> info;  // for kind::panic: GUEST_PANICKED's optional "info"
    std::optional<event_burst> burst;
};

struct command_delay {
    std::string command;
    std::chrono::milliseconds delay{0};
};

struct huge_reply {
    std::string command;
    std::size_t bytes = 0;
};

// One fault injected at one step of one connection ("fault" option). Steps on a QMP session:
// 1 is the greeting, k+1 the reply to the k-th command received. Steps on the agent channel:
// the k-th request the guest agent reads from the host connection. The faulted connection is
// the first one opened on that channel once the fault is armed: at once, or with `armed_by`
// when that file exists (so a test can start a VM cleanly and fault a later command).
struct wire_fault {
    enum class channel { qmp, agent };
    enum class kind {
        cut,       // the connection closes instead of the step (the command is not run)
        delay,     // the step waits `delay` first (the command runs late)
        garbage,   // a line of non-JSON instead of the reply (the command runs)
        wrong_id,  // the reply carries an id the client never sent (the command runs)
    };
    channel where = channel::qmp;
    std::size_t at = 1;
    kind what = kind::cut;
    std::chrono::milliseconds delay{600000};
    std::optional<std::string> armed_by;
};
std::string_view to_string(wire_fault::kind k);

struct options {
    // Identity.
    int major = 7;
    int minor = 2;
    int micro = 22;
    std::string package = "Debian 1:7.2+dfsg-7+deb12u18+b3";
    std::vector<std::string> capabilities{"oob"};
    std::optional<std::string> name;  // -name; query-name returns {} without it
    bool kvm_enabled = false;
    bool kvm_present = false;
    std::string program_name = "qemu-system-x86_64";  // prefix of error messages

    // Machine and guest.
    bool start_paused = false;  // -S
    bool no_shutdown = false;   // -no-shutdown
    bool no_reboot = false;     // -no-reboot
    bool cooperative_guest = true;
    std::chrono::milliseconds powerdown_delay{200};
    bool firmware_reset = true;  // SeaBIOS's own RESET (guest-reset) after a system_reset
    std::string panic_action = "shutdown";  // -action panic=: shutdown, pause, none, exit-failure
    std::optional<bool> pvpanic;            // GUEST_PANICKED only with the device (default on)
    std::vector<std::string> block_nodes{"disk0"};  // node names snapshots may name
    std::optional<std::string> state_file;          // snapshot table shared between processes
    std::vector<console_step> console;
    std::string http_body = "fake-qemu guest says hello\n";
    // A guest agent (qemu-ga) runs in the guest: it answers on the agent channel while the
    // guest is up (after the console's ready step; at once without one) and its CPUs run.
    bool agent = true;

    // Hostile wire behaviour.
    bool byte_by_byte = false;
    bool coalesce = false;
    bool pretty = false;
    bool noise = false;
    bool garbage = false;
    std::optional<std::string> error_without_id_before;  // command name
    std::optional<command_delay> delay_reply;
    std::optional<std::string> never_answer;           // command name
    std::optional<std::size_t> close_after_messages;   // greeting is message 1
    std::optional<std::size_t> close_mid_message;      // 1-based message number
    std::optional<std::string> event_before_greeting;  // event name
    std::optional<huge_reply> huge;
    std::optional<value> greeting;  // sent instead of the real greeting
    bool hang_qmp = false;
    // QEMU's main loop wedges this long after the guest is ready (after start when the console
    // has no ready step): the monitor still greets new clients, but no command is answered.
    std::optional<std::chrono::milliseconds> hang_qmp_after;
    // The controller's monitor (the first QMP monitor, qmp.sock): its greeting comes this late
    // (a loaded host); and after this many clients it accepts no more, so further connects
    // fill its backlog (a wedged main loop). The second monitor is not affected.
    std::optional<std::chrono::milliseconds> greeting_delay;
    std::optional<std::size_t> accept_limit;
    // `quit` ends the process at once: no reply, no SHUTDOWN (QEMU can close before flushing).
    bool quit_without_reply = false;
    // After the guest's own SHUTDOWN the process stays this long before it exits (`quit`
    // still ends it at once).
    std::optional<std::chrono::milliseconds> linger_after_shutdown;

    // Process level.
    bool ignore_sigterm = false;
    bool ignore_quit = false;  // `quit` is answered, but neither SHUTDOWN nor an exit follows
    std::optional<std::chrono::milliseconds> crash_after;
    bool crash_abort = false;                  // crash by SIGABRT instead of exit status 1
    std::optional<std::string> startup_error;  // "" means: a host forwarding failure
    // Once its sockets are bound, the daemon waits until this file exists before it tells its
    // launcher it is ready (logging "holding the launch" to -D first): a launch a test holds
    // and releases.
    std::optional<std::string> hold_launch_until;
    bool job_never_concludes = false;
    std::string never_concluding_job;  // with job_never_concludes: only jobs of this type stall
    std::optional<std::string> job_error;

    // Faults at a numbered step; with it the fake logs each step of the faulted connection
    // ("fault: qmp step 3: query-status") so that a test can count a sequence's steps.
    std::optional<wire_fault> fault;
};

// Parses the JSON options object; unknown keys are errors so that typos do not pass silently.
result<options> parse_options(const nlohmann::json& j);
// From STACKEMU_FAKE_QEMU: a JSON object, or "@/path/to/file.json". Unset: defaults.
result<options> options_from_environment();

}  // namespace stackemu::fake
