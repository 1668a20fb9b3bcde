// The serial chardev: the fake guest's console lines to the connected client and the logfile.
#pragma once

#include <asio.hpp>
#include <deque>
#include <memory>
#include <optional>
#include <string>

#include "vm.hpp"

namespace stackemu::fake {

// Like QEMU's socket chardev with server=on,wait=off: output goes to the one connected
// client, and is lost when none is; the logfile gets everything either way.
class serial_console {
  public:
    using socket_type = asio::generic::stream_protocol::socket;

    // `listen_fd`: a listening socket, or -1 for none (-serial file:). `log_fd`: -1 for none.
    serial_console(asio::any_io_executor executor, vm& machine, int listen_fd, int log_fd);
    ~serial_console();

    void start();
    void shutdown();

  private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> serve(socket_type socket);
    void line(std::string_view text);

    asio::any_io_executor executor_;
    vm& vm_;
    std::optional<asio::basic_socket_acceptor<asio::generic::stream_protocol>> acceptor_;
    int log_fd_;
    std::shared_ptr<socket_type> client_;
    std::deque<std::string> pending_;
    bool writing_ = false;
    std::size_t subscription_ = 0;
};

}  // namespace stackemu::fake
