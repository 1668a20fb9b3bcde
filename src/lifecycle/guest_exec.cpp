// `stackemu exec` and `stackemu cp`: guest-exec with polling, guest-file-* in chunks, and the
// guest's own small utilities (sha256sum, mv, rm, kill...) always run from an argv, never a shell
// command line.
#include "lifecycle/guest_exec.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <asio/redirect_error.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstring>
#include <filesystem>
#include <random>

#include "lifecycle/controller_detail.hpp"
#include "lifecycle/instance_lock.hpp"

namespace stackemu::lifecycle {

namespace qga = qmp::qga;
namespace fs = std::filesystem;
using namespace std::chrono_literals;
using std::chrono::milliseconds;
using clock_type = std::chrono::steady_clock;
using nlohmann::json;

namespace {

class sha256_state {
  public:
    sha256_state() : ctx_(EVP_MD_CTX_new()) {
        if (ctx_) EVP_DigestInit_ex(ctx_, EVP_sha256(), nullptr);
    }
    sha256_state(const sha256_state&) = delete;
    sha256_state& operator=(const sha256_state&) = delete;
    ~sha256_state() { EVP_MD_CTX_free(ctx_); }

    void update(std::string_view bytes) {
        if (ctx_) EVP_DigestUpdate(ctx_, bytes.data(), bytes.size());
    }
    std::string hex() {
        unsigned char digest[EVP_MAX_MD_SIZE];
        unsigned int n = 0;
        if (!ctx_ || EVP_DigestFinal_ex(ctx_, digest, &n) != 1) return {};
        std::string out;
        for (unsigned int i = 0; i < n; ++i)
            out += fmt::format("{:02x}", digest[i]);
        return out;
    }

  private:
    EVP_MD_CTX* ctx_;
};

// Closes a host file descriptor however the scope ends.
class fd_guard {
  public:
    explicit fd_guard(int fd) : fd_(fd) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() { reset(); }
    int get() const { return fd_; }
    int reset() {
        int rc = 0;
        if (fd_ >= 0) rc = ::close(fd_);
        fd_ = -1;
        return rc;
    }

  private:
    int fd_;
};

std::string random_hex(std::size_t digits) {
    std::random_device device;
    std::string out;
    while (out.size() < digits)
        out += fmt::format("{:08x}", device());
    out.resize(digits);
    return out;
}

std::string shown_command(const std::vector<std::string>& argv) {
    std::string out;
    for (const auto& word : argv) {
        if (!out.empty()) out += ' ';
        const bool plain = !word.empty() && word.find_first_of(" \t\n'\"\\$`") == std::string::npos;
        out += plain ? word : fmt::format("'{}'", word);
    }
    return out;
}

std::string seconds_text(milliseconds d) {
    return fmt::format("{:g} s", static_cast<double>(d.count()) / 1000.0);
}

std::string trimmed(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == ' ' || text.back() == '\r'))
        text.remove_suffix(1);
    return std::string(text);
}

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

// qemu-ga reports a program it could not start as "Guest agent command failed, error was
// 'Failed to execute child process “X” (No such file or directory)'" (GLib's g_spawn text).
error spawn_error(std::string_view program, const error& e) {
    if (e.code != errc::qemu_error || !contains(e.qemu_desc, "Failed to execute child process"))
        return e;
    if (contains(e.qemu_desc, "No such file or directory"))
        return make_error(errc::not_found,
                          fmt::format("the guest has no program `{}` (the agent said: {})", program,
                                      e.qemu_desc));
    return make_error(errc::spawn_failed, fmt::format("the guest could not execute `{}` (the agent "
                                                      "said: {})",
                                                      program, e.qemu_desc));
}

asio::awaitable<bool> pause_for(milliseconds d) {
    asio::steady_timer timer(co_await asio::this_coro::executor, d);
    asio::error_code ec;
    co_await timer.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    co_return !ec;
}

milliseconds until(clock_type::time_point deadline) {
    if (deadline == clock_type::time_point::max()) return milliseconds::max();
    return std::max(std::chrono::duration_cast<milliseconds>(deadline - clock_type::now()), 0ms);
}

// One of the guest's utilities, from an argv (qemu-ga looks the program up in its PATH),
// with its output captured. A missing program is errc::not_found.
asio::awaitable<result<qga::exec_result>> run_utility(qga::client& agent, std::string program,
                                                      std::vector<std::string> args,
                                                      milliseconds budget) {
    qga::exec_request request;
    request.path = program;
    request.args = std::move(args);
    request.capture_output = true;
    auto r = co_await qga::run(agent, std::move(request), budget);
    if (!r) co_return fail(spawn_error(program, r.error()));
    co_return r;
}

