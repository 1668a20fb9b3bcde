// POSIX socket creation for the fake's listeners.
#include "socket_setup.hpp"

#include <arpa/inet.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>

namespace stackemu::fake {

result<int> listen_unix(const std::string& path) {
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    if (path.size() >= sizeof addr.sun_path)
        return fail(errc::invalid_endpoint, fmt::format("UNIX socket path '{}' is too long", path));
    std::memcpy(addr.sun_path, path.c_str(), path.size() + 1);
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0)
        return fail(errc::io_error,
                    fmt::format("Failed to create socket: {}", std::strerror(errno)));
    ::unlink(path.c_str());
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || ::listen(fd, 1) < 0) {
        const int e = errno;
        ::close(fd);
        return fail(errc::io_error,
                    fmt::format("Failed to bind socket to {}: {}", path, std::strerror(e)));
    }
    return fd;
}

result<int> listen_tcp(const std::string& host, int port) {
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(static_cast<std::uint16_t>(port));
    if (host.empty()) {
        addr.sin_addr.s_addr = htonl(INADDR_ANY);
    } else if (::inet_pton(AF_INET, host.c_str(), &addr.sin_addr) != 1) {
        return fail(errc::invalid_endpoint, fmt::format("bad address {}", host));
    }
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return fail(errc::io_error, std::strerror(errno));
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) < 0 || ::listen(fd, 16) < 0) {
        const int e = errno;
        ::close(fd);
        return fail(errc::io_error, std::strerror(e));
    }
    return fd;
}

result<int> open_logfile(const std::string& path, bool append) {
    const int fd =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_CLOEXEC | (append ? O_APPEND : O_TRUNC), 0666);
    if (fd < 0)
        return fail(errc::io_error,
                    fmt::format("Could not open '{}': {}", path, std::strerror(errno)));
    return fd;
}

bool is_listening_socket(int fd) {
    int listening = 0;
    socklen_t len = sizeof listening;
    return ::getsockopt(fd, SOL_SOCKET, SO_ACCEPTCONN, &listening, &len) == 0 && listening;
}

}  // namespace stackemu::fake
