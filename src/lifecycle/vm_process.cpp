// The QEMU process behind a QMP socket: verified through /proc, signalled and awaited by pidfd.
#include "lifecycle/vm_process.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
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

}  // namespace

verified_process::verified_process(verified_process&& other) noexcept
    : pid_(other.pid_), pidfd_(other.pidfd_), exe_(std::move(other.exe_)) {
    other.pid_ = -1;
    other.pidfd_ = -1;
}

verified_process& verified_process::operator=(verified_process&& other) noexcept {
    if (this != &other) {
        if (pidfd_ >= 0) ::close(pidfd_);
        pid_ = other.pid_;
        pidfd_ = other.pidfd_;
        exe_ = std::move(other.exe_);
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

result<verified_process> verify_peer(pid_t peer_pid, const std::string& expected_binary) {
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

    if (!matches(exe, expected_binary))
        return fail(
            errc::wrong_state,
            fmt::format("process {} behind the QMP socket runs {}, not {}: it is not this "
                        "instance's QEMU",
                        peer_pid, exe.string(),
                        expected_binary.empty() ? std::string("qemu-system-*") : expected_binary));
    if (held.exited()) return fail(errc::not_found, fmt::format("process {} has exited", peer_pid));
    held.exe_ = std::move(exe);
    return held;
}

std::optional<fs::path> find_program(const std::string& program) {
    if (program.find('/') != std::string::npos) return fs::path(program);
    return find_on_path(program);
}

}  // namespace stackemu::lifecycle