// "exit 1: <stderr>" or "killed by signal 9", for messages about a utility that failed.
std::string utility_failure(const qga::exec_result& r) {
    std::string why = r.signal ? fmt::format("killed by signal {}", *r.signal)
                               : fmt::format("exit {}", r.exit_code.value_or(-1));
    const std::string said = trimmed(r.err_data.empty() ? r.out_data : r.err_data);
    if (!said.empty()) why += ": " + said;
    return why;
}

bool succeeded(const qga::exec_result& r) {
    return r.exited && r.exit_code == std::optional<int>(0);
}

// ---- exec ----

void deliver(const output_sink& sink, std::string_view bytes) {
    if (sink && !bytes.empty()) sink(bytes);
}

// Polls guest-exec-status until the process exits (its final status: qemu-ga forgets it after
// that reply) or `deadline` passes (nullopt). `between` runs after each status that says the
// process still runs, and returns true when it found output (polling speeds up again).
using poll_hook = std::function<asio::awaitable<result<bool>>(void)>;

asio::awaitable<result<std::optional<qga::exec_result>>> wait_for_exit(
    qga::client& agent, std::int64_t pid, clock_type::time_point deadline, const agent_options& o,
    poll_hook between) {
    milliseconds interval = o.first_poll;
    for (;;) {
        auto status = co_await qga::exec_status(agent, pid);
        if (!status) co_return fail(status.error());
        if (status->exited) co_return std::optional<qga::exec_result>(std::move(*status));
        bool busy = false;
        if (between) {
            auto found = co_await between();
            if (!found) co_return fail(found.error());
            busy = *found;
        }
        if (busy) interval = o.first_poll;
        const milliseconds left = until(deadline);
        if (left == 0ms) co_return std::optional<qga::exec_result>();
        if (!co_await pause_for(std::min(interval, left)))
            co_return fail(errc::cancelled, "waiting for the guest command was cancelled");
        if (!busy) interval = std::min(interval * 2, o.max_poll);
    }
}

// guest-exec has no kill: the guest's own `kill -KILL <pid>`, then the process's final status.
// nullopt: the signal was sent, but the agent still says the process runs. qemu-ga reports an
// exit only once the process's stdout and stderr pipes are closed, and a child it started (a
// shell's `sleep`) keeps them open after it died.
asio::awaitable<result<std::optional<qga::exec_result>>> kill_guest_process(qga::client& agent,
                                                                            std::int64_t pid,
                                                                            agent_options o) {
    std::vector<std::string> args = {"-KILL", std::to_string(pid)};
    auto killed = co_await run_utility(agent, "kill", std::move(args), o.kill_budget);
    if (!killed) co_return fail(killed.error());
    if (!succeeded(*killed))
        co_return fail(errc::process_failed,
                       fmt::format("the guest's kill failed ({})", utility_failure(*killed)));
    auto last = co_await wait_for_exit(agent, pid, clock_type::now() + o.kill_budget, o, {});
    if (!last) co_return fail(last.error());
    co_return std::move(*last);
}

guest_command_outcome outcome_of(std::int64_t pid, const qga::exec_result& r,
                                 clock_type::time_point t0) {
    guest_command_outcome out;
    out.pid = pid;
    out.exit_code = r.exit_code;
    out.signal = r.signal;
    out.out_truncated = r.out_truncated;
    out.err_truncated = r.err_truncated;
    out.ms = detail::ms_since(t0);
    return out;
}

// The timeout's error, after trying to kill the process.
asio::awaitable<error> timed_out(qga::client& agent, const guest_command& cmd, std::int64_t pid,
                                 agent_options o) {
    const std::string head = fmt::format("`{}` did not finish within {}", shown_command(cmd.argv),
                                         seconds_text(cmd.timeout.value_or(0ms)));
    auto killed = co_await kill_guest_process(agent, pid, o);
    if (!killed)
        co_return make_error(
            errc::timeout,
            fmt::format("{}, and stopping it failed ({}): it may still run in the guest as pid {}",
                        head, killed.error().what(), pid));
    if (!*killed)
        co_return make_error(
            errc::timeout,
            fmt::format("{}: it was sent SIGKILL (pid {} in the guest), but processes it started "
                        "still hold its output open and may run on",
                        head, pid));
    // What it wrote before it died (capture mode: qemu-ga hands it over now).
    deliver(cmd.on_stdout, (*killed)->out_data);
    deliver(cmd.on_stderr, (*killed)->err_data);
    co_return make_error(
        errc::timeout,
        fmt::format(
            "{}: it was killed (SIGKILL to pid {} in the guest; processes it started may live on)",
            head, pid));
}

