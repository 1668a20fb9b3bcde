// Shell completion generated from the CLI's own definitions: the CLI11 tree is described once
// (describe_cli) and each shell's script is a pure function of that description, so a new
// command or flag is completed without anyone editing a script.
#pragma once

#include <CLI/App.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace stackemu::cli {

// What TAB offers for an option's value or a positional argument.
enum class value_kind {
    none,       // a flag: it takes no value
    free,       // any text: the shell's file names
    choices,    // one of a fixed list
    instances,  // an instance name, asked of `stackemu __complete instances` at TAB time
    snapshots,  // a snapshot name, asked of `stackemu __complete snapshots`
};

struct option_spec {
    std::vector<std::string> names;  // "-n", "--lines"; empty for a positional
    std::string description;
    value_kind value = value_kind::none;
    std::vector<std::string> choices;  // for value_kind::choices
};

struct command_spec {
    std::string name;  // empty for the root
    std::string description;
    std::vector<option_spec> options;
    std::vector<option_spec> positionals;
    std::vector<command_spec> subcommands;
};

// CLI11 validators that only tell completion (and help) what to offer: they accept every
// value, so the commands keep their own checks and messages.
CLI::Validator offers_choices(const std::vector<std::string>& choices);
CLI::Validator offers_instances();
CLI::Validator offers_snapshots();
// amd64, arm64 and auto, kvm, hvf, tcg: the names lifecycle::to_string gives them.
CLI::Validator offers_architectures();
CLI::Validator offers_accel_modes();

// The tree under `app`, without hidden subcommands (those without a group, like __complete).
// Choices come from offers_choices and CLI::IsMember alike.
command_spec describe_cli(CLI::App& app);

enum class shell_kind { bash, zsh, fish };
inline constexpr std::string_view supported_shells = "bash, zsh, fish";
result<shell_kind> parse_shell(std::string_view name);

// The scripts. `program` is the command they complete (stackemu).
std::string bash_completion(const command_spec& root, std::string_view program);
std::string zsh_completion(const command_spec& root, std::string_view program);
std::string fish_completion(const command_spec& root, std::string_view program);
std::string completion_script(shell_kind shell, const command_spec& root, std::string_view program);

// 'text' for POSIX shells and fish alike ('it'\''s'); fish also reads \' inside quotes, but
// the POSIX form works in both.
std::string shell_quote(std::string_view text);

}  // namespace stackemu::cli
