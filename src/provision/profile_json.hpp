// The runtime part of a profile (forwards, probes, markers, agent) as JSON: shared by the image
// manifest, which embeds it under "profile", and the profile file, which holds it at the top.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "provision/manifest.hpp"

namespace stackemu::provision {

// The keys of the runtime part, for documents that hold more keys beside them.
extern const std::vector<std::string_view> profile_runtime_keys;

// Errors read `<document> field "<prefix><field>": what is expected`. Keys other than the
// runtime ones and `also_known` are refused, naming the nearest known key.
result<profile> profile_from_json(const nlohmann::json& j, std::string_view document,
                                  std::string_view prefix,
                                  const std::vector<std::string_view>& also_known = {});

}  // namespace stackemu::provision