asio::awaitable<result<guest_command_outcome>> run_captured(qga::client& agent, guest_command cmd,
                                                            agent_options o) {
    const auto t0 = clock_type::now();
    const auto deadline = cmd.timeout ? t0 + *cmd.timeout : clock_type::time_point::max();
    qga::exec_request request;
    request.path = cmd.argv[0];
    request.args.assign(cmd.argv.begin() + 1, cmd.argv.end());
    request.input_data = cmd.input;
    request.capture_output = true;
    auto pid = co_await qga::exec(agent, std::move(request));
    if (!pid) co_return fail(spawn_error(cmd.argv[0], pid.error()));
    auto last = co_await wait_for_exit(agent, *pid, deadline, o, {});
    if (!last) co_return fail(last.error());
    if (!*last) {
        auto why = co_await timed_out(agent, cmd, *pid, o);
        co_return fail(std::move(why));
    }
    deliver(cmd.on_stdout, (*last)->out_data);
    deliver(cmd.on_stderr, (*last)->err_data);
    co_return outcome_of(*pid, **last, t0);
}

// ---- exec --stream: the output files in the guest ----

struct stream_files {
    std::string out_path;
    std::string err_path;
    std::optional<std::int64_t> out_handle;  // open for reading
    std::optional<std::int64_t> err_handle;
};

// Reads what is new in one output file; true when there was something.
asio::awaitable<result<bool>> drain(qga::client& agent, std::int64_t handle, output_sink sink,
                                    std::size_t chunk) {
    bool found = false;
    for (;;) {
        auto piece = co_await qga::file_read(agent, handle, chunk);
        if (!piece) co_return fail(piece.error());
        if (!piece->bytes.empty()) found = true;
        deliver(sink, piece->bytes);
        // qemu-ga reads with fread(): a short read means we caught up with the writer. A later
        // read sees what was appended since (it does not keep the end-of-file state).
        if (piece->bytes.size() < chunk) co_return found;
    }
}

asio::awaitable<result<bool>> drain_both(qga::client& agent, const stream_files& files,
                                         const guest_command& cmd, std::size_t chunk) {
    auto out = co_await drain(agent, *files.out_handle, cmd.on_stdout, chunk);
    if (!out) co_return fail(out.error());
    auto err = co_await drain(agent, *files.err_handle, cmd.on_stderr, chunk);
    if (!err) co_return fail(err.error());
    co_return *out || *err;
}

asio::awaitable<result<guest_command_outcome>> run_streamed_body(qga::client& agent,
                                                                 guest_command cmd,
                                                                 stream_files& files,
                                                                 agent_options o) {
    const auto t0 = clock_type::now();
    const auto deadline = cmd.timeout ? t0 + *cmd.timeout : clock_type::time_point::max();
    std::string* const paths[] = {&files.out_path, &files.err_path};
    for (std::string* path : paths) {
        auto created = co_await qga::file_open(agent, *path, "w");
        if (!created)
            co_return fail(errc::io_error,
                           fmt::format("--stream could not create {} in the guest: {}", *path,
                                       created.error().what()));
        auto closed = co_await qga::file_close(agent, *created);
        if (!closed) co_return fail(closed.error());
    }
    auto out_handle = co_await qga::file_open(agent, files.out_path, "r");
    if (!out_handle) co_return fail(out_handle.error());
    files.out_handle = *out_handle;
    auto err_handle = co_await qga::file_open(agent, files.err_path, "r");
    if (!err_handle) co_return fail(err_handle.error());
    files.err_handle = *err_handle;

    // The shell only applies the two redirections and execs the command's own argv ("$@"):
    // none of the command's words is ever parsed by it.
    qga::exec_request request;
    request.path = "/bin/sh";
    request.args = {"-c", R"(o=$1; e=$2; shift 2; exec "$@" >"$o" 2>"$e")", "stackemu-exec",
                    files.out_path, files.err_path};
    request.args.insert(request.args.end(), cmd.argv.begin(), cmd.argv.end());
    request.input_data = cmd.input;
    request.capture_output = true;  // the shell's own complaints, before it redirects
    auto pid = co_await qga::exec(agent, std::move(request));
    if (!pid) {
        auto e = spawn_error("/bin/sh", pid.error());
        if (e.code == errc::not_found) e.message += " (--stream needs it; run without --stream)";
        co_return fail(std::move(e));
    }
    const std::size_t chunk = o.chunk_bytes;
    poll_hook between = [&agent, &files, &cmd, chunk]() -> asio::awaitable<result<bool>> {
        return drain_both(agent, files, cmd, chunk);
    };
    auto last = co_await wait_for_exit(agent, *pid, deadline, o, between);
    if (!last) co_return fail(last.error());
    if (!*last) {
        auto why = co_await timed_out(agent, cmd, *pid, o);
        (void)co_await drain_both(agent, files, cmd, chunk);
        co_return fail(std::move(why));
    }
    // It has exited: the files hold everything it wrote.
    auto rest = co_await drain_both(agent, files, cmd, chunk);
    if (!rest) co_return fail(rest.error());
    deliver(cmd.on_stdout, (*last)->out_data);
    deliver(cmd.on_stderr, (*last)->err_data);
    co_return outcome_of(*pid, **last, t0);
}

