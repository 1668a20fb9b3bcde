#include "provision/manifest.hpp"

#include <fmt/format.h>

#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <sstream>
#include <tuple>

#include "provision/known_keys.hpp"
#include "provision/profile_json.hpp"

namespace stackemu::provision {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::unexpected<error> bad(std::string_view field, std::string_view expected) {
    return fail(errc::invalid_argument, fmt::format("manifest field \"{}\": {}", field, expected));
}

result<std::string> need_string(const json& j, std::string_view field, bool required = true) {
    auto it = j.find(field);
    if (it == j.end()) {
        if (required) return bad(field, "missing (a string is expected)");
        return std::string();
    }
    if (!it->is_string()) return bad(field, "must be a string");
    return it->get<std::string>();
}

}  // namespace

std::string_view to_string(marker_match m) {
    return m == marker_match::exact ? "exact" : "prefix";
}

const std::vector<std::string_view> profile_runtime_keys = {
    "name",         "forwards", "probes",   "ready_marker", "failure_markers",
    "marker_match", "agent",    "resources"};

result<profile> profile_from_json(const json& j, std::string_view document, std::string_view prefix,
                                  const std::vector<std::string_view>& also_known) {
    auto bad = [&](std::string_view field, std::string_view expected) -> std::unexpected<error> {
        return fail(errc::invalid_argument,
                    fmt::format("{} field \"{}{}\": {}", document, prefix, field, expected));
    };
    auto need_string = [&](const json& o, std::string_view field,
                           bool required = true) -> result<std::string> {
        auto it = o.find(field);
        if (it == o.end()) {
            if (required) return bad(field, "missing (a string is expected)");
            return std::string();
        }
        if (!it->is_string()) return bad(field, "must be a string");
        return it->get<std::string>();
    };
    auto need_port = [&](const json& o, std::string_view field) -> result<std::uint16_t> {
        auto it = o.find(field);
        if (it == o.end() || !it->is_number_unsigned() || it->get<std::uint64_t>() == 0 ||
            it->get<std::uint64_t>() > 65535)
            return bad(field, "must be a TCP port number between 1 and 65535");
        return static_cast<std::uint16_t>(it->get<std::uint64_t>());
    };
    auto check_marker = [&](std::string_view field, std::string_view marker) -> result<void> {
        for (unsigned char c : marker)
            if (c < 0x20 || c == 0x7f) return bad(field, "must be one line of printable text");
        return {};
    };
    if (!j.is_object()) return bad("", "must be an object");
    {
        auto known = profile_runtime_keys;
        known.insert(known.end(), also_known.begin(), also_known.end());
        if (auto ok = check_known_keys(j, known, document, prefix); !ok)
            return std::unexpected(ok.error());
    }
    profile p;
    auto name = need_string(j, "name");
    if (!name) return std::unexpected(name.error());
    p.name = *name;
    std::set<std::string> forward_names;
    if (auto it = j.find("forwards"); it != j.end()) {
        if (!it->is_array()) return bad("forwards", "must be an array");
        for (const auto& f : *it) {
            if (!f.is_object()) return bad("forwards[]", "must be objects");
            if (auto ok = check_known_keys(f, {"name", "guest", "host_default"}, document,
                                           fmt::format("{}forwards[].", prefix));
                !ok)
                return std::unexpected(ok.error());
            forward fw;
            auto fname = need_string(f, "name");
            if (!fname) return std::unexpected(fname.error());
            fw.name = *fname;
            auto guest = need_port(f, "guest");
            if (!guest) return std::unexpected(guest.error());
            fw.guest_port = *guest;
            if (f.contains("host_default")) {
                auto host = need_port(f, "host_default");
                if (!host) return std::unexpected(host.error());
                fw.host_default = *host;
            }
            if (!forward_names.insert(fw.name).second)
                return bad("forwards", fmt::format("the name {} appears twice", fw.name));
            p.forwards.push_back(std::move(fw));
        }
    }
    if (auto it = j.find("probes"); it != j.end()) {
        if (!it->is_array()) return bad("probes", "must be an array");
        for (const auto& pr : *it) {
            if (!pr.is_object()) return bad("probes[]", "must be objects");
            if (auto ok = check_known_keys(pr, {"name", "forward", "path"}, document,
                                           fmt::format("{}probes[].", prefix));
                !ok)
                return std::unexpected(ok.error());
            probe p1;
            auto pname = need_string(pr, "name");
            auto fwd = need_string(pr, "forward");
            auto path = need_string(pr, "path");
            if (!pname) return std::unexpected(pname.error());
            if (!fwd) return std::unexpected(fwd.error());
            if (!path) return std::unexpected(path.error());
            if (!forward_names.contains(*fwd))
                return bad("probes[].forward",
                           fmt::format("probe {} names forward {}, which the profile lacks", *pname,
                                       *fwd));
            if (path->empty() || path->front() != '/')
                return bad("probes[].path", "must start with '/'");
            p1.name = *pname;
            p1.forward = *fwd;
            p1.path = *path;
            p.probes.push_back(std::move(p1));
        }
    }
    auto ready = need_string(j, "ready_marker", false);
    if (!ready) return std::unexpected(ready.error());
    if (auto ok = check_marker("ready_marker", *ready); !ok) return std::unexpected(ok.error());
    p.ready_marker = *ready;
    if (auto it = j.find("failure_markers"); it != j.end()) {
        if (!it->is_array()) return bad("failure_markers", "must be an array of strings");
        for (const auto& m : *it) {
            if (!m.is_string() || m.get<std::string>().empty())
                return bad("failure_markers", "must be an array of non-empty strings");
            if (auto ok = check_marker("failure_markers", m.get<std::string>()); !ok)
                return std::unexpected(ok.error());
            p.failure_markers.push_back(m.get<std::string>());
        }
    }
    if (auto it = j.find("marker_match"); it != j.end()) {
        if (*it == "prefix")
            p.match = marker_match::prefix;
        else if (*it == "exact")
            p.match = marker_match::exact;
        else
            return bad("marker_match", "must be \"prefix\" or \"exact\"");
    }
    if (auto it = j.find("agent"); it != j.end()) {
        if (!it->is_boolean()) return bad("agent", "must be true or false");
        p.agent = it->get<bool>();
    }
    if (auto it = j.find("resources"); it != j.end()) {
        if (!it->is_object())
            return bad("resources", "must be an object like {\"ram_mib\": 1024, \"cpus\": 2}");
        if (auto ok = check_known_keys(*it, {"ram_mib", "cpus"}, document,
                                       fmt::format("{}resources.", prefix));
            !ok)
            return std::unexpected(ok.error());
        for (auto [field, lo, hi, slot] :
             {std::tuple{"ram_mib", min_resource_ram_mib, max_resource_ram_mib,
                         &p.recommended.ram_mib},
              std::tuple{"cpus", std::uint32_t{1}, max_resource_cpus, &p.recommended.cpus}}) {
            auto v = it->find(field);
            if (v == it->end()) continue;
            if (!v->is_number_unsigned() || v->get<std::uint64_t>() < lo ||
                v->get<std::uint64_t>() > hi)
                return bad(fmt::format("resources.{}", field),
                           fmt::format("must be a whole number from {} to {}", lo, hi));
            *slot = static_cast<std::uint32_t>(v->get<std::uint64_t>());
        }
    }
    return p;
}

