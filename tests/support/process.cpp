#include "support/process.hpp"

#include <poll.h>
#include <signal.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#include <cerrno>

namespace stackemu::test {
namespace {

int pidfd_open(pid_t pid) {
    return static_cast<int>(::syscall(SYS_pidfd_open, pid, 0));
}

// Polls the pidfd until it is readable (the process exited) or the ceiling passes.
bool pidfd_exited(int pidfd, std::chrono::milliseconds ceiling) {
    const auto deadline = std::chrono::steady_clock::now() + ceiling;
    for (;;) {
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        pollfd p{pidfd, POLLIN, 0};
        const int n = ::poll(&p, 1, static_cast<int>(std::max<long long>(left.count(), 0)));
        if (n > 0) return true;
        if (n == 0) return false;
        if (errno != EINTR) return false;
    }
}

}  // namespace

bool process_gone(pid_t pid) {
    return wait_gone(pid, std::chrono::milliseconds(0));
}

bool wait_gone(pid_t pid, std::chrono::milliseconds ceiling) {
    const int fd = pidfd_open(pid);
    if (fd < 0) return errno == ESRCH;
    const bool exited = pidfd_exited(fd, ceiling);
    ::close(fd);
    return exited;
}

std::optional<int> wait_child(pid_t pid, std::chrono::milliseconds ceiling) {
    const int fd = pidfd_open(pid);
    const bool exited = fd < 0 || pidfd_exited(fd, ceiling);
    if (fd >= 0) ::close(fd);
    if (!exited) {
        ::kill(pid, SIGKILL);
        ::waitpid(pid, nullptr, 0);
        return std::nullopt;
    }
    int status = 0;
    while (::waitpid(pid, &status, 0) < 0)
        if (errno != EINTR) return std::nullopt;
    if (WIFEXITED(status)) return WEXITSTATUS(status);
    if (WIFSIGNALED(status)) return 128 + WTERMSIG(status);
    return std::nullopt;
}

}  // namespace stackemu::test
