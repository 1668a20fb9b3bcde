// `stackemu build-image`: boots a base image with a profile's cloud-init seed and bundle,
// watches the serial console for the profile's done/failed markers, waits for the guest's own
// power-off, and compresses the result into an image with its manifest (written last).
#pragma once

#include <asio/awaitable.hpp>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/settings.hpp"
#include "provision/profile.hpp"

namespace stackemu::lifecycle {

struct build_request {
    settings config;  // image and run dirs, arch, accel, qemu, provision and stop timeouts
    provision::loaded_profile profile;
    // "debian" (built from Debian packages, cached), a local qcow2, or an http(s) URL.
    std::string base = "debian";
    std::string base_sha256;  // required for a URL; checked for a file when given
    std::optional<std::filesystem::path> payload;  // payload.tar on the bundle ISO
    std::optional<std::filesystem::path> output;   // default: the built image for the arch
    std::uint32_t ram_mib = 1024;
    std::uint32_t cpus = 2;
    bool rebuild_base = false;
    // Leave an image alone when its manifest records this very recipe (profile files, base,
    // payload): for scripts that want "the default image, built if needed".
    bool if_changed = false;
    bool keep_on_failure = false;  // leave the failed provisioning VM running
    bool verbose = false;          // every console line, not only the progress lines
    progress_sink progress;        // lines for people, without the time prefix
    std::function<void(double percent)> compress_progress;  // qemu-img convert -p
};

struct build_outcome {
    bool ok = false;
    bool up_to_date = false;  // if_changed, and the image was built from this recipe
    std::string recipe;
    std::filesystem::path image;
    std::filesystem::path manifest;
    std::filesystem::path logs_dir;  // serial, QEMU and event logs of the provisioning run
    std::string build_id;
    std::string base_source;
    bool base_cached = false;
    std::uint64_t image_bytes = 0;
    std::vector<phase_time> phases;  // base, provisioning, power-off, compression (durations)
    double total_ms = 0;
    // When !ok:
    cause why = cause::none;
    std::string failure;
    std::vector<std::string> last_lines;  // the guest's last 50 console lines
    double failure_to_exit_ms = 0;        // from the failure's detection to this result
};

// Input errors (profile, base, payload, a busy build) come back as errors before anything is
// changed; a provisioning failure is an outcome with !ok, the VM stopped and the logs kept.
// The image appears only complete: compressed to a temporary name, renamed, manifest last.
asio::awaitable<result<build_outcome>> build_image(build_request req);

// The cache root for bases: $XDG_CACHE_HOME/stackemu or ~/.cache/stackemu.
std::filesystem::path stackemu_cache_dir();

}  // namespace stackemu::lifecycle
