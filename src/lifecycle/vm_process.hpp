// The running QEMU, identified through its QMP socket (SO_PEERCRED) and held by a pidfd: never
// a PID file (defect 2), so a signal can never reach a recycled pid.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "common/error.hpp"

namespace stackemu::lifecycle {

// A process checked to be our QEMU, with a pidfd on it. Move-only; closes the pidfd.
class verified_process {
  public:
    verified_process() = default;
    verified_process(verified_process&& other) noexcept;
    verified_process& operator=(verified_process&& other) noexcept;
    verified_process(const verified_process&) = delete;
    verified_process& operator=(const verified_process&) = delete;
    ~verified_process();

    pid_t pid() const { return pid_; }
    const std::filesystem::path& exe() const { return exe_; }
    bool valid() const { return pidfd_ >= 0; }

    // Sends `sig` through the pidfd. Success when the process has exited but is not yet
    // reaped (the signal is then ignored); errc::not_found when it is gone.
    result<void> signal(int sig) const;
    // True once the process has exited (a zombie counts), without waiting.
    bool exited() const;
    // Waits for the process to exit, which need not be our child (the daemonized QEMU is
    // not): the pidfd becomes readable. True when it exited within `timeout`.
    asio::awaitable<bool> wait_exit(std::chrono::milliseconds timeout) const;

  private:
    friend result<verified_process> verify_peer(pid_t, const std::string&);
    verified_process(pid_t pid, int pidfd, std::filesystem::path exe)
        : pid_(pid), pidfd_(pidfd), exe_(std::move(exe)) {}
    pid_t pid_ = -1;
    int pidfd_ = -1;
    std::filesystem::path exe_;
};

// Checks that `peer_pid` (from qmp::client::peer_pid()) runs the expected QEMU as our user and
// opens a pidfd on it. `expected_binary`: a path (compared after realpath with
// /proc/<pid>/exe), a name (looked up on PATH, or equal to the exe's file name), or empty (any
// qemu-system-*). A different program is errc::wrong_state, another user's process
// errc::wrong_state, a process that is gone errc::not_found.
result<verified_process> verify_peer(pid_t peer_pid, const std::string& expected_binary);

// The file posix_spawnp would run for `program`: itself when it holds a '/', else the first
// executable match on PATH; nullopt when there is none.
std::optional<std::filesystem::path> find_program(const std::string& program);

}  // namespace stackemu::lifecycle
