// Checks of a base image before use: its header, then qemu-img's own consistency check.
#include "lifecycle/image_check.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <cerrno>
#include <cstring>
#include <string>

namespace stackemu::lifecycle {

namespace {

constexpr std::string_view qcow2_magic = "QFI\xfb";
// QEMU refuses a qcow2 header shorter than version 2's 72 bytes.
constexpr std::uint64_t min_qcow2_header = 72;
constexpr std::string_view remedy =
    "build it again (`stackemu build-image`) or download it again (`stackemu pull`)";

bool looks_like_text(std::string_view bytes) {
    return !bytes.empty() && std::ranges::all_of(bytes, [](char c) {
        const auto u = static_cast<unsigned char>(c);
        return u == '\n' || u == '\r' || u == '\t' || (u >= 0x20 && u < 0x7f);
    });
}

// The first line of `text`, shortened and without control bytes, for quoting in a message.
std::string quote_start(std::string_view text, std::size_t max = 40) {
    std::string out;
    for (char c : text) {
        if (c == '\n' || c == '\r' || out.size() >= max) break;
        out += (static_cast<unsigned char>(c) < 0x20 || c == 0x7f) ? '?' : c;
    }
    return out;
}

// The first non-blank line of qemu-img's output, without its "qemu-img: " prefix.
std::string first_line(std::string_view text) {
    while (!text.empty()) {
        const auto nl = text.find('\n');
        auto line = text.substr(0, nl);
        while (!line.empty() && (line.back() == '\r' || line.back() == ' '))
            line.remove_suffix(1);
        if (line.starts_with("qemu-img: ")) line.remove_prefix(10);
        if (!line.empty()) return std::string(line);
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return {};
}

}  // namespace

result<void> judge_image_header(std::string_view first_bytes, std::uint64_t size,
                                const std::filesystem::path& image) {
    if (size == 0)
        return fail(errc::invalid_argument,
                    fmt::format("the image {} is empty (0 bytes), as an interrupted copy or "
                                "download leaves it: {}",
                                image.string(), remedy));
    if (!first_bytes.starts_with(qcow2_magic)) {
        if (looks_like_text(first_bytes))
            return fail(errc::invalid_argument,
                        fmt::format("the image {} is not a qcow2 disk but a text file (it begins "
                                    "\"{}\"): name the .qcow2 with --image, or {}",
                                    image.string(), quote_start(first_bytes), remedy));
        return fail(errc::invalid_argument,
                    fmt::format("the image {} is not a qcow2 disk (it does not begin with "
                                "qcow2's signature QFI\\xfb): {}",
                                image.string(), remedy));
    }
    if (size < min_qcow2_header)
        return fail(errc::invalid_argument,
                    fmt::format("the image {} is truncated: {} bytes, less than a qcow2 header; {}",
                                image.string(), size, remedy));
    return {};
}

result<void> judge_image_check(const tool_result& check, const std::filesystem::path& image) {
    if (check.exit_code == 0 || check.exit_code == 3) return {};
    std::string said = first_line(check.err);
    if (said.empty()) said = first_line(check.out);
    if (said.empty()) said = fmt::format("exit status {}", check.exit_code);
    return fail(errc::invalid_argument,
                fmt::format("the image {} is damaged or truncated (qemu-img check: {}): {}",
                            image.string(), said, remedy));
}

result<void> check_base_image(const std::filesystem::path& image) {
    const int fd = ::open(image.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0)
        return fail(
            errno == ENOENT ? errc::not_found : errc::io_error,
            fmt::format("cannot read the image {}: {}", image.string(), std::strerror(errno)));
    struct stat st {};
    std::array<char, 512> head{};
    ssize_t n = -1;
    if (::fstat(fd, &st) == 0) {
        do {
            n = ::pread(fd, head.data(), head.size(), 0);
        } while (n < 0 && errno == EINTR);
    }
    const int saved_errno = errno;
    ::close(fd);
    if (n < 0)
        return fail(errc::io_error, fmt::format("cannot read the image {}: {}", image.string(),
                                                std::strerror(saved_errno)));
    if (!S_ISREG(st.st_mode))
        return fail(errc::invalid_argument,
                    fmt::format("the image {} is not a regular file: name the .qcow2 with --image",
                                image.string()));
    const std::string_view first(head.data(), static_cast<std::size_t>(n));
    if (auto header = judge_image_header(first, static_cast<std::uint64_t>(st.st_size), image);
        !header)
        return header;
    auto check = run_tool({"qemu-img", "check", "-q", "-f", "qcow2", image.string()});
    if (!check) return fail(check.error());
    return judge_image_check(*check, image);
}

}  // namespace stackemu::lifecycle
