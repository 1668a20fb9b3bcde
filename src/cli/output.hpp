// How every subcommand reports: errors on stderr as "stackemu: <what>", a fixed exit code.
#pragma once

#include <string_view>

#include "common/error.hpp"

namespace stackemu::cli {

// Exit codes shared by every subcommand (the status codes live with `status`).
inline constexpr int exit_ok = 0;
inline constexpr int exit_error = 1;  // the operation failed; the message says why
inline constexpr int exit_usage = 2;  // bad command line (CLI11 also uses this... see main)

// Prints "stackemu <command>: <message>" to stderr and returns exit_error.
int report(std::string_view command, const error& e);

}  // namespace stackemu::cli