namespace {

fs::path resolve(const fs::path& dir, const std::string& relative) {
    fs::path p(relative);
    return p.is_absolute() ? p : dir / p;
}

}  // namespace

result<manifest> parse_manifest(std::string_view text, const fs::path& dir) {
    auto j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return fail(errc::invalid_argument,
                    "the manifest is not a JSON object (damaged file? "
                    "rebuild the image with `stackemu build-image`)");
    if (auto ok = check_known_keys(j,
                                   {"format", "arch", "disk", "boot", "profile", "base", "build_id",
                                    "stackemu_version", "created", "recipe"},
                                   "manifest", "");
        !ok)
        return std::unexpected(ok.error());
    manifest m;
    if (!j.contains("format") || !j["format"].is_number_integer())
        return bad("format", "missing (this manifest was not written by stackemu)");
    // Compared as JSON, not through get<int>(): 4294967297 must not pass for 1.
    if (j["format"] != manifest_format)
        return bad("format", fmt::format("version {} is not understood by this stackemu "
                                         "(it reads version {}): rebuild the image",
                                         j["format"].dump(), manifest_format));
    m.format = manifest_format;
    auto arch = need_string(j, "arch");
    if (!arch) return std::unexpected(arch.error());
    if (*arch != "amd64" && *arch != "arm64") return bad("arch", "must be amd64 or arm64");
    m.arch = *arch;
    auto disk = need_string(j, "disk");
    if (!disk) return std::unexpected(disk.error());
    if (disk->empty()) return bad("disk", "must name the base qcow2");
    m.disk = resolve(dir, *disk);

    if (!j.contains("boot") || !j["boot"].is_object())
        return bad("boot", "missing (an object with mode firmware or kernel)");
    const auto& boot = j["boot"];
    if (auto ok =
            check_known_keys(boot, {"mode", "kernel", "initrd", "cmdline"}, "manifest", "boot.");
        !ok)
        return std::unexpected(ok.error());
    auto mode = need_string(boot, "mode");
    if (!mode) return std::unexpected(mode.error());
    if (*mode == "kernel") {
        auto kernel = need_string(boot, "kernel");
        auto initrd = need_string(boot, "initrd");
        auto cmdline = need_string(boot, "cmdline", false);
        if (!kernel) return std::unexpected(kernel.error());
        if (!initrd) return std::unexpected(initrd.error());
        if (!cmdline) return std::unexpected(cmdline.error());
        m.kernel_boot = kernel_files{resolve(dir, *kernel), resolve(dir, *initrd), *cmdline};
    } else if (*mode != "firmware") {
        return bad("boot.mode", "must be firmware or kernel");
    }

    if (!j.contains("profile")) return bad("profile", "missing");
    auto prof = profile_from_json(j["profile"], "manifest", "profile.");
    if (!prof) return std::unexpected(prof.error());
    m.prof = std::move(*prof);

    // Optional strings: json::value() would throw on another type, so each is checked.
    if (auto it = j.find("base"); it != j.end() && it->is_object()) {
        if (auto ok = check_known_keys(*it, {"source", "sha256"}, "manifest", "base."); !ok)
            return std::unexpected(ok.error());
        auto source = need_string(*it, "source", false);
        if (!source) return bad("base.source", "must be a string");
        auto sha256 = need_string(*it, "sha256", false);
        if (!sha256) return bad("base.sha256", "must be a string");
        m.base_source = *source;
        m.base_sha256 = *sha256;
    }
    auto build_id = need_string(j, "build_id");
    if (!build_id) return std::unexpected(build_id.error());
    if (build_id->empty()) return bad("build_id", "must not be empty");
    m.build_id = *build_id;
    auto version = need_string(j, "stackemu_version", false);
    if (!version) return std::unexpected(version.error());
    m.stackemu_version = *version;
    auto created = need_string(j, "created", false);
    if (!created) return std::unexpected(created.error());
    m.created = *created;
    if (auto it = j.find("recipe"); it != j.end() && it->is_string())
        m.recipe = it->get<std::string>();
    return m;
}