asio::awaitable<result<guest_command_outcome>> run_streamed(qga::client& agent, guest_command cmd,
                                                            agent_options o) {
    stream_files files;
    const std::string base = "/tmp/.stackemu-exec-" + random_hex(12);
    files.out_path = base + ".out";
    files.err_path = base + ".err";
    auto r = co_await run_streamed_body(agent, std::move(cmd), files, o);
    // Clean up whatever happened; a dead channel leaves the files behind.
    if (agent.is_open()) {
        const std::optional<std::int64_t> handles[] = {files.out_handle, files.err_handle};
        for (const auto& handle : handles)
            if (handle) (void)co_await qga::file_close(agent, *handle);
        std::vector<std::string> args = {"-f", files.out_path, files.err_path};
        (void)co_await run_utility(agent, "rm", std::move(args), o.command_timeout);
    }
    co_return r;
}

// ---- cp ----

std::string guest_name(std::string_view path) {
    return fmt::format("guest:{}", path);
}

// Best effort: closes a guest file handle and removes a temporary file.
asio::awaitable<void> discard_guest_file(qga::client& agent, std::optional<std::int64_t> handle,
                                         std::string path, milliseconds budget) {
    if (!agent.is_open()) co_return;
    if (handle) (void)co_await qga::file_close(agent, *handle);
    std::vector<std::string> args = {"-f", path};
    (void)co_await run_utility(agent, "rm", std::move(args), budget);
}

// Budget for a guest utility reading `bytes` (sha256sum): slow TCG guests hash a few MiB/s.
milliseconds budget_for(std::uint64_t bytes, const agent_options& o) {
    return o.command_timeout + milliseconds(bytes / 1024 / 4);
}

asio::awaitable<result<std::string>> guest_sha256(qga::client& agent, std::string path,
                                                  std::uint64_t bytes, agent_options o) {
    std::vector<std::string> args = {path};
    auto sum = co_await run_utility(agent, "sha256sum", std::move(args), budget_for(bytes, o));
    if (!sum) co_return fail(sum.error());
    if (!succeeded(*sum))
        co_return fail(errc::process_failed, fmt::format("the guest's sha256sum {} failed ({})",
                                                         path, utility_failure(*sum)));
    const std::string text = sum->out_data.substr(0, sum->out_data.find_first_of(" \t\n"));
    if (text.size() != 64 || text.find_first_not_of("0123456789abcdef") != std::string::npos)
        co_return fail(errc::protocol_error,
                       fmt::format("the guest's sha256sum printed no checksum: {:.200}",
                                   trimmed(sum->out_data)));
    co_return text;
}

// Reads a guest file back and hashes it (for guests without sha256sum).
asio::awaitable<result<std::string>> read_back_sha256(qga::client& agent, std::string path,
                                                      agent_options o) {
    auto handle = co_await qga::file_open(agent, path, "rb");
    if (!handle) co_return fail(handle.error());
    sha256_state hash;
    result<std::string> out;
    for (;;) {
        auto piece = co_await qga::file_read(agent, *handle, o.chunk_bytes);
        if (!piece) {
            out = fail(piece.error());
            break;
        }
        hash.update(piece->bytes);
        if (piece->eof || piece->bytes.empty()) {
            out = hash.hex();
            break;
        }
    }
    (void)co_await qga::file_close(agent, *handle);
    co_return out;
}

struct upload_state {
    std::optional<std::int64_t> handle;  // the temporary file, while open
};

