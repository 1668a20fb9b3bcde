// The command line shared by both binaries: the root app, its --version, and the subcommands.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <functional>

#include "cli/output.hpp"
#include "cli/subcommands.hpp"

namespace stackemu::cli {
namespace {

// CLI11 reports an unknown command word as "A subcommand is required": name it, and the
// commands there are. True when it was one.
bool explain_unknown_command(const CLI::App& app, int argc, char** argv) {
    if (argc < 2 || argv[1][0] == '-' || !app.get_subcommands().empty()) return false;
    std::string names;
    for (const auto* sub : app.get_subcommands(std::function<bool(const CLI::App*)>{}))
        if (!sub->get_group().empty())  // hidden ones (__complete) are for scripts
            names += (names.empty() ? "" : ", ") + sub->get_name();
    fmt::print(stderr,
               "stackemu: unknown command '{}'; the commands are: {} (`stackemu --help` "
               "describes them)\n",
               argv[1], names);
    return true;
}

}  // namespace

void configure_root(CLI::App& app) {
    app.description("stackemu: a whole backend in one QEMU VM, controlled over QMP");
    app.set_version_flag("--version", "stackemu 0.1.0");
    app.require_subcommand(1);
}

int run_cli(int argc, char** argv, std::span<const command_entry> commands) {
    CLI::App app;
    configure_root(app);
    std::function<int()> action;
    const auto chosen =
        argc >= 2 ? std::ranges::find(commands, std::string_view(argv[1]), &command_entry::name)
                  : commands.end();
    if (chosen != commands.end() && !chosen->needs_every_command) {
        chosen->add(app, action);
    } else {
        for (const auto& c : commands)
            c.add(app, action);
    }
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        if (explain_unknown_command(app, argc, argv)) return exit_usage;
        app.exit(e);  // prints what was wrong and the usage hint
        return exit_usage;
    }
    return action ? action() : exit_usage;
}

}  // namespace stackemu::cli
