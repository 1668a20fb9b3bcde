// exec and cp: a command or a file in the guest through its agent, without SSH.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <cerrno>
#include <chrono>
#include <cmath>
#include <filesystem>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/guest_exec.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;

// Writes all of `bytes` to a file descriptor (stdout and stderr carry binary output as is).
void write_all(int fd, std::string_view bytes) {
    while (!bytes.empty()) {
        const ssize_t n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            return;  // a closed pipe: nobody reads the rest
        }
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
}

// All of stdin, or an error past the agent's limit.
result<std::string> read_stdin() {
    std::string data;
    char buffer[65536];
    for (;;) {
        const ssize_t n = ::read(STDIN_FILENO, buffer, sizeof buffer);
        if (n < 0) {
            if (errno == EINTR) continue;
            if (errno == EBADF) return data;  // stdin is closed: nothing to pass
            return fail(errc::io_error, fmt::format("reading stdin failed: {}", strerror(errno)));
        }
        if (n == 0) return data;
        data.append(buffer, static_cast<std::size_t>(n));
        if (data.size() > max_input_bytes)
            return fail(errc::invalid_argument,
                        fmt::format("stdin holds over {} MiB, more than the guest agent takes in "
                                    "one message: copy the data in with `stackemu cp` and let the "
                                    "command read the file",
                                    max_input_bytes >> 20));
    }
}

int exec_failure(const error& e) {
    report("exec", e);
    switch (e.code) {
        case errc::timeout:
            return exec_exit::timeout;
        case errc::not_found:
            return exec_exit::not_found;
        case errc::spawn_failed:
            return exec_exit::cannot_run;
        default:
            return exec_exit::failed;
    }
}

constexpr const char* exec_footer =
    R"(Exit status: the command's own (a signal n gives 128+n); 124 when --timeout passed; 125 when
stackemu could not run it (VM not running, agent not answering, instance busy...); 126 when the
guest could not execute the program, 127 when it has no such program; 2 for a bad command line.

The command runs from its argv (no shell: write `-- sh -c '...'` for one), as root, with the
guest agent's environment; argv[0] is looked up in the agent's PATH.

Output: the guest agent (qemu-ga 7.2) hands a command's stdout and stderr over only once it has
exited, at most 16 MiB of each, so by default they are printed when it ends. --stream redirects
them to two files in the guest's /tmp (through /bin/sh, which only runs `exec "$@"`) and prints
them as they grow; the command then sees files, not pipes, as its stdout and stderr.
Completion is polled (the protocol has no event): 10 ms at first, backing off to 200 ms.

stdin: read whole before the command starts (at most 16 MiB) when it is not a terminal, or
with --stdin; the command sees it as a pipe that closes after it. -n gives it /dev/null.

--timeout: the agent cannot kill a process; stackemu runs the guest's `kill -KILL <pid>`, and
says so when that fails (the command may then still run in the guest).)";

