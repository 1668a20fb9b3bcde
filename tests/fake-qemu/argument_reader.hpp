// Reads a command's "arguments" the way QEMU's strict QObject input visitor does, errors included.
#pragma once

#include <cstdint>
#include <optional>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "qemu_json.hpp"

namespace stackemu::fake {

// Fields are read in the command's schema order; the first problem wins, later reads are
// no-ops. finish() then reports the first leftover member ("Parameter 'x' is unexpected").
class argument_reader {
  public:
    explicit argument_reader(const value& arguments);

    std::string required_string(std::string_view name);
    std::optional<std::string> optional_string(std::string_view name);
    std::optional<std::int64_t> optional_int(std::string_view name);
    std::optional<std::vector<std::string>> string_list(std::string_view name, bool required);

    bool ok() const { return !error_; }
    result<void> finish();

  private:
    const value* take(std::string_view name, bool required);
    void type_error(std::string_view name, std::string_view expected);

    const value& arguments_;
    std::set<std::string, std::less<>> visited_;
    std::optional<std::string> error_;
};

}  // namespace stackemu::fake
