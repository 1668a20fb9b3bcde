// `stackemu help TOPIC`: the configuration and the exit codes, as text built from the same
// tables and defaults the program uses, so the text cannot fall behind them.
#pragma once

#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace stackemu::cli {

struct help_topic {
    std::string_view name;
    std::string_view summary;  // one line, for `stackemu help`
};

// Every topic, in the order `stackemu help` lists them.
const std::vector<help_topic>& help_topics();

// `stackemu help`: the topics, and where the commands are described.
std::string help_index();

// The text of one topic; an unknown name is invalid_argument naming the topics.
result<std::string> help_topic_text(std::string_view name);

}  // namespace stackemu::cli
