// `stackemu completion bash|zsh|fish` and `stackemu help [TOPIC|COMMAND]`: both read the whole
// command tree, so run_cli builds every command for them (command_entry::needs_every_command).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>

#include "cli/completion.hpp"
#include "cli/help_topics.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"

namespace stackemu::cli {
namespace {

// The root: where every command hangs (the subcommand's parent).
CLI::App& root_of(CLI::App& cmd) {
    CLI::App* app = &cmd;
    while (app->get_parent() != nullptr)
        app = app->get_parent();
    return *app;
}

// A command by its words ("snapshot", "load"), or nullptr.
CLI::App* find_command(CLI::App& root, const std::vector<std::string>& words) {
    CLI::App* at = &root;
    for (const auto& w : words) {
        const auto subs = at->get_subcommands(std::function<bool(CLI::App*)>{});
        const auto found = std::ranges::find_if(
            subs, [&](CLI::App* s) { return s->get_name() == w && !s->get_group().empty(); });
        if (found == subs.end()) return nullptr;
        at = *found;
    }
    return at;
}

std::string command_names(CLI::App& root) {
    std::string out;
    for (const auto* s : root.get_subcommands(std::function<bool(CLI::App*)>{})) {
        if (s->get_group().empty()) continue;
        if (!out.empty()) out += ", ";
        out += s->get_name();
    }
    return out;
}

}  // namespace

void add_completion_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "completion", "Print the shell completion script for bash, zsh or fish (see README)");
    cmd->footer(
        "bash: source <(stackemu completion bash)   zsh: source <(stackemu completion zsh)\n"
        "fish: stackemu completion fish | source    (cmake --install puts them where each "
        "shell looks)");
    auto shell = std::make_shared<std::string>();
    cmd->add_option("SHELL", *shell, "bash, zsh or fish")
        ->required()
        ->check(offers_choices({"bash", "zsh", "fish"}));
    cmd->callback([cmd, shell, &action] {
        action = [cmd, shell]() -> int {
            auto kind = parse_shell(*shell);
            if (!kind) return report("completion", kind.error()), exit_usage;
            fmt::print("{}", completion_script(*kind, describe_cli(root_of(*cmd)), "stackemu"));
            return exit_ok;
        };
    });
}

void add_help_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "help", "Explain a topic (configuration, exit-codes) or a command; alone, list the topics");
    auto words = std::make_shared<std::vector<std::string>>();
    std::vector<std::string> offered;
    for (const auto& t : help_topics())
        offered.emplace_back(t.name);
    cmd->add_option("TOPIC", *words, "a topic, or a command (e.g. snapshot load)")
        ->check(offers_choices(offered));
    cmd->callback([cmd, words, &action] {
        action = [cmd, words]() -> int {
            if (words->empty()) {
                fmt::print("{}", help_index());
                return exit_ok;
            }
            if (words->size() == 1) {
                if (auto text = help_topic_text(words->front())) {
                    fmt::print("{}", *text);
                    return exit_ok;
                }
            }
            auto& root = root_of(*cmd);
            if (auto* command = find_command(root, *words)) {
                // CLI11 starts the usage line with what it is given here: the parents' names.
                std::string prefix = "stackemu";
                for (std::size_t i = 0; i + 1 < words->size(); ++i)
                    prefix += fmt::format(" {}", (*words)[i]);
                fmt::print("{}", command->help(prefix));
                return exit_ok;
            }
            std::string typed;  // the words as one, e.g. "snapshot lod"
            for (const auto& w : *words)
                typed += fmt::format("{}{}", typed.empty() ? "" : " ", w);
            std::string topics;
            for (const auto& t : help_topics())
                topics += fmt::format("{}{}", topics.empty() ? "" : ", ", t.name);
            fmt::print(stderr,
                       "stackemu help: no topic or command '{}'; the topics are: {}; the commands "
                       "are: {}\n",
                       typed, topics, command_names(root));
            return exit_usage;
        };
    });
}

}  // namespace stackemu::cli