std::string to_json_text(const manifest& m, const fs::path& dir) {
    auto rel = [&](const fs::path& p) {
        return p.parent_path() == dir ? p.filename().string() : p.string();
    };
    json forwards = json::array();
    for (const auto& f : m.prof.forwards) {
        json one = {{"name", f.name}, {"guest", f.guest_port}};
        if (f.host_default) one["host_default"] = *f.host_default;
        forwards.push_back(std::move(one));
    }
    json probes = json::array();
    for (const auto& p : m.prof.probes)
        probes.push_back({{"name", p.name}, {"forward", p.forward}, {"path", p.path}});
    json boot = {{"mode", "firmware"}};
    if (m.kernel_boot)
        boot = {{"mode", "kernel"},
                {"kernel", rel(m.kernel_boot->kernel)},
                {"initrd", rel(m.kernel_boot->initrd)},
                {"cmdline", m.kernel_boot->cmdline}};
    json j = {{"format", m.format},
              {"arch", m.arch},
              {"disk", rel(m.disk)},
              {"boot", boot},
              {"profile",
               {{"name", m.prof.name},
                {"forwards", forwards},
                {"probes", probes},
                {"ready_marker", m.prof.ready_marker},
                {"failure_markers", m.prof.failure_markers},
                {"marker_match", to_string(m.prof.match)},
                {"agent", m.prof.agent}}},
              {"base", {{"source", m.base_source}, {"sha256", m.base_sha256}}},
              {"build_id", m.build_id},
              {"stackemu_version", m.stackemu_version},
              {"created", m.created}};
    if (!m.recipe.empty()) j["recipe"] = m.recipe;
    // Only when the profile recommends a size: manifests without one stay as they were.
    json resources = json::object();
    if (m.prof.recommended.ram_mib) resources["ram_mib"] = *m.prof.recommended.ram_mib;
    if (m.prof.recommended.cpus) resources["cpus"] = *m.prof.recommended.cpus;
    if (!resources.empty()) j["profile"]["resources"] = resources;
    return j.dump(2) + "\n";
}

result<manifest> load_manifest(const fs::path& image_or_manifest) {
    fs::path manifest_path = image_or_manifest;
    if (manifest_path.extension() != ".json") manifest_path.replace_extension(".json");
    std::ifstream in(manifest_path);
    if (!in) {
        if (!fs::exists(image_or_manifest))
            return fail(errc::not_found,
                        fmt::format("no image at {}: build one with `stackemu build-image`, or "
                                    "name one with --image",
                                    image_or_manifest.string()));
        return fail(errc::not_found,
                    fmt::format("the image {} has no manifest {} beside it: rebuild it with "
                                "`stackemu build-image`",
                                image_or_manifest.string(), manifest_path.string()));
    }
    std::stringstream text;
    text << in.rdbuf();
    auto m = parse_manifest(text.str(), manifest_path.parent_path());
    if (!m) {
        m.error().message = manifest_path.string() + ": " + m.error().message;
        return m;
    }
    std::vector<fs::path> needed = {m->disk};
    if (m->kernel_boot) {
        needed.push_back(m->kernel_boot->kernel);
        needed.push_back(m->kernel_boot->initrd);
    }
    for (const auto& p : needed)
        if (!fs::exists(p))
            return fail(errc::not_found,
                        fmt::format("{} names {}, which is missing: rebuild the image",
                                    manifest_path.string(), p.string()));
    return m;
}

fs::path default_image(const fs::path& image_dir, std::string_view arch) {
    return image_dir / fmt::format("stack-emulator-{}.qcow2", arch);
}

}  // namespace stackemu::provision