asio::awaitable<result<copy_outcome>> upload_body(qga::client& agent, int fd, std::uint64_t size,
                                                  unsigned mode, std::string tmp,
                                                  std::string target, upload_state& state,
                                                  agent_options o) {
    auto handle = co_await qga::file_open(agent, tmp, "wb");
    if (!handle) {
        const auto dir = fs::path(target).parent_path().string();
        co_return fail(errc::io_error,
                       fmt::format("cannot create a file in {} (does the directory exist?): {}",
                                   guest_name(dir), handle.error().what()));
    }
    state.handle = *handle;
    sha256_state hash;
    std::uint64_t total = 0;
    std::string buffer(o.chunk_bytes, '\0');
    for (;;) {
        const ssize_t n = ::read(fd, buffer.data(), buffer.size());
        if (n < 0) {
            if (errno == EINTR) continue;
            co_return fail(errc::io_error,
                           fmt::format("reading the host file failed: {}", std::strerror(errno)));
        }
        if (n == 0) break;
        std::string piece = buffer.substr(0, static_cast<std::size_t>(n));
        hash.update(piece);
        auto written = co_await qga::file_write(agent, *handle, std::move(piece));
        if (!written) co_return fail(written.error());
        if (*written != static_cast<std::size_t>(n))
            co_return fail(errc::io_error,
                           fmt::format("the guest wrote {} of {} bytes to {} (is its disk full?)",
                                       *written, n, guest_name(tmp)));
        total += static_cast<std::uint64_t>(n);
    }
    if (total != size)
        co_return fail(errc::io_error,
                       fmt::format("the host file changed while it was copied ({} bytes, then {})",
                                   size, total));
    json flush_args = {{"handle", *handle}};
    auto flushed = co_await agent.execute("guest-file-flush", std::move(flush_args));
    if (!flushed)
        co_return fail(errc::io_error, fmt::format("the guest could not write {} (is its disk "
                                                   "full?): {}",
                                                   guest_name(tmp), flushed.error().what()));
    auto closed = co_await qga::file_close(agent, *handle);
    state.handle.reset();
    if (!closed) co_return fail(closed.error());

    copy_outcome out;
    out.direction = copy_direction::to_guest;
    out.destination = guest_name(target);
    out.bytes = total;
    out.sha256 = hash.hex();
    auto theirs = co_await guest_sha256(agent, tmp, total, o);
    if (theirs) {
        out.verified_by = "sha256sum in the guest";
    } else if (theirs.error().code == errc::not_found) {
        theirs = co_await read_back_sha256(agent, tmp, o);
        if (!theirs) co_return fail(theirs.error());
        out.verified_by = "read back";
    } else {
        co_return fail(theirs.error());
    }
    if (*theirs != out.sha256)
        co_return fail(errc::checksum_mismatch,
                       fmt::format("the copy in the guest has sha256 {}, the host file {}: {} was "
                                   "left as it was",
                                   *theirs, out.sha256, guest_name(target)));

    std::vector<std::string> chmod_args = {fmt::format("{:o}", mode & 0777), tmp};
    auto chmod = co_await run_utility(agent, "chmod", std::move(chmod_args), o.command_timeout);
    if (!chmod) co_return fail(chmod.error());
    if (!succeeded(*chmod))
        co_return fail(errc::process_failed,
                       fmt::format("the guest's chmod failed ({})", utility_failure(*chmod)));
    std::vector<std::string> mv_args = {"-f", "-T", tmp, target};
    auto moved = co_await run_utility(agent, "mv", std::move(mv_args), o.command_timeout);
    if (!moved) co_return fail(moved.error());
    if (!succeeded(*moved))
        co_return fail(errc::process_failed,
                       fmt::format("cannot put the file at {} ({})", guest_name(target),
                                   utility_failure(*moved)));
    co_return out;
}

asio::awaitable<result<copy_outcome>> download_body(qga::client& agent, std::int64_t handle,
                                                    std::string guest_path, int fd,
                                                    const std::string& tmp, agent_options o) {
    const auto shown = guest_name(guest_path);
    auto end = co_await qga::file_seek(agent, handle, 0, qga::seek_whence::end);
    if (!end)
        co_return fail(errc::io_error,
                       fmt::format("cannot read {}: {}", shown, end.error().what()));
    auto start = co_await qga::file_seek(agent, handle, 0, qga::seek_whence::set);
    if (!start) co_return fail(start.error());
    const auto size = static_cast<std::uint64_t>(std::max<std::int64_t>(end->position, 0));
    // A pseudo-file (/proc/...) says 0 bytes and has some: read it, with a cap.
    constexpr std::uint64_t pseudo_file_cap = 64u << 20;

    sha256_state hash;
    std::uint64_t total = 0;
    for (;;) {
        auto piece = co_await qga::file_read(agent, handle, o.chunk_bytes);
        if (!piece)
            co_return fail(errc::io_error,
                           fmt::format("cannot read {}: {}", shown, piece.error().what()));
        hash.update(piece->bytes);
        std::size_t done = 0;
        while (done < piece->bytes.size()) {
            const ssize_t n = ::write(fd, piece->bytes.data() + done, piece->bytes.size() - done);
            if (n < 0) {
                if (errno == EINTR) continue;
                co_return fail(errc::io_error,
                               fmt::format("writing {} failed: {}", tmp, std::strerror(errno)));
            }
            done += static_cast<std::size_t>(n);
        }
        total += piece->bytes.size();
        if (size > 0 && total > size)
            co_return fail(errc::io_error,
                           fmt::format("{} grew while it was copied (over {} bytes)", shown, size));
        if (size == 0 && total > pseudo_file_cap)
            co_return fail(errc::io_error,
                           fmt::format("{} is not a regular file (it reports 0 bytes "
                                       "and gave over {} MiB)",
                                       shown, pseudo_file_cap >> 20));
        if (piece->eof || piece->bytes.empty()) break;
    }
    if (size > 0 && total != size)
        co_return fail(errc::io_error,
                       fmt::format("{} changed while it was copied ({} bytes, then {} read)", shown,
                                   size, total));
    copy_outcome out;
    out.direction = copy_direction::from_guest;
    out.source = shown;
    out.bytes = total;
    out.sha256 = hash.hex();
    if (size == 0 && total > 0) {
        out.verified_by = "none";
        co_return out;
    }
    auto theirs = co_await guest_sha256(agent, guest_path, total, o);
    if (!theirs) {
        if (theirs.error().code != errc::not_found) co_return fail(theirs.error());
        out.verified_by = "size";
        co_return out;
    }
    if (*theirs != out.sha256)
        co_return fail(
            errc::checksum_mismatch,
            fmt::format("{} has sha256 {} in the guest, the bytes read {} (did it change "
                        "while it was copied?)",
                        shown, *theirs, out.sha256));
    out.verified_by = "sha256sum in the guest";
    co_return out;
}

