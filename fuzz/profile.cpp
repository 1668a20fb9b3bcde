// Fuzz target: the profile file parser (src/provision/profile parse_profile). Invariants: bad
// input is an error value, never an exception; an accepted profile holds only what the build
// promises (a safe name, Debian package names, plain bundle file names, bounded build size,
// distinct one-line markers), and its runtime part is one an image manifest accepts.
#include "provision/profile.hpp"

#include <algorithm>
#include <set>
#include <string>

#include "fuzz_support.hpp"
#include "provision/manifest.hpp"

namespace {

using namespace stackemu;
using fuzz::check;

bool is_one_line(std::string_view s) {
    return std::ranges::none_of(s, [](unsigned char c) { return c < 0x20 || c == 0x7f; });
}

bool only(std::string_view s, std::string_view allowed_punctuation) {
    return std::ranges::all_of(s, [&](char c) {
        const bool alnum =
            (c >= 'a' && c <= 'z') || (c >= 'A' && c <= 'Z') || (c >= '0' && c <= '9');
        return alnum || allowed_punctuation.find(c) != std::string_view::npos;
    });
}

// The runtime profile inside a minimal manifest, as build-image would write it.
std::string manifest_with(const provision::profile& p) {
    provision::manifest m;
    m.arch = "amd64";
    m.disk = "/images/disk.qcow2";
    m.prof = p;
    m.build_id = "fuzz";
    return provision::to_json_text(m, "/images");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    auto p = provision::parse_profile(text);
    if (!p) {
        check(!p.error().message.empty(), "a refused profile says what was wrong");
        return 0;
    }
    const auto& name = p->runtime.name;
    check(
        !name.empty() && name.size() <= 32 && only(name, "_-") && name.front() != '_' &&
            name.front() != '-' &&
            name ==
                [&] {
                    std::string lower = name;
                    for (auto& c : lower)
                        if (c >= 'A' && c <= 'Z') c = char(c - 'A' + 'a');
                    return lower;
                }(),
        "the profile name is 1 to 32 of a-z 0-9 _ -");
    std::set<std::string> packages(p->base_packages.begin(), p->base_packages.end());
    check(packages.size() == p->base_packages.size(), "base packages are listed once");
    for (const auto& pkg : p->base_packages)
        check(pkg.size() >= 2 && pkg.find(',') == std::string::npos && only(pkg, "+.-") &&
                  pkg.front() != '+' && pkg.front() != '.' && pkg.front() != '-',
              "base packages are Debian package names (no option or list syntax)");
    std::set<std::string> bundle(p->bundle_files.begin(), p->bundle_files.end());
    check(bundle.size() == p->bundle_files.size(), "bundle files are listed once");
    for (const auto& f : p->bundle_files)
        check(!f.empty() && f.find('/') == std::string::npos && f != "." && f != ".." &&
                  f != "payload.tar",
              "bundle files are plain names in the profile directory");
    check(p->build_ram_mib >= 256 && p->build_ram_mib <= 65536, "build RAM is bounded");
    check(p->build_cpus >= 1 && p->build_cpus <= 64, "build CPUs are bounded");
    const auto& pm = p->provision;
    for (const auto* marker : {&pm.done_marker, &pm.failed_marker, &pm.progress_prefix})
        check(!marker->empty() && is_one_line(*marker), "provisioning markers are single lines");
    check(pm.done_marker != pm.failed_marker, "done and failed markers differ");

    auto m = provision::parse_manifest(manifest_with(p->runtime), "/images");
    check(m.has_value(), "an image built from the profile has a manifest stackemu reads");
    if (m)
        check(manifest_with(m->prof) == manifest_with(p->runtime),
              "the manifest carries the profile's runtime part unchanged");
    return 0;
}
