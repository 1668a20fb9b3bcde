// stackemu: runs a whole backend inside one QEMU VM and controls it over QMP.
#include <CLI/CLI.hpp>
#include <cstdlib>
#include <functional>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"

namespace stackemu::cli {

std::string default_monitor_socket() {
    instance_options defaults;
    auto inst = resolve_instance(defaults);
    return inst ? inst->paths.monitor_socket.string() : std::string();
}

}  // namespace stackemu::cli

int main(int argc, char** argv) {
    using namespace stackemu::cli;
    CLI::App app{"stackemu: a whole backend in one QEMU VM, controlled over QMP"};
    app.set_version_flag("--version", "stackemu 0.1.0");
    app.require_subcommand(1);
    std::function<int()> action;
    add_lifecycle_commands(app, action);
    add_log_commands(app, action);
    add_qmp_command(app, action);
    add_bench_command(app, action);
    add_doctor_command(app, action);
    add_pull_command(app, action);
    add_snapshot_commands(app, action);
    add_exec_commands(app, action);
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
