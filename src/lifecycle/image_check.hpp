// Is a base image a usable qcow2? Judged before an overlay is made on it: otherwise a damaged
// image surfaces later as qemu-img's complaint about the overlay, or a guest that cannot boot.
#pragma once

#include <cstdint>
#include <filesystem>
#include <string_view>

#include "common/error.hpp"
#include "lifecycle/process.hpp"

namespace stackemu::lifecycle {

// What the first bytes of an image (up to 512) and its size say: empty, text, not qcow2, or
// a qcow2 header. Pure. Errors name the file and say how to get a good image.
result<void> judge_image_header(std::string_view first_bytes, std::uint64_t size,
                                const std::filesystem::path& image);

// What `qemu-img check -f qcow2 IMAGE` reported: exit 0 (clean) and 3 (leaked clusters,
// harmless) pass; anything else is a damaged or truncated image. Pure.
result<void> judge_image_check(const tool_result& check, const std::filesystem::path& image);

// Reads the header, then runs `qemu-img check` (read-only: the image is never written).
result<void> check_base_image(const std::filesystem::path& image);

}  // namespace stackemu::lifecycle
