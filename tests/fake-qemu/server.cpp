// Wiring of the fake's parts and its exit sequence.
#include "server.hpp"

#include <fmt/format.h>
#include <sys/socket.h>
#include <unistd.h>

#include <asio/experimental/as_tuple.hpp>

#include "socket_setup.hpp"

namespace stackemu::fake {

server::server(asio::any_io_executor executor, options opts)
    : executor_(std::move(executor)),
      vm_(std::make_unique<vm>(executor_, std::move(opts))),
      exit_signal_(executor_, asio::steady_timer::time_point::max()) {
    vm_->on_exit([this](exit_status s) { begin_exit(s); });
    if (vm_->config().agent) {
        agent_link_ = std::make_unique<guest_agent_link>(executor_, *vm_);
        agent_handler_ = [link = agent_link_.get()](agent_channel::socket_type& s) {
            return link->serve(s);
        };
    }
}

server::~server() {
    for (auto& m : monitors_)
        m.shutdown(true);
    for (auto& c : consoles_)
        c.shutdown();
    for (auto& a : agents_)
        a.shutdown();
    for (auto& a : mute_channels_)
        a.shutdown();
    for (auto& f : forwards_)
        f.shutdown();
}

qmp_session::logger server_logger(std::function<void(const std::string&)>* log) {
    return [log](const std::string& line) {
        if (*log) (*log)(line);
    };
}

result<void> server::listen_qmp(const std::string& path, bool pretty) {
    auto fd = listen_unix(path);
    if (!fd) return fail(fd.error());
    adopt_qmp_listener(*fd, pretty);
    return {};
}

void server::adopt_qmp_listener(int listen_fd, bool pretty) {
    // The first monitor is the controller's (QEMU's argv lists qmp.sock first).
    const bool primary = monitors_.empty();
    monitors_.emplace_back(
        executor_, *vm_, listen_fd, pretty, server_logger(&log_),
        [this](int d) { count_session(d); }, primary);
    if (started_) monitors_.back().start();
}

void server::serve_qmp(socket_type connected, bool pretty) {
    monitors_.emplace_back(executor_, *vm_, std::move(connected), pretty, server_logger(&log_),
                           [this](int d) { count_session(d); });
    if (started_) monitors_.back().start();
}

void server::serve_qmp_fd(int connected_fd, bool pretty) {
    socket_type s(executor_);
    s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), connected_fd);
    serve_qmp(std::move(s), pretty);
}

void server::adopt_serial(int listen_fd, int log_fd) {
    consoles_.emplace_back(executor_, *vm_, listen_fd, log_fd);
    if (started_) consoles_.back().start();
}

result<void> server::listen_serial(const std::string& path,
                                   const std::optional<std::string>& logfile) {
    int log_fd = -1;
    if (logfile) {
        auto fd = open_logfile(*logfile);
        if (!fd) return fail(fd.error());
        log_fd = *fd;
    }
    auto fd = listen_unix(path);
    if (!fd) {
        if (log_fd >= 0) ::close(log_fd);
        return fail(fd.error());
    }
    adopt_serial(*fd, log_fd);
    return {};
}

void server::adopt_agent_listener(int listen_fd) {
    agents_.emplace_back(executor_, listen_fd);
    if (agent_handler_) agents_.back().set_handler(agent_handler_);
    if (started_) agents_.back().start();
}

void server::adopt_mute_listener(int listen_fd) {
    mute_channels_.emplace_back(executor_, listen_fd);
    if (started_) mute_channels_.back().start();
}

result<void> server::listen_agent(const std::string& path) {
    auto fd = listen_unix(path);
    if (!fd) return fail(fd.error());
    adopt_agent_listener(*fd);
    return {};
}

void server::set_agent_handler(agent_channel::handler h) {
    agent_handler_ = std::move(h);
    for (auto& a : agents_)
        a.set_handler(agent_handler_);
}

void server::adopt_http_forward(int listen_fd, int guest_port) {
    forwards_.emplace_back(executor_, *vm_, listen_fd, guest_port, vm_->config().http_body);
    if (started_) forwards_.back().start();
}

result<void> server::forward_http(const std::string& host, int port, int guest_port) {
    auto fd = listen_tcp(host, port);
    if (!fd) return fail(fd.error());
    adopt_http_forward(*fd, guest_port);
    return {};
}

void server::start() {
    if (started_) return;
    started_ = true;
    for (auto& c : consoles_)
        c.start();
    vm_->start();
    for (auto& m : monitors_)
        m.start();
    for (auto& a : agents_)
        a.start();
    for (auto& a : mute_channels_)
        a.start();
    for (auto& f : forwards_)
        f.start();
    if (const auto& crash = vm_->config().crash_after) {
        crash_timer_.emplace(executor_, *crash);
        crash_timer_->async_wait([this](std::error_code ec) {
            if (ec) return;
            if (log_) log_("crash_after_ms reached: crashing");
            vm_->crash(vm_->config().crash_abort);
        });
    }
    if (log_) log_(fmt::format("started: {}", to_string(vm_->state())));
}

void server::on_exit(std::function<void(exit_status)> hook) {
    if (exit_) {
        hook(*exit_);
        return;
    }
    exit_hooks_.push_back(std::move(hook));
}

asio::awaitable<exit_status> server::wait_exit() {
    while (!exit_)
        co_await exit_signal_.async_wait(asio::experimental::as_tuple(asio::use_awaitable));
    co_return *exit_;
}

void server::begin_exit(exit_status status) {
    if (pending_exit_ || exit_) return;
    pending_exit_ = status;
    if (log_) log_(fmt::format("exiting: code {} signal {}", status.code, status.signal));
    if (crash_timer_) crash_timer_->cancel();
    for (auto& c : consoles_)
        c.shutdown();
    for (auto& a : agents_)
        a.shutdown();
    for (auto& a : mute_channels_)
        a.shutdown();
    for (auto& f : forwards_)
        f.shutdown();
    for (auto& m : monitors_)
        m.shutdown(status.abrupt);
    if (live_sessions_ == 0) finish_exit();
}

void server::count_session(int delta) {
    live_sessions_ += delta;
    if (live_sessions_ == 0 && pending_exit_) finish_exit();
}

void server::finish_exit() {
    if (exit_) return;
    exit_ = *pending_exit_;
    exit_signal_.cancel();
    auto hooks = std::move(exit_hooks_);
    for (auto& hook : hooks)
        hook(*exit_);
}

}  // namespace stackemu::fake
