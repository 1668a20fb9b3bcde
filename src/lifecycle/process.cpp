// Starting QEMU with -daemonize, and explaining the messages it fails with.
#include "lifecycle/process.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <charconv>
#include <csignal>
#include <cstring>
#include <functional>
#include <mutex>

// POSIX declares it for programs to declare; <unistd.h> has it only under _GNU_SOURCE.
extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace stackemu::lifecycle {

namespace {

// ---- The pure part: QEMU's startup messages -------------------------------------------------

// One line of QEMU's stderr, split as QEMU's error_report() writes it:
// "<program>: [<option and its argument>: ]<message>".
struct qemu_line {
    std::string_view raw;
    std::string_view option;   // e.g. "-netdev user,id=n0,hostfwd=..." or "-frobnicate"
    std::string_view message;  // the rest
};

qemu_line split_line(std::string_view raw) {
    qemu_line line{raw, {}, raw};
    std::string_view rest = raw;
    if (rest.starts_with("qemu")) {
        const auto colon = rest.find(": ");
        const auto program = rest.substr(0, colon);
        if (colon != std::string_view::npos && program.find(' ') == std::string_view::npos)
            rest.remove_prefix(colon + 2);
    }
    if (rest.starts_with('-')) {
        const auto colon = rest.find(": ");
        if (colon != std::string_view::npos) {
            line.option = rest.substr(0, colon);
            rest.remove_prefix(colon + 2);
        } else if (rest.ends_with(":")) {
            line.option = rest.substr(0, rest.size() - 1);
            rest = {};
        }
    }
    line.message = rest;
    return line;
}

std::vector<std::string_view> split_lines(std::string_view text) {
    std::vector<std::string_view> lines;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        auto line = text.substr(0, nl);
        if (line.ends_with('\r')) line.remove_suffix(1);
        lines.push_back(line);
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    while (!lines.empty() && lines.back().find_first_not_of(" \t") == std::string_view::npos)
        lines.pop_back();
    return lines;
}

// The text between `prefix` and the next `close` in `s`, when `s` contains `prefix`.
std::optional<std::string_view> between(std::string_view s, std::string_view prefix,
                                        std::string_view close) {
    const auto start = s.find(prefix);
    if (start == std::string_view::npos) return std::nullopt;
    const auto from = start + prefix.size();
    const auto end = s.find(close, from);
    if (end == std::string_view::npos) return std::nullopt;
    return s.substr(from, end - from);
}

// What follows the first `prefix` in `s`, when `s` contains it.
std::optional<std::string_view> after(std::string_view s, std::string_view prefix) {
    const auto at = s.find(prefix);
    if (at == std::string_view::npos) return std::nullopt;
    return s.substr(at + prefix.size());
}

// What follows "<quoted>': " or "<quoted>: " after the quoted path: the strerror text.
std::string_view reason_after(std::string_view s, std::string_view quoted_with_close) {
    const auto at = s.find(quoted_with_close);
    if (at == std::string_view::npos) return {};
    auto rest = s.substr(at + quoted_with_close.size());
    if (rest.starts_with(": ")) rest.remove_prefix(2);
    return rest;
}

// The host port of a hostfwd rule "tcp:127.0.0.1:26701-:8102" (or "tcp::26701-:8102").
std::optional<std::uint32_t> host_port_of_rule(std::string_view rule) {
    const auto dash = rule.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    const auto host = rule.substr(0, dash);
    const auto colon = host.rfind(':');
    if (colon == std::string_view::npos) return std::nullopt;
    const auto digits = host.substr(colon + 1);
    std::uint32_t port = 0;
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), port);
    if (ec != std::errc{} || end != digits.data() + digits.size()) return std::nullopt;
    return port;
}

std::string port_setting(std::uint32_t port, const launch_context& context) {
    for (const auto& f : context.forwards)
        if (f.host_port == port && !f.env_name.empty()) return f.env_name;
    return {};
}

bool is_disk_option(std::string_view option) {
    return option.starts_with("-blockdev") || option.starts_with("-drive") ||
           option.starts_with("-hd") || option.starts_with("-cdrom");
}

// Explains one QEMU line, or nullopt when no rule knows it. `next` is the line after it
// (QEMU continues some messages on a second line).
using rule = std::function<std::optional<std::string>(const qemu_line&, std::string_view next,
                                                      const launch_context&)>;

