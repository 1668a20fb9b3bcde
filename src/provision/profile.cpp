#include "provision/profile.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <nlohmann/json.hpp>
#include <regex>
#include <set>
#include <sstream>

#include "provision/iso.hpp"
#include "provision/known_keys.hpp"
#include "provision/profile_json.hpp"

namespace stackemu::provision {
namespace {

using nlohmann::json;
namespace fs = std::filesystem;

std::unexpected<error> bad(std::string_view field, std::string_view expected) {
    return fail(errc::invalid_argument,
                fmt::format("profile file field \"{}\": {}", field, expected));
}

// Debian package names (policy 5.6.1); they reach debootstrap's --include list, so a comma or
// anything else that is not part of a name must never get through.
bool is_package_name(std::string_view s) {
    static const std::regex pattern("[a-z0-9][a-z0-9+.-]{1,62}");
    return std::regex_match(s.begin(), s.end(), pattern);
}

bool is_profile_name(std::string_view s) {
    static const std::regex pattern("[a-z0-9][a-z0-9_-]{0,31}");
    return std::regex_match(s.begin(), s.end(), pattern);
}

result<std::uint32_t> bounded(const json& o, std::string_view field, std::uint32_t lo,
                              std::uint32_t hi, std::uint32_t fallback) {
    auto it = o.find(field);
    if (it == o.end()) return fallback;
    if (!it->is_number_unsigned() || it->get<std::uint64_t>() < lo || it->get<std::uint64_t>() > hi)
        return bad(fmt::format("build.{}", field),
                   fmt::format("must be a whole number from {} to {}", lo, hi));
    return static_cast<std::uint32_t>(it->get<std::uint64_t>());
}

result<std::string> read_text(const fs::path& p, std::string_view what) {
    std::ifstream in(p, std::ios::binary);
    if (!in)
        return fail(
            errc::not_found,
            fmt::format("the profile has no {} ({} is missing or unreadable)", what, p.string()));
    std::stringstream text;
    text << in.rdbuf();
    return text.str();
}

}  // namespace

result<profile_file> parse_profile(std::string_view text) {
    auto j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object())
        return fail(errc::invalid_argument,
                    fmt::format("{} is not a JSON object: check its syntax", profile_file_name));
    profile_file out;
    auto runtime = profile_from_json(
        j, "profile file", "",
        {"description", "base_packages", "build", "bundle_files", "payload", "provision"});
    if (!runtime) return std::unexpected(runtime.error());
    out.runtime = std::move(*runtime);
    if (!is_profile_name(out.runtime.name))
        return bad("name",
                   "must be 1 to 32 of a-z, 0-9, '_' and '-', starting with a letter or digit");
    if (auto it = j.find("description"); it != j.end()) {
        if (!it->is_string()) return bad("description", "must be a string");
        out.description = it->get<std::string>();
    }
    if (auto it = j.find("base_packages"); it != j.end()) {
        if (!it->is_array())
            return bad("base_packages", "must be an array of Debian package names");
        std::set<std::string> seen;
        for (const auto& p : *it) {
            if (!p.is_string() || !is_package_name(p.get<std::string>()))
                return bad("base_packages",
                           fmt::format("{} is not a Debian package name (a-z, 0-9, '+', '.', '-')",
                                       p.dump()));
            if (seen.insert(p.get<std::string>()).second)
                out.base_packages.push_back(p.get<std::string>());
        }
    }
    if (auto it = j.find("build"); it != j.end()) {
        if (!it->is_object()) return bad("build", "must be an object with ram_mib and cpus");
        if (auto ok = check_known_keys(*it, {"ram_mib", "cpus"}, "profile file", "build."); !ok)
            return std::unexpected(ok.error());
        auto ram = bounded(*it, "ram_mib", 256, 65536, out.build_ram_mib);
        if (!ram) return std::unexpected(ram.error());
        auto cpus = bounded(*it, "cpus", 1, 64, out.build_cpus);
        if (!cpus) return std::unexpected(cpus.error());
        out.build_ram_mib = *ram;
        out.build_cpus = *cpus;
    }
    if (auto it = j.find("bundle_files"); it != j.end()) {
        if (!it->is_array()) return bad("bundle_files", "must be an array of file names");
        std::set<std::string> seen;
        for (const auto& f : *it) {
            if (!f.is_string()) return bad("bundle_files", "must be an array of file names");
            const auto name = f.get<std::string>();
            if (auto ok = check_iso_name(name); !ok || name.find('/') != std::string::npos)
                return bad("bundle_files",
                           fmt::format("{} is not a plain file name in the profile directory "
                                       "(1 to 64 of A-Z a-z 0-9 . _ + @ -)",
                                       f.dump()));
            if (name == "payload.tar")
                return bad("bundle_files", "payload.tar is reserved for --payload");
            if (!seen.insert(name).second)
                return bad("bundle_files", fmt::format("{} appears twice", name));
            out.bundle_files.push_back(name);
        }
    }
    if (auto it = j.find("payload"); it != j.end()) {
        if (!it->is_object() || (it->contains("required") && !(*it)["required"].is_boolean()))
            return bad("payload", "must be an object like {\"required\": true}");
        if (auto ok = check_known_keys(*it, {"required"}, "profile file", "payload."); !ok)
            return std::unexpected(ok.error());
        out.payload_required = it->value("required", false);
    }
    if (auto it = j.find("provision"); it != j.end()) {
        if (!it->is_object()) return bad("provision", "must be an object");
        if (auto ok = check_known_keys(*it, {"done_marker", "failed_marker", "progress_prefix"},
                                       "profile file", "provision.");
            !ok)
            return std::unexpected(ok.error());
        for (auto [key, target] : {std::pair{"done_marker", &out.provision.done_marker},
                                   std::pair{"failed_marker", &out.provision.failed_marker},
                                   std::pair{"progress_prefix", &out.provision.progress_prefix}}) {
            auto v = it->find(key);
            if (v == it->end()) continue;
            if (!v->is_string() || v->get<std::string>().empty())
                return bad(fmt::format("provision.{}", key), "must be a non-empty string");
            for (unsigned char c : v->get<std::string>())
                if (c < 0x20 || c == 0x7f)
                    return bad(fmt::format("provision.{}", key),
                               "must be one line of printable text");
            *target = v->get<std::string>();
        }
        if (out.provision.done_marker == out.provision.failed_marker)
            return bad("provision", "done_marker and failed_marker must differ");
    }
    return out;
}

