#include "provision/image_init.hpp"

#include <fmt/format.h>

#include <charconv>
#include <string_view>

#include "provision/download.hpp"

namespace stackemu::provision {
namespace {

std::unexpected<error> bad_flag(std::string_view flag, std::string_view value,
                                std::string_view expected) {
    return fail(errc::invalid_argument, fmt::format("{} {}: {}", flag, value, expected));
}

std::optional<std::uint16_t> parse_port(std::string_view text) {
    unsigned value = 0;
    const auto* end = text.data() + text.size();
    auto [ptr, ec] = std::from_chars(text.data(), end, value);
    if (ec != std::errc() || ptr != end || value == 0 || value > 65535) return std::nullopt;
    return static_cast<std::uint16_t>(value);
}

std::vector<std::string_view> split(std::string_view text, char sep, std::size_t max_parts) {
    std::vector<std::string_view> parts;
    while (parts.size() + 1 < max_parts) {
        const auto at = text.find(sep);
        if (at == std::string_view::npos) break;
        parts.push_back(text.substr(0, at));
        text.remove_prefix(at + 1);
    }
    parts.push_back(text);
    return parts;
}

std::string default_console(std::string_view arch) {
    return arch == "arm64" ? "console=ttyAMA0" : "console=ttyS0";
}

}  // namespace

result<manifest> manifest_for_init(const image_init_spec& spec) {
    if (spec.arch != "amd64" && spec.arch != "arm64")
        return bad_flag("--arch", spec.arch, "must be amd64 or arm64");
    if (spec.kernel.has_value() != spec.initrd.has_value())
        return fail(errc::invalid_argument,
                    "--kernel and --initrd go together: a kernel boot needs both (an image that "
                    "boots through its firmware needs neither)");
    if (!spec.kernel && spec.cmdline)
        return fail(errc::invalid_argument,
                    "--cmdline needs --kernel and --initrd: a firmware-booted disk takes its "
                    "command line from its own bootloader");
    manifest m;
    m.arch = spec.arch;
    m.disk = spec.disk;
    if (spec.kernel)
        m.kernel_boot = kernel_files{*spec.kernel, *spec.initrd,
                                     spec.cmdline.value_or(default_console(spec.arch))};
    m.prof.name = spec.manifest_path.stem().string();
    for (const auto& text : spec.forwards) {
        const auto parts = split(text, ':', 3);
        forward f;
        f.name = std::string(parts[0]);
        const auto guest = parts.size() >= 2 ? parse_port(parts[1]) : std::nullopt;
        const auto host = parts.size() == 3 ? parse_port(parts[2]) : std::nullopt;
        if (f.name.empty() || !guest || (parts.size() == 3 && !host))
            return bad_flag("--forward", text,
                            "expected NAME:GUEST_PORT or NAME:GUEST_PORT:HOST_PORT, ports 1 to "
                            "65535 (e.g. web:8080:18080)");
        f.guest_port = *guest;
        f.host_default = host;
        m.prof.forwards.push_back(std::move(f));
    }
    for (const auto& text : spec.probes) {
        const auto parts = split(text, ':', 2);
        if (parts.size() != 2 || parts[0].empty() || !parts[1].starts_with('/'))
            return bad_flag("--probe", text, "expected FORWARD:/path (e.g. web:/health)");
        m.prof.probes.push_back(
            {std::string(parts[0]), std::string(parts[0]), std::string(parts[1])});
    }
    m.prof.ready_marker = spec.ready_marker;
    m.prof.failure_markers = spec.failure_markers;
    m.prof.match = spec.match;
    m.prof.agent = spec.agent;
    m.prof.recommended = spec.recommended;
    m.base_source = "image init";
    m.build_id = sha256_hex(spec.identity).substr(0, 16);
    m.created = spec.created;
    m.stackemu_version = spec.stackemu_version;
    // Read back through the parser `start` uses: every rule (names, probes naming forwards,
    // printable markers) is checked in one place.
    const auto dir = spec.manifest_path.parent_path();
    auto checked = parse_manifest(to_json_text(m, dir), dir);
    if (!checked) return std::unexpected(checked.error());
    return checked;
}

std::vector<std::string> image_init_warnings(const image_init_spec& spec) {
    std::vector<std::string> out;
    if (spec.kernel && spec.cmdline && spec.cmdline->find("console=") == std::string::npos)
        out.push_back(fmt::format(
            "the kernel command line has no console=: stackemu reads markers from the first "
            "serial port, so add {} or the guest's lines (and its ready marker) go unseen",
            default_console(spec.arch)));
    if (spec.ready_marker.empty() && spec.probes.empty() && !spec.agent)
        out.push_back(
            "no --ready-marker, --probe or --agent: the VM counts as ready as soon as its CPUs "
            "run");
    if (!spec.agent)
        out.push_back(
            "without --agent, stop uses the ACPI power button, and exec, cp and setting the "
            "clock after a fast start are not available");
    return out;
}

}  // namespace stackemu::provision