std::optional<std::string> host_forward_busy(const qemu_line& l, std::string_view,
                                             const launch_context& context) {
    auto rule_text = between(l.message, "Could not set up host forwarding rule '", "'");
    if (!rule_text) return std::nullopt;
    const auto port = host_port_of_rule(*rule_text);
    if (!port)
        return fmt::format(
            "the host port of the forwarding rule '{}' cannot be bound: it is in use or "
            "not allowed; choose another port or stop the process using it",
            *rule_text);
    const auto setting = port_setting(*port, context);
    const auto change = setting.empty() ? std::string("choose another port")
                                        : fmt::format("set {} to a free port", setting);
    if (*port < 1024 && *port != 0)
        return fmt::format(
            "host port {} cannot be bound: ports below 1024 need privileges (or it is already "
            "in use): {} above 1023",
            *port,
            setting.empty() ? std::string("choose a port") : "set " + setting + " to a port");
    return fmt::format(
        "host port {} is already in use (by another process or a second emulator): {}, or stop "
        "the other one",
        *port, change);
}

std::optional<std::string> host_forward_invalid(const qemu_line& l, std::string_view,
                                                const launch_context&) {
    auto rule_text = between(l.message, "Invalid host forwarding rule '", "'");
    if (!rule_text) return std::nullopt;
    auto why = between(l.message, "' (", ")");
    return fmt::format(
        "the port forwarding rule '{}' is invalid{}: check the EMULATOR_*_PORT settings (ports "
        "are 1-65535)",
        *rule_text, why ? fmt::format(" ({})", *why) : std::string());
}

std::optional<std::string> image_locked(const qemu_line& l, std::string_view next,
                                        const launch_context&) {
    if (!l.message.starts_with("Failed to get \"") || !l.message.ends_with("\" lock"))
        return std::nullopt;
    auto image = between(next, "Is another process using the image [", "]?");
    return fmt::format(
        "the disk image {} is in use by another QEMU (a second emulator on the same run "
        "directory or image?): stop that one first",
        image ? std::string(*image) : std::string("of this VM"));
}

std::optional<std::string> backing_missing(const qemu_line& l, std::string_view,
                                           const launch_context&) {
    constexpr std::string_view prefix = "Could not open backing file: Could not open '";
    auto base = between(l.message, prefix, "'");
    if (!base) return std::nullopt;
    const auto reason = reason_after(l.message, fmt::format("{}{}'", prefix, *base));
    return fmt::format(
        "the base image {} under this VM's overlay cannot be opened ({}): build or restore the "
        "base image (EMULATOR_IMAGE_DIR), or reset the instance to make a new overlay",
        *base, reason.empty() ? std::string_view("unknown reason") : reason);
}

std::optional<std::string> open_failed(const qemu_line& l, std::string_view,
                                       const launch_context&) {
    auto file = between(l.message, "Could not open '", "'");
    if (!file || !l.message.starts_with("Could not open '")) return std::nullopt;
    const auto reason = reason_after(l.message, fmt::format("Could not open '{}'", *file));
    const bool disk = is_disk_option(l.option);
    if (reason == "No such file or directory") {
        if (disk)
            return fmt::format(
                "the disk or image file {} does not exist: check EMULATOR_IMAGE_DIR and that the "
                "image was built",
                *file);
        return fmt::format("{} cannot be created or opened: its directory does not exist", *file);
    }
    if (reason == "Permission denied")
        return fmt::format("no permission to open {}: check its owner and mode (ls -l {})", *file,
                           *file);
    return fmt::format("cannot open {}: {}", *file,
                       reason.empty() ? std::string_view("unknown reason") : reason);
}

std::optional<std::string> firmware_missing(const qemu_line& l, std::string_view,
                                            const launch_context&) {
    auto file = between(l.message, "could not load PC BIOS '", "'");
    if (!file) file = between(l.message, "Could not find ROM image '", "'");
    if (!file) return std::nullopt;
    return fmt::format(
        "the firmware {} is missing or unreadable: install the UEFI firmware (ovmf, "
        "qemu-efi-aarch64) or point the firmware setting at an existing file",
        *file);
}

std::optional<std::string> kernel_missing(const qemu_line& l, std::string_view,
                                          const launch_context&) {
    std::optional<std::string_view> file = between(l.message, "could not open kernel file '", "'");
    if (!file) file = between(l.message, "could not load kernel '", "'");
    if (file)
        return fmt::format(
            "the kernel {} could not be loaded (missing, unreadable or not a kernel): check the "
            "kernel path",
            *file);
    file = between(l.message, "could not load initrd '", "'");
    if (!file) file = between(l.message, "could not load initial ram disk '", "'");
    if (!file) file = between(l.message, "error reading initrd ", ": ");
    if (file)
        return fmt::format(
            "the initrd {} could not be loaded (missing or unreadable): check the initrd path",
            *file);
    return std::nullopt;
}

