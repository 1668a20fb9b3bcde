// A QMP monitor: a listening socket that serves one client at a time, or one given connection.
#pragma once

#include <asio.hpp>
#include <functional>
#include <memory>
#include <optional>

#include "qmp_session.hpp"
#include "vm.hpp"

namespace stackemu::fake {

class qmp_monitor {
  public:
    using socket_type = asio::generic::stream_protocol::socket;
    // Told when a session starts (+1) and ends (-1), so the server knows when all are flushed.
    using session_counter = std::function<void(int)>;

    // Serves clients of the listening socket `listen_fd` (Unix or TCP), one after another.
    // `primary`: the controller's monitor, the one greeting_delay_ms and accept_limit affect.
    qmp_monitor(asio::any_io_executor executor, vm& machine, int listen_fd, bool pretty,
                qmp_session::logger log, session_counter counter, bool primary = false);
    // Serves exactly one already-connected socket (e.g. one end of a socketpair).
    qmp_monitor(asio::any_io_executor executor, vm& machine, socket_type connected, bool pretty,
                qmp_session::logger log, session_counter counter);

    void start();
    // Stops accepting; the current session flushes then closes (abrupt: closes at once).
    void shutdown(bool abrupt);

  private:
    asio::awaitable<void> accept_loop();
    asio::awaitable<void> serve(socket_type socket);

    asio::any_io_executor executor_;
    vm& vm_;
    bool pretty_;
    qmp_session::logger log_;
    session_counter counter_;
    std::optional<asio::basic_socket_acceptor<asio::generic::stream_protocol>> acceptor_;
    std::optional<socket_type> connected_;
    std::shared_ptr<qmp_session> session_;
    bool stopped_ = false;
    bool primary_ = false;
};

}  // namespace stackemu::fake
