// A profile is data: cloud-init/<name>/ holds profile.json, user-data, meta-data and the files
// the provisioning run needs. profile.json names what the built image's manifest will say about
// readiness (forwards, probes, markers, agent) and what the build needs (base packages, build
// VM size, bundle files, payload, provisioning markers).
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "provision/manifest.hpp"

namespace stackemu::provision {

inline constexpr std::string_view profile_file_name = "profile.json";

// The whole lines the provisioning guest writes to its serial console.
struct provision_markers {
    std::string done_marker = "STACK_CLOUD_INIT_DONE";
    std::string failed_marker = "STACK_CLOUD_INIT_FAILED";
    std::string progress_prefix = "STACK_PROGRESS ";  // a line starting with it is progress
};

struct profile_file {
    profile runtime;  // copied into the built image's manifest
    std::string description;
    std::vector<std::string> base_packages;  // added to a `--base debian` recipe
    std::uint32_t build_ram_mib = 1024;
    std::uint32_t build_cpus = 2;
    std::vector<std::string> bundle_files;  // relative to the profile directory
    bool payload_required = false;          // build-image needs --payload
    provision_markers provision;
};

// Parses profile.json's text. Errors name the field and say what is expected.
result<profile_file> parse_profile(std::string_view text);

// A profile directory with everything read and checked.
struct loaded_profile {
    profile_file file;
    std::filesystem::path dir;
    std::string user_data;
    std::string meta_data;
    std::vector<std::filesystem::path> bundle_paths;  // absolute, existing regular files
};

// `name_or_dir`: a directory path (contains '/'), or a name looked up in `search_path` in order.
result<loaded_profile> load_profile(std::string_view name_or_dir,
                                    const std::vector<std::filesystem::path>& search_path);

// Where profiles are looked for: $STACKEMU_PROFILE_PATH (':'-separated), then the installed
// share/stackemu/cloud-init beside the executable, then the source tree's cloud-init/.
std::vector<std::filesystem::path> default_profile_search_path(
    const std::filesystem::path& executable);

}  // namespace stackemu::provision
