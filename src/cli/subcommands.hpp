// Each subcommand registers itself on the app and, when chosen, sets the action main() runs.
// Only the chosen subcommand is registered (building every option tree is a tenth of a
// one-shot's time); all of them only for help and unknown words.
#pragma once

#include <CLI/App.hpp>
#include <functional>
#include <span>
#include <string_view>

namespace stackemu::cli {

using add_command_fn = void (*)(CLI::App&, std::function<int()>&);

struct command_entry {
    std::string_view name;
    add_command_fn add;
    // Reads the whole command tree (completion, help): chosen, it is built with every command.
    bool needs_every_command = false;
};

void add_start_command(CLI::App& app, std::function<int()>& action);
void add_stop_command(CLI::App& app, std::function<int()>& action);
void add_status_command(CLI::App& app, std::function<int()>& action);
void add_list_command(CLI::App& app, std::function<int()>& action);
void add_reset_command(CLI::App& app, std::function<int()>& action);
void add_pause_command(CLI::App& app, std::function<int()>& action);
void add_resume_command(CLI::App& app, std::function<int()>& action);
void add_logs_command(CLI::App& app, std::function<int()>& action);
void add_events_command(CLI::App& app, std::function<int()>& action);
void add_qmp_command(CLI::App& app, std::function<int()>& action);
void add_bench_command(CLI::App& app, std::function<int()>& action);
void add_doctor_command(CLI::App& app, std::function<int()>& action);
void add_pull_command(CLI::App& app, std::function<int()>& action);
void add_build_image_command(CLI::App& app, std::function<int()>& action);
void add_snapshot_commands(CLI::App& app, std::function<int()>& action);
void add_exec_command(CLI::App& app, std::function<int()>& action);
void add_cp_command(CLI::App& app, std::function<int()>& action);
void add_image_commands(CLI::App& app, std::function<int()>& action);
void add_completion_command(CLI::App& app, std::function<int()>& action);
void add_help_command(CLI::App& app, std::function<int()>& action);
// The hidden `__complete instances|snapshots`: names for the completion scripts, kept cheap
// enough for the one-shot binary.
void add_complete_values_command(CLI::App& app, std::function<int()>& action);

// Every command of stackemu-full, in the order `--help` lists them (all_commands.cpp: only
// the full binary links it, so the one-shot binary stays free of the heavy commands).
std::span<const command_entry> all_commands();

// The root app's own settings: description, --version, one subcommand required.
void configure_root(CLI::App& app);
void add_config_commands(CLI::App& app, std::function<int()>& action);

// Parses the command line with `commands` (in the order `--help` lists them) and runs the
// chosen one: the whole of main(). When argv[1] names one of them only that one is built.
int run_cli(int argc, char** argv, std::span<const command_entry> commands);

}  // namespace stackemu::cli
