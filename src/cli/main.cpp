// stackemu-full: every subcommand. The one-shot `stackemu` (oneshot_main.cpp) runs the light
// ones itself and execs this for the rest, help and unknown words.
#include <array>

#include "cli/subcommands.hpp"

int main(int argc, char** argv) {
    using namespace stackemu::cli;
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
    };
    return run_cli(argc, argv, commands);
}