mode_t current_umask() {
    const mode_t mask = ::umask(0);
    ::umask(mask);
    return mask;
}

// ---- on an instance ----

bool state_flag(const json& saved, const char* key, bool fallback) {
    auto it = saved.find(key);
    return it != saved.end() && it->is_boolean() ? it->get<bool>() : fallback;
}

asio::awaitable<result<qga::client>> open_agent(instance inst, agent_options o) {
    const auto& paths = inst.paths;
    const json saved = detail::read_state(paths);
    if (!state_flag(saved, "agent", true))
        co_return fail(errc::wrong_state,
                       "this VM's image runs no guest agent (its profile says so): exec and cp "
                       "need one");
    std::error_code ec;
    if (!fs::exists(paths.qga_socket, ec))
        co_return fail(errc::wrong_state,
                       fmt::format("the VM has no guest-agent socket ({}): restart it with "
                                   "`stackemu stop` and `stackemu start`",
                                   paths.qga_socket.string()));
    qga::client_options co;
    co.connect_timeout = o.connect_timeout;
    co.sync_timeout = o.sync_timeout;
    co.command_timeout = o.command_timeout;
    const qmp::endpoint ep = qmp::unix_endpoint{paths.qga_socket.string()};
    auto agent = co_await qga::client::connect(ep, co);
    if (!agent) {
        if (agent.error().code == errc::connect_failed)
            co_return fail(errc::wrong_state,
                           fmt::format("the emulator is not running (nothing answers on {}: QEMU "
                                       "has exited?); `stackemu status` says more",
                                       paths.qga_socket.string()));
        co_return fail(agent.error());
    }
    auto ok = co_await check_agent(*agent, o.sync_timeout, state_flag(saved, "paused", false));
    if (!ok) co_return fail(ok.error());
    co_return std::move(*agent);
}

// Where a file from the guest lands: into a host directory under its own name, as with cp(1).
fs::path host_target(const std::string& guest_path, const std::string& host_path) {
    fs::path target(host_path);
    std::error_code ec;
    if (host_path.ends_with('/') || fs::is_directory(target, ec))
        target /= fs::path(guest_path).filename();
    return target;
}

// The host side of a copy, checked before the instance is locked: a source that cannot be
// read or a destination directory that does not exist is refused with nothing touched.
result<void> check_host_side(const copy_spec& spec) {
    if (spec.direction == copy_direction::to_guest) {
        fd_guard fd(::open(spec.host_path.c_str(), O_RDONLY | O_CLOEXEC));
        if (fd.get() < 0) {
            const int err = errno;
            return fail(err == ENOENT ? errc::not_found : errc::io_error,
                        fmt::format("cannot read {}: {}", spec.host_path, std::strerror(err)));
        }
        struct stat st {};
        if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
            return fail(
                errc::invalid_argument,
                fmt::format("{} is not a regular file: cp copies one file", spec.host_path));
        return {};
    }
    fs::path dir = host_target(spec.guest_path, spec.host_path).parent_path();
    if (dir.empty()) dir = ".";
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        return fail(errc::not_found,
                    fmt::format("the host directory {} does not exist", dir.string()));
    return {};
}

