// Minimal HTTP/1.1 answers on a forwarded host port.
#include "http_forward.hpp"

#include <fmt/format.h>

#include <asio/experimental/as_tuple.hpp>

namespace stackemu::fake {

namespace {
constexpr auto tuple = asio::experimental::as_tuple(asio::use_awaitable);
}

http_forward::http_forward(asio::any_io_executor executor, vm& machine, int listen_fd,
                           int guest_port, std::string body)
    : executor_(std::move(executor)),
      vm_(machine),
      acceptor_(executor_),
      guest_port_(guest_port),
      body_(std::move(body)),
      changed_(executor_, asio::steady_timer::time_point::max()) {
    acceptor_.assign(asio::ip::tcp::v4(), listen_fd);
}

http_forward::~http_forward() {
    shutdown();
}

void http_forward::start() {
    subscription_ = vm_.subscribe_changes([this] { changed_.cancel(); });
    asio::co_spawn(executor_, accept_loop(), asio::detached);
}

void http_forward::shutdown() {
    if (subscription_) vm_.unsubscribe_changes(subscription_);
    subscription_ = 0;
    std::error_code ignored;
    acceptor_.close(ignored);
    changed_.cancel();
}

asio::awaitable<void> http_forward::accept_loop() {
    while (acceptor_.is_open()) {
        auto [ec, socket] = co_await acceptor_.async_accept(tuple);
        if (ec) break;
        asio::co_spawn(executor_, serve(std::move(socket)), asio::detached);
    }
}

asio::awaitable<void> http_forward::serve(asio::ip::tcp::socket socket) {
    std::error_code ignored;
    if (!vm_.guest_ready() || vm_.exited()) {
        socket.close(ignored);
        co_return;
    }
    // Read the request head; the path does not matter.
    std::string request;
    char buffer[4096];
    while (request.find("\r\n\r\n") == std::string::npos && request.size() < 65536) {
        auto [ec, n] = co_await socket.async_read_some(asio::buffer(buffer), tuple);
        if (ec) co_return;
        request.append(buffer, n);
    }
    // A paused guest answers nothing until it runs again.
    while (!vm_.running() && vm_.guest_ready() && !vm_.exited() && acceptor_.is_open()) {
        // Several connections may wait here: the expiry stays at max (set once), only
        // cancel() wakes them, since resetting the expiry would cancel the others.
        co_await changed_.async_wait(tuple);
    }
    if (!vm_.guest_ready() || vm_.exited()) {
        socket.close(ignored);
        co_return;
    }
    const auto reply = fmt::format(
        "HTTP/1.1 200 OK\r\nContent-Type: text/plain\r\nContent-Length: {}\r\n"
        "X-Fake-Guest-Port: {}\r\nConnection: close\r\n\r\n{}",
        body_.size(), guest_port_, body_);
    co_await asio::async_write(socket, asio::buffer(reply), tuple);
    socket.shutdown(asio::socket_base::shutdown_both, ignored);
    socket.close(ignored);
}

}  // namespace stackemu::fake
