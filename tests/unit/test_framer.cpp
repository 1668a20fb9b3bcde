// The framer cuts byte streams into QMP messages by JSON structure.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "qmp/framer.hpp"

using stackemu::errc;
using stackemu::qmp::framer;

namespace {

// What QEMU 7.2 sent in one session (greeting, reply, event, reply), CRLF-terminated.
const std::string conversation =
    "{\"QMP\": {\"version\": {\"qemu\": {\"micro\": 22, \"minor\": 2, \"major\": 7}, "
    "\"package\": \"Debian 1:7.2+dfsg-7+deb12u18+b3\"}, \"capabilities\": [\"oob\"]}}\r\n"
    "{\"return\": {}}\r\n"
    "{\"timestamp\": {\"seconds\": 1795887742, \"microseconds\": 347592}, \"event\": "
    "\"SHUTDOWN\", \"data\": {\"guest\": false, \"reason\": \"host-qmp-quit\"}}\r\n"
    "{\"return\": {\"status\": \"running\", \"desc\": \"a } in \\\"quotes\\\" {\"}, \"id\": 1}\r\n";

std::vector<std::string> frame_all(framer& f, const std::vector<std::string>& chunks) {
    std::vector<std::string> out;
    for (const auto& chunk : chunks) {
        f.feed(chunk);
        for (;;) {
            auto next = f.next();
            REQUIRE(next.has_value());
            if (!*next) break;
            out.emplace_back(**next);
        }
    }
    return out;
}

std::vector<std::string> expected_messages() {
    framer f;
    return frame_all(f, {conversation});
}

}  // namespace

TEST_CASE("a conversation in one read yields every message without the CRLF") {
    auto messages = expected_messages();
    REQUIRE(messages.size() == 4);
    CHECK(messages[1] == "{\"return\": {}}");
    CHECK(messages[3].find("a } in") != std::string::npos);
    CHECK(messages[3].back() == '}');
}

TEST_CASE("every split point of a conversation gives the same messages") {
    const auto expected = expected_messages();
    for (std::size_t split = 0; split <= conversation.size(); ++split) {
        framer f;
        auto got = frame_all(f, {conversation.substr(0, split), conversation.substr(split)});
        REQUIRE(got == expected);
    }
}

TEST_CASE("a conversation fed byte by byte gives the same messages") {
    std::vector<std::string> bytes;
    for (char c : conversation)
        bytes.emplace_back(1, c);
    framer f;
    CHECK(frame_all(f, bytes) == expected_messages());
    CHECK(f.buffered() == 0);
}

TEST_CASE("pretty-printed multi-line messages are framed whole") {
    const std::string pretty =
        "{\n    \"return\": {\n        \"status\": \"running\",\n        \"running\": true\n"
        "    },\n    \"id\": 7\n}\r\n\n  \t{\n    \"return\": [\n        {}, [ ]\n    ]\n}\n";
    framer f;
    auto got = frame_all(f, {pretty});
    REQUIRE(got.size() == 2);
    CHECK(got[0].starts_with("{\n    \"return\""));
    CHECK(got[0].ends_with("\"id\": 7\n}"));
    CHECK(got[1].ends_with("]\n}"));
}

TEST_CASE("escaped quotes and backslashes inside strings do not end a message") {
    framer f;
    auto got = frame_all(f, {R"({"a":"\\"}{"b":"\\\"}"})"});
    REQUIRE(got.size() == 2);
    CHECK(got[0] == R"({"a":"\\"})");
    CHECK(got[1] == R"({"b":"\\\"}"})");
}

TEST_CASE("a message over the cap gives the cap error and keeps giving it") {
    framer f(64);
    f.feed("{\"return\": \"" + std::string(100, 'x'));
    auto next = f.next();
    REQUIRE_FALSE(next.has_value());
    CHECK(next.error().code == errc::message_too_large);
    f.feed("\"}");
    CHECK(f.next().error().code == errc::message_too_large);
}