std::optional<std::string> socket_too_long(const qemu_line& l, std::string_view,
                                           const launch_context&) {
    auto path = between(l.message, "UNIX socket path '", "' is too long");
    if (!path) return std::nullopt;
    return fmt::format(
        "the socket path {} is {} bytes, over the 107 that Unix sockets allow: use a shorter "
        "EMULATOR_RUN_DIR",
        *path, path->size());
}

std::optional<std::string> socket_bind_failed(const qemu_line& l, std::string_view,
                                              const launch_context&) {
    auto tail = after(l.message, "Failed to bind socket to ");
    if (!tail) return std::nullopt;
    const auto colon = tail->rfind(": ");
    const auto path = tail->substr(0, colon);
    const auto reason =
        colon == std::string_view::npos ? std::string_view() : tail->substr(colon + 2);
    if (reason == "No such file or directory")
        return fmt::format("cannot create the socket {}: its directory does not exist", path);
    if (reason == "Permission denied")
        return fmt::format("cannot create the socket {}: no permission to write to its directory",
                           path);
    return fmt::format("cannot create the socket {}: {}", path,
                       reason.empty() ? std::string_view("unknown reason") : reason);
}

std::optional<std::string> invalid_option(const qemu_line& l, std::string_view,
                                          const launch_context&) {
    if (l.message != "invalid option" || l.option.empty()) return std::nullopt;
    return fmt::format(
        "this QEMU does not know the option {}: it is not the QEMU stackemu expects (a system "
        "emulator, 7.2 or newer); set EMULATOR_QEMU to one",
        l.option);
}

std::optional<std::string> kvm_unavailable(const qemu_line& l, std::string_view,
                                           const launch_context&) {
    std::string_view reason;
    if (auto r = after(l.message, "Could not access KVM kernel module: "))
        reason = *r;
    else if (auto r2 = after(l.message, "failed to initialize kvm: "))
        reason = *r2;
    else if (l.message == "failed to initialize kvm")
        reason = "unknown reason";
    else if (l.message == "invalid accelerator kvm")
        return std::string(
            "this QEMU binary cannot use KVM (is the guest architecture different from the "
            "host's?): set EMULATOR_ACCEL=tcg, or EMULATOR_ARCH to the host's architecture");
    else
        return std::nullopt;
    if (reason == "No such file or directory")
        return std::string(
            "KVM is not available (/dev/kvm does not exist): load the kvm module (modprobe "
            "kvm_intel or kvm_amd), or set EMULATOR_ACCEL=tcg to run without it (slower)");
    if (reason == "Permission denied")
        return std::string(
            "no permission to use /dev/kvm: add your user to the kvm group and log in again, or "
            "set EMULATOR_ACCEL=tcg to run without KVM (slower)");
    return fmt::format(
        "KVM could not be initialised ({}): set EMULATOR_ACCEL=tcg to run without it", reason);
}

std::optional<std::string> no_memory(const qemu_line& l, std::string_view,
                                     const launch_context& context) {
    auto region = between(l.message, "cannot set up guest memory '", "'");
    if (!region) return std::nullopt;
    return fmt::format(
        "the host cannot give the guest its memory ({}): lower {} or free memory on the host",
        reason_after(l.message, fmt::format("'{}'", *region)), context.ram_env);
}

std::optional<std::string> unsupported_machine(const qemu_line& l, std::string_view,
                                               const launch_context&) {
    if (l.message == "unsupported machine type")
        return std::string(
            "this QEMU binary does not support the machine type: it does not fit the guest "
            "architecture; check EMULATOR_QEMU and EMULATOR_ARCH");
    if (auto model = between(l.message, "unable to find CPU model '", "'"))
        return fmt::format(
            "this QEMU binary does not know the CPU model '{}': check EMULATOR_QEMU and "
            "EMULATOR_ARCH",
            *model);
    return std::nullopt;
}

std::optional<std::string> logfile_failed(const qemu_line& l, std::string_view,
                                          const launch_context&) {
    constexpr std::string_view prefix = "Error opening logfile ";
    if (!l.message.starts_with(prefix)) return std::nullopt;
    const auto tail = l.message.substr(prefix.size());
    const auto colon = tail.rfind(": ");
    return fmt::format("cannot create QEMU's log {} ({}): its directory must exist and be writable",
                       tail.substr(0, colon),
                       colon == std::string_view::npos ? std::string_view("unknown reason")
                                                       : tail.substr(colon + 2));
}

