// Each subcommand registers itself on the app and, when chosen, sets the action main() runs.
#pragma once

#include <CLI/App.hpp>
#include <functional>
#include <string>

namespace stackemu::cli {

void add_qmp_command(CLI::App& app, std::function<int()>& action);
void add_lifecycle_commands(CLI::App& app, std::function<int()>& action);
void add_log_commands(CLI::App& app, std::function<int()>& action);
void add_bench_command(CLI::App& app, std::function<int()>& action);
void add_doctor_command(CLI::App& app, std::function<int()>& action);
void add_pull_command(CLI::App& app, std::function<int()>& action);
void add_build_image_command(CLI::App& app, std::function<int()>& action);
void add_snapshot_commands(CLI::App& app, std::function<int()>& action);
void add_exec_commands(CLI::App& app, std::function<int()>& action);
void add_image_commands(CLI::App& app, std::function<int()>& action);

}  // namespace stackemu::cli
