// Internals shared by the controller's commands (start, stop, status).
#pragma once

#include <chrono>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>

#include "lifecycle/instance_paths.hpp"
#include "lifecycle/vm_process.hpp"

namespace stackemu::lifecycle::detail {

nlohmann::json read_state(const instance_paths& paths);
void write_state(const instance_paths& paths, const nlohmann::json& state);
// Merges `changes` into state.json (atomically replaced).
void update_state(const instance_paths& paths, const nlohmann::json& changes);
void append_event(const instance_paths& paths, const nlohmann::json& record);
// Appends several records with one write().
void append_events(const instance_paths& paths, std::span<const nlohmann::json> records);
std::string now_iso8601();
double ms_since(std::chrono::steady_clock::time_point t0);
// Removes socket files a dead QEMU left behind (a clean QEMU removes its own).
void remove_sockets(const instance_paths& paths);
// state.json (`saved`) still says a start or a stop was under way, and no command holds the
// lock: that command ended without its verdict (killed, or the host went down). What to tell
// people about the VM it left running; empty when nothing was interrupted.
std::string interrupted_command_note(const nlohmann::json& saved);

// The QEMU a launch recorded in state.json ("qemu": pid, start time, executable device and
// inode), when there is one. Liveness and identity come from it, not from the sockets.
std::optional<process_identity> launched_identity(const nlohmann::json& saved);
nlohmann::json identity_json(const process_identity& id);

}  // namespace stackemu::lifecycle::detail
