// The running QEMU, identified through its QMP socket (SO_PEERCRED) and held by a pidfd: never
// a PID file (defect 2), so a signal can never reach a recycled pid.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "common/error.hpp"

namespace stackemu::lifecycle {

// Who the QEMU that launch started is, recorded in state.json: its pid with the pid's start
// time (/proc/PID/stat field 22, so a recycled pid is never taken for it) and its
// executable's device and inode (/proc/PID/exe), so that another program of the same name
// behind the socket is refused (issue 17.3).
struct process_identity {
    pid_t pid = -1;
    std::uint64_t start_time = 0;  // clock ticks after boot
    std::uint64_t exe_dev = 0;
    std::uint64_t exe_ino = 0;
    bool operator==(const process_identity&) const = default;
};
// The identity of the running process `pid`; errc::not_found when it is gone.
result<process_identity> identity_of(pid_t pid);

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
    const process_identity& identity() const { return identity_; }
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
    friend result<verified_process> verify_peer(pid_t, const std::string&,
                                                const std::optional<process_identity>&);
    friend result<verified_process> open_launched(const process_identity&);
    verified_process(pid_t pid, int pidfd, std::filesystem::path exe)
        : pid_(pid), pidfd_(pidfd), exe_(std::move(exe)) {}
    pid_t pid_ = -1;
    int pidfd_ = -1;
    std::filesystem::path exe_;
    process_identity identity_;
};

// Checks that `peer_pid` (from qmp::client::peer_pid()) runs the expected QEMU as our user and
// opens a pidfd on it. `expected_binary`: a path (compared after realpath with
// /proc/<pid>/exe), a name (looked up on PATH, or equal to the exe's file name), or empty (any
// qemu-system-*). A different program is errc::wrong_state, another user's process
// errc::wrong_state, a process that is gone errc::not_found. With `launched` (the identity
// recorded at launch) the peer must also be that very process running that very executable
// (device and inode): anything else is errc::wrong_state, and the caller signals nothing.
result<verified_process> verify_peer(pid_t peer_pid, const std::string& expected_binary,
                                     const std::optional<process_identity>& launched = {});

// The launched QEMU itself, found by its recorded identity rather than through its monitor: a
// wedged QEMU whose monitor accepts nobody is still alive (issue 16.2). errc::not_found when
// that process is gone (its pid gone or now another process's).
result<verified_process> open_launched(const process_identity& launched);

// The file posix_spawnp would run for `program`: itself when it holds a '/', else the first
// executable match on PATH; nullopt when there is none.
std::optional<std::filesystem::path> find_program(const std::string& program);

}  // namespace stackemu::lifecycle
