// Where one instance's files live: the vm/ directory and its sockets, computed without I/O.
#pragma once

#include <cstddef>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"
#include "lifecycle/settings.hpp"

namespace stackemu::lifecycle {

// sockaddr_un::sun_path is 108 bytes on Linux and the path needs its NUL (defect 9).
inline constexpr std::size_t max_socket_path = 107;

// Where sockets go when the vm/ directory is too deep for sun_path.
struct socket_fallback {
    unsigned uid = 0;
    std::optional<std::string> xdg_runtime_dir;  // ${XDG_RUNTIME_DIR:-/tmp}
};

struct instance_paths {
    std::string name;                    // empty for the default instance
    std::filesystem::path instance_dir;  // <run> or <run>/instances/<name>
    std::filesystem::path vm_dir;        // <instance_dir>/vm

    std::filesystem::path disk;             // disk.qcow2: the overlay on the base image
    std::filesystem::path serial_log;       // serial.log: kept across stops (defect 6)
    std::filesystem::path qemu_log;         // qemu.log: QEMU's -D log, alive after -daemonize
    std::filesystem::path qemu_stderr_log;  // qemu-stderr.log: what QEMU said before daemonizing
    std::filesystem::path events;           // events.jsonl: one JSON object per event
    std::filesystem::path state;            // state.json
    std::filesystem::path config;           // config.json: how the instance was made
    std::filesystem::path lock;             // lock: held by the stackemu command that owns the VM

    // vm_dir, or a short directory elsewhere when vm_dir is too long for sun_path. When
    // relocated, the caller creates it (mode 0700) before QEMU starts: QEMU does not.
    std::filesystem::path socket_dir;
    bool sockets_relocated = false;
    std::filesystem::path qmp_socket;      // qmp.sock: the controller's QMP monitor
    std::filesystem::path monitor_socket;  // monitor.sock: a second QMP monitor (upstream's name)
    std::filesystem::path serial_socket;   // serial.sock
    std::filesystem::path qga_socket;      // qga.sock: the guest agent's channel

    // The instance as people and QEMU's -name see it: its name, or "default".
    std::string display_name() const { return name.empty() ? "default" : name; }
};

// Lays out an instance under run_dir (absolute). An invalid name, a '%' in run_dir, or socket
// paths that fit nowhere are errors that say what to change.
result<instance_paths> make_instance_paths(const std::filesystem::path& run_dir,
                                           std::string_view name, const socket_fallback& fallback);
inline result<instance_paths> make_instance_paths(const settings& s,
                                                  const socket_fallback& fallback) {
    return make_instance_paths(s.run_dir, s.name, fallback);
}

// The stable 16-hex-digit FNV-1a 64 hash that names the fallback socket directory.
std::string path_hash(std::string_view text);

}  // namespace stackemu::lifecycle
