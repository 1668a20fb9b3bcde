// A host forward (hostfwd=tcp:H-:G): what the fake guest's web service answers through it.
#pragma once

#include <asio.hpp>
#include <optional>
#include <string>

#include "vm.hpp"

namespace stackemu::fake {

// Like slirp, the host port listens from startup. Before the guest is ready (or once it is
// gone) a connection is accepted and closed at once, as when nothing listens in the guest;
// while ready, every request gets a minimal HTTP/1.1 200; while paused, it waits.
class http_forward {
  public:
    http_forward(asio::any_io_executor executor, vm& machine, int listen_fd, int guest_port,
                 std::string body);
    ~http_forward();

    void start();
    void shutdown();

  private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> serve(asio::ip::tcp::socket socket);

    asio::any_io_executor executor_;
    vm& vm_;
    asio::ip::tcp::acceptor acceptor_;
    int guest_port_;
    std::string body_;
    asio::steady_timer changed_;  // cancelled whenever the VM changes state
    std::size_t subscription_ = 0;
};

}  // namespace stackemu::fake
