// Chooses the accelerator for EMULATOR_ACCEL=auto by evidence, not by the presence of
// /dev/kvm: on some hosts KVM opens fine but never boots Linux (environment.md), so auto
// boots a kernel under KVM once, looks for its banner, and caches the verdict.
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <optional>
#include <string>

#include "common/error.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/settings.hpp"

namespace stackemu::lifecycle {

struct accel_choice {
    accelerator accel = accelerator::tcg;
    std::string reason;  // one line for people: why this accelerator
};

struct accel_probe_inputs {
    accel_mode mode = accel_mode::automatic;
    architecture guest = architecture::amd64;
    architecture host = architecture::amd64;
    std::string qemu_binary;
    // A kernel to boot for the probe: the image's own, or the host's /boot/vmlinuz-*.
    std::optional<std::filesystem::path> kernel;
    std::filesystem::path cache_file;  // verdicts, keyed by QEMU, host kernel and CPU
    std::chrono::milliseconds banner_timeout{6000};
};

// The key a cached verdict is valid for: the QEMU binary (path, size, mtime), the host
// kernel release and the CPU model. Any change re-runs the probe.
std::string accel_probe_key(const std::string& qemu_binary);

// The newest readable /boot/vmlinuz-*, for images that boot through firmware.
std::optional<std::filesystem::path> host_kernel_for_probe();

asio::awaitable<result<accel_choice>> choose_accelerator(accel_probe_inputs in);

}  // namespace stackemu::lifecycle