result<instance_lock> lock_running(const instance& inst, std::string operation) {
    std::error_code ec;
    if (!fs::exists(inst.paths.qmp_socket, ec))
        return fail(errc::wrong_state, "the emulator is not running: `stackemu start` first");
    return try_acquire(inst.paths.lock.string(), std::move(operation));
}

}  // namespace

int guest_command_outcome::status() const {
    if (exit_code) return *exit_code;
    if (signal) return 128 + *signal;
    return exec_exit::failed;
}

std::string sha256_hex(std::string_view bytes) {
    sha256_state hash;
    hash.update(bytes);
    return hash.hex();
}

asio::awaitable<result<void>> check_agent(qga::client& agent, milliseconds timeout, bool paused) {
    auto ok = co_await agent.sync(timeout);
    if (ok || ok.error().code != errc::agent_unavailable) co_return ok;
    if (paused)
        co_return fail(errc::agent_unavailable,
                       "the guest agent does not answer: the VM is paused (`stackemu resume` "
                       "first)");
    co_return fail(errc::agent_unavailable,
                   "the guest agent does not answer (is qemu-guest-agent running in the guest?)");
}

asio::awaitable<result<guest_command_outcome>> run_guest_command(qga::client& agent,
                                                                 guest_command cmd,
                                                                 agent_options options) {
    if (cmd.argv.empty() || cmd.argv[0].empty())
        co_return fail(errc::invalid_argument,
                       "no command to run: give it after `--`, e.g. `stackemu exec -- uname -a`");
    if (cmd.input && cmd.input->size() > max_input_bytes)
        co_return fail(errc::invalid_argument,
                       fmt::format("stdin holds over {} MiB, more than the guest agent takes in "
                                   "one message: copy the data in with `stackemu cp` and let the "
                                   "command read the file",
                                   max_input_bytes >> 20));
    if (cmd.stream) {
        auto r = co_await run_streamed(agent, std::move(cmd), options);
        co_return r;
    }
    auto r = co_await run_captured(agent, std::move(cmd), options);
    co_return r;
}

result<copy_spec> parse_copy_args(std::string_view source, std::string_view destination) {
    constexpr std::string_view prefix = "guest:";
    const bool from_guest = source.starts_with(prefix);
    const bool to_guest = destination.starts_with(prefix);
    if (from_guest == to_guest)
        return fail(errc::invalid_argument,
                    from_guest ? "both sides are in the guest: one of SRC and DST is a host path"
                               : "neither side is in the guest: write one of SRC and DST as "
                                 "guest:/absolute/path");
    copy_spec spec;
    spec.direction = to_guest ? copy_direction::to_guest : copy_direction::from_guest;
    std::string_view guest = (to_guest ? destination : source).substr(prefix.size());
    std::string_view host = to_guest ? source : destination;
    if (!guest.starts_with('/'))
        return fail(errc::invalid_argument,
                    fmt::format("the guest path `{}` is not absolute: write guest:/path", guest));
    if (host.empty())
        return fail(errc::invalid_argument,
                    "the host path is empty: name a file or directory, e.g. ./data.sql or .");
    if (spec.direction == copy_direction::from_guest && guest.ends_with('/'))
        return fail(errc::invalid_argument,
                    fmt::format("guest:{} names a directory: cp copies one file", guest));
    spec.guest_path = std::string(guest);
    spec.host_path = std::string(host);
    return spec;
}

