// Agent channel: one client at a time; with no handler, bytes are read and dropped (no agent).
#include "agent_channel.hpp"

#include <sys/socket.h>

#include <asio/experimental/as_tuple.hpp>

namespace stackemu::fake {

agent_channel::agent_channel(asio::any_io_executor executor, int listen_fd)
    : executor_(std::move(executor)), acceptor_(executor_) {
    acceptor_.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), listen_fd);
}

void agent_channel::start() {
    asio::co_spawn(executor_, accept_loop(), asio::detached);
}

void agent_channel::shutdown() {
    std::error_code ignored;
    acceptor_.close(ignored);
    if (client_) client_->close(ignored);
}

asio::awaitable<void> agent_channel::accept_loop() {
    auto token = asio::experimental::as_tuple(asio::use_awaitable);
    while (acceptor_.is_open()) {
        auto [ec, socket] = co_await acceptor_.async_accept(token);
        if (ec) break;
        client_ = std::make_shared<socket_type>(std::move(socket));
        auto client = client_;
        if (handler_) {
            co_await handler_(*client);
        } else {
            // No agent in the guest: a connect succeeds and nothing ever answers (qmp.md).
            char buffer[4096];
            for (;;) {
                auto [rec, n] = co_await client->async_read_some(asio::buffer(buffer), token);
                if (rec) break;
            }
        }
        client_.reset();
    }
}

}  // namespace stackemu::fake
