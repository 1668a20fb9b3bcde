// Classification of QMP messages and encoding of commands.
#include <catch2/catch.hpp>

#include "qmp/message.hpp"

using namespace stackemu::qmp;
using stackemu::errc;

TEST_CASE("QEMU 7.2's greeting is a greeting with its version and capabilities") {
    auto m = parse_message(
        R"({"QMP": {"version": {"qemu": {"micro": 22, "minor": 2, "major": 7}, "package": "Debian 1:7.2+dfsg-7+deb12u18+b3"}, "capabilities": ["oob"]}})");
    REQUIRE(m.has_value());
    auto* g = std::get_if<greeting>(&*m);
    REQUIRE(g);
    CHECK(g->version == qemu_version{7, 2, 22, {}});
    CHECK(g->version.package == "Debian 1:7.2+dfsg-7+deb12u18+b3");
    CHECK(g->version.to_string() == "7.2.22");
    CHECK(g->offers("oob"));
    CHECK_FALSE(g->offers("zero-copy"));
}

TEST_CASE("a greeting without a version is a bad greeting") {
    auto m = parse_message(R"({"QMP": {"capabilities": []}})");
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == errc::bad_greeting);
}

TEST_CASE("a greeting with a string major version is a bad greeting") {
    auto m = parse_message(
        R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": "7"}}, "capabilities": []}})");
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == errc::bad_greeting);
}

TEST_CASE("a greeting with a version number beyond int is a bad greeting") {
    // Found by fuzz/qmp_message: 4294967304 used to be read as 8.
    auto m = parse_message(
        R"({"QMP": {"version": {"qemu": {"micro": 0, "minor": 2, "major": 4294967304}}, "capabilities": []}})");
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == errc::bad_greeting);
}

TEST_CASE("a success reply carries its id and value") {
    auto m = parse_message(R"({"return": {"status": "running", "running": true}, "id": 1})");
    REQUIRE(m.has_value());
    auto* r = std::get_if<success_reply>(&*m);
    REQUIRE(r);
    CHECK(r->id == json(1));
    CHECK(r->value["status"] == "running");
}

TEST_CASE("a success reply may have no id") {
    auto m = parse_message(R"({"return": {}})");
    REQUIRE(m.has_value());
    CHECK_FALSE(std::get<success_reply>(*m).id.has_value());
}

TEST_CASE("an error reply keeps QEMU's class and desc") {
    auto m = parse_message(
        R"({"id": 1, "error": {"class": "CommandNotFound", "desc": "The command x has not been found"}})");
    REQUIRE(m.has_value());
    auto& e = std::get<error_reply>(*m);
    CHECK(e.id == json(1));
    CHECK(e.error_class == "CommandNotFound");
    CHECK(e.desc == "The command x has not been found");
}

TEST_CASE("an error reply without an id is recognised as such") {
    auto m = parse_message(
        R"({"error": {"class": "GenericError", "desc": "JSON parse error, expecting value"}})");
    REQUIRE(m.has_value());
    CHECK_FALSE(std::get<error_reply>(*m).id.has_value());
}

TEST_CASE("an unknown error class is kept as an open string") {
    auto m = parse_message(R"({"error": {"class": "BrandNewClass", "desc": "x"}, "id": 2})");
    REQUIRE(m.has_value());
    CHECK(std::get<error_reply>(*m).error_class == "BrandNewClass");
}

TEST_CASE("an event's timestamp fields are signed") {
    auto m =
        parse_message(R"({"timestamp": {"seconds": -1, "microseconds": -1}, "event": "STOP"})");
    REQUIRE(m.has_value());
    auto& ev = std::get<event>(*m);
    CHECK(ev.name == "STOP");
    CHECK(ev.seconds == -1);
    CHECK(ev.microseconds == -1);
    CHECK(ev.data == json::object());
}

TEST_CASE("an event keeps its data") {
    auto m = parse_message(
        R"({"timestamp": {"seconds": 5, "microseconds": 6}, "event": "SHUTDOWN", "data": {"guest": true, "reason": "guest-shutdown"}})");
    REQUIRE(m.has_value());
    auto& ev = std::get<event>(*m);
    CHECK(ev.data["reason"] == "guest-shutdown");
    CHECK(ev.seconds == 5);
    CHECK(ev.microseconds == 6);
}

TEST_CASE("messages of no known shape are protocol errors") {
    for (const char* text :
         {R"({"hello": 1})", R"([1,2])", R"({"error": "x"})",
          R"({"error": {"class": 1, "desc": "x"}})", R"({"event": 5})",
          R"({"event": "X", "timestamp": {"seconds": "1", "microseconds": 0}})", "{not json}"}) {
        INFO(text);
        auto m = parse_message(text);
        REQUIRE_FALSE(m.has_value());
        CHECK(m.error().code == errc::protocol_error);
    }
}

TEST_CASE(
    "a command is encoded with execute first then arguments then a numeric id and a newline") {
    CHECK(encode_command("query-status", json::object(), 1) ==
          "{\"execute\":\"query-status\",\"id\":1}\n");
    CHECK(encode_command("stop", nullptr, 42) == "{\"execute\":\"stop\",\"id\":42}\n");
    CHECK(encode_command("job-dismiss", {{"id", "snap0"}}, 3) ==
          "{\"execute\":\"job-dismiss\",\"arguments\":{\"id\":\"snap0\"},\"id\":3}\n");
    CHECK(encode_command("qmp_capabilities", {{"enable", {"oob"}}}, 0) ==
          "{\"execute\":\"qmp_capabilities\",\"arguments\":{\"enable\":[\"oob\"]},\"id\":0}\n");
    CHECK(encode_command("query-status", {}, 9, true) ==
          "{\"exec-oob\":\"query-status\",\"id\":9}\n");
}

TEST_CASE("a compact command has no optional whitespace, no empty arguments and no newline") {
    CHECK(encode_command_compact("query-status", json::object(), 0) ==
          R"({"execute":"query-status","id":0})");
    CHECK(encode_command_compact("job-dismiss", {{"id", "snap0"}}, 3) ==
          R"({"execute":"job-dismiss","arguments":{"id":"snap0"},"id":3})");
}

TEST_CASE("invalid UTF-8 in a message names its stream offset and the bytes in hex") {
    const std::string text = "{\"event\": \"X\", \"data\": {\"device\": \"disk\xff\xfe\"}}";
    auto m = parse_message(text, 1000);
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().code == errc::protocol_error);
    CHECK(m.error().message ==
          "malformed message from QEMU at byte offset 1039: ff fe 22 7d 7d (not UTF-8)");
}

TEST_CASE("text that is not JSON names where it stops being JSON") {
    // "n" may still begin null: the "o" is where it stops.
    auto m = parse_message("{not json}");
    REQUIRE_FALSE(m.has_value());
    CHECK(m.error().message ==
          "malformed message from QEMU at byte offset 2: 6f 74 20 6a 73 6f 6e 7d (not JSON)");
}

TEST_CASE("a command name with invalid UTF-8 is encoded without throwing") {
    auto text = encode_command("bad\xff", json::object(), 1);
    CHECK(text.starts_with("{\"execute\":\"bad"));
}
