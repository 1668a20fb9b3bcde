// The guest-agent virtserialport chardev: listens and accepts; what answers is pluggable.
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <optional>

namespace stackemu::fake {

class agent_channel {
  public:
    using socket_type = asio::generic::stream_protocol::socket;
    // Serves one connection to the agent channel (the QGA fake plugs in here).
    using handler = std::function<asio::awaitable<void>(socket_type&)>;

    agent_channel(asio::any_io_executor executor, int listen_fd);
    void set_handler(handler h) { handler_ = std::move(h); }
    void start();
    void shutdown();

  private:
    asio::awaitable<void> accept_loop();

    asio::any_io_executor executor_;
    asio::basic_socket_acceptor<asio::generic::stream_protocol> acceptor_;
    handler handler_;
    std::shared_ptr<socket_type> client_;
};

}  // namespace stackemu::fake
