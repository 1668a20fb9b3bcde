// Endpoint parsing and socket connection for QMP/QGA peers.
#include "qmp/endpoint.hpp"

#include <fmt/format.h>
#include <sys/socket.h>

#include <asio/experimental/as_tuple.hpp>
#include <asio/experimental/awaitable_operators.hpp>
#include <asio/ip/tcp.hpp>
#include <asio/local/stream_protocol.hpp>
#include <asio/steady_timer.hpp>
#include <asio/this_coro.hpp>
#include <asio/use_awaitable.hpp>
#include <charconv>

namespace stackemu::qmp {

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

result<std::uint16_t> parse_port(std::string_view text) {
    unsigned value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size() || value == 0 || value > 65535)
        return fail(errc::invalid_endpoint, fmt::format("'{}' is not a TCP port (1-65535)", text));
    return static_cast<std::uint16_t>(value);
}

}  // namespace

result<void> check_unix_path(std::string_view path) {
    if (path.empty()) return fail(errc::invalid_endpoint, "empty socket path");
    if (path.size() > max_unix_path)
        return fail(errc::invalid_endpoint,
                    fmt::format("socket path is {} bytes, over the {}-byte limit of a Unix socket "
                                "address: {} (use a shorter run directory)",
                                path.size(), max_unix_path, path));
    return {};
}

result<endpoint> parse_endpoint(std::string_view text) {
    if (text.starts_with("unix:"))
        text.remove_prefix(5);
    else if (text.starts_with("tcp:")) {
        text.remove_prefix(4);
        auto colon = text.rfind(':');
        if (colon == std::string_view::npos || colon == 0)
            return fail(
                errc::invalid_endpoint,
                fmt::format("'tcp:{}' lacks host:port (example: tcp:127.0.0.1:4444)", text));
        auto port = parse_port(text.substr(colon + 1));
        if (!port) return fail(port.error());
        std::string host(text.substr(0, colon));
        if (host.size() > 2 && host.front() == '[' && host.back() == ']')
            host = host.substr(1, host.size() - 2);
        return tcp_endpoint{std::move(host), *port};
    } else if (text.starts_with("fd:")) {
        text.remove_prefix(3);
        int fd = -1;
        auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), fd);
        if (ec != std::errc{} || end != text.data() + text.size() || fd < 0)
            return fail(errc::invalid_endpoint,
                        fmt::format("'fd:{}' is not a file descriptor", text));
        return fd_endpoint{fd};
    }
    if (auto ok = check_unix_path(text); !ok) return fail(ok.error());
    return unix_endpoint{std::string(text)};
}

std::string to_string(const endpoint& ep) {
    struct visitor {
        std::string operator()(const unix_endpoint& u) const { return "unix:" + u.path; }
        std::string operator()(const tcp_endpoint& t) const {
            return fmt::format("tcp:{}:{}", t.host, t.port);
        }
        std::string operator()(const fd_endpoint& f) const { return fmt::format("fd:{}", f.fd); }
    };
    return std::visit(visitor{}, ep);
}

asio::awaitable<result<stream_socket>> open_stream(const endpoint& ep,
                                                   std::chrono::milliseconds timeout) {
    using namespace asio::experimental::awaitable_operators;
    auto executor = co_await asio::this_coro::executor;
    stream_socket socket(executor);

    if (const auto* f = std::get_if<fd_endpoint>(&ep)) {
        int type = 0;
        socklen_t len = sizeof(type);
        if (::getsockopt(f->fd, SOL_SOCKET, SO_TYPE, &type, &len) != 0 || type != SOCK_STREAM)
            co_return fail(errc::invalid_endpoint,
                           fmt::format("fd {} is not a connected stream socket", f->fd));
        sockaddr_storage addr{};
        socklen_t addr_len = sizeof(addr);
        ::getsockname(f->fd, reinterpret_cast<sockaddr*>(&addr), &addr_len);
        asio::error_code ec;
        socket.assign(asio::generic::stream_protocol(addr.ss_family, SOCK_STREAM), f->fd, ec);
        if (ec)
            co_return fail(errc::invalid_endpoint,
                           fmt::format("cannot use fd {}: {}", f->fd, ec.message()));
        co_return socket;
    }

    asio::generic::stream_protocol::endpoint target;
    if (const auto* u = std::get_if<unix_endpoint>(&ep)) {
        if (auto ok = check_unix_path(u->path); !ok) co_return fail(ok.error());
        target = asio::local::stream_protocol::endpoint(u->path);
    } else {
        const auto& t = std::get<tcp_endpoint>(ep);
        asio::ip::tcp::resolver resolver(executor);
        auto [ec, results] =
            co_await resolver.async_resolve(t.host, std::to_string(t.port), as_tuple_awaitable);
        if (ec || results.empty())
            co_return fail(errc::connect_failed,
                           fmt::format("cannot resolve {}: {}", t.host, ec.message()));
        target = results.begin()->endpoint();
    }

    asio::steady_timer deadline(executor, timeout);
    auto outcome = co_await (socket.async_connect(target, as_tuple_awaitable) ||
                             deadline.async_wait(as_tuple_awaitable));
    if (outcome.index() == 1)
        co_return fail(errc::timeout, fmt::format("connecting to {} took longer than {} ms",
                                                  to_string(ep), timeout.count()));
    auto [ec] = std::get<0>(outcome);
    if (ec)
        co_return fail(errc::connect_failed,
                       fmt::format("cannot connect to {}: {}", to_string(ep), ec.message()));
    co_return socket;
}

}  // namespace stackemu::qmp
