// stackemu: the commands scripts call in loops (status, list, qmp, stop, config, ...) run here, in
// a binary that links neither libcurl, libisofs nor libcrypto: loading those 40-odd shared
// libraries was most of a one-shot's time. Everything else (start, build-image, pull,
// doctor, help, completion, unknown words) is exec'd, same pid and arguments, in stackemu-full.
#include <unistd.h>

#include <array>
#include <cerrno>
#include <cstdio>
#include <cstring>
#include <string>
#include <string_view>

#include "cli/subcommands.hpp"

#ifndef STACKEMU_FULL_RELATIVE
#error "STACKEMU_FULL_RELATIVE: the full binary's path relative to this one's directory"
#endif

namespace {

using namespace stackemu::cli;

constexpr std::array light_commands{
    command_entry{"stop", add_stop_command},
    command_entry{"status", add_status_command},
    command_entry{"list", add_list_command},
    command_entry{"reset", add_reset_command},
    command_entry{"pause", add_pause_command},
    command_entry{"resume", add_resume_command},
    command_entry{"logs", add_logs_command},
    command_entry{"events", add_events_command},
    command_entry{"qmp", add_qmp_command},
    command_entry{"snapshot", add_snapshot_commands},
    command_entry{"config", add_config_commands},
    // Completion scripts call it at every TAB: it must not pay for the exec.
    command_entry{"__complete", add_complete_values_command},
};

bool asks_for_help(int argc, char** argv) {
    for (int i = 2; i < argc; ++i) {
        const std::string_view a = argv[i];
        if (a == "--") return false;
        if (a == "-h" || a == "--help" || a == "--help-all") return true;
    }
    return false;
}

// Help lists every command, so it comes from the full binary (same text as ever).
bool runs_here(int argc, char** argv) {
    if (argc == 2 && std::string_view(argv[1]) == "--version") return true;
    if (argc < 2) return false;
    for (const auto& c : light_commands)
        if (c.name == argv[1]) return !asks_for_help(argc, argv);
    return false;
}

// <this binary's directory>/STACKEMU_FULL_RELATIVE: ../libexec/stackemu/stackemu-full both
// installed (bin/) and in the build tree (src/cli/).
std::string full_binary() {
    char self[4096];
    const ssize_t n = readlink("/proc/self/exe", self, sizeof self - 1);
    if (n <= 0) return {};
    std::string path(self, static_cast<std::size_t>(n));
    path.resize(path.rfind('/') + 1);
    return path + STACKEMU_FULL_RELATIVE;
}

}  // namespace

int main(int argc, char** argv) {
    if (runs_here(argc, argv)) {
        if (std::string_view(argv[1]) == "--version") return run_cli(argc, argv, {});
        return run_cli(argc, argv, light_commands);
    }
    const std::string full = full_binary();
    if (!full.empty()) execv(full.c_str(), argv);
    std::fprintf(stderr, "stackemu: cannot run %s: %s (a broken installation?)\n",
                 full.empty() ? "stackemu-full" : full.c_str(), std::strerror(errno));
    return 1;
}
