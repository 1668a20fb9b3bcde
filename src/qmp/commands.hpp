// Typed helpers for the QMP commands the controller uses, including block jobs run to the end.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "qmp/client.hpp"

namespace stackemu::qmp {

struct vm_status {
    bool running = false;
    std::string status;  // a RunState: running, paused, prelaunch, shutdown, inmigrate, ...
};

struct job_info {
    std::string id;
    std::string type;
    std::string status;  // created, running, waiting, pending, concluded, aborting, ...
    std::int64_t current_progress = 0;
    std::int64_t total_progress = 0;
    std::optional<std::string> error;  // set once a concluded job has failed
};

asio::awaitable<result<vm_status>> query_status(client& c);
asio::awaitable<result<qemu_version>> query_version(client& c);
// The -name of the VM, or nullopt when QEMU was started without one.
asio::awaitable<result<std::optional<std::string>>> query_name(client& c);
asio::awaitable<result<std::vector<job_info>>> query_jobs(client& c);
asio::awaitable<result<void>> job_dismiss(client& c, std::string job_id);

// Presses the ACPI power button. Returns once QEMU has accepted it; the guest may ignore it:
// watch for SHUTDOWN (qmp.md, "Commands").
asio::awaitable<result<void>> system_powerdown(client& c);
asio::awaitable<result<void>> system_reset(client& c);
asio::awaitable<result<void>> stop(client& c);
asio::awaitable<result<void>> cont(client& c);
// Ends QEMU. EOF (or a reset) before the reply is success.
asio::awaitable<result<void>> quit(client& c, milliseconds timeout = milliseconds(10000));
// Runs a monitor command line. Its text reply is returned as is; callers check it.
asio::awaitable<result<std::string>> human_monitor_command(
    client& c, std::string command_line, milliseconds timeout = milliseconds(30000));

struct snapshot_target {
    std::string tag;
    std::string vmstate_node;          // block node that stores RAM and device state
    std::vector<std::string> devices;  // block nodes whose disks are snapshotted
};

// Runs a snapshot job to its end: subscribes to JOB_STATUS_CHANGE before sending, waits for
// `concluded` (events may arrive before the command's reply), reads the job's error from
// query-jobs and dismisses the job. A failed job gives errc::job_failed with QEMU's text in
// qemu_desc; a job still running at the deadline is cancelled and gives errc::timeout.
asio::awaitable<result<void>> snapshot_save(client& c, snapshot_target target,
                                            milliseconds timeout);
asio::awaitable<result<void>> snapshot_load(client& c, snapshot_target target,
                                            milliseconds timeout);
asio::awaitable<result<void>> snapshot_delete(client& c, std::string tag,
                                              std::vector<std::string> devices,
                                              milliseconds timeout);

// The generic form behind the three above: `command` must take a "job-id" argument. A
// disconnect before `concluded` keeps its code (errc::disconnected): the job's outcome is then
// unknown. A job cancelled at the deadline is waited for briefly and dismissed.
asio::awaitable<result<void>> run_job(client& c, std::string command, json arguments,
                                      std::string job_id, milliseconds timeout);

// One internal snapshot of a block node, as QEMU lists it (SnapshotInfo).
struct snapshot_info {
    std::string id;
    std::string name;
    std::uint64_t vm_state_size = 0;  // 0: a disk-only snapshot (no RAM or device state)
    std::int64_t date_sec = 0;        // host wall clock when taken
    std::int64_t date_nsec = 0;
    std::int64_t vm_clock_sec = 0;  // the guest's running time when taken
    std::int64_t vm_clock_nsec = 0;
};
// Parses a SnapshotInfo list, as in QMP's ImageInfo.snapshots and `qemu-img info
// --output=json`. Pure.
result<std::vector<snapshot_info>> parse_snapshot_list(const json& list);
// The internal snapshots of the block node `node_name`, from query-named-block-nodes;
// errc::not_found when QEMU has no node of that name.
asio::awaitable<result<std::vector<snapshot_info>>> query_snapshots(client& c,
                                                                    std::string node_name);

}  // namespace stackemu::qmp
