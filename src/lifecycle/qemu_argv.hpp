// The QEMU command line for one VM, built by a pure function and tested argument by argument.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/instance_paths.hpp"
#include "lifecycle/settings.hpp"

namespace stackemu::lifecycle {

enum class accelerator { kvm, hvf, tcg };
std::string_view to_string(accelerator a);

// What the host offers; probed by the caller (an open /dev/kvm is not proof that KVM boots a
// kernel: see environment.md, "Virtualisation").
struct accelerator_support {
    bool kvm = false;
    bool hvf = false;
};

// auto: hvf, then kvm, when the guest runs natively; tcg otherwise. An explicit kvm or hvf
// that cannot work (cross-arch or unavailable) is an error, never a silent fallback.
result<accelerator> resolve_accelerator(accel_mode mode, architecture guest, architecture host,
                                        const accelerator_support& support);

// qemu-system-x86_64 or qemu-system-aarch64, found on PATH.
std::string_view default_qemu_binary(architecture guest);

// UEFI firmware for arm64 guests, in upstream's order of preference.
const std::vector<std::filesystem::path>& default_uefi_firmware_candidates();
// The first candidate for which `exists` is true, or an error listing every place looked at.
result<std::filesystem::path> find_uefi_firmware(
    const std::vector<std::filesystem::path>& candidates,
    const std::function<bool(const std::filesystem::path&)>& exists);

// Boot through firmware: empty = the machine's default (SeaBIOS on q35); arm64 needs UEFI.
// Loaded with -bios, which accepts both the 64 MiB AAVMF/edk2 images and the 2 MiB
// QEMU_EFI.fd (a pflash drive insists on exactly 64 MiB).
struct firmware_boot {
    std::filesystem::path firmware;
};
// Direct kernel boot (-kernel/-initrd/-append), as the test guests use.
struct kernel_boot {
    std::filesystem::path kernel;
    std::filesystem::path initrd;
    std::string cmdline;
};
using boot_method = std::variant<firmware_boot, kernel_boot>;

// Read-only ISOs; the purpose becomes the virtio serial (/dev/disk/by-id/virtio-<purpose>).
enum class iso_purpose { seed, bundle, config };
std::string_view to_string(iso_purpose p);
struct iso_image {
    std::filesystem::path path;
    iso_purpose purpose = iso_purpose::seed;
};

// Always bound to 127.0.0.1: the services are for this host only.
struct port_forward {
    std::uint16_t host_port = 0;
    std::uint16_t guest_port = 0;
};

struct vm_files {
    std::filesystem::path qmp_socket;
    std::filesystem::path monitor_socket;
    std::filesystem::path serial_socket;
    std::filesystem::path serial_log;
    std::filesystem::path qga_socket;
    std::filesystem::path qemu_log;
};
vm_files files_of(const instance_paths& paths);

// One host directory exported to the guest over virtio-9p under the tag "hostshare" (never the
// host's /: defect 8). Read-only unless the user asks for writing.
struct host_share {
    std::filesystem::path dir;
    bool writable = false;
};
inline constexpr std::string_view host_share_tag = "hostshare";

struct vm_spec {
    std::string qemu_binary;
    architecture guest_arch = architecture::amd64;
    architecture host_arch = architecture::amd64;  // decides -cpu for cross-arch TCG
    accelerator accel = accelerator::tcg;
    std::uint32_t cpus = 1;
    std::uint32_t ram_mib = 512;
    std::string name;  // validated instance name, or "default"
    std::filesystem::path overlay;
    std::string disk_node = "disk0";  // snapshots and block jobs address the disk by this name
    boot_method boot;
    std::vector<iso_image> isos;
    std::vector<port_forward> forwards;
    std::optional<host_share> share;
    vm_files files;
};

// The full argv, argv[0] = qemu_binary. QEMU starts daemonized with its CPUs stopped (-S);
// the controller connects to the QMP socket and sends `cont`. No -pidfile: QEMU is identified
// through its QMP socket (defect 2).
std::vector<std::string> build_qemu_argv(const vm_spec& spec);

// QEMU's option syntax splits on ',' and reads ",," as a literal comma.
std::string escape_option_value(std::string_view value);

}  // namespace stackemu::lifecycle
