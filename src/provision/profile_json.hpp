// The runtime part of a profile (forwards, probes, markers, agent) as JSON: shared by the image
// manifest, which embeds it under "profile", and the profile file, which holds it at the top.
#pragma once

#include <nlohmann/json.hpp>
#include <string_view>

#include "common/error.hpp"
#include "provision/manifest.hpp"

namespace stackemu::provision {

// Errors read `<document> field "<prefix><field>": what is expected`.
result<profile> profile_from_json(const nlohmann::json& j, std::string_view document,
                                  std::string_view prefix);

}  // namespace stackemu::provision
