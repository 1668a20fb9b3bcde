// An image is a qcow2 disk plus this manifest (JSON beside it): how to boot it and what
// "ready" means for the services inside (the profile).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace stackemu::provision {

inline constexpr int manifest_format = 1;

// One host->guest TCP forward. `name` ties it to a host port setting: dashboard, backend,
// minio and inbucket take EMULATOR_<NAME>_PORT; other names use host_default.
struct forward {
    std::string name;
    std::uint16_t guest_port = 0;
    std::optional<std::uint16_t> host_default;
};

// An HTTP GET through a forward's host port that must answer 2xx/3xx for "ready".
struct probe {
    std::string name;
    std::string forward;  // a forward's name
    std::string path;     // starts with '/'
};

// How a console line matches a marker. prefix: the line (terminal codes and surrounding blanks
// removed) starts with the marker and the marker is a whole word there, so `GUEST_READY
// uptime=1.8` matches GUEST_READY and `GUEST_READY_SOON` does not. exact: the line is the marker.
enum class marker_match { prefix, exact };
std::string_view to_string(marker_match m);

// The VM size the payload needs (`resources` in profile.json and the manifest's profile): an
// instance created without --ram/--cpus gets it. Unset: the built-in default (4096 MiB, 4).
struct resources {
    std::optional<std::uint32_t> ram_mib;
    std::optional<std::uint32_t> cpus;
    bool operator==(const resources&) const = default;
};
// The same limits as the --ram and --cpus flags (src/lifecycle/settings.hpp).
inline constexpr std::uint32_t min_resource_ram_mib = 128;
inline constexpr std::uint32_t max_resource_ram_mib = 1048576;
inline constexpr std::uint32_t max_resource_cpus = 256;

struct profile {
    std::string name;
    std::vector<forward> forwards;
    std::vector<probe> probes;
    std::string ready_marker;  // empty: none
    std::vector<std::string> failure_markers;
    marker_match match = marker_match::prefix;  // for the ready and failure markers
    bool agent = false;                         // the guest agent must answer before "ready"
    resources recommended;                      // the VM size the payload needs
};

struct kernel_files {
    std::filesystem::path kernel;  // absolute once loaded
    std::filesystem::path initrd;
    std::string cmdline;
};

struct manifest {
    int format = manifest_format;
    std::string arch;                         // amd64 | arm64
    std::filesystem::path disk;               // the base qcow2, absolute once loaded
    std::optional<kernel_files> kernel_boot;  // nullopt: boot through the firmware
    profile prof;
    std::string base_source;
    std::string base_sha256;
    std::string build_id;  // the overlay records it; a different build recreates the overlay
    std::string stackemu_version;
    std::string created;
    // What build-image built it from (profile files, base, payload), hashed: `build-image
    // --if-changed` rebuilds only when this differs. Empty for images made otherwise.
    std::string recipe;
};

// Parses and checks a manifest's text; relative paths resolve against `dir`. Errors name the
// field and say what is expected.
result<manifest> parse_manifest(std::string_view text, const std::filesystem::path& dir);
std::string to_json_text(const manifest& m, const std::filesystem::path& dir);

// The manifest of an image: IMAGE.json beside IMAGE.qcow2, or the .json named directly. Also
// checks that the files it names exist.
result<manifest> load_manifest(const std::filesystem::path& image_or_manifest);

// <image_dir>/stack-emulator-<arch>.qcow2, upstream's name for the built image.
std::filesystem::path default_image(const std::filesystem::path& image_dir, std::string_view arch);

}  // namespace stackemu::provision
