// The emulator's settings: upstream's EMULATOR_* environment variables, parsed and validated.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::lifecycle {

enum class architecture { amd64, arm64 };
// What the user asked for; `automatic` is resolved later against what the host offers.
enum class accel_mode { automatic, kvm, hvf, tcg };

std::string_view to_string(architecture a);
std::string_view to_string(accel_mode m);
// "amd64" | "arm64" (and the kernel's names "x86_64" | "aarch64"); anything else is an error.
result<architecture> parse_architecture(std::string_view text);
// "auto" | "kvm" | "hvf" | "tcg".
result<accel_mode> parse_accel_mode(std::string_view text);

// Looks up one environment variable; nullopt when unset. Injected so parsing stays pure.
using env_lookup = std::function<std::optional<std::string>(std::string_view)>;
// The real process environment (getenv).
env_lookup process_environment();

// Facts about the host that defaults depend on; injected for the same reason.
struct host_facts {
    std::optional<architecture> arch;  // nullopt on a host that is neither amd64 nor arm64
    unsigned cores = 1;
    std::uint64_t ram_mib = 0;  // physical memory; 0 when unknown (sizes are then not checked)
    static host_facts current();
};

// Limits every setting is checked against, shared with the CLI's overrides.
inline constexpr std::uint64_t min_ram_mib = 128;
inline constexpr std::uint64_t max_ram_mib = 1048576;  // 1 TiB
inline constexpr std::uint64_t min_cpus = 1;
inline constexpr std::uint64_t max_cpus = 256;
inline constexpr std::uint64_t max_amd64_cpus = 255;         // q35 without interrupt remapping
inline constexpr std::uint64_t max_timeout_seconds = 86400;  // one day: beyond that it is a typo
inline constexpr std::uint64_t min_disk_bytes = 1ull << 30;
inline constexpr std::uint64_t max_disk_bytes = 16ull << 40;

struct forwarded_ports {
    std::uint16_t dashboard = 26700;
    std::uint16_t backend = 26701;
    std::uint16_t minio = 26702;
    std::uint16_t inbucket = 26703;
};

// Fields are public so the CLI can override them; call validate() after changing any.
struct settings {
    std::filesystem::path image_dir;  // EMULATOR_IMAGE_DIR, default ~/.stack/emulator/images
    std::filesystem::path run_dir;    // EMULATOR_RUN_DIR, default ~/.stack/emulator/run
    std::uint32_t ram_mib = 4096;     // EMULATOR_RAM or EMULATOR_RAM_MB
    std::uint32_t cpus = 4;           // EMULATOR_CPUS
    architecture guest_arch = architecture::amd64;  // EMULATOR_ARCH, default the host's
    std::chrono::seconds ready_timeout{240};        // EMULATOR_READY_TIMEOUT
    forwarded_ports ports;                     // EMULATOR_{DASHBOARD,BACKEND,MINIO,INBUCKET}_PORT
    std::chrono::seconds stop_timeout{90};     // EMULATOR_STOP_TIMEOUT
    accel_mode accel = accel_mode::automatic;  // EMULATOR_ACCEL
    std::string name;                          // EMULATOR_NAME; empty = the default instance
    std::string qemu;  // EMULATOR_QEMU; empty = qemu-system-<arch> from PATH
    std::chrono::seconds provision_timeout{3200};  // EMULATOR_PROVISION_TIMEOUT
    std::uint64_t disk_size_bytes = 12ull << 30;   // EMULATOR_DISK_SIZE, default 12G
    std::uint32_t build_ram_mib = 4096;            // EMULATOR_BUILD_RAM
    std::uint32_t build_cpus = 1;                  // EMULATOR_BUILD_CPUS, default the host's cores
    // How long the controller waits for one reply from QEMU's monitor or the guest agent
    // before it gives the command up (a wedged QEMU, a lost reply).
    std::chrono::seconds reply_timeout{30};  // EMULATOR_REPLY_TIMEOUT
};

// Every monitor and agent connection of this process waits at most this long for a reply
// (settings::reply_timeout; the CLI sets it once from the settings it resolved). Process-wide
// because the connections are opened deep inside start, stop, status, snapshot and exec.
void set_reply_timeout(std::chrono::milliseconds timeout);
std::chrono::milliseconds reply_timeout();

// Reads every EMULATOR_* variable, applies upstream's defaults, and validates the result.
// Errors name the variable, the value, and what to write instead.
result<settings> from_environment(const env_lookup& env,
                                  const host_facts& host = host_facts::current());

// Checks ranges and cross-field rules (distinct ports, instance name, absolute paths).
result<void> validate(const settings& s);

// Building blocks shared with the CLI, which applies its options on top of the environment.
// `what` names the source of the text in errors, e.g. "EMULATOR_CPUS" or "--cpus".
// Plain decimal only: no sign, no suffix, no exponent, no blanks, no overflow.
result<std::uint64_t> parse_decimal(std::string_view text, std::string_view what, std::uint64_t min,
                                    std::uint64_t max);
// qemu-img's size syntax restricted to binary suffixes: "12G", "512M", "1T", or plain bytes.
result<std::uint64_t> parse_disk_size(std::string_view text, std::string_view what);
// A guest size the user asked for (`what`: "--ram", "EMULATOR_CPUS", "config set cpus") must
// fit the host: more RAM than the host's physical memory, or more vCPUs than its CPUs, is
// refused with the host's figures. Built-in defaults and profile recommendations are not.
result<void> check_ram_fits_host(std::uint64_t ram_mib, std::string_view what,
                                 const host_facts& host);
result<void> check_cpus_fit_host(std::uint64_t cpus, std::string_view what, const host_facts& host);
// Instance names become directory names and QEMU's -name: [A-Za-z0-9][A-Za-z0-9_.-]{0,31}.
result<void> check_instance_name(std::string_view name, std::string_view what);
// "~" and "~/x" expand from home; the result must be absolute.
result<std::filesystem::path> expand_path(std::string_view text, std::string_view what,
                                          const std::optional<std::string>& home);

}  // namespace stackemu::lifecycle
