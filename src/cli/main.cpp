// stackemu: runs a whole backend inside one QEMU VM and controls it over QMP.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <functional>

#include "cli/output.hpp"
#include "cli/subcommands.hpp"

namespace stackemu::cli {

std::string default_monitor_socket() {
    const char* run = std::getenv("EMULATOR_RUN_DIR");
    const char* home = std::getenv("HOME");
    std::string dir = run && *run ? run : std::string(home ? home : "") + "/.stack/emulator/run";
    const char* name = std::getenv("EMULATOR_NAME");
    if (name && *name) dir += std::string("/instances/") + name;
    return dir + "/vm/monitor.sock";
}

}  // namespace stackemu::cli

int main(int argc, char** argv) {
    using namespace stackemu::cli;
    CLI::App app{"stackemu: a whole backend in one QEMU VM, controlled over QMP"};
    app.set_version_flag("--version", "stackemu 0.1.0");
    app.require_subcommand(1);
    std::function<int()> action;
    add_qmp_command(app, action);
    try {
        app.parse(argc, argv);
    } catch (const CLI::CallForHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForAllHelp& e) {
        return app.exit(e);
    } catch (const CLI::CallForVersion& e) {
        return app.exit(e);
    } catch (const CLI::ParseError& e) {
        app.exit(e);  // prints what was wrong and the usage hint
        return exit_usage;
    }
    return action ? action() : exit_usage;
}
