// The whole fake QEMU in one object: the VM, its QMP monitors, serial, agent and host forwards.
#pragma once

#include <asio.hpp>
#include <functional>
#include <list>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "agent_channel.hpp"
#include "common/error.hpp"
#include "guest_agent_link.hpp"
#include "http_forward.hpp"
#include "options.hpp"
#include "qmp_monitor.hpp"
#include "serial_console.hpp"
#include "vm.hpp"

namespace stackemu::fake {

// Used in-process by tests (give it sockets, run the io_context, await wait_exit()) and by the
// fake-qemu executable. Add endpoints, then start(). All on one executor, no threads.
class server {
  public:
    using socket_type = asio::generic::stream_protocol::socket;

    server(asio::any_io_executor executor, options opts);
    ~server();
    server(const server&) = delete;
    server& operator=(const server&) = delete;

    vm& machine() { return *vm_; }
    const options& config() const { return vm_->config(); }

    // QMP monitor on a new Unix socket at `path` (binds now).
    result<void> listen_qmp(const std::string& path, bool pretty = false);
    // QMP monitor on an already listening socket; the server owns the fd.
    void adopt_qmp_listener(int listen_fd, bool pretty = false);
    // One QMP connection on an already connected socket (one end of a socketpair).
    void serve_qmp(socket_type connected, bool pretty = false);
    void serve_qmp_fd(int connected_fd, bool pretty = false);

    // Serial console: a listening socket (-1: none) and a logfile fd (-1: none), owned.
    void adopt_serial(int listen_fd, int log_fd);
    result<void> listen_serial(const std::string& path,
                               const std::optional<std::string>& logfile = std::nullopt);
    // Guest-agent channel, and what serves its connections: by default the fake guest's agent
    // (see guest_agent_link), which answers once the guest is up; with the "agent": false
    // option, or for a mute chardev, a channel that accepts and stays mute.
    void adopt_agent_listener(int listen_fd);
    void adopt_mute_listener(int listen_fd);
    result<void> listen_agent(const std::string& path);
    void set_agent_handler(agent_channel::handler h);
    // The fake guest's agent (nullptr with "agent": false): programs, files, hostile modes.
    agent* guest_agent() { return agent_link_ ? &agent_link_->guest_agent() : nullptr; }
    // hostfwd=tcp:HOST:PORT-:GUEST_PORT.
    void adopt_http_forward(int listen_fd, int guest_port);
    result<void> forward_http(const std::string& host, int port, int guest_port);

    // Debug log lines (the executable's -D file).
    void set_log(std::function<void(const std::string&)> log) {
        log_ = std::move(log);
        if (agent_link_) agent_link_->set_log(log_);
    }

    // Powers the VM on and starts serving every endpoint.
    void start();
    // SIGTERM and friends: SHUTDOWN host-signal, then exit 0.
    void host_signal() { vm_->host_signal(); }

    bool exited() const { return exit_.has_value(); }
    // Called once, when the fake has exited and every QMP client got its last bytes.
    void on_exit(std::function<void(exit_status)> hook);
    asio::awaitable<exit_status> wait_exit();

  private:
    void begin_exit(exit_status status);
    void count_session(int delta);
    void finish_exit();

    asio::any_io_executor executor_;
    std::unique_ptr<vm> vm_;
    std::list<qmp_monitor> monitors_;
    std::list<serial_console> consoles_;
    std::list<agent_channel> agents_;
    std::list<agent_channel> mute_channels_;
    std::unique_ptr<guest_agent_link> agent_link_;
    std::list<http_forward> forwards_;
    agent_channel::handler agent_handler_;
    std::function<void(const std::string&)> log_;
    std::vector<std::function<void(exit_status)>> exit_hooks_;
    std::optional<exit_status> pending_exit_;
    std::optional<exit_status> exit_;
    int live_sessions_ = 0;
    asio::steady_timer exit_signal_;
    std::optional<asio::steady_timer> crash_timer_;
    bool started_ = false;
};

}  // namespace stackemu::fake
