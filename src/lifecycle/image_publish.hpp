// Putting a built image in place so that a crash at any moment (kill -9, power loss) leaves the
// old image with its manifest, no manifest at all, or the new image with its manifest: never a
// manifest naming a disk or kernel it does not describe, which `start` would boot. The steps
// are data (a pure plan) so a test can stop after each one, as a kill would.
#pragma once

#include <sys/types.h>

#include <filesystem>
#include <string>
#include <utility>
#include <vector>

#include "common/error.hpp"

namespace stackemu::lifecycle {

struct publish_files {
    std::filesystem::path disk_tmp;  // the finished disk under a temporary name
    std::filesystem::path disk;      // its final name
    // Files copied beside it (the kernel and initrd of a direct-boot image): source, final name.
    std::vector<std::pair<std::filesystem::path, std::filesystem::path>> copies;
    std::filesystem::path manifest;
    std::string manifest_text;
    std::string temp_suffix;  // appended to a copy's final name while it is written
};

struct publish_step {
    enum class kind { remove, copy, rename, write };
    kind what = kind::remove;
    std::filesystem::path from;  // copy: the source; rename: the old name
    std::filesystem::path to;    // remove, write: the file; copy: a temporary; rename: new name
    std::string text;            // write: the content (written atomically)
    mode_t mode = 0644;          // copy, write
};

// The old manifest goes first (from then on nothing names the old files), then each copy to a
// temporary name and its rename, then the disk's rename, and the manifest last.
std::vector<publish_step> publish_plan(const publish_files& files);

result<void> run_publish_step(const publish_step& step);

// Runs the plan; on an error, removes the temporary files it made and says what failed.
result<void> publish_image(const publish_files& files);

}  // namespace stackemu::lifecycle