asio::awaitable<result<copy_outcome>> copy_to_guest(qga::client& agent, std::string host_path,
                                                    std::string guest_path, agent_options options) {
    const auto t0 = clock_type::now();
    fd_guard fd(::open(host_path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.get() < 0) {
        const int err = errno;
        co_return fail(err == ENOENT ? errc::not_found : errc::io_error,
                       fmt::format("cannot read {}: {}", host_path, std::strerror(err)));
    }
    struct stat st {};
    if (::fstat(fd.get(), &st) != 0 || !S_ISREG(st.st_mode))
        co_return fail(errc::invalid_argument,
                       fmt::format("{} is not a regular file: cp copies one file", host_path));

    // A directory destination gets the source's name, as with cp(1).
    std::string target = guest_path;
    const std::string name = fs::path(host_path).filename().string();
    if (target.ends_with('/')) {
        target += name;
    } else {
        std::vector<std::string> args = {"-d", target};
        auto is_dir = co_await run_utility(agent, "test", std::move(args), options.command_timeout);
        if (is_dir && succeeded(*is_dir)) target += "/" + name;
        if (!is_dir && is_dir.error().code != errc::not_found) {
            auto e = is_dir.error();
            e.message =
                "cp into the guest runs the guest's test, sha256sum, chmod and mv through "
                "guest-exec, which failed: " +
                e.message;
            co_return fail(std::move(e));
        }
    }
    const fs::path target_path(target);
    const std::string dir = target_path.parent_path().string();
    const std::string tmp = fmt::format("{}/.{}.stackemu-{}.part", dir == "/" ? "" : dir,
                                        target_path.filename().string(), random_hex(8));

    upload_state state;
    auto r = co_await upload_body(agent, fd.get(), static_cast<std::uint64_t>(st.st_size),
                                  static_cast<unsigned>(st.st_mode), tmp, target, state, options);
    if (!r) {
        co_await discard_guest_file(agent, state.handle, tmp, options.command_timeout);
        co_return fail(r.error());
    }
    r->source = host_path;
    r->ms = detail::ms_since(t0);
    co_return r;
}

asio::awaitable<result<copy_outcome>> copy_from_guest(qga::client& agent, std::string guest_path,
                                                      std::string host_path,
                                                      agent_options options) {
    const auto t0 = clock_type::now();
    const std::string name = fs::path(guest_path).filename().string();
    if (name.empty())
        co_return fail(
            errc::invalid_argument,
            fmt::format("{} names a directory: cp copies one file", guest_name(guest_path)));
    fs::path target = host_target(guest_path, host_path);
    fs::path dir = target.parent_path();
    if (dir.empty()) dir = ".";
    std::error_code ec;
    if (!fs::is_directory(dir, ec))
        co_return fail(errc::not_found,
                       fmt::format("the host directory {} does not exist", dir.string()));

    auto handle = co_await qga::file_open(agent, guest_path, "rb");
    if (!handle) {
        const auto& e = handle.error();
        if (e.code == errc::qemu_error && contains(e.qemu_desc, "No such file or directory"))
            co_return fail(errc::not_found,
                           fmt::format("{} does not exist", guest_name(guest_path)));
        co_return fail(errc::io_error,
                       fmt::format("cannot open {}: {}", guest_name(guest_path), e.what()));
    }
    std::string tmp_template =
        (dir / fmt::format(".{}.stackemu-XXXXXX.part", target.filename().string())).string();
    fd_guard fd(::mkostemps(tmp_template.data(), 5, O_CLOEXEC));
    if (fd.get() < 0) {
        const int err = errno;
        (void)co_await qga::file_close(agent, *handle);
        co_return fail(errc::io_error, fmt::format("cannot create a file in {}: {}", dir.string(),
                                                   std::strerror(err)));
    }
    const std::string tmp = tmp_template;
    auto r = co_await download_body(agent, *handle, guest_path, fd.get(), tmp, options);
    if (agent.is_open()) (void)co_await qga::file_close(agent, *handle);
    if (r) {
        if (::fchmod(fd.get(), 0666 & ~current_umask()) != 0 || ::fsync(fd.get()) != 0 ||
            fd.reset() != 0)
            r = fail(errc::io_error,
                     fmt::format("writing {} failed: {}", tmp, std::strerror(errno)));
    }
    if (r && std::rename(tmp.c_str(), target.c_str()) != 0)
        r = fail(errc::io_error, fmt::format("cannot put the file at {}: {}", target.string(),
                                             std::strerror(errno)));
    if (!r) {
        ::unlink(tmp.c_str());
        co_return fail(r.error());
    }
    r->destination = target.string();
    r->ms = detail::ms_since(t0);
    co_return r;
}

asio::awaitable<result<guest_command_outcome>> guest_exec(instance inst, guest_command cmd,
                                                          agent_options options) {
    auto lock = lock_running(inst, "exec");
    if (!lock) co_return fail(lock.error());
    options.command_timeout = std::min(options.command_timeout, reply_timeout());
    options.sync_timeout = std::min(options.sync_timeout, reply_timeout());
    auto agent = co_await open_agent(inst, options);
    if (!agent) co_return fail(agent.error());
    auto r = co_await run_guest_command(*agent, std::move(cmd), options);
    co_return r;
}

asio::awaitable<result<copy_outcome>> guest_copy(instance inst, copy_spec spec,
                                                 agent_options options) {
    if (auto host = check_host_side(spec); !host) co_return fail(host.error());
    auto lock = lock_running(inst, "cp");
    if (!lock) co_return fail(lock.error());
    auto agent = co_await open_agent(inst, options);
    if (!agent) co_return fail(agent.error());
    if (spec.direction == copy_direction::to_guest) {
        auto r = co_await copy_to_guest(*agent, spec.host_path, spec.guest_path, options);
        co_return r;
    }
    auto r = co_await copy_from_guest(*agent, spec.guest_path, spec.host_path, options);
    co_return r;
}

}  // namespace stackemu::lifecycle
