#include "provision/kernel_arch.hpp"

#include <fmt/format.h>

#include <cerrno>
#include <cstdint>
#include <cstring>
#include <fstream>

namespace stackemu::provision {
namespace {

std::optional<std::uint32_t> little_endian(std::string_view bytes, std::size_t at,
                                           std::size_t width) {
    if (at + width > bytes.size()) return std::nullopt;
    std::uint32_t v = 0;
    for (std::size_t i = 0; i < width; ++i)
        v |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[at + i])) << (8 * i);
    return v;
}

std::optional<std::string> from_machine(std::uint32_t machine, bool pe) {
    // ELF e_machine: 62 x86-64, 183 AArch64. COFF: 0x8664 AMD64, 0xaa64 ARM64.
    if (machine == (pe ? 0x8664U : 62U)) return "amd64";
    if (machine == (pe ? 0xaa64U : 183U)) return "arm64";
    return std::nullopt;
}

}  // namespace

std::optional<std::string> detect_kernel_arch(std::string_view head) {
    if (head.starts_with("\x7f"
                         "ELF")) {
        if (auto m = little_endian(head, 18, 2)) return from_machine(*m, false);
        return std::nullopt;
    }
    if (head.size() >= 0x206 && head.substr(0x202, 4) == "HdrS") return "amd64";
    if (head.size() >= 0x3c && head.substr(0x38, 4) == "ARM\x64") return "arm64";
    if (head.starts_with("MZ")) {
        const auto pe = little_endian(head, 0x3c, 4);
        if (pe && *pe + 6 <= head.size() && head.substr(*pe, 4) == std::string_view("PE\0\0", 4))
            if (auto m = little_endian(head, *pe + 4, 2)) return from_machine(*m, true);
    }
    return std::nullopt;
}

result<std::optional<std::string>> kernel_arch_of(const std::filesystem::path& kernel) {
    std::ifstream in(kernel, std::ios::binary);
    if (!in)
        return fail(errc::not_found, fmt::format("cannot read the kernel {}: {}", kernel.string(),
                                                 std::strerror(errno)));
    std::string head(std::size_t{64} * 1024, '\0');
    in.read(head.data(), static_cast<std::streamsize>(head.size()));
    head.resize(static_cast<std::size_t>(in.gcount()));
    return detect_kernel_arch(head);
}

}  // namespace stackemu::provision