const std::vector<rule>& rules() {
    // The specific before the general: a missing backing file also says "Could not open".
    static const std::vector<rule> all{host_forward_busy,   host_forward_invalid, image_locked,
                                       backing_missing,     firmware_missing,     kernel_missing,
                                       socket_too_long,     socket_bind_failed,   open_failed,
                                       invalid_option,      kvm_unavailable,      no_memory,
                                       unsupported_machine, logfile_failed};
    return all;
}

constexpr std::size_t verbatim_lines = 10;

}  // namespace

std::string explain_launcher_failure(std::string_view stderr_text, const launch_context& context) {
    const auto lines = split_lines(stderr_text);
    if (lines.empty()) return "QEMU exited without saying why (its stderr is empty)";
    for (const auto& r : rules()) {
        for (std::size_t i = 0; i < lines.size(); ++i) {
            const auto line = split_line(lines[i]);
            const std::string_view next = i + 1 < lines.size() ? lines[i + 1] : std::string_view();
            if (auto text = r(line, next, context)) {
                std::string said(lines[i]);
                // QEMU continues these on a second line ("Is another process using...?").
                if (!next.empty() && !next.starts_with("qemu") &&
                    (next.starts_with("Is another process") || next.starts_with("Path must be") ||
                     next.starts_with("Use -machine help")))
                    said += fmt::format("\n{}", next);
                return fmt::format("{}\nQEMU said: {}", *text, said);
            }
        }
    }
    const auto first = lines.size() > verbatim_lines ? lines.size() - verbatim_lines : 0;
    std::string out = "QEMU said:";
    for (std::size_t i = first; i < lines.size(); ++i)
        out += fmt::format("\n{}", lines[i]);
    return out;
}

// ---- The I/O part: posix_spawn -------------------------------------------------------------

namespace {

struct fd_guard {
    int fd = -1;
    fd_guard() = default;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

// Opens with O_CLOEXEC and keeps the descriptor above 2, so that dup2 onto 0, 1 and 2 in the
// child always makes a new descriptor (dup2(fd, fd) would keep FD_CLOEXEC and close it).
int open_high(const char* path, int flags, mode_t mode) {
    int fd = ::open(path, flags | O_CLOEXEC, mode);
    if (fd < 0 || fd > 2) return fd;
    const int high = ::fcntl(fd, F_DUPFD_CLOEXEC, 3);
    const int saved = errno;
    ::close(fd);
    errno = saved;
    return high;
}

std::vector<std::string> child_environment(const std::vector<env_override>& overrides) {
    std::vector<std::string> env;
    for (char** e = environ; e && *e; ++e) {
        const std::string_view entry(*e);
        const auto name = entry.substr(0, entry.find('='));
        const bool replaced =
            std::ranges::any_of(overrides, [&](const env_override& o) { return o.name == name; });
        if (!replaced) env.emplace_back(entry);
    }
    for (const auto& o : overrides)
        if (o.value) env.push_back(o.name + "=" + *o.value);
    return env;
}

std::string read_tail(const std::string& path, std::size_t max_bytes) {
    fd_guard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) return {};
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0) return {};
    const auto size = static_cast<std::size_t>(st.st_size);
    const auto from = size > max_bytes ? size - max_bytes : 0;
    std::string text(size - from, '\0');
    std::size_t got = 0;
    while (got < text.size()) {
        const auto n =
            ::pread(fd.fd, text.data() + got, text.size() - got, static_cast<off_t>(from + got));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        got += static_cast<std::size_t>(n);
    }
    text.resize(got);
    return text;
}

// The umask is per process: serialise our own spawns so one never restores another's value.
std::mutex& umask_mutex() {
    static std::mutex m;
    return m;
}

