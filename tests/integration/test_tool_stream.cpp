// Running a tool with its output streamed line by line (provision/tool_stream).
#include <catch2/catch.hpp>

#include "provision/tool_stream.hpp"

using namespace stackemu;
using namespace stackemu::provision;

TEST_CASE("tool stream: both outputs arrive as lines, in order, with the exit status",
          "[tool_stream]") {
    std::vector<std::string> lines;
    auto run =
        run_streaming({"sh", "-c", "echo one; echo two >&2; printf 'three\\r\\n\\nfour'; exit 3"},
                      [&](std::string_view l) { lines.emplace_back(l); });
    REQUIRE(run);
    CHECK(run->exit_code == 3);
    CHECK(lines == std::vector<std::string>{"one", "two", "three", "four"});
    CHECK(run->last_lines == lines);
}

TEST_CASE("tool stream: only the last lines are kept for the error message", "[tool_stream]") {
    stream_options options;
    options.keep_last = 2;
    int count = 0;
    auto run = run_streaming(
        {"seq", "1", "5"}, [&](std::string_view) { ++count; }, options);
    REQUIRE(run);
    CHECK(run->exit_code == 0);
    CHECK(count == 5);
    CHECK(run->last_lines == std::vector<std::string>{"4", "5"});
}

TEST_CASE("tool stream: environment changes reach the child and PATH finds the program",
          "[tool_stream]") {
    stream_options options;
    options.env = {{"STACKEMU_TOOL_STREAM_TEST", "set"},
                   {"HOME", std::nullopt},
                   {"PATH", "/nonexistent:/usr/bin:/bin"}};
    std::vector<std::string> lines;
    auto run = run_streaming(
        {"env"}, [&](std::string_view l) { lines.emplace_back(l); }, options);
    REQUIRE(run);
    CHECK(std::ranges::count(lines, "STACKEMU_TOOL_STREAM_TEST=set") == 1);
    CHECK(std::ranges::none_of(lines, [](const std::string& l) { return l.starts_with("HOME="); }));
}

TEST_CASE("tool stream: a killed tool reports 128 plus the signal", "[tool_stream]") {
    auto run = run_streaming({"sh", "-c", "kill -TERM $$"}, nullptr);
    REQUIRE(run);
    CHECK(run->exit_code == 128 + 15);
}

TEST_CASE("tool stream: a missing program is an error naming it", "[tool_stream]") {
    auto run = run_streaming({"stackemu-no-such-tool"}, nullptr);
    REQUIRE_FALSE(run);
    CHECK(run.error().code == errc::spawn_failed);
    CHECK_THAT(run.error().message, Catch::Contains("cannot run stackemu-no-such-tool"));
    auto path = run_streaming({"/nonexistent/tool"}, nullptr);
    REQUIRE_FALSE(path);
    CHECK(path.error().code == errc::spawn_failed);
    CHECK_FALSE(run_streaming({}, nullptr));
}
