// QMP monitor: accept, serve until the client leaves, accept the next (qmp.md, "Session").
#include "qmp_monitor.hpp"

#include <sys/socket.h>

#include <asio/experimental/as_tuple.hpp>

namespace stackemu::fake {

namespace {

asio::generic::stream_protocol protocol_of(int fd) {
    sockaddr_storage addr{};
    socklen_t len = sizeof addr;
    ::getsockname(fd, reinterpret_cast<sockaddr*>(&addr), &len);
    return asio::generic::stream_protocol(addr.ss_family, SOCK_STREAM);
}

}  // namespace

qmp_monitor::qmp_monitor(asio::any_io_executor executor, vm& machine, int listen_fd, bool pretty,
                         qmp_session::logger log, session_counter counter, bool primary)
    : executor_(std::move(executor)),
      vm_(machine),
      pretty_(pretty),
      log_(std::move(log)),
      counter_(std::move(counter)),
      primary_(primary) {
    acceptor_.emplace(executor_);
    acceptor_->assign(protocol_of(listen_fd), listen_fd);
}

qmp_monitor::qmp_monitor(asio::any_io_executor executor, vm& machine, socket_type connected,
                         bool pretty, qmp_session::logger log, session_counter counter)
    : executor_(std::move(executor)),
      vm_(machine),
      pretty_(pretty),
      log_(std::move(log)),
      counter_(std::move(counter)),
      connected_(std::move(connected)) {
}

void qmp_monitor::start() {
    if (connected_) {
        auto socket = std::move(*connected_);
        connected_.reset();
        asio::co_spawn(executor_, serve(std::move(socket)), asio::detached);
    } else {
        asio::co_spawn(executor_, accept_loop(), asio::detached);
    }
}

void qmp_monitor::shutdown(bool abrupt) {
    stopped_ = true;
    std::error_code ignored;
    if (acceptor_) acceptor_->close(ignored);
    if (session_) {
        if (abrupt)
            session_->close_now();
        else
            session_->close_after_flush();
    }
}

asio::awaitable<void> qmp_monitor::accept_loop() {
    auto token = asio::experimental::as_tuple(asio::use_awaitable);
    const auto& limit = vm_.config().accept_limit;
    for (std::size_t accepted = 0; !stopped_; ++accepted) {
        if (primary_ && limit && accepted >= *limit) {
            // accept_limit: the listener stays open but nobody accepts; connects queue in the
            // kernel's backlog until it is full (then EAGAIN), as with a wedged main loop.
            if (log_) log_("qmp: accepting no more clients (accept_limit)");
            co_return;
        }
        auto [ec, socket] = co_await acceptor_->async_accept(token);
        if (ec) break;
        // The next client stays in the kernel's backlog, without a greeting, until this
        // one leaves: QEMU serves one client per monitor.
        co_await serve(std::move(socket));
    }
}

asio::awaitable<void> qmp_monitor::serve(socket_type socket) {
    if (stopped_) co_return;
    if (counter_) counter_(+1);
    session_ = std::make_shared<qmp_session>(std::move(socket), vm_, pretty_, log_, primary_);
    if (log_) log_("qmp: client connected");
    co_await session_->run();
    session_.reset();
    if (log_) log_("qmp: client left");
    if (counter_) counter_(-1);
}

}  // namespace stackemu::fake
