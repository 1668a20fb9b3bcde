// The guest agent behind the fake QEMU's agent channel, up only while the fake guest is.
#pragma once

#include <asio.hpp>
#include <cstddef>
#include <functional>
#include <memory>
#include <string>

#include "agent.hpp"
#include "agent_channel.hpp"
#include "vm.hpp"

namespace stackemu::fake {

// qemu-ga runs in the guest, so it answers only once the guest has booted, stops with the
// guest (shutdown, reboot, panic) and freezes while the CPUs are stopped. Like a virtio-serial
// port no one in the guest has opened, the channel then holds what the host sends: it reaches
// the agent when the agent starts. The host's connection outlives guest reboots, as QEMU's
// chardev does. guest-shutdown makes the fake guest shut itself down (vm::agent_shutdown).
class guest_agent_link {
  public:
    using socket_type = agent_channel::socket_type;

    guest_agent_link(asio::any_io_executor executor, vm& machine);
    ~guest_agent_link();
    guest_agent_link(const guest_agent_link&) = delete;
    guest_agent_link& operator=(const guest_agent_link&) = delete;

    // The guest side: programs, files, hostile modes for tests.
    agent& guest_agent() { return agent_; }
    // Where the "fault" option's steps are logged.
    void set_log(std::function<void(const std::string&)> log) { log_ = std::move(log); }
    // Serves one host connection (an agent_channel handler); `host` outlives the coroutine.
    asio::awaitable<void> serve(socket_type& host);

  private:
    struct connection;
    asio::awaitable<void> read_host(std::shared_ptr<connection> c);
    asio::awaitable<void> agent_to_host(std::shared_ptr<connection> c,
                                        std::shared_ptr<socket_type> link);

    asio::any_io_executor executor_;
    vm& vm_;
    agent agent_;
    std::size_t subscription_ = 0;
    std::shared_ptr<connection> current_;
    std::function<void(const std::string&)> log_;
};

}  // namespace stackemu::fake