result<loaded_profile> load_profile(std::string_view name_or_dir,
                                    const std::vector<fs::path>& search_path) {
    loaded_profile out;
    if (name_or_dir.find('/') != std::string_view::npos) {
        out.dir = fs::absolute(fs::path(name_or_dir));
    } else {
        if (!is_profile_name(name_or_dir))
            return fail(errc::invalid_argument,
                        fmt::format("\"{}\" is not a profile name (a-z, 0-9, '_', '-'); name a "
                                    "directory with a '/' in it, e.g. ./my-profile",
                                    name_or_dir));
        std::string looked;
        for (const auto& dir : search_path) {
            std::error_code ec;
            if (fs::is_regular_file(dir / name_or_dir / profile_file_name, ec)) {
                out.dir = dir / name_or_dir;
                break;
            }
            looked += "\n  " + (dir / name_or_dir).string();
        }
        if (out.dir.empty())
            return fail(errc::not_found, fmt::format("no profile named \"{}\"; looked in:{}\n(set "
                                                     "STACKEMU_PROFILE_PATH, or name a directory)",
                                                     name_or_dir, looked));
    }
    auto text = read_text(out.dir / profile_file_name, "profile.json");
    if (!text) return std::unexpected(text.error());
    auto parsed = parse_profile(*text);
    if (!parsed) {
        parsed.error().message =
            (out.dir / profile_file_name).string() + ": " + parsed.error().message;
        return std::unexpected(parsed.error());
    }
    out.file = std::move(*parsed);
    auto user_data = read_text(out.dir / "user-data", "user-data");
    if (!user_data) return std::unexpected(user_data.error());
    auto meta_data = read_text(out.dir / "meta-data", "meta-data");
    if (!meta_data) return std::unexpected(meta_data.error());
    out.user_data = std::move(*user_data);
    out.meta_data = std::move(*meta_data);
    for (const auto& name : out.file.bundle_files) {
        const auto p = out.dir / name;
        std::error_code ec;
        if (!fs::is_regular_file(p, ec))
            return fail(
                errc::not_found,
                fmt::format("the profile's bundle_files names {}, which is not a file in {}", name,
                            out.dir.string()));
        out.bundle_paths.push_back(p);
    }
    return out;
}

std::vector<fs::path> default_profile_search_path(const fs::path& executable) {
    std::vector<fs::path> out;
    if (const char* env = std::getenv("STACKEMU_PROFILE_PATH"); env && *env) {
        std::string_view rest(env);
        while (!rest.empty()) {
            const auto colon = rest.find(':');
            const auto part = rest.substr(0, colon);
            if (!part.empty()) out.emplace_back(part);
            if (colon == std::string_view::npos) break;
            rest.remove_prefix(colon + 1);
        }
    }
    if (!executable.empty())
        out.push_back(executable.parent_path().parent_path() / "share" / "stackemu" / "cloud-init");
    out.emplace_back(STACKEMU_SOURCE_PROFILE_DIR);
    return out;
}

}  // namespace stackemu::provision
