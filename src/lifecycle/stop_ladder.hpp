// The stop ladder and the verified connection to a running VM, shared by stop and start.
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <memory>
#include <optional>
#include <string>

#include "lifecycle/controller.hpp"
#include "lifecycle/event_log.hpp"
#include "qmp/client.hpp"

namespace stackemu::lifecycle {
class verified_process;
}

namespace stackemu::lifecycle::detail {

// A QMP connection to the instance's controller socket and the process behind it, verified
// by the socket's peer credentials (never a PID file).
struct connected_vm {
    std::unique_ptr<qmp::client> qmp;
    std::unique_ptr<verified_process> process;
    std::unique_ptr<event_log> log;  // events.jsonl while this connection is held
    connected_vm();
    connected_vm(connected_vm&&) noexcept;
    connected_vm& operator=(connected_vm&&) noexcept;
    connected_vm(const connected_vm&) = delete;
    connected_vm& operator=(const connected_vm&) = delete;
    ~connected_vm();
};
// `timeout` bounds the socket's connect; the greeting and every reply follow
// EMULATOR_REPLY_TIMEOUT. The peer is verified against the identity the launch recorded in
// state.json (else by the binary's name): another process is errc::wrong_state.
asio::awaitable<result<connected_vm>> connect_vm(instance_paths paths, std::string qemu_binary,
                                                 std::chrono::milliseconds timeout);
// The same on another monitor socket of the instance (the second monitor, monitor.sock).
asio::awaitable<result<connected_vm>> connect_monitor(instance_paths paths,
                                                      std::filesystem::path socket,
                                                      std::string qemu_binary,
                                                      std::chrono::milliseconds timeout);

// connect_vm, retried while a dying QEMU accepts and drops connections (up to about 1 s).
asio::awaitable<result<connected_vm>> connect_vm_settled(instance_paths paths,
                                                         std::string qemu_binary);

// For a QEMU whose monitor does not answer: the process behind the QMP socket (SO_PEERCRED,
// verified), ended with SIGTERM, then SIGKILL.
asio::awaitable<result<stop_outcome>> stop_unresponsive(instance_paths paths, std::string qemu,
                                                        progress_sink progress);

// SIGTERM, then SIGKILL, each followed by a wait for the exit; the rungs go into `out`.
asio::awaitable<void> signal_rungs(const verified_process& proc, progress_sink progress,
                                   stop_outcome& out);

// EMULATOR_QEMU, else qemu-system-<arch>.
std::string qemu_binary_for(const settings& s);

struct ladder_inputs {
    instance_paths paths;
    qmp::client* qmp = nullptr;
    verified_process* process = nullptr;
    progress_sink progress;
    std::chrono::milliseconds first_rung_budget{90000};
    std::optional<std::filesystem::path> agent_socket;  // try guest-shutdown first
    bool skip_guest_rung = false;                       // a failed VM: straight to quit
    // The guest is powering itself off (build-image after its done marker): the first rung
    // only waits for its SHUTDOWN, within first_rung_budget.
    bool await_guest_poweroff = false;
};
// Runs the rungs until the process is gone; never fails (the last rung is SIGKILL).
asio::awaitable<stop_outcome> run_ladder(ladder_inputs in);

// The ladder for a live QEMU whose controller monitor (qmp.sock) cannot be used (busy, slow,
// wedged): the guest is still asked first, through the second monitor (the whole ladder runs
// on it when it answers), else the guest agent, before SIGTERM and SIGKILL to `proc`.
asio::awaitable<stop_outcome> stop_without_monitor(ladder_inputs in, verified_process& proc,
                                                   const std::string& qemu);

}  // namespace stackemu::lifecycle::detail