void add_exec(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "exec", "Run a command in the guest through its agent (no SSH); exits with its status");
    cmd->footer(exec_footer);
    auto o = add_instance_options(cmd, option_set::name_only);
    struct extra {
        std::vector<std::string> argv;
        double timeout_s = 0;
        bool force_stdin = false;
        bool no_stdin = false;
        bool stream = false;
    };
    auto x = std::make_shared<extra>();
    cmd->add_option("--timeout", x->timeout_s,
                    "seconds the command gets; then it is killed and stackemu exits 124")
        ->check(seconds_within(0.001, static_cast<double>(max_timeout_seconds)));
    auto* with_stdin = cmd->add_flag("--stdin", x->force_stdin,
                                     "pass stdin even when it is a terminal (until end of file)");
    cmd->add_flag("-n,--no-stdin", x->no_stdin, "give the command /dev/null as stdin")
        ->excludes(with_stdin);
    cmd->add_flag("--stream", x->stream,
                  "print output while the command runs (through files in the guest's /tmp)");
    cmd->add_option("command", x->argv,
                    "the command and its arguments, after -- (`stackemu exec -- ls -l /data`)")
        ->required();
    cmd->callback([o, x, &action] {
        action = [o, x]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("exec", inst.error());
                return exit_code::usage;
            }
            guest_command command;
            command.argv = x->argv;
            command.stream = x->stream;
            if (x->timeout_s > 0)
                command.timeout = std::chrono::milliseconds(
                    static_cast<std::int64_t>(std::ceil(x->timeout_s * 1000)));
            if (!x->no_stdin && (x->force_stdin || !::isatty(STDIN_FILENO))) {
                auto input = read_stdin();
                if (!input) return exec_failure(input.error());
                command.input = std::move(*input);
            }
            auto out = std::make_shared<std::string>();
            auto err = std::make_shared<std::string>();
            if (o->json) {
                command.on_stdout = [out](std::string_view b) { out->append(b); };
                command.on_stderr = [err](std::string_view b) { err->append(b); };
            } else {
                command.on_stdout = [](std::string_view b) { write_all(STDOUT_FILENO, b); };
                command.on_stderr = [](std::string_view b) { write_all(STDERR_FILENO, b); };
            }
            auto r = run_on_context(guest_exec(std::move(*inst), std::move(command)));
            if (!r) {
                if (o->json && (!out->empty() || !err->empty())) {
                    write_all(STDOUT_FILENO, *out);
                    write_all(STDERR_FILENO, *err);
                }
                return exec_failure(r.error());
            }
            if (o->json) {
                json j = {{"exit_code", r->exit_code ? json(*r->exit_code) : json(nullptr)},
                          {"signal", r->signal ? json(*r->signal) : json(nullptr)},
                          {"status", r->status()},
                          {"stdout", *out},
                          {"stderr", *err},
                          {"stdout_truncated", r->out_truncated},
                          {"stderr_truncated", r->err_truncated},
                          {"pid", r->pid},
                          {"ms", r->ms}};
                std::cout << j.dump(2, ' ', false, json::error_handler_t::replace) << std::endl;
            } else {
                if (r->out_truncated)
                    fmt::print(stderr,
                               "stackemu exec: the guest agent kept only the first 16 MiB "
                               "of stdout\n");
                if (r->err_truncated)
                    fmt::print(stderr,
                               "stackemu exec: the guest agent kept only the first 16 MiB "
                               "of stderr\n");
            }
            return r->status();
        };
    });
}

constexpr const char* cp_footer =
    R"(One side is guest:/absolute/path, the other a host path (as with `docker cp`); a directory
destination gets the source's name. One regular file per call.

Into the guest: the bytes go to a temporary file beside the destination, are checked with the
guest's sha256sum (read back when it has none), get the host file's permission bits and replace
the destination by a rename (mv -T): a failure leaves the destination as it was.
Out of the guest: read into a temporary file beside the destination, which replaces it once the
size and the guest's sha256sum match (the size alone when the guest has no sha256sum).

Exit status: 0 copied and verified, 1 failed (the destination untouched), 2 bad command line,
7 another stackemu command holds the instance.)";

void add_cp(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "cp", "Copy a file into or out of the guest through its agent, checked by sha256");
    cmd->footer(cp_footer);
    auto o = add_instance_options(cmd, option_set::name_only);
    struct extra {
        std::string source;
        std::string destination;
    };
    auto x = std::make_shared<extra>();
    cmd->add_option("SRC", x->source, "host path or guest:/path")->required();
    cmd->add_option("DST", x->destination, "host path or guest:/path")->required();
    cmd->callback([o, x, &action] {
        action = [o, x]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("cp", inst.error());
                return exit_code::usage;
            }
            auto spec = parse_copy_args(x->source, x->destination);
            if (!spec) {
                report("cp", spec.error());
                return exit_code::usage;
            }
            auto r = run_on_context(guest_copy(std::move(*inst), std::move(*spec)));
            if (!r) {
                report("cp", r.error());
                return r.error().code == errc::busy ? exit_code::busy : exit_code::error;
            }
            if (o->json) {
                std::cout << json{{"direction", r->direction == copy_direction::to_guest
                                                    ? "to_guest"
                                                    : "from_guest"},
                                  {"source", r->source},
                                  {"destination", r->destination},
                                  {"bytes", r->bytes},
                                  {"sha256", r->sha256},
                                  {"verified_by", r->verified_by},
                                  {"ms", r->ms}}
                                 .dump(2)
                          << std::endl;
            } else {
                fmt::print("copied {} bytes from {} to {} in {:.2f} s (sha256 {}, checked by {})\n",
                           r->bytes, r->source, r->destination, r->ms / 1000, r->sha256,
                           r->verified_by);
            }
            return exit_code::ok;
        };
    });
}

}  // namespace

void add_exec_command(CLI::App& app, std::function<int()>& action) {
    add_exec(app, action);
}
void add_cp_command(CLI::App& app, std::function<int()>& action) {
    add_cp(app, action);
}

}  // namespace stackemu::cli
