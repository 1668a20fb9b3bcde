// The life of one VM as a pure state machine: inputs from QEMU, the console, probes and the
// user in; the next state and the actions the shell must take out.
#pragma once

#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "provision/manifest.hpp"

namespace stackemu::lifecycle {

enum class vm_state {
    stopped,    // no QEMU for this instance
    launching,  // the launcher runs, or QEMU waits (-S) for the controller's QMP connection
    booting,    // CPUs running; waiting for the readiness conditions
    ready,      // every readiness condition was met (current health: see readiness flags)
    paused,     // CPUs stopped (STOP event); RESUME returns to the state before
    stopping,   // a stop was requested or the guest shut down; waiting for QEMU to exit
    failed,     // the start failed: launcher error, failure marker, panic, exit or deadline
    crashed,    // QEMU or the guest died after the VM was up, without a clean shutdown
};
std::string_view to_string(vm_state s);

// Why a transition happened; carried in failure reports and the event log.
enum class cause {
    none,              // the input changed nothing worth naming
    launch_requested,  //
    launch_failed,     // the daemonizing launcher exited non-zero
    qmp_connected,     // the controller is connected; CPUs are started
    failure_marker,    // the guest printed a failure marker line
    guest_panicked,    // GUEST_PANICKED (pvpanic)
    qemu_exited,       // process exit or QMP EOF without a SHUTDOWN event first
    monitor_failed,    // QMP broke the protocol (a malformed message): the session was ended
    deadline,          // a start deadline passed
    readiness,         // one readiness condition was met, not all yet
    ready,             // all readiness conditions met
    probe_unhealthy,   // a probe failed while ready
    probes_healthy,    // every probe healthy again while ready
    guest_reset,       // RESET: the guest rebooted, readiness starts over
    paused,            //
    resumed,           //
    guest_shutdown,    // SHUTDOWN from the guest: it powered itself off
    host_shutdown,     // SHUTDOWN caused by the host (signal, someone's quit) without our stop
    stop_requested,    //
    stopped,           // QEMU is gone after a stop or a shutdown
    already,           // the request is already satisfied ("already stopped" is success)
    rejected,          // the request cannot be done in this state
};
std::string_view to_string(cause c);

// What "ready" means for one profile: the runtime VM, the build VM, a test guest.
struct readiness_profile {
    std::string ready_marker = "STACK_EMULATOR_READY";  // empty: no marker needed
    std::vector<std::string> failure_markers = {"STACK_CLOUD_INIT_FAILED"};
    provision::marker_match match = provision::marker_match::prefix;
    bool requires_agent = false;
    bool requires_probes = true;
};

struct readiness {
    bool marker_seen = false;
    bool agent_answered = false;
    bool probes_healthy = false;  // the latest verdict: true after all_probes_healthy, false
                                  // after any failed probe

    bool operator==(const readiness&) const = default;
};

struct vm_machine {
    vm_state state = vm_state::stopped;
    vm_state resume_to = vm_state::booting;  // where RESUME leads from paused
    readiness flags;
    bool qemu_alive = false;     // a QEMU may exist: launched and not yet seen to exit
    bool shutdown_seen = false;  // SHUTDOWN arrived in this run: the exit that follows is clean
    std::optional<std::string> failure;  // why the VM is failed or crashed, for status

    bool operator==(const vm_machine&) const = default;
};

// ---- inputs ----
struct launch_requested {};
struct launcher_exited {  // the -daemonize parent: 0 once QEMU's sockets exist
    int code = 0;
    std::string stderr_text;  // with -D, QEMU's own messages are in qemu.log instead
};
struct qmp_connected {};
struct qmp_eof {
    bool quit_sent = false;  // we sent `quit`: the EOF is the expected end
};
struct qmp_event {
    std::string name;
    nlohmann::json data = nlohmann::json::object();
};
struct process_exited {
    std::optional<int> code;
    std::optional<int> signal;
};
struct console_line {
    std::string text;
};
struct probe_result {
    std::string name;
    bool ok = false;
    std::string detail;
};
struct agent_answered {};
struct all_probes_healthy {};
struct deadline_passed {
    std::string what;  // e.g. "services to become healthy within 240 s"
};
struct stop_requested {};
struct pause_requested {};
struct resume_requested {};
struct pause_result {
    bool ok = true;
    std::string reason;
};
struct resume_result {
    bool ok = true;
    std::string reason;
};

using vm_input = std::variant<launch_requested, launcher_exited, qmp_connected, qmp_eof, qmp_event,
                              process_exited, console_line, probe_result, agent_answered,
                              all_probes_healthy, deadline_passed, stop_requested, pause_requested,
                              resume_requested, pause_result, resume_result>;

// ---- actions ----
enum class stop_mode {
    graceful,   // the stop ladder from its first rung: ACPI power-down, then quit, then kill
    immediate,  // the VM already failed: quit, then kill
};

struct launch_qemu {
    bool operator==(const launch_qemu&) const = default;
};
struct send_cont {
    bool operator==(const send_cont&) const = default;
};
struct stop_vm {
    stop_mode mode = stop_mode::graceful;
    bool cpus_stopped = false;  // paused: the guest cannot see a power button until `cont`
    bool operator==(const stop_vm&) const = default;
};
struct pause_vm {
    bool operator==(const pause_vm&) const = default;
};
struct resume_vm {
    bool operator==(const resume_vm&) const = default;
};
struct report_failure {
    cause why = cause::none;
    std::string reason;
    bool operator==(const report_failure&) const = default;
};
struct report_ready {
    bool operator==(const report_ready&) const = default;
};
struct report_stopped {
    bool clean = false;  // QEMU exited after a SHUTDOWN event (the guest shut down)
    bool operator==(const report_stopped&) const = default;
};
struct record_event {
    std::string what;
    bool operator==(const record_event&) const = default;
};
struct reject_request {
    std::string reason;
    bool operator==(const reject_request&) const = default;
};

using vm_action = std::variant<launch_qemu, send_cont, stop_vm, pause_vm, resume_vm, report_failure,
                               report_ready, report_stopped, record_event, reject_request>;
std::string_view action_name(const vm_action& a);

struct transition {
    vm_machine next;
    std::vector<vm_action> actions;
    cause why = cause::none;
};

// The whole behaviour; no I/O, no clock. Inputs that do not apply in a state leave it
// unchanged with cause::none.
transition step(const readiness_profile& profile, const vm_machine& current, const vm_input& in);

// The readiness conditions still missing, for "still starting" output and timeout reports.
std::vector<std::string> missing_conditions(const readiness_profile& profile,
                                            const readiness& flags);

}  // namespace stackemu::lifecycle
