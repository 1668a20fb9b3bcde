// The fake's internal snapshots (what qcow2 would hold), shared by every monitor of one VM.
#pragma once

#include <cstdint>
#include <optional>
#include <string>
#include <vector>

namespace stackemu::fake {

struct snapshot {
    std::string tag;
    std::uint64_t vm_state_size = 0;
    std::int64_t date_sec = 0;       // wall clock when saved
    std::int64_t vm_clock_nsec = 0;  // guest running time when saved
};

// In memory; with a state file, every read reloads it and every change rewrites it, so that
// several fake processes (one after another, like stop/start) see the same snapshots.
class snapshot_table {
  public:
    explicit snapshot_table(std::optional<std::string> state_file = std::nullopt);

    std::vector<snapshot> list() const;
    std::optional<snapshot> find(const std::string& tag) const;
    // Adds or replaces `tag`.
    void put(snapshot s);
    // True when `tag` existed.
    bool remove(const std::string& tag);

  private:
    void load() const;
    void store() const;

    std::optional<std::string> state_file_;
    mutable std::vector<snapshot> snapshots_;
};

}  // namespace stackemu::fake
