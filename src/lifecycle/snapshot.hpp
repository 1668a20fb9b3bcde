// Named snapshots of an instance: QMP snapshot jobs on the running VM, `qemu-img snapshot` on
// the stopped VM's overlay, and a compatibility fingerprint per snapshot kept beside the
// overlay (vm/snapshots.json) so that a load that cannot work is refused before QEMU is asked.
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/controller.hpp"
#include "qmp/commands.hpp"

namespace stackemu::lifecycle {

// ---- Names (pure) ----

inline constexpr std::size_t max_snapshot_name = 64;

// A snapshot name is 1..64 of [A-Za-z0-9._-], starts with a letter or digit, and is not all
// digits (QEMU and qemu-img look a name up as a snapshot ID first, so "2" could select another
// snapshot). Anything else is errc::invalid_argument saying what is wrong; it never reaches
// QEMU, so a name can never add to or split a monitor command.
result<void> check_snapshot_name(std::string_view name);

// ---- Compatibility fingerprint (pure) ----

// What must match for a VM's RAM and device state to load into another VM.
struct vm_fingerprint {
    std::string qemu_version;  // major.minor.micro of the QEMU that runs (or would run) the VM
    std::string machine;       // -machine without its accel= part, e.g. "q35"
    std::string accel;         // kvm, hvf, tcg
    std::string cpu;           // -cpu
    std::string ram_mib;       // -m
    std::string cpus;          // -smp
    std::vector<std::string> devices;  // every -device, in command-line order
    std::string build_id;              // the base image's build

