// How every subcommand reports: errors on stderr as "stackemu: <what>", a fixed exit code.
#pragma once

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::cli {

// Exit codes shared by every subcommand (the status codes live with `status`).
inline constexpr int exit_ok = 0;
inline constexpr int exit_error = 1;  // the operation failed; the message says why
inline constexpr int exit_usage = 2;  // bad command line (CLI11 also uses this... see main)

// Prints "stackemu <command>: <message>" to stderr and returns exit_error.
int report(std::string_view command, const error& e);

// Runs one coroutine on a fresh io_context to the end: each command is one such run.
template <typename T>
T run_on_context(asio::awaitable<T> task) {
    asio::io_context ctx;
    auto fut = asio::co_spawn(ctx, std::move(task), asio::use_future);
    ctx.run();
    return fut.get();
}

// A CLI11 check for a number of seconds (fractions allowed) from `min` to `max`: the message
// says what was given and what is accepted, also for text that is no number at all.
CLI::Validator seconds_within(double min, double max);

// This process's peak resident set in KiB (VmHWM: unlike getrusage, not inflated by the
// memory of whatever exec'd us), for --json outputs and benchmarks.
long peak_rss_kib();

}  // namespace stackemu::cli