int pidfd_open(pid_t pid) {
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// Waits until our child `pid` ends or `timeout` passes; its wait status, or nullopt on timeout.
// A pidfd makes the wait a poll() with a deadline instead of a sleep loop.
result<std::optional<int>> wait_child(pid_t pid, std::chrono::milliseconds timeout) {
    fd_guard pidfd(pidfd_open(pid));
    if (pidfd.fd >= 0) {
        const auto deadline = std::chrono::steady_clock::now() + timeout;
        for (;;) {
            const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
                deadline - std::chrono::steady_clock::now());
            if (left.count() <= 0) return std::optional<int>();
            pollfd p{pidfd.fd, POLLIN, 0};
            const int n =
                ::poll(&p, 1, static_cast<int>(std::min<long long>(left.count(), 1 << 30)));
            if (n > 0) break;
            if (n < 0 && errno != EINTR)
                return fail(errc::io_error,
                            fmt::format("poll on the launcher: {}", std::strerror(errno)));
        }
    }
    // Without pidfd_open (kernels before 5.3) this blocks with no deadline.
    int status = 0;
    for (;;) {
        if (::waitpid(pid, &status, 0) == pid) return std::optional<int>(status);
        if (errno != EINTR)
            return fail(errc::io_error,
                        fmt::format("waitpid on the launcher: {}", std::strerror(errno)));
    }
}

std::string program_name(const std::string& argv0) {
    const auto slash = argv0.rfind('/');
    return slash == std::string::npos ? argv0 : argv0.substr(slash + 1);
}

}  // namespace

result<launch_result> launch_daemonized(std::vector<std::string> argv, std::string stderr_log_path,
                                        const launch_options& options) {
    if (argv.empty() || argv.front().empty())
        return fail(errc::invalid_argument, "launch_daemonized: no program to run");
    const std::string& program = argv.front();

    fd_guard devnull(open_high("/dev/null", O_RDWR, 0));
    if (devnull.fd < 0)
        return fail(errc::io_error, fmt::format("cannot open /dev/null: {}", std::strerror(errno)));
    fd_guard log(open_high(stderr_log_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_NOFOLLOW,
                           S_IRUSR | S_IWUSR));
    if (log.fd < 0)
        return fail(errc::io_error,
                    fmt::format("cannot create {}: {}", stderr_log_path, std::strerror(errno)));
    // An existing log keeps its mode through O_CREAT: make it private as well.
    ::fchmod(log.fd, S_IRUSR | S_IWUSR);

    std::vector<std::string> env_text = child_environment(options.env);
    std::vector<char*> child_argv;
    child_argv.reserve(argv.size() + 1);
    for (auto& a : argv)
        child_argv.push_back(a.data());
    child_argv.push_back(nullptr);
    std::vector<char*> child_env;
    child_env.reserve(env_text.size() + 1);
    for (auto& e : env_text)
        child_env.push_back(e.data());
    child_env.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_adddup2(&actions, devnull.fd, 0);
    posix_spawn_file_actions_adddup2(&actions, devnull.fd, 1);
    posix_spawn_file_actions_adddup2(&actions, log.fd, 2);
#if defined(__GLIBC__) && (__GLIBC__ > 2 || (__GLIBC__ == 2 && __GLIBC_MINOR__ >= 34))
    // Everything is O_CLOEXEC already; this also drops descriptors other code left inheritable.
    posix_spawn_file_actions_addclosefrom_np(&actions, 3);
#endif
    posix_spawnattr_t attr;
    posix_spawnattr_init(&attr);
    sigset_t empty;
    sigemptyset(&empty);
    sigset_t all;
    sigfillset(&all);
    posix_spawnattr_setsigmask(&attr, &empty);
    posix_spawnattr_setsigdefault(&attr, &all);
    posix_spawnattr_setflags(&attr, POSIX_SPAWN_SETSIGMASK | POSIX_SPAWN_SETSIGDEF);

    pid_t pid = -1;
    int rc = 0;
    {
        // posix_spawn has no umask attribute in glibc: set it around the call. The child gets
        // 0077 so files QEMU makes before daemonizing are private (the daemon itself sets
        // umask 027, os_daemonize(), and the directory around the sockets is 0700).
        std::lock_guard lock(umask_mutex());
        const mode_t old = ::umask(0077);
        if (program.find('/') == std::string::npos)
            rc = ::posix_spawnp(&pid, program.c_str(), &actions, &attr, child_argv.data(),
                                child_env.data());
        else
            rc = ::posix_spawn(&pid, program.c_str(), &actions, &attr, child_argv.data(),
                               child_env.data());
        ::umask(old);
    }
    posix_spawn_file_actions_destroy(&actions);
    posix_spawnattr_destroy(&attr);
    if (rc != 0) {
        const bool on_path = program.find('/') == std::string::npos;
        if (rc == ENOENT)
            return fail(errc::spawn_failed,
                        on_path ? fmt::format("cannot run {}: it is not on PATH; install QEMU or "
                                              "set EMULATOR_QEMU to its full path",
                                              program)
                                : fmt::format("cannot run {}: no such file", program));
        if (rc == EACCES)
            return fail(
                errc::spawn_failed,
                fmt::format("cannot run {}: permission denied (is it executable?)", program));
        return fail(errc::spawn_failed,
                    fmt::format("cannot run {}: {}", program, std::strerror(rc)));
    }
    // The child has its copies; ours close now so the log is not held open by us.
    ::close(log.fd);
    log.fd = -1;

    auto waited = wait_child(pid, options.timeout);
    if (!waited) {
        ::kill(pid, SIGKILL);  // still our unreaped child: the pid cannot have been reused
        ::waitpid(pid, nullptr, 0);
        return fail(waited.error());
    }
    if (!*waited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return fail(errc::timeout,
                    fmt::format("{} did not finish starting within {} ms and was killed; a "
                                "daemon it forked may still be running (see {})",
                                program_name(program), options.timeout.count(), stderr_log_path));
    }
    const int status = **waited;
    launch_result out{pid, read_tail(stderr_log_path, std::size_t{64} * 1024)};
    if (WIFEXITED(status) && WEXITSTATUS(status) == 0) return out;
    if (WIFSIGNALED(status)) {
        auto text =
            fmt::format("{} was killed by signal {} ({}) while starting", program_name(program),
                        WTERMSIG(status),
                        sigabbrev_np(WTERMSIG(status)) ? sigabbrev_np(WTERMSIG(status)) : "?");
        // Appended in two steps: GCC 12 at -O3 misreads `"\n" + string` as an overflowing
        // memcpy (-Wstringop-overflow), a known false positive.
        if (!out.stderr_text.empty()) {
            text += '\n';
            text += explain_launcher_failure(out.stderr_text, options.context);
        }
        return fail(errc::process_failed, std::move(text));
    }
    return fail(errc::process_failed,
                fmt::format("QEMU did not start ({} exited with status {}): {}",
                            program_name(program), WEXITSTATUS(status),
                            explain_launcher_failure(out.stderr_text, options.context)));
}

}  // namespace stackemu::lifecycle

