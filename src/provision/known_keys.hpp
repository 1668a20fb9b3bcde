// Refuses unknown keys in a JSON object, naming the nearest known one: a misspelled key must
// not be dropped in silence (a `boot.append` once gave QEMU an empty -append).
#pragma once

#include <nlohmann/json.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace stackemu::provision {

// The known key closest to `key` by edit distance, when it is close enough to be a likely
// misspelling (or a known synonym, like QEMU's "append" for "cmdline"); empty otherwise.
std::string nearest_key(std::string_view key, const std::vector<std::string_view>& known);

// Errors read `<document> field "<prefix><key>" is not a known key: did you mean "<near>"?
// (known keys: ...)`. An object only: other JSON values are the caller's to refuse.
result<void> check_known_keys(const nlohmann::json& object,
                              const std::vector<std::string_view>& known, std::string_view document,
                              std::string_view prefix);

}  // namespace stackemu::provision
