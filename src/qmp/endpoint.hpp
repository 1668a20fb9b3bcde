// Where a QMP or guest-agent peer listens, and how to open a stream socket to it.
#pragma once

#include <asio/awaitable.hpp>
#include <asio/generic/stream_protocol.hpp>
#include <chrono>
#include <cstdint>
#include <string>
#include <string_view>
#include <variant>

#include "common/error.hpp"

namespace stackemu::qmp {

// Linux's sun_path holds 108 bytes including the terminating NUL (104 on macOS).
#ifdef __APPLE__
inline constexpr std::size_t max_unix_path = 103;
#else
inline constexpr std::size_t max_unix_path = 107;
#endif

struct unix_endpoint {
    std::string path;
};
struct tcp_endpoint {
    std::string host;
    std::uint16_t port = 0;
};
// An already-connected stream socket (socketpair, inherited fd); ownership passes to the client.
struct fd_endpoint {
    int fd = -1;
};
using endpoint = std::variant<unix_endpoint, tcp_endpoint, fd_endpoint>;

// "unix:/path", "/path" (absolute or ./relative), "tcp:host:port", "fd:N".
result<endpoint> parse_endpoint(std::string_view text);
std::string to_string(const endpoint& ep);

// Fails with invalid_endpoint, before any syscall, when the path does not fit sun_path.
result<void> check_unix_path(std::string_view path);

using stream_socket = asio::generic::stream_protocol::socket;

// Opens and connects a socket to `ep` within `timeout`.
asio::awaitable<result<stream_socket>> open_stream(const endpoint& ep,
                                                   std::chrono::milliseconds timeout);

}  // namespace stackemu::qmp