namespace stackemu::lifecycle {

result<tool_result> run_tool(std::vector<std::string> argv) {
    if (argv.empty() || argv.front().empty())
        return fail(errc::invalid_argument, "run_tool: no program to run");
    int out[2];
    int err[2];
    if (::pipe2(out, O_CLOEXEC) != 0) return fail(errc::io_error, "cannot create a pipe");
    if (::pipe2(err, O_CLOEXEC) != 0) {
        ::close(out[0]);
        ::close(out[1]);
        return fail(errc::io_error, "cannot create a pipe");
    }
    std::vector<char*> args;
    args.reserve(argv.size() + 1);
    for (auto& a : argv)
        args.push_back(a.data());
    args.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, err[1], 2);
    pid_t child = -1;
    const int rc =
        argv[0].find('/') == std::string::npos
            ? ::posix_spawnp(&child, argv[0].c_str(), &actions, nullptr, args.data(), environ)
            : ::posix_spawn(&child, argv[0].c_str(), &actions, nullptr, args.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    ::close(err[1]);
    if (rc != 0) {
        ::close(out[0]);
        ::close(err[0]);
        return fail(errc::spawn_failed, fmt::format("cannot run {}: {} (scripts/setup installs it)",
                                                    argv[0], std::strerror(rc)));
    }
    // Both pipes at once, so a tool that fills one while we wait on the other cannot hang.
    tool_result r;
    pollfd fds[2] = {{out[0], POLLIN, 0}, {err[0], POLLIN, 0}};
    std::string* sinks[2] = {&r.out, &r.err};
    int open_pipes = 2;
    char buf[4096];
    while (open_pipes > 0) {
        if (::poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        for (int i = 0; i < 2; ++i) {
            if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR))) continue;
            const ssize_t n = ::read(fds[i].fd, buf, sizeof buf);
            if (n > 0) {
                sinks[i]->append(buf, static_cast<std::size_t>(n));
            } else {
                ::close(fds[i].fd);
                fds[i].fd = -1;
                --open_pipes;
            }
        }
    }
    for (auto& f : fds)
        if (f.fd >= 0) ::close(f.fd);
    int status = 0;
    while (::waitpid(child, &status, 0) < 0 && errno == EINTR) {
    }
    r.exit_code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    return r;
}

}  // namespace stackemu::lifecycle
