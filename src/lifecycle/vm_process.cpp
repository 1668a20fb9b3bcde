// The QEMU process behind a QMP socket: verified through /proc, signalled and awaited by pidfd.
#include "lifecycle/vm_process.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <fstream>
#include <optional>
#include <sstream>

namespace stackemu::lifecycle {

namespace {

namespace fs = std::filesystem;
constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

int pidfd_open(pid_t pid) {
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

int pidfd_send_signal(int pidfd, int sig) {
    return static_cast<int>(::syscall(SYS_pidfd_send_signal, pidfd, sig, nullptr, 0));
}

// The real and effective uid from /proc/<pid>/status ("Uid:\treal\teffective\tsaved\tfs").
std::optional<std::pair<uid_t, uid_t>> uids_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/status", pid));
    std::string line;
    while (std::getline(in, line)) {
        if (!line.starts_with("Uid:")) continue;
        std::istringstream fields(line.substr(4));
        unsigned long real = 0;
        unsigned long effective = 0;
        if (fields >> real >> effective)
            return std::pair{static_cast<uid_t>(real), static_cast<uid_t>(effective)};
    }
    return std::nullopt;
}

// The binary `name` resolves to on PATH, as posix_spawnp would find it.
std::optional<fs::path> find_on_path(const std::string& name) {
    const char* path = std::getenv("PATH");
    std::string_view dirs = path ? path : "/usr/local/bin:/usr/bin:/bin";
    while (true) {
        const auto colon = dirs.find(':');
        const auto dir = dirs.substr(0, colon);
        const fs::path candidate = fs::path(dir.empty() ? "." : std::string(dir)) / name;
        if (::access(candidate.c_str(), X_OK) == 0) return candidate;
        if (colon == std::string_view::npos) return std::nullopt;
        dirs.remove_prefix(colon + 1);
    }
}

std::optional<fs::path> real_path(const fs::path& p) {
    std::error_code ec;
    auto r = fs::canonical(p, ec);
    if (ec) return std::nullopt;
    return r;
}

// Whether the running binary `exe` is what the caller configured.
bool matches(const fs::path& exe, const std::string& expected) {
    if (expected.empty()) return exe.filename().string().starts_with("qemu-system");
    std::optional<fs::path> wanted;
    if (expected.find('/') != std::string::npos) {
        wanted = real_path(expected);
    } else {
        if (exe.filename() == expected) return true;
        if (auto found = find_on_path(expected)) wanted = real_path(*found);
    }
    return wanted && *wanted == exe;
}

// Field 22 of /proc/<pid>/stat, the process's start time in clock ticks after boot. The
// command name (field 2) may hold spaces and parentheses: fields are counted after its ')'.
std::optional<std::uint64_t> start_time_of(pid_t pid) {
    std::ifstream in(fmt::format("/proc/{}/stat", pid));
    std::string text;
    if (!std::getline(in, text)) return std::nullopt;
    const auto close = text.rfind(')');
    if (close == std::string::npos) return std::nullopt;
    std::istringstream fields(text.substr(close + 1));
    std::string field;
    for (int n = 3; n < 22; ++n)
        if (!(fields >> field)) return std::nullopt;
    std::uint64_t ticks = 0;
    if (!(fields >> ticks)) return std::nullopt;
    return ticks;
}

std::string describe(const process_identity& id) {
    return fmt::format("pid {} started at tick {}, executable device {} inode {}", id.pid,
                       id.start_time, id.exe_dev, id.exe_ino);
}

}  // namespace

result<process_identity> identity_of(pid_t pid) {
    const auto ticks = start_time_of(pid);
    if (!ticks) return fail(errc::not_found, fmt::format("process {} has exited", pid));
    struct stat exe {};
    // stat follows the link to the executable QEMU runs, even one deleted by an upgrade.
    if (::stat(fmt::format("/proc/{}/exe", pid).c_str(), &exe) != 0) {
        if (errno == ENOENT || errno == ESRCH)
            return fail(errc::not_found, fmt::format("process {} has exited", pid));
        return fail(errc::io_error, fmt::format("cannot read the executable of process {}: {}", pid,
                                                std::strerror(errno)));
    }
    return process_identity{pid, *ticks, static_cast<std::uint64_t>(exe.st_dev),
                            static_cast<std::uint64_t>(exe.st_ino)};
}

verified_process::verified_process(verified_process&& other) noexcept
    : pid_(other.pid_),
      pidfd_(other.pidfd_),
      exe_(std::move(other.exe_)),
      identity_(other.identity_) {
    other.pid_ = -1;
    other.pidfd_ = -1;
}

verified_process& verified_process::operator=(verified_process&& other) noexcept {
    if (this != &other) {
        if (pidfd_ >= 0) ::close(pidfd_);
        pid_ = other.pid_;
        pidfd_ = other.pidfd_;
        exe_ = std::move(other.exe_);
        identity_ = other.identity_;
        other.pid_ = -1;
        other.pidfd_ = -1;
    }
    return *this;
}

verified_process::~verified_process() {
    if (pidfd_ >= 0) ::close(pidfd_);
}

result<void> verified_process::signal(int sig) const {
    if (pidfd_ < 0) return fail(errc::internal, "signal() on an empty verified_process");
    if (pidfd_send_signal(pidfd_, sig) == 0) return {};
    if (errno == ESRCH)
        return fail(errc::not_found, fmt::format("QEMU (pid {}) has already exited", pid_));
    return fail(errc::io_error, fmt::format("cannot send signal {} to QEMU (pid {}): {}", sig, pid_,
                                            std::strerror(errno)));
}

bool verified_process::exited() const {
    if (pidfd_ < 0) return true;
    pollfd p{pidfd_, POLLIN, 0};
    return ::poll(&p, 1, 0) > 0;
}

asio::awaitable<bool> verified_process::wait_exit(std::chrono::milliseconds timeout) const {
    using namespace asio::experimental::awaitable_operators;
    if (pidfd_ < 0) co_return true;
    auto executor = co_await asio::this_coro::executor;
    // A descriptor of our own for the reactor: registering it fresh means an exit that
    // happened before this call is reported at once (epoll checks readiness on add).
    const int fd = ::fcntl(pidfd_, F_DUPFD_CLOEXEC, 0);
    if (fd < 0) co_return exited();
    asio::posix::stream_descriptor descriptor(executor, fd);
    asio::steady_timer deadline(executor, timeout);
    auto outcome = co_await (
        descriptor.async_wait(asio::posix::stream_descriptor::wait_read, as_tuple_awaitable) ||
        deadline.async_wait(as_tuple_awaitable));
    if (outcome.index() == 0) {
        auto [ec] = std::get<0>(outcome);
        if (!ec) co_return true;
    }
    co_return exited();
}

result<verified_process> open_launched(const process_identity& launched) {
    const auto gone = [&] {
        return fail(
            errc::not_found,
            fmt::format("the QEMU this instance launched (pid {}) has exited", launched.pid));
    };
    if (launched.pid <= 0) return gone();
    const int pidfd = pidfd_open(launched.pid);
    if (pidfd < 0) {
        if (errno == ESRCH) return gone();
        return fail(errc::io_error,
                    fmt::format("pidfd_open({}): {}", launched.pid, std::strerror(errno)));
    }
    verified_process held(launched.pid, pidfd, {});
    // Read after the pidfd: a pid recycled later cannot change what the pidfd names.
    auto now = identity_of(launched.pid);
    if (!now) {
        if (now.error().code == errc::not_found) return gone();
        return fail(now.error());
    }
    if (now->start_time != launched.start_time) return gone();  // the pid was recycled
    if (now->exe_dev != launched.exe_dev || now->exe_ino != launched.exe_ino)
        return fail(errc::wrong_state,
                    fmt::format("process {} no longer runs the QEMU executable this instance "
                                "launched ({}; now device {} inode {}): refusing to signal it",
                                launched.pid, describe(launched), now->exe_dev, now->exe_ino));
    if (held.exited()) return gone();
    std::error_code ec;
    held.exe_ = fs::read_symlink(fmt::format("/proc/{}/exe", launched.pid), ec);
    held.identity_ = *now;
    return held;
}

result<verified_process> verify_peer(pid_t peer_pid, const std::string& expected_binary,
                                     const std::optional<process_identity>& launched) {
    if (peer_pid <= 0)
        return fail(errc::invalid_argument, fmt::format("verify_peer: bad pid {}", peer_pid));
    // The pidfd first: if the pid is recycled after this, the pidfd still names the old process
    // and the liveness check below fails, so /proc was read about the process we hold.
    const int pidfd = pidfd_open(peer_pid);
    if (pidfd < 0) {
        if (errno == ESRCH)
            return fail(errc::not_found, fmt::format("process {} has exited", peer_pid));
        return fail(errc::io_error,
                    fmt::format("pidfd_open({}): {}", peer_pid, std::strerror(errno)));
    }
    verified_process held(peer_pid, pidfd, {});

    const auto uids = uids_of(peer_pid);
    if (!uids) return fail(errc::not_found, fmt::format("process {} has exited", peer_pid));
    const uid_t me = ::geteuid();
    if (uids->first != me || uids->second != me)
        return fail(errc::wrong_state,
                    fmt::format("process {} behind the QMP socket belongs to user {}, not to you "
                                "(uid {}): it is not this instance's QEMU",
                                peer_pid, uids->second, me));

    const auto link = fmt::format("/proc/{}/exe", peer_pid);
    std::error_code ec;
    fs::path exe = fs::read_symlink(link, ec);
    if (ec) {
        if (held.exited() || ec == std::errc::no_such_file_or_directory)
            return fail(errc::not_found, fmt::format("process {} has exited", peer_pid));
        return fail(errc::io_error, fmt::format("cannot read {}: {}", link, ec.message()));
    }
    // A binary replaced while QEMU runs (a package upgrade) reads "<path> (deleted)".
    std::string exe_text = exe.string();
    constexpr std::string_view deleted = " (deleted)";
    if (exe_text.ends_with(deleted)) exe = exe_text.substr(0, exe_text.size() - deleted.size());

    auto identity = identity_of(peer_pid);
    if (!identity) return fail(identity.error());
    if (launched) {
        // The recorded identity decides, not the name: any program can be called
        // qemu-system-x86_64, and EMULATOR_QEMU may have changed since the launch.
        if (identity->pid != launched->pid || identity->start_time != launched->start_time)
            return fail(errc::wrong_state,
                        fmt::format("process {} behind the QMP socket is not the QEMU this "
                                    "instance launched ({}): refusing to control or signal it",
                                    peer_pid, describe(*launched)));
        if (identity->exe_dev != launched->exe_dev || identity->exe_ino != launched->exe_ino)
            return fail(errc::wrong_state,
                        fmt::format("process {} behind the QMP socket runs {} (device {} inode "
                                    "{}), not the QEMU executable this instance launched ({}): "
                                    "refusing to control or signal it",
                                    peer_pid, exe.string(), identity->exe_dev, identity->exe_ino,
                                    describe(*launched)));
    } else if (!matches(exe, expected_binary)) {
        return fail(
            errc::wrong_state,
            fmt::format("process {} behind the QMP socket runs {}, not {}: it is not this "
                        "instance's QEMU",
                        peer_pid, exe.string(),
                        expected_binary.empty() ? std::string("qemu-system-*") : expected_binary));
    }
    if (held.exited()) return fail(errc::not_found, fmt::format("process {} has exited", peer_pid));
    held.exe_ = std::move(exe);
    held.identity_ = *identity;
    return held;
}

std::optional<fs::path> find_program(const std::string& program) {
    if (program.find('/') != std::string::npos) return fs::path(program);
    return find_on_path(program);
}

}  // namespace stackemu::lifecycle
