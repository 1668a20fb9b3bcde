// The QEMU argv builder: each piece checked against QEMU 7.2 (see
// tests/unit/test_lifecycle_qemu_argv.cpp).
#include "lifecycle/qemu_argv.hpp"

#include <fmt/format.h>

namespace stackemu::lifecycle {

namespace {

std::string path_value(const std::filesystem::path& p) {
    return escape_option_value(p.native());
}

// A QMP or agent channel: a listening Unix socket that QEMU creates before it daemonizes, so
// the socket exists once the launcher has exited 0. wait=off: never block the boot on a client.
std::string socket_chardev(std::string_view id, const std::filesystem::path& path) {
    return fmt::format("socket,id={},path={},server=on,wait=off", id, path_value(path));
}

}  // namespace

std::string_view to_string(accelerator a) {
    switch (a) {
        case accelerator::kvm:
            return "kvm";
        case accelerator::hvf:
            return "hvf";
        case accelerator::tcg:
            return "tcg";
    }
    return "unknown";
}

std::string_view to_string(iso_purpose p) {
    switch (p) {
        case iso_purpose::seed:
            return "seed";
        case iso_purpose::bundle:
            return "bundle";
        case iso_purpose::config:
            return "config";
    }
    return "unknown";
}

result<accelerator> resolve_accelerator(accel_mode mode, architecture guest, architecture host,
                                        const accelerator_support& support) {
    const bool native = guest == host;
    auto unusable = [&](accelerator wanted, bool available) -> result<accelerator> {
        if (!native) {
            return fail(errc::invalid_argument,
                        fmt::format("{} cannot run an {} guest on an {} host; use "
                                    "EMULATOR_ACCEL=tcg or auto",
                                    to_string(wanted), to_string(guest), to_string(host)));
        }
        if (!available) {
            return fail(errc::invalid_argument,
                        fmt::format("{} is not usable on this host; use EMULATOR_ACCEL=tcg or auto",
                                    to_string(wanted)));
        }
        return wanted;
    };
    switch (mode) {
        case accel_mode::kvm:
            return unusable(accelerator::kvm, support.kvm);
        case accel_mode::hvf:
            return unusable(accelerator::hvf, support.hvf);
        case accel_mode::tcg:
            return accelerator::tcg;
        case accel_mode::automatic:
            if (native && support.hvf) return accelerator::hvf;
            if (native && support.kvm) return accelerator::kvm;
            return accelerator::tcg;
    }
    return accelerator::tcg;
}

std::string_view default_qemu_binary(architecture guest) {
    return guest == architecture::arm64 ? "qemu-system-aarch64" : "qemu-system-x86_64";
}

const std::vector<std::filesystem::path>& default_uefi_firmware_candidates() {
    static const std::vector<std::filesystem::path> candidates = {
        "/opt/homebrew/share/qemu/edk2-aarch64-code.fd",  // Homebrew, Apple silicon
        "/usr/local/share/qemu/edk2-aarch64-code.fd",     // Homebrew, Intel; QEMU from source
        "/usr/share/qemu/edk2-aarch64-code.fd",
        "/usr/share/AAVMF/AAVMF_CODE.fd",           // Debian/Ubuntu qemu-efi-aarch64
        "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd",  // the same package, -bios flavour
    };
    return candidates;
}

result<std::filesystem::path> find_uefi_firmware(
    const std::vector<std::filesystem::path>& candidates,
    const std::function<bool(const std::filesystem::path&)>& exists) {
    std::string looked;
    for (const auto& candidate : candidates) {
        if (exists(candidate)) return candidate;
        looked += fmt::format("\n  {}", candidate.string());
    }
    return fail(errc::not_found,
                fmt::format("no UEFI firmware for arm64 guests; looked at:{}\ninstall "
                            "qemu-efi-aarch64 (Debian/Ubuntu) or qemu (Homebrew)",
                            looked));
}

vm_files files_of(const instance_paths& paths) {
    return vm_files{paths.qmp_socket, paths.monitor_socket, paths.serial_socket,
                    paths.serial_log, paths.qga_socket,     paths.qemu_log};
}

std::string escape_option_value(std::string_view value) {
    std::string out;
    out.reserve(value.size());
    for (char c : value) {
        out += c;
        if (c == ',') out += ',';
    }
    return out;
}

std::vector<std::string> build_qemu_argv(const vm_spec& spec) {
    const bool arm64 = spec.guest_arch == architecture::arm64;
    std::vector<std::string> argv;
    auto add = [&argv](std::string option, std::string value) {
        argv.push_back(std::move(option));
        argv.push_back(std::move(value));
    };

    argv.push_back(spec.qemu_binary);
    const auto name = escape_option_value(spec.name);
    add("-name", fmt::format("guest={},process=stackemu-{}", name, name));
    // Only what is listed here: no ~/.config files, no default NIC, VGA, serial or monitor.
    argv.push_back("-no-user-config");
    argv.push_back("-nodefaults");
    add("-display", "none");

    // virt with its default GICv2 stops at 8 vCPUs; GICv3 takes the rest.
    std::string machine = arm64 ? "virt" : "q35";
    machine += fmt::format(",accel={}", to_string(spec.accel));
    if (arm64 && spec.cpus > 8) machine += ",gic-version=3";
    add("-machine", machine);
    // `max` under cross-arch TCG emulates pointer authentication at a large cost; a concrete
    // v8.2 core boots the same Debian kernel much faster.
    const bool cross_tcg =
        arm64 && spec.host_arch != architecture::arm64 && spec.accel == accelerator::tcg;
    add("-cpu", cross_tcg ? "cortex-a76" : "max");
    add("-smp", std::to_string(spec.cpus));
    add("-m", std::to_string(spec.ram_mib));

    if (const auto* fw = std::get_if<firmware_boot>(&spec.boot)) {
        if (!fw->firmware.empty()) add("-bios", fw->firmware.native());
    } else if (const auto* kernel = std::get_if<kernel_boot>(&spec.boot)) {
        add("-kernel", kernel->kernel.native());
        add("-initrd", kernel->initrd.native());
        add("-append", kernel->cmdline);
    }

    // The overlay as two named nodes, so snapshots and block jobs can address "disk0".
    // bootindex=1: the firmware boots the disk, not an ISO; -kernel itself holds bootindex 0.
    const auto file_node = spec.disk_node + "-file";
    add("-blockdev", fmt::format("driver=file,filename={},node-name={},discard=unmap",
                                 path_value(spec.overlay), file_node));
    add("-blockdev",
        fmt::format("driver=qcow2,file={},node-name={},discard=unmap", file_node, spec.disk_node));
    add("-device", fmt::format("virtio-blk-pci,drive={},bootindex=1", spec.disk_node));

    // Read-only on both nodes, so an ISO the user cannot write still opens.
    for (std::size_t i = 0; i < spec.isos.size(); ++i) {
        const auto& iso = spec.isos[i];
        const auto node = fmt::format("iso{}", i);
        add("-blockdev", fmt::format("driver=file,filename={},node-name={}-file,read-only=on",
                                     path_value(iso.path), node));
        add("-blockdev",
            fmt::format("driver=raw,file={}-file,node-name={},read-only=on", node, node));
        add("-device",
            fmt::format("virtio-blk-pci,drive={},serial={}", node, to_string(iso.purpose)));
    }

    // mapped-xattr: the guest's owners and modes live in xattrs, so guest root never changes
    // the ownership of host files (upstream's security_model=none did, on the host's whole /).
    if (spec.share) {
        add("-fsdev",
            fmt::format("local,id=fsdev-{},path={},security_model=mapped-xattr{}", host_share_tag,
                        path_value(spec.share->dir), spec.share->writable ? "" : ",readonly=on"));
        add("-device", fmt::format("virtio-9p-pci,fsdev=fsdev-{},mount_tag={}", host_share_tag,
                                   host_share_tag));
    }

    std::string netdev = "user,id=net0";
    for (const auto& fwd : spec.forwards) {
        netdev += fmt::format(",hostfwd=tcp:127.0.0.1:{}-:{}", fwd.host_port, fwd.guest_port);
    }
    add("-netdev", netdev);
    add("-device", "virtio-net-pci,netdev=net0");
    add("-device", "virtio-balloon-pci");

    add("-chardev", socket_chardev("qga0", spec.files.qga_socket));
    add("-device", "virtio-serial-pci");
    add("-device", "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0");

    // A guest kernel panic becomes a GUEST_PANICKED event instead of a silent hang.
    add("-device", arm64 ? "pvpanic-pci" : "pvpanic");

    // The log is written whether or not anyone is connected to the socket.
    add("-chardev", socket_chardev("serial0", spec.files.serial_socket) +
                        fmt::format(",logfile={},logappend=on", path_value(spec.files.serial_log)));
    add("-serial", "chardev:serial0");

    add("-chardev", socket_chardev("qmp0", spec.files.qmp_socket));
    add("-mon", "chardev=qmp0,mode=control");
    add("-chardev", socket_chardev("qmp1", spec.files.monitor_socket));
    add("-mon", "chardev=qmp1,mode=control");

    // After -daemonize QEMU's stderr is gone; with -D, QEMU 7.2 sends its error messages
    // (including a failed start's) to this file instead.
    add("-D", spec.files.qemu_log.native());
    add("-d", "guest_errors");
    argv.push_back("-S");
    argv.push_back("-daemonize");
    return argv;
}

}  // namespace stackemu::lifecycle
