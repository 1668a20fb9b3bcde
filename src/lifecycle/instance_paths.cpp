// Instance layout and the sun_path fallback for sockets (upstream.md, defect 9).
#include "lifecycle/instance_paths.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>

namespace stackemu::lifecycle {

namespace {

constexpr std::string_view socket_names[] = {"qmp.sock", "monitor.sock", "serial.sock", "qga.sock"};

// The longest socket path a directory would produce.
std::size_t longest_socket_path(const std::filesystem::path& dir) {
    std::size_t longest = 0;
    for (auto file : socket_names)
        longest = std::max(longest, (dir / file).native().size());
    return longest;
}

void place_sockets(instance_paths& paths, const std::filesystem::path& dir) {
    paths.socket_dir = dir;
    paths.qmp_socket = dir / "qmp.sock";
    paths.monitor_socket = dir / "monitor.sock";
    paths.serial_socket = dir / "serial.sock";
    paths.qga_socket = dir / "qga.sock";
}

}  // namespace

std::string path_hash(std::string_view text) {
    std::uint64_t hash = 0xcbf29ce484222325ull;
    for (unsigned char c : text) {
        hash ^= c;
        hash *= 0x100000001b3ull;
    }
    return fmt::format("{:016x}", hash);
}

result<instance_paths> make_instance_paths(const std::filesystem::path& run_dir,
                                           std::string_view name, const socket_fallback& fallback) {
    if (!run_dir.is_absolute()) {
        return fail(
            errc::invalid_argument,
            fmt::format("the run directory must be an absolute path (got '{}')", run_dir.string()));
    }
    if (!name.empty()) {
        if (auto r = check_instance_name(name, "instance name"); !r) return fail(r.error());
    }

    // QEMU 7.2 reads '%' in the -D log path as a pid template and refuses anything but "%d".
    if (run_dir.native().find('%') != std::string::npos) {
        return fail(errc::invalid_argument,
                    fmt::format("the run directory '{}' contains '%', which QEMU's log option "
                                "cannot take; choose an EMULATOR_RUN_DIR without it",
                                run_dir.string()));
    }

    instance_paths paths;
    paths.name = std::string(name);
    paths.instance_dir = name.empty() ? run_dir : run_dir / "instances" / std::string(name);
    paths.vm_dir = paths.instance_dir / "vm";
    const auto& vm = paths.vm_dir;
    paths.disk = vm / "disk.qcow2";
    paths.serial_log = vm / "serial.log";
    paths.qemu_log = vm / "qemu.log";
    paths.qemu_stderr_log = vm / "qemu-stderr.log";
    paths.events = vm / "events.jsonl";
    paths.state = vm / "state.json";
    paths.config = vm / "config.json";
    paths.lock = vm / "lock";

    if (longest_socket_path(vm) <= max_socket_path) {
        place_sockets(paths, vm);
        return paths;
    }

    // A relative XDG_RUNTIME_DIR is invalid per the XDG spec and is ignored like an unset one.
    std::filesystem::path base = "/tmp";
    if (fallback.xdg_runtime_dir && !fallback.xdg_runtime_dir->empty() &&
        fallback.xdg_runtime_dir->front() == '/') {
        base = std::filesystem::path(*fallback.xdg_runtime_dir).lexically_normal();
        if (!base.has_filename() && base.has_relative_path()) base = base.parent_path();
    }
    auto dir = base / fmt::format("stackemu-{}", fallback.uid) / path_hash(vm.native());
    if (longest_socket_path(dir) > max_socket_path) {
        return fail(errc::invalid_argument,
                    fmt::format("socket paths under '{}' would exceed the {}-byte limit of a Unix "
                                "socket path, and so would the fallback under '{}'; use a shorter "
                                "EMULATOR_RUN_DIR or XDG_RUNTIME_DIR",
                                vm.string(), max_socket_path, base.string()));
    }
    place_sockets(paths, dir);
    paths.sockets_relocated = true;
    return paths;
}

}  // namespace stackemu::lifecycle
