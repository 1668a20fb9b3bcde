// One client connection to a QMP monitor: greeting, negotiation, commands, events, hostile I/O.
#pragma once

#include <asio.hpp>
#include <cstddef>
#include <deque>
#include <functional>
#include <memory>
#include <optional>
#include <string>
#include <string_view>

#include "json_reader.hpp"
#include "qmp_dispatcher.hpp"
#include "vm.hpp"
#include "wire_shaper.hpp"

namespace stackemu::fake {

class qmp_session : public std::enable_shared_from_this<qmp_session> {
  public:
    using socket_type = asio::generic::stream_protocol::socket;
    using logger = std::function<void(const std::string&)>;

    // `primary`: a session of the controller's monitor (greeting_delay_ms applies).
    qmp_session(socket_type socket, vm& machine, bool pretty, logger log, bool primary = false);

    // Serves the connection until the client leaves, a hostile mode cuts it, or close().
    asio::awaitable<void> run();
    // After everything queued is written (quit, guest shutdown): close.
    void close_after_flush();
    // At once, dropping what is queued (a crash).
    void close_now();

  private:
    void enqueue(std::string bytes);
    asio::awaitable<void> writer();
    asio::awaitable<void> write_bytes(std::string_view bytes);
    asio::awaitable<void> wait_until_read();
    asio::awaitable<void> process(const json_reader::item& item);
    void shut();
    // The "fault" option, when this session is the faulted one: logs step `step` (`what`)
    // and says whether the fault strikes there.
    bool fault_strikes(std::size_t step, std::string_view what);
    asio::awaitable<void> fault_delay();

    socket_type socket_;
    vm& vm_;
    const options& options_;
    logger log_;
    qmp_dispatcher dispatcher_;
    wire_shaper shaper_;
    json_reader reader_;
    std::deque<std::string> queue_;  // one framed message per entry
    asio::steady_timer wake_;
    bool closing_ = false;
    bool closed_ = false;
    std::size_t messages_sent_ = 0;
    std::optional<wire_fault> fault_;
    bool primary_ = false;
    std::size_t commands_seen_ = 0;
};

}  // namespace stackemu::fake
