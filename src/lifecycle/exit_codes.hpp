// Process exit codes of the stackemu commands: scripts branch on these, so they never change.
#pragma once

namespace stackemu::lifecycle::exit_code {

// Every command.
inline constexpr int ok = 0;     // done; for start and status: the VM is ready and healthy
inline constexpr int error = 1;  // the command failed; the message says why
inline constexpr int usage = 2;  // bad command line or settings; nothing was done
inline constexpr int busy = 7;   // another stackemu command holds the instance lock

// status (start returns the same codes when it gives up waiting).
inline constexpr int stopped = 3;      // no VM runs for this instance
inline constexpr int not_healthy = 4;  // QEMU runs, but the VM is still starting or a probe fails
inline constexpr int paused = 5;       // the VM's CPUs are stopped
inline constexpr int failed = 6;       // the last start failed or the VM crashed; see the report

// stop.
inline constexpr int stopped_cleanly = 0;   // the guest shut down on the first rung (power-down)
inline constexpr int stopped_forcibly = 4;  // a later rung (quit, SIGTERM, SIGKILL) ended QEMU

}  // namespace stackemu::lifecycle::exit_code
