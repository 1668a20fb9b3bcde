// A scripted QMP peer on the far end of a socketpair: "expect this command, then send these
// bytes", with an optional cut after N bytes sent, so every failure point can be reached.
#pragma once

#include <asio.hpp>
#include <cstddef>
#include <limits>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <utility>
#include <vector>

#include "qmp/endpoint.hpp"

namespace stackemu::test {

using nlohmann::json;

class script {
  public:
    struct step {
        enum class kind { send, expect, reply, reply_error, close, hold } what;
        std::string text;   // bytes to send, or the expected command name
        json value;         // reply value
        std::string extra;  // error desc
    };

    // Raw bytes, sent as they are.
    script& send(std::string bytes);
    // QEMU 7.2's greeting, CRLF-terminated.
    script& greeting();
    // Reads the next command; the peer fails (closes) if its name differs.
    script& expect(std::string command);
    // {"return": value, "id": <id of the last expected command>}.
    script& reply(json value = json::object());
    script& reply_error(std::string error_class, std::string desc);
    script& event(std::string name, json data = nullptr);
    // greeting + expect qmp_capabilities + reply {}.
    script& handshake();
    script& close();
    // Keeps the connection open, reading and discarding, until the client closes it.
    script& hold();

    const std::vector<step>& steps() const { return steps_; }

  private:
    std::vector<step> steps_;
};

struct peer_outcome {
    std::vector<json> received;  // every command the client sent, parsed
    std::size_t bytes_sent = 0;
    bool script_completed = false;
    std::string failure;  // why the peer stopped early, if it did
};

// Runs `s` on `socket`. Sends at most `cut_after` bytes in total (then closes at once), which
// can fall inside a message.
asio::awaitable<peer_outcome> run_peer(
    qmp::stream_socket socket, script s,
    std::size_t cut_after = std::numeric_limits<std::size_t>::max());

// Total bytes `s` would send if nothing were cut (ids as the client sends them one at a time: 0).
std::size_t script_size(const script& s);

// A connected pair of stream sockets on `ex`: {client side, peer side}.
std::pair<qmp::stream_socket, qmp::stream_socket> socket_pair(asio::io_context& ctx);

inline std::string crlf(const json& j) {
    return j.dump() + "\r\n";
}

}  // namespace stackemu::test