    bool operator==(const vm_fingerprint&) const = default;
};

// From a QEMU argv (state.json's "argv") and what the argv does not say. An empty `accel`
// is taken from -machine's accel=.
vm_fingerprint fingerprint_from_argv(const std::vector<std::string>& argv,
                                     std::string_view qemu_version, std::string_view accel,
                                     std::string_view build_id);

struct fingerprint_difference {
    std::string field;     // for people: "RAM (MiB)", "vCPUs", "devices", ...
    std::string snapshot;  // the value when the snapshot was taken
    std::string current;   // the value of this VM
    std::string summary;   // one line for people, e.g. "RAM (MiB): snapshot 512, this VM 640"
};

// Every field that differs, in a fixed order. With `disk_only`, only the base build counts
// (a disk-only snapshot holds no RAM or device state).
std::vector<fingerprint_difference> compare_fingerprints(const vm_fingerprint& snapshot,
                                                         const vm_fingerprint& current,
                                                         bool disk_only = false);
// "RAM (MiB): snapshot 512, this VM 640; vCPUs: snapshot 1, this VM 2".
std::string describe_differences(const std::vector<fingerprint_difference>& differences);

// What makes a saved state with these differences fit again, when a setting decides it (RAM,
// vCPUs, accelerator): "start once with `--ram 1024 --cpus 2` (recorded for later starts), or
// `stackemu config set ram 1024` and ...". Empty when no setting can (another QEMU, image or
// device set). `name_option`: "" or " --name b".
std::string fit_hint(const std::vector<fingerprint_difference>& differences,
                     std::string_view name_option);

nlohmann::json to_json(const vm_fingerprint& f);
std::optional<vm_fingerprint> fingerprint_from_json(const nlohmann::json& j);

// "QEMU emulator version 7.2.22 (Debian ...)" -> "7.2.22".
std::optional<std::string> parse_qemu_version_output(std::string_view text);

// ---- The record beside the overlay (vm/snapshots.json) ----

struct snapshot_record {
    std::string name;
    // The image's own date of the snapshot: ties the record to that snapshot, so a record left
    // from an older overlay (recreated on a new build, or reset) never describes a new one.
    std::int64_t date_sec = 0;
    std::int64_t date_nsec = 0;
    bool vm_state = false;  // RAM and device state saved (taken live)
    std::string method;     // qmp-job, hmp, qemu-img
    std::string saved_at;   // UTC ISO 8601
    // The VM's configuration when saved; nullopt when it was not known. For a disk-only
    // snapshot only build_id is meaningful.
    std::optional<vm_fingerprint> fingerprint;
};

nlohmann::json records_to_json(const std::vector<snapshot_record>& records);
// Unreadable entries are skipped: the record is advice, the image is the truth.
std::vector<snapshot_record> records_from_json(const nlohmann::json& j);
// The record of the image's snapshot `s`, matched by name and date.
std::optional<snapshot_record> find_record(const std::vector<snapshot_record>& records,
                                           const qmp::snapshot_info& s);

// How a snapshot fits a VM.
struct compatibility {
    std::optional<bool> compatible;  // nullopt: unknown (no record, or no known VM config)
    std::vector<fingerprint_difference> differences;
    std::string reason;  // for people, when not compatible or unknown
};
// Pure: a snapshot with RAM state against `current`; a disk-only one against the base build.
compatibility judge_compatibility(const qmp::snapshot_info& s,
                                  const std::optional<snapshot_record>& record,
                                  const std::optional<vm_fingerprint>& current);

// ---- Operations ----

// Exit codes of `stackemu snapshot` (documented in its --help and README.md).
namespace snapshot_exit {
inline constexpr int ok = 0;
inline constexpr int error = 1;         // anything else; the message says what
inline constexpr int usage = 2;         // bad command line or snapshot name; nothing was done
inline constexpr int not_found = 3;     // no snapshot of that name (load, delete)
inline constexpr int incompatible = 4;  // load refused: the snapshot does not fit this VM
inline constexpr int exists = 5;        // save: the name is taken (use --replace)
inline constexpr int job_failed = 6;    // QEMU's job (or qemu-img) failed or did not conclude
inline constexpr int busy =
    7;  // another stackemu command holds the instance, or QEMU's monitor is busy
}  // namespace snapshot_exit
// The exit code for an error of the operations below.
int snapshot_exit_code(const error& e);

inline constexpr std::chrono::milliseconds default_snapshot_timeout{600000};

struct snapshot_request {
    instance inst;
    std::string name;
    std::chrono::milliseconds timeout = default_snapshot_timeout;  // per QEMU job
    bool replace = false;  // save: delete an existing snapshot of that name first
    bool force = false;    // load: skip the fingerprint check (QEMU then checks by itself)
};

struct snapshot_outcome {
    std::string name;
    bool running = false;   // done on the running VM; false: on the stopped VM's overlay
    std::string method;     // qmp-job, hmp, qemu-img
    bool vm_state = false;  // the snapshot holds RAM and device state
    std::uint64_t vm_state_size = 0;
    bool replaced = false;    // save --replace deleted an older snapshot of that name
    std::string qemu_status;  // QEMU's run state afterwards (running VM only)
    double job_ms = 0;        // QEMU's part: the job(s), or qemu-img
    double total_ms = 0;
    std::string note;  // what the user should know, e.g. a disk-only load's next boot
};

// Each takes the instance lock (operation "snapshot"), then works on the running VM through
// the controller's QMP socket, or on the overlay with qemu-img when no QEMU runs. Errors:
// invalid_argument (bad name), not_found (no such snapshot), already_exists (save),
// incompatible (load refused before QEMU is asked), job_failed (QEMU's job or qemu-img
// failed, or a job did not conclude before the timeout; a failed live load says the VM is
// left paused), busy (the lock), wrong_state (no overlay yet), others from the connection.
asio::awaitable<result<snapshot_outcome>> save_snapshot(snapshot_request req);

// Fast start resumes the ready state (controller.hpp: ready_state_name) only when it holds the
// disk as it is now; otherwise loading it would throw away what the guest wrote since. `stop`
// saves it afresh right before the guest's clean shutdown and marks it current; every start
// marks it stale before the CPUs run, and so does an offline snapshot load. The mark is
// vm/ready-state.json; a missing or unreadable file reads as stale.
bool ready_state_current(const instance_paths& paths);
void set_ready_state_current(const instance_paths& paths, bool current);
// When `stop` saved the current ready state (Unix seconds); nullopt when it is not current.
std::optional<std::int64_t> ready_state_saved_at(const instance_paths& paths);
// For `stop`, on the running VM it holds the lock of: when the overlay has a ready state and the
// VM is running or paused after a successful start, saves the current state over it and marks
// it current. errc::not_found: fast start is off (no ready state); wrong_state: not saved
// because the VM is not in a state worth resuming.
asio::awaitable<result<snapshot_outcome>> refresh_ready_state(instance inst, qmp::client& c);
asio::awaitable<result<snapshot_outcome>> load_snapshot(snapshot_request req);
asio::awaitable<result<snapshot_outcome>> delete_snapshot(snapshot_request req);

struct snapshot_entry {
    qmp::snapshot_info info;
    bool vm_state = false;
    std::optional<snapshot_record> record;
    compatibility fit;
};
struct snapshot_listing {
    bool running = false;
    std::optional<vm_fingerprint> current;  // the running or last-known VM configuration
    std::vector<snapshot_entry> snapshots;  // in the image's order (oldest first)
};
asio::awaitable<result<snapshot_listing>> list_snapshots(instance inst);

namespace detail {
// The HMP line for savevm/loadvm/delvm (QEMU < 6.0 only), from a name that passes
// check_snapshot_name (checked again here): nothing but the verb and the plain name.
result<std::string> hmp_snapshot_line(std::string_view verb, std::string_view name);
}  // namespace detail

}  // namespace stackemu::lifecycle
