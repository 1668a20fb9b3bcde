// The agent channel's host connection, relayed to the fake agent through a socketpair that
// exists only while the guest is up.
#include "guest_agent_link.hpp"

#include <sys/socket.h>

#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <string>

namespace stackemu::fake {

namespace {
constexpr auto tuple = asio::experimental::as_tuple(asio::use_awaitable);
}  // namespace

struct guest_agent_link::connection {
    connection(socket_type& h, const asio::any_io_executor& ex)
        : host(h), changed(ex, asio::steady_timer::time_point::max()) {}
    socket_type& host;                  // only serve() writes it, only read_host() reads it
    bool host_open = true;              // false once read_host() has ended
    std::string to_agent;               // read from the host, not yet given to the agent
    std::string to_host;                // the agent's replies, not yet written to the host
    std::shared_ptr<socket_type> link;  // our end of the agent's socketpair while it runs
    asio::steady_timer changed;         // cancelled on any change; its expiry stays at max
    void notify() { changed.cancel(); }
    void drop_link() {
        if (!link) return;
        std::error_code ignored;
        link->shutdown(asio::socket_base::shutdown_both, ignored);
        link->close(ignored);
        link.reset();
    }
};

guest_agent_link::guest_agent_link(asio::any_io_executor executor, vm& machine)
    : executor_(std::move(executor)), vm_(machine) {
    subscription_ = vm_.subscribe_changes([this] {
        if (current_) current_->notify();
    });
    agent_.on_shutdown([this](const std::string& mode) { vm_.agent_shutdown(mode); });
}

guest_agent_link::~guest_agent_link() {
    vm_.unsubscribe_changes(subscription_);
    if (current_) current_->drop_link();
}

asio::awaitable<void> guest_agent_link::serve(socket_type& host) {
    auto c = std::make_shared<connection>(host, executor_);
    current_ = c;
    // The "fault" option on the agent channel: counted from this host connection's first
    // request; a cut closes the host's connection itself, as a chardev reset would.
    if (auto fault = vm_.claim_fault(wire_fault::channel::agent)) {
        std::weak_ptr<connection> weak = c;
        agent_.arm_fault(*fault, log_, [weak] {
            if (auto live = weak.lock()) {
                std::error_code ignored;
                live->host.shutdown(asio::socket_base::shutdown_both, ignored);
                live->host.close(ignored);
                live->notify();
            }
        });
    }
    asio::co_spawn(executor_, read_host(c), asio::detached);
    while (c->host_open) {
        if (!c->to_host.empty()) {
            const std::string bytes = std::move(c->to_host);
            c->to_host.clear();
            // A failed write loses the replies; read_host() notices the end of the connection.
            co_await asio::async_write(c->host, asio::buffer(bytes), tuple);
            continue;
        }
        const bool up = vm_.guest_up();
        if (!up && c->link) {
            // The guest went down: qemu-ga dies with it, and what it held is lost.
            c->drop_link();
            continue;
        }
        if (up && vm_.running() && !c->link) {
            int fds[2];
            if (::socketpair(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC, 0, fds) != 0) break;
            const asio::generic::stream_protocol unix_stream(AF_UNIX, SOCK_STREAM);
            socket_type agent_end(executor_);
            agent_end.assign(unix_stream, fds[0]);
            c->link = std::make_shared<socket_type>(executor_);
            c->link->assign(unix_stream, fds[1]);
            asio::co_spawn(executor_, agent_.serve(std::move(agent_end)), asio::detached);
            asio::co_spawn(executor_, agent_to_host(c, c->link), asio::detached);
            continue;
        }
        // Stopped CPUs: the agent is frozen, the bytes wait in the channel.
        if (up && vm_.running() && c->link && !c->to_agent.empty()) {
            const std::string bytes = std::move(c->to_agent);
            c->to_agent.clear();
            auto link = c->link;
            auto [ec, n] = co_await asio::async_write(*link, asio::buffer(bytes), tuple);
            if (ec && c->link == link) c->drop_link();
            continue;
        }
        co_await c->changed.async_wait(tuple);
    }
    c->drop_link();
    if (current_ == c) {
        current_.reset();
        agent_.disarm_fault();
    }
}

asio::awaitable<void> guest_agent_link::read_host(std::shared_ptr<connection> c) {
    std::array<char, 4096> buffer;
    for (;;) {
        auto [ec, n] = co_await c->host.async_read_some(asio::buffer(buffer), tuple);
        if (ec) break;
        c->to_agent.append(buffer.data(), n);
        c->notify();
    }
    c->host_open = false;
    c->notify();
}

asio::awaitable<void> guest_agent_link::agent_to_host(std::shared_ptr<connection> c,
                                                      std::shared_ptr<socket_type> link) {
    std::array<char, 4096> buffer;
    for (;;) {
        auto [ec, n] = co_await link->async_read_some(asio::buffer(buffer), tuple);
        if (ec) break;
        c->to_host.append(buffer.data(), n);
        c->notify();
    }
    // The agent closed its end (a hostile mode): it starts again, as systemd restarts qemu-ga.
    if (c->link == link) {
        c->drop_link();
        c->notify();
    }
}

}  // namespace stackemu::fake
