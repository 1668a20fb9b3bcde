// Serial console output: lines end in CRLF, like a Linux console on a UART.
#include "serial_console.hpp"

#include <sys/socket.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>

namespace stackemu::fake {

namespace {
constexpr auto tuple = asio::experimental::as_tuple(asio::use_awaitable);
}

serial_console::serial_console(asio::any_io_executor executor, vm& machine, int listen_fd,
                               int log_fd)
    : executor_(std::move(executor)), vm_(machine), log_fd_(log_fd) {
    if (listen_fd >= 0) {
        acceptor_.emplace(executor_);
        acceptor_->assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), listen_fd);
    }
}

serial_console::~serial_console() {
    shutdown();
    if (log_fd_ >= 0) ::close(log_fd_);
}

void serial_console::start() {
    subscription_ = vm_.subscribe_console([this](std::string_view text) { line(text); });
    if (acceptor_) asio::co_spawn(executor_, accept_loop(), asio::detached);
}

void serial_console::shutdown() {
    if (subscription_) vm_.unsubscribe_console(subscription_);
    subscription_ = 0;
    std::error_code ignored;
    if (acceptor_) acceptor_->close(ignored);
    if (client_) client_->close(ignored);
}

void serial_console::line(std::string_view text) {
    std::string bytes(text);
    bytes += "\r\n";
    if (log_fd_ >= 0) {
        // A regular file: a blocking write is immediate enough.
        for (std::size_t done = 0; done < bytes.size();) {
            const auto n = ::write(log_fd_, bytes.data() + done, bytes.size() - done);
            if (n <= 0) break;
            done += static_cast<std::size_t>(n);
        }
    }
    if (!client_) return;
    pending_.push_back(std::move(bytes));
    if (writing_) return;
    writing_ = true;
    asio::co_spawn(
        executor_,
        [this, client = client_]() -> asio::awaitable<void> {
            while (!pending_.empty() && client == client_) {
                const std::string chunk = std::move(pending_.front());
                pending_.pop_front();
                auto [ec, n] = co_await asio::async_write(*client, asio::buffer(chunk), tuple);
                if (ec) break;
            }
            writing_ = false;
        },
        asio::detached);
}

asio::awaitable<void> serial_console::accept_loop() {
    while (acceptor_->is_open()) {
        auto [ec, socket] = co_await acceptor_->async_accept(tuple);
        if (ec) break;
        // One client at a time: the next waits in the backlog until this one leaves.
        co_await serve(std::move(socket));
    }
}

asio::awaitable<void> serial_console::serve(socket_type socket) {
    client_ = std::make_shared<socket_type>(std::move(socket));
    auto client = client_;
    char buffer[4096];
    for (;;) {
        // The fake guest ignores keyboard input.
        auto [ec, n] = co_await client->async_read_some(asio::buffer(buffer), tuple);
        if (ec) break;
    }
    if (client_ == client) {
        client_.reset();
        pending_.clear();
    }
}

}  // namespace stackemu::fake
