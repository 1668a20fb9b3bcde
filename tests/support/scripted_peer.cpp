// Scripted QMP peer for client tests.
#include "support/scripted_peer.hpp"

#include <sys/socket.h>

#include <asio/experimental/as_tuple.hpp>

#include "qmp/framer.hpp"

namespace stackemu::test {

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);

const char* const qemu72_greeting =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n";

std::string render(const script::step& st, const json& id) {
    switch (st.what) {
        case script::step::kind::send:
            return st.text;
        case script::step::kind::reply:
            return crlf(json{{"return", st.value}, {"id", id}});
        case script::step::kind::reply_error:
            return crlf(json{{"id", id}, {"error", {{"class", st.text}, {"desc", st.extra}}}});
        default:
            return {};
    }
}

}  // namespace

script& script::send(std::string bytes) {
    steps_.push_back({step::kind::send, std::move(bytes), {}, {}});
    return *this;
}
script& script::greeting() {
    return send(qemu72_greeting);
}
script& script::expect(std::string command) {
    steps_.push_back({step::kind::expect, std::move(command), {}, {}});
    return *this;
}
script& script::reply(json value) {
    steps_.push_back({step::kind::reply, {}, std::move(value), {}});
    return *this;
}
script& script::reply_error(std::string error_class, std::string desc) {
    steps_.push_back({step::kind::reply_error, std::move(error_class), {}, std::move(desc)});
    return *this;
}
script& script::event(std::string name, json data) {
    json ev = {{"timestamp", {{"seconds", 1795887742}, {"microseconds", 347592}}}, {"event", name}};
    if (!data.is_null()) ev["data"] = std::move(data);
    return send(crlf(ev));
}
script& script::handshake() {
    return greeting().expect("qmp_capabilities").reply();
}
script& script::hold() {
    steps_.push_back({step::kind::hold, {}, {}, {}});
    return *this;
}
script& script::close() {
    steps_.push_back({step::kind::close, {}, {}, {}});
    return *this;
}

std::size_t script_size(const script& s) {
    std::size_t total = 0;
    json id;
    for (const auto& st : s.steps()) {
        // One command at a time, as a script runs: each reuses the smallest free id, 0.
        if (st.what == script::step::kind::expect) id = 0;
        total += render(st, id).size();
    }
    return total;
}

std::pair<qmp::stream_socket, qmp::stream_socket> socket_pair(asio::io_context& ctx) {
    asio::local::stream_protocol::socket a(ctx), b(ctx);
    asio::local::connect_pair(a, b);
    auto proto = asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM);
    qmp::stream_socket ga(ctx), gb(ctx);
    ga.assign(proto, a.release());
    gb.assign(proto, b.release());
    return {std::move(ga), std::move(gb)};
}

asio::awaitable<peer_outcome> run_peer(qmp::stream_socket socket, script s, std::size_t cut_after) {
    peer_outcome out;
    qmp::framer framer;
    std::array<char, 4096> buffer;
    json last_id;
    asio::error_code ignored;

    auto send = [&](std::string bytes) -> asio::awaitable<bool> {
        const std::size_t room = cut_after - out.bytes_sent;
        const bool cut = bytes.size() > room;
        if (cut) bytes.resize(room);
        if (!bytes.empty()) {
            auto [ec, n] =
                co_await asio::async_write(socket, asio::buffer(bytes), as_tuple_awaitable);
            out.bytes_sent += n;
            if (ec) co_return false;
        }
        co_return !cut && out.bytes_sent < cut_after;
    };

    for (const auto& st : s.steps()) {
        if (st.what == script::step::kind::close) break;
        if (st.what == script::step::kind::hold) {
            for (;;) {
                auto [ec, n] =
                    co_await socket.async_read_some(asio::buffer(buffer), as_tuple_awaitable);
                if (ec) break;
                framer.feed(std::string_view(buffer.data(), n));
                while (true) {
                    auto next = framer.next();
                    if (!next || !*next) break;
                    out.received.push_back(json::parse(**next, nullptr, false));
                }
            }
            break;
        }
        if (st.what == script::step::kind::expect) {
            std::optional<json> command;
            while (!command) {
                auto next = framer.next();
                if (!next) {
                    out.failure = next.error().message;
                    co_return out;
                }
                if (*next) {
                    command = json::parse(**next, nullptr, false);
                    break;
                }
                auto [ec, n] =
                    co_await socket.async_read_some(asio::buffer(buffer), as_tuple_awaitable);
                if (ec) {
                    out.failure = "client closed before sending " + st.text;
                    co_return out;
                }
                framer.feed(std::string_view(buffer.data(), n));
            }
            out.received.push_back(*command);
            if (command->value("execute", "") != st.text) {
                out.failure = "expected " + st.text + ", got " + command->dump();
                co_return out;
            }
            last_id = command->value("id", json());
            continue;
        }
        if (!co_await send(render(st, last_id))) {
            socket.close(ignored);
            co_return out;
        }
    }
    out.script_completed = true;
    socket.shutdown(asio::socket_base::shutdown_both, ignored);
    socket.close(ignored);
    co_return out;
}

}  // namespace stackemu::test
