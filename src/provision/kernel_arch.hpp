// Which architecture a kernel file is for, read from its header: an image whose manifest names
// the wrong arch otherwise boots to a silent console and a timeout.
#pragma once

#include <filesystem>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::provision {

// "amd64" or "arm64" from the first bytes of a kernel: an ELF vmlinux (e_machine), an x86
// bzImage ("HdrS" at 0x202), an arm64 Image ("ARMd" at 0x38), or a PE/EFI-stub image (its
// COFF machine). nullopt when the header says nothing we know (a gzip-compressed Image, say).
std::optional<std::string> detect_kernel_arch(std::string_view head);

// The same for a file; reads its first 64 KiB.
result<std::optional<std::string>> kernel_arch_of(const std::filesystem::path& kernel);

}  // namespace stackemu::provision
