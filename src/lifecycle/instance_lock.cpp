// The per-instance lock: F_OFD_SETLK on a file that records who holds it.
//
// Open file description locks rather than classic POSIX (F_SETLK) locks: a classic lock is
// dropped when the process closes *any* descriptor of the file, so a status check in the same
// process (holder()) would silently release it. The price: F_OFD_GETLK reports l_pid = -1, so
// the holder's pid comes from what it wrote into the file.
#include "lifecycle/instance_lock.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/posix/stream_descriptor.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <cerrno>
#include <charconv>
#include <cstring>
#include <ctime>

namespace stackemu::lifecycle {

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
    int release() { return std::exchange(fd, -1); }
};

result<void> check_operation(const std::string& operation) {
    if (operation.empty() ||
        std::ranges::any_of(operation, [](char c) { return c == ' ' || c < 0x21 || c == 0x7f; }))
        return fail(errc::invalid_argument,
                    fmt::format("lock operation '{}' must be one word", operation));
    return {};
}

// Opens (creating, 0600) the lock file for writing; a file of ours with another mode is fixed.
result<int> open_lock_file(const std::string& path) {
    fd_guard fd(::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC | O_NOFOLLOW, S_IRUSR | S_IWUSR));
    if (fd.fd < 0)
        return fail(errno == ENOENT ? errc::not_found : errc::io_error,
                    fmt::format("cannot open the lock file {}: {}", path, std::strerror(errno)));
    struct stat st {};
    if (::fstat(fd.fd, &st) != 0)
        return fail(errc::io_error, fmt::format("cannot stat {}: {}", path, std::strerror(errno)));
    if (!S_ISREG(st.st_mode))
        return fail(errc::io_error, fmt::format("the lock file {} is not a regular file", path));
    if (st.st_uid == ::geteuid() && (st.st_mode & 07777) != (S_IRUSR | S_IWUSR))
        ::fchmod(fd.fd, S_IRUSR | S_IWUSR);
    return fd.release();
}

flock whole_file(short type) {
    flock fl{};
    fl.l_type = type;
    fl.l_whence = SEEK_SET;
    fl.l_start = 0;
    fl.l_len = 0;  // to the end, however long the file grows
    fl.l_pid = 0;  // required for OFD locks
    return fl;
}

// True when taken; false when another open file description holds it.
result<bool> try_lock_fd(int fd, const std::string& path) {
    flock fl = whole_file(F_WRLCK);
    for (;;) {
        if (::fcntl(fd, F_OFD_SETLK, &fl) == 0) return true;
        if (errno == EINTR) continue;
        if (errno == EAGAIN || errno == EACCES) return false;
        return fail(errc::io_error, fmt::format("cannot lock {}: {}", path, std::strerror(errno)));
    }
}

std::string utc_now() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    std::array<char, 32> text{};
    const auto n = std::strftime(text.data(), text.size(), "%Y-%m-%dT%H:%M:%SZ", &tm);
    return {text.data(), n};
}

// "<pid> <operation> <started-at>\n", replacing what an earlier holder wrote.
result<void> record(int fd, const std::string& path, const std::string& operation) {
    const auto text = fmt::format("{} {} {}\n", ::getpid(), operation, utc_now());
    if (::ftruncate(fd, 0) != 0 ||
        ::pwrite(fd, text.data(), text.size(), 0) != static_cast<ssize_t>(text.size()))
        return fail(errc::io_error, fmt::format("cannot write to the lock file {}: {}", path,
                                                std::strerror(errno)));
    return {};
}

lock_holder parse_holder(std::string_view text) {
    lock_holder h;
    h.operation = "unknown";
    if (const auto nl = text.find('\n'); nl != std::string_view::npos) text = text.substr(0, nl);
    const auto sp1 = text.find(' ');
    if (sp1 == std::string_view::npos) return h;
    const auto sp2 = text.find(' ', sp1 + 1);
    int pid = 0;
    const auto digits = text.substr(0, sp1);
    const auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
    if (ec != std::errc{} || end != digits.data() + digits.size() || pid <= 0) return h;
    h.pid = pid;
    h.operation = std::string(text.substr(
        sp1 + 1, sp2 == std::string_view::npos ? std::string_view::npos : sp2 - sp1 - 1));
    if (sp2 != std::string_view::npos) h.started_at = std::string(text.substr(sp2 + 1));
    return h;
}

lock_holder read_holder(int fd) {
    std::array<char, 512> buffer{};
    ssize_t n = -1;
    do {
        n = ::pread(fd, buffer.data(), buffer.size(), 0);
    } while (n < 0 && errno == EINTR);
    return parse_holder(std::string_view(buffer.data(), n > 0 ? static_cast<std::size_t>(n) : 0));
}

std::string busy_message(const std::string& path, const lock_holder& h) {
    if (h.pid <= 0)
        return fmt::format(
            "this instance is busy: another stackemu command has just locked {}; wait for it to "
            "finish",
            path);
    return fmt::format(
        "this instance is busy: stackemu {} (pid {}) holds {}{}; wait for it to finish, or stop "
        "that command",
        h.operation, h.pid, path, h.started_at.empty() ? "" : " since " + h.started_at);
}

}  // namespace

