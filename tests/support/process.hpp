// Waiting for processes in tests by event (a pidfd becomes readable when its process exits),
// with a ceiling against hangs, instead of polling with sleeps.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <optional>

namespace stackemu::test {

// True once `pid` has exited (a zombie not yet reaped counts: the sandbox's init may never
// reap the daemons it adopts), or is no longer there. Works for processes that are not our
// children, such as a daemonized QEMU.
bool process_gone(pid_t pid);

// Waits up to `ceiling` for `pid` to exit; true when it did.
bool wait_gone(pid_t pid, std::chrono::milliseconds ceiling);

// Waits up to `ceiling` for our child `pid` and reaps it: its exit code, or 128 + the signal.
// A child still running at the ceiling is killed, reaped, and gives nullopt.
std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds ceiling);

}  // namespace stackemu::test
