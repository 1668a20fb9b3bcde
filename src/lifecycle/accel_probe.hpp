// Chooses the accelerator for EMULATOR_ACCEL=auto by evidence, not by the presence of
// /dev/kvm: on some hosts KVM opens fine but never boots Linux (environment.md), so auto
// boots a kernel under KVM once, looks for its banner, and caches the verdict.
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/settings.hpp"

namespace stackemu::lifecycle {

struct accel_choice {
    accelerator accel = accelerator::tcg;
    std::string reason;       // one line for people: why this accelerator
    bool from_cache = false;  // the verdict was cached, no kernel was booted this time
};

struct accel_probe_inputs {
    accel_mode mode = accel_mode::automatic;
    architecture guest = architecture::amd64;
    architecture host = architecture::amd64;
    std::string qemu_binary;
    // A kernel to boot for the probe: the image's own, or the host's /boot/vmlinuz-*.
    std::optional<std::filesystem::path> kernel;
    std::filesystem::path cache_file;  // the verdict and the accel_probe_key it holds for
    std::chrono::milliseconds banner_timeout{6000};
    std::filesystem::path kvm_device = "/dev/kvm";  // tests name a file they may open instead
};

// The QEMU binary a verdict was taken on, as the file posix_spawnp runs: an upgrade (a new
// inode, size or mtime) or another EMULATOR_QEMU is another binary.
struct qemu_binary_identity {
    std::string path;  // after the PATH lookup
    std::uint64_t device = 0;
    std::uint64_t inode = 0;
    std::uint64_t size = 0;
    std::int64_t mtime_ns = 0;
};
// The host the verdict was taken on: KVM's ability to boot Linux is the kernel's and the CPU's.
struct probe_host_identity {
    std::string kernel_release;  // uname -r
    std::string kernel_version;  // uname -v: the build, which a same-release rebuild changes
    std::string cpu_model;
};

// The key a cached verdict is valid for; any difference re-runs the probe. Pure.
std::string accel_probe_key(const qemu_binary_identity& qemu, const probe_host_identity& host);
// `qemu_binary` looked up on PATH as posix_spawnp does and stat'ed; nullopt when not found.
std::optional<qemu_binary_identity> identify_qemu_binary(const std::string& qemu_binary);
probe_host_identity current_probe_host();

// The newest readable /boot/vmlinuz-*, for images that boot through firmware.
std::optional<std::filesystem::path> host_kernel_for_probe();

asio::awaitable<result<accel_choice>> choose_accelerator(accel_probe_inputs in);

}  // namespace stackemu::lifecycle
