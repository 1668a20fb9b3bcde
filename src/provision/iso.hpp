// Small ISO 9660 images for the guest, written with libisofs (no genisoimage, xorriso or hdiutil
// needed): the cloud-init NoCloud seed, the runtime config and the bundle. Rock Ridge and Joliet
// carry the exact names, so a Linux guest sees `user-data`, not `USER_DAT.;1`.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <ctime>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <variant>
#include <vector>

#include "common/error.hpp"

namespace stackemu::provision {

// One file of an image. Its content is held in memory, or streamed from a host file while the
// image is written (a multi-GiB payload never sits in memory).
struct iso_file {
    // Path inside the image: components joined by '/', e.g. "user-data" or "env/app.env".
    // Each component is 1..64 characters of [A-Za-z0-9._+@-] and not "." or ".." (64 is
    // Joliet's limit, so both namespaces show the name unchanged).
    std::string name;
    std::variant<std::string, std::filesystem::path> content;  // bytes, or a host file
    mode_t mode = 0444;  // permission bits in the Rock Ridge attributes
};

struct iso_options {
    // Every timestamp in the image (volume descriptors, directory records, Rock Ridge), so the
    // same inputs give the same bytes. Default: 1980-01-01T00:00:00Z.
    std::time_t timestamp = 315532800;
};

// Volume labels: 1..32 characters of [A-Za-z0-9_-] (the ISO 9660 volume identifier's length).
result<void> check_volume_label(std::string_view label);
// A name as iso_file::name describes it.
result<void> check_iso_name(std::string_view name);

// Writes `files` as an ISO 9660 image with Rock Ridge and Joliet, labelled `volume_label`.
// Files are owned by root, directories are 0555. The image goes to a temporary file beside
// `out` and is renamed over it when complete: readers never see half an image, and on any
// error nothing is left behind. Errors: invalid_argument (label, names, duplicates, a host file
// that is not a readable regular file), io_error (writing), internal (libisofs).
result<void> write_iso(const std::filesystem::path& out, const std::string& volume_label,
                       const std::vector<iso_file>& files, iso_options options = {});

// --- The three images stackemu gives its guests -------------------------------------------

inline constexpr std::string_view nocloud_label = "cidata";
inline constexpr std::string_view config_label = "STACKCFG";
inline constexpr std::string_view bundle_label = "STACKBUNDLE";

// cloud-init's NoCloud data source: meta-data, user-data and optionally network-config.
struct nocloud_seed {
    std::string meta_data;
    std::string user_data;
    std::optional<std::string> network_config;
};
std::vector<iso_file> nocloud_files(const nocloud_seed& seed);

// The runtime config ISO holds one file, `stack.env`, in this format (version 1):
//   - lines "KEY=VALUE\n", nothing else: no comments, quotes, escapes or blank lines;
//   - KEY is [A-Z_][A-Z0-9_]*; VALUE is [A-Za-z0-9_.,:/@+-]* (possibly empty), so the guest may
//     either parse it with `IFS='=' read -r key value` or source it with `.` unquoted;
//   - first STACKEMU_CONFIG_FORMAT=1, then EMULATOR_NAME and the four EMULATOR_*_PORT
//     values, then `extra` in the given order. A key appears once.
inline constexpr std::string_view config_file_name = "stack.env";
inline constexpr int config_format = 1;

struct runtime_config {
    std::string instance_name;  // EMULATOR_NAME: "default" for the default instance
    std::uint16_t dashboard_port = 26700;
    std::uint16_t backend_port = 26701;
    std::uint16_t minio_port = 26702;
    std::uint16_t inbucket_port = 26703;
    std::vector<std::pair<std::string, std::string>> extra;  // further settings of the profile
};
// stack.env's text; invalid_argument naming the key when a key or value breaks the format.
result<std::string> render_stack_env(const runtime_config& config);
result<std::vector<iso_file>> runtime_config_files(const runtime_config& config);

// The bundle ISO: the payload (e.g. a `docker save` tarball) streamed from the host, and the
// profile's env files beside it (names as iso_file::name, e.g. "app.env").
struct bundle {
    std::filesystem::path payload;
    std::string payload_name = "payload.tar";
    std::vector<std::pair<std::string, std::string>> env_files;  // name, content
};
std::vector<iso_file> bundle_files(const bundle& b);

}  // namespace stackemu::provision
