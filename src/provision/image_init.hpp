// `stackemu image init`: a manifest for an image made outside stackemu (your own kernel,
// initrd and disk), from flags instead of hand-written JSON. Pure: the shell does the I/O.
#pragma once

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "provision/manifest.hpp"

namespace stackemu::provision {

struct image_init_spec {
    std::filesystem::path manifest_path;  // where IMAGE.json goes; paths resolve against its dir
    std::filesystem::path disk;           // the qcow2 (the shell creates an empty one if needed)
    std::optional<std::filesystem::path> kernel;  // kernel boot when set (with initrd)
    std::optional<std::filesystem::path> initrd;
    std::optional<std::string> cmdline;  // default: console=ttyS0 (ttyAMA0 on arm64)
    std::string arch;                    // amd64 | arm64, already decided by the shell
    std::vector<std::string> forwards;   // NAME:GUEST_PORT[:HOST_PORT]
    std::vector<std::string> probes;     // FORWARD:/path
    std::string ready_marker;
    std::vector<std::string> failure_markers;
    marker_match match = marker_match::prefix;
    bool agent = false;
    resources recommended;  // --ram / --cpus: the VM size an instance gets without flags
    std::string identity;   // what the files are (paths, sizes, times): hashed into build_id
    std::string created;
    std::string stackemu_version;
};

// The manifest the spec describes, checked exactly as `start` would read it. Errors name the
// flag and the value.
result<manifest> manifest_for_init(const image_init_spec& spec);

// Warnings that do not stop the manifest (a kernel command line without a serial console).
std::vector<std::string> image_init_warnings(const image_init_spec& spec);

}  // namespace stackemu::provision