TEST_CASE("a message exactly at the cap is accepted") {
    const std::string msg = "{\"a\":\"" + std::string(20, 'x') + "\"}";
    framer f(msg.size());
    f.feed(msg);
    auto next = f.next();
    REQUIRE(next.has_value());
    REQUIRE(next->has_value());
    CHECK(**next == msg);
}

TEST_CASE("a message one byte over the cap is refused even when its last byte closes it") {
    // Found by fuzz/qmp_framer: the closing bracket used to be taken before the cap was checked.
    const std::string msg = "{\"a\":\"" + std::string(20, 'x') + "\"}";
    framer f(msg.size() - 1);
    f.feed(msg);
    auto next = f.next();
    REQUIRE_FALSE(next.has_value());
    CHECK(next.error().code == errc::message_too_large);
}

TEST_CASE("garbage between messages is a protocol error") {
    framer f;
    f.feed("{\"return\": {}}\r\nhello{");
    auto first = f.next();
    REQUIRE(first.has_value());
    CHECK(first->has_value());
    auto second = f.next();
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code == errc::protocol_error);
    CHECK(second.error().message.find("'h'") != std::string::npos);
}

TEST_CASE("garbage is reported at its offset in the whole stream, with a hex excerpt") {
    framer f;
    f.feed("{\"return\": {}}\r\n");
    REQUIRE(f.next().has_value());
    CHECK(f.message_offset() == 0);
    f.feed("{\"return\": 1}");
    auto second = f.next();
    REQUIRE(second.has_value());
    CHECK(f.message_offset() == 16);
    f.feed(" #oops");
    auto third = f.next();
    REQUIRE_FALSE(third.has_value());
    CHECK(third.error().message ==
          "malformed message from QEMU at byte offset 30: 23 6f 6f 70 73 "
          "(expected a JSON object, got '#')");
}

TEST_CASE("a non-printable byte is named in the protocol error") {
    framer f;
    f.feed("\xff{}");
    auto next = f.next();
    REQUIRE_FALSE(next.has_value());
    CHECK(next.error().message.find("0xff") != std::string::npos);
}

TEST_CASE("nesting deeper than the limit is a protocol error") {
    framer g;
    g.feed("{" + std::string(2000, '['));
    auto next = g.next();
    REQUIRE_FALSE(next.has_value());
    CHECK(next.error().code == errc::protocol_error);
}

TEST_CASE("reset clears a previous error and buffered bytes") {
    framer f;
    f.feed("nonsense");
    REQUIRE_FALSE(f.next().has_value());
    f.reset();
    f.feed("{\"return\": 1}");
    auto next = f.next();
    REQUIRE(next.has_value());
    CHECK(next->has_value());
}

TEST_CASE("framing a long stream of small messages stays linear") {
    // 200k messages in 4 KiB chunks: a rescanning framer would take minutes here.
    std::string stream;
    for (int i = 0; i < 200000; ++i)
        stream += "{\"return\": {}, \"id\": " + std::to_string(i) + "}\r\n";
    framer f;
    std::size_t count = 0;
    for (std::size_t off = 0; off < stream.size(); off += 4096) {
        f.feed(std::string_view(stream).substr(off, 4096));
        while (true) {
            auto next = f.next();
            REQUIRE(next.has_value());
            if (!*next) break;
            ++count;
        }
    }
    CHECK(count == 200000);
}

TEST_CASE("one huge message split into many reads is assembled once") {
    std::string big = "{\"return\": \"" + std::string(10 << 20, 'y') + "\"}\r\n";
    framer f;
    std::size_t count = 0;
    for (std::size_t off = 0; off < big.size(); off += 65536) {
        f.feed(std::string_view(big).substr(off, 65536));
        auto next = f.next();
        REQUIRE(next.has_value());
        if (*next) {
            ++count;
            CHECK((*next)->size() == big.size() - 2);
        }
    }
    CHECK(count == 1);
}
