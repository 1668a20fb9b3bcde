// The controller: start, stop and status of one instance. The QMP socket, not a PID file, is
// the handle on a running VM; each command connects, acts, and leaves QEMU running on its own.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/instance_config.hpp"
#include "lifecycle/instance_paths.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/settings.hpp"
#include "lifecycle/state_machine.hpp"
#include "provision/manifest.hpp"

namespace stackemu::lifecycle {

// Human progress lines ("launching QEMU", guest console lines...); may be empty.
using progress_sink = std::function<void(std::string_view line)>;

struct instance {
    settings config;
    instance_paths paths;
};
// Lays out the instance named in `config` (no I/O).
result<instance> open_instance(settings config);
// Refuses an instance whose existing directories (run, instance, vm, relocated sockets and
// their parent) belong to another user; every command checks it before using them.
result<void> check_instance_owner(const instance& inst);

// A forward with its host port resolved from the settings (EMULATOR_<NAME>_PORT).
struct resolved_forward {
    std::string name;
    std::uint16_t host_port = 0;
    std::uint16_t guest_port = 0;
    std::string setting;  // the variable that sets the host port, for messages
};
std::vector<resolved_forward> resolve_forwards(const provision::profile& p, const settings& s);

// True while a QEMU of this instance runs (the one its last launch recorded, or a monitor
// socket without such a record): its configuration can then not change. No lock, no monitor.
bool vm_running(const instance_paths& paths);

// True when a listening socket holds 127.0.0.1:port (as QEMU's host forward would need it).
bool host_port_in_use(std::uint16_t port);

struct phase_time {
    std::string name;
    double ms = 0;
};

struct start_request {
    instance inst;
    std::optional<std::filesystem::path> image;  // default: the built image for the arch
    bool keep_on_failure = false;
    bool cold = false;                // skip the saved ready state even when it fits
    std::string extra_cmdline;        // appended to a kernel-boot image's command line
    std::optional<host_share> share;  // a host directory for the guest (`--share`)
    progress_sink progress;
    bool echo_console = false;  // pass guest console lines to progress
    // For build-image's provisioning run: the seed and bundle ISOs, the overlay's size (the
    // base's when unset), the console lines kept for a failure report, and no runtime config.
    std::vector<std::pair<std::filesystem::path, std::string>> extra_isos;  // path, purpose
    std::optional<std::uint64_t> disk_bytes;
    std::size_t tail_lines = 40;
    bool runtime_config = true;  // attach the STACKCFG ISO with the ports and settings
    // The effective configuration, recorded in vm/config.json before QEMU is launched (nullopt
    // for a VM that is no instance's, like build-image's), and what in it the flags and
    // variables changed against the record: said, and refused while the VM runs.
    std::optional<config_values> record;
    std::vector<config_change> changes;
};

struct start_outcome {
    bool ready = false;
    bool already_running = false;
    std::string accel_reason;
    std::vector<phase_time> phases;  // spawn, qmp, first console byte, marker, agent, probes
    double total_ms = 0;
    cause why = cause::none;
    std::string failure;  // what went wrong, when not ready
    std::vector<std::string> last_lines;
    bool vm_kept = false;  // --keep-on-failure left the failed VM running
    std::optional<pid_t> pid;
    bool warm = false;       // started from the saved ready state
    std::string warm_note;   // why the ready state was not used, when it exists
    std::string clock_note;  // a restored guest without an agent: its clock is behind
    std::vector<std::string> config_changes;  // "RAM 1024 → 4096 MiB (from EMULATOR_RAM)"
};
// The snapshot `start` restores instead of booting (saved by `stackemu snapshot save --ready`).
inline constexpr std::string_view ready_state_name = "stackemu-ready";
asio::awaitable<result<start_outcome>> start(start_request req);

struct stop_request {
    instance inst;
    progress_sink progress;
    // The first rung's budget; default EMULATOR_STOP_TIMEOUT.
    std::optional<std::chrono::milliseconds> first_rung_budget;
    std::string operation = "stop";  // what the lock file says (stop, reset)
};
struct stop_outcome {
    bool was_running = false;
    bool clean = false;             // ended on the first rung with the guest's own shutdown
    std::string rung;               // agent-shutdown, powerdown, quit, sigterm, sigkill, none
    std::vector<phase_time> rungs;  // how long each rung that ran took
    double total_ms = 0;
    std::string note;  // e.g. "QEMU had already exited (crashed)"
    // QEMU exited on its own, without a SHUTDOWN event, while the ladder only asked (the guest
    // rung, or a quit it never acted on): it crashed or was killed.
    bool crashed = false;
    // From the guest's SHUTDOWN event to QEMU's exit being seen: the controller's own delay.
    std::optional<double> exit_after_shutdown_ms;
};
asio::awaitable<result<stop_outcome>> stop(stop_request req);
// Stops cleanly, then removes the overlay and the runtime state; images and logs stay.
asio::awaitable<result<stop_outcome>> reset(stop_request req);
// QMP stop / cont on the running VM.
asio::awaitable<result<void>> set_paused(instance inst, bool paused);

struct probe_status {
    std::string name;
    std::string url;
    bool ok = false;
    std::string detail;
};
struct status_outcome {
    std::string state;  // ready, unhealthy, starting, paused, stopped, failed, crashed, busy
    int exit_code = 0;
    std::optional<pid_t> pid;
    std::string qemu_status;  // QEMU's RunState when it answered
    std::vector<probe_status> probes;
    std::string detail;    // the failure or crash cause, the busy holder
    nlohmann::json saved;  // state.json as the last command left it
};
// Takes no lock and changes nothing.
asio::awaitable<status_outcome> status(instance inst, bool run_probes);

// Reads the events log (one JSON object per line), for `stackemu events`.
result<std::vector<nlohmann::json>> read_events(const instance_paths& paths);

}  // namespace stackemu::lifecycle
