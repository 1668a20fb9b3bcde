// The full binary's command table, apart from cli_app.cpp so that the one-shot binary, which
// links run_cli, does not pull in every command (and libcurl, libisofs, libcrypto with them).
#include <array>

#include "cli/subcommands.hpp"

namespace stackemu::cli {

std::span<const command_entry> all_commands() {
    // The order `stackemu --help` lists them in.
    static constexpr std::array commands{
        command_entry{"start", add_start_command},
        command_entry{"stop", add_stop_command},
        command_entry{"status", add_status_command},
        command_entry{"list", add_list_command},
        command_entry{"reset", add_reset_command},
        command_entry{"pause", add_pause_command},
        command_entry{"resume", add_resume_command},
        command_entry{"logs", add_logs_command},
        command_entry{"events", add_events_command},
        command_entry{"qmp", add_qmp_command},
        command_entry{"bench", add_bench_command},
        command_entry{"doctor", add_doctor_command},
        command_entry{"pull", add_pull_command},
        command_entry{"build-image", add_build_image_command},
        command_entry{"snapshot", add_snapshot_commands},
        command_entry{"exec", add_exec_command},
        command_entry{"cp", add_cp_command},
        command_entry{"image", add_image_commands},
        command_entry{"config", add_config_commands},
        command_entry{"completion", add_completion_command, true},
        command_entry{"help", add_help_command, true},
        command_entry{"__complete", add_complete_values_command},
    };
    return commands;
}

}  // namespace stackemu::cli
