// Snapshot table, optionally mirrored to a JSON file.
#include "snapshot_table.hpp"

#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>

namespace stackemu::fake {

snapshot_table::snapshot_table(std::optional<std::string> state_file)
    : state_file_(std::move(state_file)) {
    load();
}

void snapshot_table::load() const {
    if (!state_file_) return;
    std::ifstream in(*state_file_);
    if (!in) return;  // no file yet: empty table
    auto j = nlohmann::json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.contains("snapshots")) return;
    snapshots_.clear();
    for (const auto& s : j["snapshots"])
        snapshots_.push_back(snapshot{s.value("tag", ""), s.value("vm_state_size", 0ull),
                                      s.value("date_sec", 0ll), s.value("vm_clock_nsec", 0ll)});
}

void snapshot_table::store() const {
    if (!state_file_) return;
    nlohmann::json j{{"snapshots", nlohmann::json::array()}};
    for (const auto& s : snapshots_)
        j["snapshots"].push_back({{"tag", s.tag},
                                  {"vm_state_size", s.vm_state_size},
                                  {"date_sec", s.date_sec},
                                  {"vm_clock_nsec", s.vm_clock_nsec}});
    // Write then rename, so a concurrent reader never sees half a file.
    const std::string tmp = *state_file_ + ".tmp";
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << j.dump(2) << '\n';
    }
    std::error_code ec;
    std::filesystem::rename(tmp, *state_file_, ec);
}

std::vector<snapshot> snapshot_table::list() const {
    load();
    return snapshots_;
}

std::optional<snapshot> snapshot_table::find(const std::string& tag) const {
    load();
    auto it = std::ranges::find(snapshots_, tag, &snapshot::tag);
    if (it == snapshots_.end()) return std::nullopt;
    return *it;
}

void snapshot_table::put(snapshot s) {
    load();
    // QEMU's savevm deletes the old snapshot of that name, so the new one goes last.
    std::erase_if(snapshots_, [&](const snapshot& old) { return old.tag == s.tag; });
    snapshots_.push_back(std::move(s));
    store();
}

bool snapshot_table::remove(const std::string& tag) {
    load();
    const auto removed = std::erase_if(snapshots_, [&](const snapshot& s) { return s.tag == tag; });
    store();
    return removed > 0;
}

}  // namespace stackemu::fake