instance_lock::instance_lock(instance_lock&& other) noexcept
    : fd_(std::exchange(other.fd_, -1)),
      path_(std::move(other.path_)),
      operation_(std::move(other.operation_)) {
}

instance_lock& instance_lock::operator=(instance_lock&& other) noexcept {
    if (this != &other) {
        release();
        fd_ = std::exchange(other.fd_, -1);
        path_ = std::move(other.path_);
        operation_ = std::move(other.operation_);
    }
    return *this;
}

instance_lock::~instance_lock() {
    release();
}

void instance_lock::release() {
    // The record stays: a reader checks the lock before it trusts the text.
    if (fd_ >= 0) ::close(std::exchange(fd_, -1));
}

result<instance_lock> try_acquire(std::string path, std::string operation) {
    if (auto ok = check_operation(operation); !ok) return fail(ok.error());
    auto fd = open_lock_file(path);
    if (!fd) return fail(fd.error());
    fd_guard guard(*fd);
    auto taken = try_lock_fd(guard.fd, path);
    if (!taken) return fail(taken.error());
    if (!*taken) return fail(errc::busy, busy_message(path, read_holder(guard.fd)));
    if (auto r = record(guard.fd, path, operation); !r) return fail(r.error());
    return instance_lock(guard.release(), std::move(path), std::move(operation));
}

asio::awaitable<result<instance_lock>> acquire_wait(std::string path, std::string operation,
                                                    std::chrono::milliseconds timeout) {
    using namespace asio::experimental::awaitable_operators;
    using namespace std::chrono_literals;
    if (auto ok = check_operation(operation); !ok) co_return fail(ok.error());
    auto opened = open_lock_file(path);
    if (!opened) co_return fail(opened.error());
    // One descriptor for the whole wait: closing a writable descriptor after each failed
    // attempt would wake us (and other waiters) with our own IN_CLOSE_WRITE.
    fd_guard fd(*opened);

    // The watch before the first attempt, so a release in between is not missed.
    fd_guard notify(::inotify_init1(IN_NONBLOCK | IN_CLOEXEC));
    if (notify.fd < 0)
        co_return fail(errc::io_error, fmt::format("inotify_init1: {}", std::strerror(errno)));
    if (::inotify_add_watch(notify.fd, path.c_str(), IN_CLOSE_WRITE) < 0)
        co_return fail(errc::io_error, fmt::format("cannot watch the lock file {}: {}", path,
                                                   std::strerror(errno)));
    auto executor = co_await asio::this_coro::executor;
    asio::posix::stream_descriptor events(executor, notify.release());
    asio::steady_timer recheck(executor);

    const auto deadline = std::chrono::steady_clock::now() + timeout;
    // After a close event whose retry failed: quick rechecks while the closing holder's kernel
    // path drops the lock; otherwise a slow safety-net recheck.
    constexpr std::array quick{2ms, 10ms, 50ms, 200ms};
    std::size_t quick_left = 0;
    constexpr auto slow = 1000ms;
    for (;;) {
        auto taken = try_lock_fd(fd.fd, path);
        if (!taken) co_return fail(taken.error());
        if (*taken) {
            if (auto r = record(fd.fd, path, operation); !r) co_return fail(r.error());
            co_return instance_lock(fd.release(), std::move(path), std::move(operation));
        }
        const auto now = std::chrono::steady_clock::now();
        if (now >= deadline)
            co_return fail(errc::busy,
                           fmt::format("{} (waited {} ms)", busy_message(path, read_holder(fd.fd)),
                                       timeout.count()));
        const auto pause = quick_left > 0 ? quick[quick.size() - quick_left--] : slow;
        recheck.expires_at(std::min(now + pause, deadline));
        auto outcome = co_await (
            events.async_wait(asio::posix::stream_descriptor::wait_read, as_tuple_awaitable) ||
            recheck.async_wait(as_tuple_awaitable));
        if (outcome.index() == 0) {
            // Drain the events; which ones does not matter: any close is a reason to retry.
            std::array<char, 4096> buffer{};
            while (::read(events.native_handle(), buffer.data(), buffer.size()) > 0) {
            }
            quick_left = quick.size();
        }
    }
}

result<std::optional<lock_holder>> holder(const std::string& path) {
    fd_guard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC | O_NOFOLLOW));
    if (fd.fd < 0) {
        if (errno == ENOENT) return std::optional<lock_holder>();
        return fail(errc::io_error,
                    fmt::format("cannot open the lock file {}: {}", path, std::strerror(errno)));
    }
    flock fl = whole_file(F_WRLCK);
    if (::fcntl(fd.fd, F_OFD_GETLK, &fl) != 0)
        return fail(errc::io_error,
                    fmt::format("cannot query the lock on {}: {}", path, std::strerror(errno)));
    if (fl.l_type == F_UNLCK) return std::optional<lock_holder>();
    return std::optional<lock_holder>(read_holder(fd.fd));
}

}  // namespace stackemu::lifecycle
