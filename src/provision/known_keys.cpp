#include "provision/known_keys.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <utility>
#include <vector>

namespace stackemu::provision {
namespace {

std::size_t edit_distance(std::string_view a, std::string_view b) {
    std::vector<std::size_t> row(b.size() + 1);
    for (std::size_t j = 0; j <= b.size(); ++j)
        row[j] = j;
    for (std::size_t i = 1; i <= a.size(); ++i) {
        std::size_t diagonal = row[0];
        row[0] = i;
        for (std::size_t j = 1; j <= b.size(); ++j) {
            const std::size_t above = row[j];
            const bool same = a[i - 1] == b[j - 1];
            row[j] = std::min({row[j] + 1, row[j - 1] + 1, diagonal + (same ? 0 : 1)});
            diagonal = above;
        }
    }
    return row[b.size()];
}

// Names users bring from QEMU or other tools for keys that are spelled otherwise here.
// An alias may be listed more than once: the first whose meaning is a known key here wins.
constexpr std::array<std::pair<std::string_view, std::string_view>, 14> synonyms = {{
    {"append", "cmdline"},
    {"command_line", "cmdline"},
    {"bios", "mode"},
    {"ready", "ready_marker"},
    {"failure_marker", "failure_markers"},
    {"ports", "forwards"},
    // A profile's recommended VM size (profile.resources) and an instance's settings.
    {"recommended", "resources"},
    {"size", "resources"},
    {"memory", "ram_mib"},
    {"ram", "ram_mib"},
    {"memory", "ram"},
    {"ram_mib", "ram"},
    {"vcpus", "cpus"},
    {"smp", "cpus"},
}};

}  // namespace

std::string nearest_key(std::string_view key, const std::vector<std::string_view>& known) {
    for (const auto& [alias, meant] : synonyms)
        if (alias == key && std::find(known.begin(), known.end(), meant) != known.end())
            return std::string(meant);
    std::string_view best;
    std::size_t best_distance = 0;
    for (auto candidate : known) {
        const auto d = edit_distance(key, candidate);
        if (best.empty() || d < best_distance) {
            best = candidate;
            best_distance = d;
        }
    }
    // A third of the longer name, at least 2: "ready_markr" finds ready_marker, "zzz" nothing.
    const auto limit = std::max<std::size_t>(2, std::max(key.size(), best.size()) / 3);
    return best_distance <= limit ? std::string(best) : std::string();
}

result<void> check_known_keys(const nlohmann::json& object,
                              const std::vector<std::string_view>& known, std::string_view document,
                              std::string_view prefix) {
    if (!object.is_object()) return {};
    for (const auto& [key, value] : object.items()) {
        if (std::find(known.begin(), known.end(), key) != known.end()) continue;
        const auto near = nearest_key(key, known);
        std::string listed;
        for (auto k : known)
            listed += listed.empty() ? std::string(k) : fmt::format(", {}", k);
        return fail(
            errc::invalid_argument,
            fmt::format("{} field \"{}{}\" is not a known key{} (known keys here: {})", document,
                        prefix, key,
                        near.empty() ? std::string()
                                     : fmt::format(": did you mean \"{}{}\"?", prefix, near),
                        listed));
    }
    return {};
}

}  // namespace stackemu::provision
