// Running a build tool with its output streamed line by line.
#include "provision/tool_stream.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <deque>

// POSIX declares it for programs to declare; <unistd.h> has it only under _GNU_SOURCE.
extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace stackemu::provision {

void line_splitter::feed(std::string_view bytes, const line_sink& sink) {
    for (const char c : bytes) {
        if (c == '\n' && after_cr_) {
            after_cr_ = false;
            continue;
        }
        after_cr_ = c == '\r';
        if (c == '\b') {  // a terminal would step back over the last character (mke2fs's counters)
            if (!partial_.empty()) partial_.pop_back();
            continue;
        }
        if (c == '\n' || c == '\r') {
            sink(partial_);
            partial_.clear();
            continue;
        }
        partial_.push_back(c);
        if (partial_.size() >= max_line_) {
            sink(partial_);
            partial_.clear();
        }
    }
}

void line_splitter::finish(const line_sink& sink) {
    if (!partial_.empty()) sink(partial_);
    partial_.clear();
    after_cr_ = false;
}

namespace {

// The child's environment: ours with the overrides applied, as NAME=VALUE strings.
std::vector<std::string> child_environment(const stream_options& options) {
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e)
        env.emplace_back(*e);
    for (const auto& [name, value] : options.env) {
        std::erase_if(env, [&](const std::string& kv) {
            return kv.size() > name.size() && kv.compare(0, name.size(), name) == 0 &&
                   kv[name.size()] == '=';
        });
        if (value) env.push_back(name + "=" + *value);
    }
    return env;
}

// argv[0] as a path: itself when it names one, else the first executable file of that name in
// the directories of the child's PATH. posix_spawnp would search the parent's PATH instead.
std::optional<std::string> resolve_program(const std::string& program,
                                           const std::vector<std::string>& env) {
    if (program.find('/') != std::string::npos) return program;
    std::string_view path = "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";
    for (const auto& kv : env)
        if (kv.starts_with("PATH=")) path = std::string_view(kv).substr(5);
    while (true) {
        const auto colon = path.find(':');
        const auto dir = path.substr(0, colon);
        if (!dir.empty()) {
            auto candidate = fmt::format("{}/{}", dir, program);
            struct stat st {};
            if (::stat(candidate.c_str(), &st) == 0 && S_ISREG(st.st_mode) &&
                ::access(candidate.c_str(), X_OK) == 0)
                return candidate;
        }
        if (colon == std::string_view::npos) return std::nullopt;
        path.remove_prefix(colon + 1);
    }
}

}  // namespace

result<streamed_run> run_streaming(std::vector<std::string> argv, const line_sink& on_line,
                                   const stream_options& options) {
    if (argv.empty() || argv.front().empty())
        return fail(errc::invalid_argument, "run_streaming: no program to run");
    auto env = child_environment(options);
    const auto program = resolve_program(argv.front(), env);
    if (!program)
        return fail(errc::spawn_failed,
                    fmt::format("cannot run {}: not found on PATH (scripts/setup installs it)",
                                argv.front()));

    int pipe_fds[2];
    if (::pipe2(pipe_fds, O_CLOEXEC) != 0)
        return fail(errc::io_error, fmt::format("cannot create a pipe: {}", std::strerror(errno)));
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (auto& a : argv)
        args.push_back(a.data());
    args.push_back(nullptr);
    std::vector<char*> envp;
    envp.reserve(env.size() + 1);
    for (auto& kv : env)
        envp.push_back(kv.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 1);
    posix_spawn_file_actions_adddup2(&actions, pipe_fds[1], 2);
    pid_t child = -1;
    const int rc =
        ::posix_spawn(&child, program->c_str(), &actions, nullptr, args.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    ::close(pipe_fds[1]);
    if (rc != 0) {
        ::close(pipe_fds[0]);
        return fail(errc::spawn_failed, fmt::format("cannot run {}: {} (scripts/setup installs it)",
                                                    *program, std::strerror(rc)));
    }

    streamed_run run;
    std::deque<std::string> tail;
    const line_sink keep = [&](std::string_view line) {
        if (line.empty()) return;
        if (on_line) on_line(line);
        if (options.keep_last == 0) return;
        if (tail.size() == options.keep_last) tail.pop_front();
        tail.emplace_back(line);
    };
    line_splitter splitter;
    char buf[16384];
    while (true) {
        const ssize_t n = ::read(pipe_fds[0], buf, sizeof buf);
        if (n > 0) {
            splitter.feed(std::string_view(buf, static_cast<std::size_t>(n)), keep);
            continue;
        }
        if (n < 0 && errno == EINTR) continue;
        break;  // end of output (every writer closed it) or a read error
    }
    splitter.finish(keep);
    ::close(pipe_fds[0]);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    run.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    run.last_lines.assign(tail.begin(), tail.end());
    return run;
}

}  // namespace stackemu::provision
