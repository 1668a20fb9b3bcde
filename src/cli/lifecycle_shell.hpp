// Helpers the lifecycle subcommands share (lifecycle_commands.cpp and start_command.cpp).
#pragma once

#include <string_view>

#include "common/error.hpp"
#include "lifecycle/controller.hpp"

namespace stackemu::cli {

// Progress on stderr with the time since the command began, so stdout stays the result.
lifecycle::progress_sink stderr_progress(bool quiet);

// Reports and returns the usage exit code (bad settings).
int settings_error(std::string_view command, const error& e);

// Reports and returns the error exit code, or busy when another command holds the instance.
int error_exit(std::string_view command, const error& e);

}  // namespace stackemu::cli
