// Fuzz target: the image manifest parser (src/provision/manifest parse_manifest). Invariants:
// bad input is an error value, never an exception; an accepted manifest holds only what the
// loader promises (known arch, absolute paths, probes on declared forwards, one-line markers),
// and writing it out and reading it back gives the same manifest.
#include "provision/manifest.hpp"

#include <algorithm>
#include <set>
#include <string>

#include "fuzz_support.hpp"

namespace {

using namespace stackemu;
using fuzz::check;

bool is_one_line(std::string_view s) {
    return std::ranges::none_of(s, [](unsigned char c) { return c < 0x20 || c == 0x7f; });
}

void check_profile(const provision::profile& p) {
    std::set<std::string> forwards;
    for (const auto& f : p.forwards) {
        check(f.guest_port != 0 && (!f.host_default || *f.host_default != 0),
              "ports are 1 to 65535");
        check(forwards.insert(f.name).second, "forward names are unique");
    }
    for (const auto& pr : p.probes) {
        check(forwards.contains(pr.forward), "a probe goes through a declared forward");
        check(!pr.path.empty() && pr.path.front() == '/', "a probe path starts with '/'");
    }
    check(is_one_line(p.ready_marker), "the ready marker is one line");
    for (const auto& m : p.failure_markers)
        check(!m.empty() && is_one_line(m), "failure markers are non-empty single lines");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    const std::filesystem::path dir = "/images";
    auto m = provision::parse_manifest(text, dir);
    if (!m) {
        check(m.error().code == errc::invalid_argument && !m.error().message.empty(),
              "a refused manifest is invalid_argument with a message");
        return 0;
    }
    check(m->format == provision::manifest_format, "only this format is accepted");
    check(m->arch == "amd64" || m->arch == "arm64", "the arch is known");
    check(m->disk.is_absolute(), "the disk path is absolute");
    if (m->kernel_boot)
        check(m->kernel_boot->kernel.is_absolute() && m->kernel_boot->initrd.is_absolute(),
              "kernel and initrd paths are absolute");
    check(!m->build_id.empty(), "a build id is present");
    check_profile(m->prof);

    const auto written = provision::to_json_text(*m, dir);
    auto reread = provision::parse_manifest(written, dir);
    check(reread.has_value(), "a manifest we write is one we read");
    if (reread) check(provision::to_json_text(*reread, dir) == written, "a round trip is exact");
    return 0;
}
