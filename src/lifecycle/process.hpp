// Starting QEMU with -daemonize: posix_spawn without a shell, and its launch errors made clear.
#pragma once

#include <sys/types.h>

#include <chrono>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"

namespace stackemu::lifecycle {

// A forwarded host port and the setting that chose it, so an error can name what to change.
struct forward_setting {
    std::uint16_t host_port = 0;
    std::string env_name;  // e.g. EMULATOR_BACKEND_PORT; empty when not from a setting
};

// What explain_launcher_failure() needs to know about the launch beyond QEMU's text.
struct launch_context {
    std::vector<forward_setting> forwards;
    std::string ram_env = "EMULATOR_RAM";  // EMULATOR_BUILD_RAM for the image build
};

// Turns what QEMU printed before it failed to start into what happened and what to do,
// followed by the QEMU line it is based on. Unknown text comes back as its last lines,
// verbatim. Pure: tested against QEMU 7.2's real messages.
std::string explain_launcher_failure(std::string_view stderr_text, const launch_context& context);

// An environment change for the child: set `name` to `value`, or remove it when nullopt.
struct env_override {
    std::string name;
    std::optional<std::string> value;
};

struct launch_options {
    std::vector<env_override> env;
    launch_context context;
    // QEMU's launcher returns once the daemon is set up; this only bounds a hang.
    std::chrono::milliseconds timeout{60000};
};

struct launch_result {
    pid_t launcher_pid = -1;  // already reaped; the daemon's pid comes from the QMP socket
    std::string stderr_text;  // what QEMU printed before it daemonized (warnings), often empty
};

// Runs argv (argv[0] a path, or a name looked up on PATH) with posix_spawn, never a shell:
// stdin and stdout /dev/null, stderr to `stderr_log_path` (created 0600, truncated), no other
// descriptors, an empty signal mask and default signal handlers, umask 0077. Blocks until
// the launcher exits (QEMU's -daemonize returns when the daemon is ready). A non-zero exit
// is errc::process_failed with explain_launcher_failure()'s text; a launcher still running
// after the timeout is killed (errc::timeout).
result<launch_result> launch_daemonized(std::vector<std::string> argv, std::string stderr_log_path,
                                        const launch_options& options = {});

// What a short tool (qemu-img, qemu --version) printed and how it ended.
struct tool_result {
    int exit_code = 0;  // 128 + signal when killed
    std::string out;
    std::string err;
};
// Runs argv to completion with posix_spawn (never a shell), stdin /dev/null, capturing both
// outputs. Only a failure to run it at all is an error; a non-zero exit is in the result.
result<tool_result> run_tool(std::vector<std::string> argv);

}  // namespace stackemu::lifecycle
