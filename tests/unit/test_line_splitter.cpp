// Cutting a tool's output into lines: every terminator, any split of the bytes.
#include <catch2/catch.hpp>

#include "provision/tool_stream.hpp"

using namespace stackemu::provision;

namespace {

std::vector<std::string> split_in_chunks(std::string_view bytes, std::size_t chunk,
                                         std::size_t max_line = 64 * 1024) {
    std::vector<std::string> lines;
    const line_sink sink = [&](std::string_view l) { lines.emplace_back(l); };
    line_splitter splitter(max_line);
    for (std::size_t i = 0; i < bytes.size(); i += chunk)
        splitter.feed(bytes.substr(i, chunk), sink);
    splitter.finish(sink);
    return lines;
}

}  // namespace

TEST_CASE("line splitter: LF, CRLF and lone CR end lines; the unterminated rest comes last",
          "[tool_stream]") {
    const std::string text = "I: Retrieving Release\r\n(10/100%)\r(20/100%)\rdone\n\nlast";
    const std::vector<std::string> expected{
        "I: Retrieving Release", "(10/100%)", "(20/100%)", "done", "", "last"};
    for (std::size_t chunk = 1; chunk <= text.size(); ++chunk) {
        INFO(chunk);
        CHECK(split_in_chunks(text, chunk) == expected);
    }
}

TEST_CASE("line splitter: an overlong line is handed over in pieces", "[tool_stream]") {
    CHECK(split_in_chunks("abcdefg\nxy", 3, 3) ==
          std::vector<std::string>{"abc", "def", "g", "xy"});
}

TEST_CASE("line splitter: backspaces take back characters as a terminal shows them",
          "[tool_stream]") {
    CHECK(split_in_chunks("Writing inode tables:  0/64\b\b\b\b\b     \b\b\b\b\bdone\n\bx", 1) ==
          std::vector<std::string>{"Writing inode tables: done", "x"});
}

TEST_CASE("line splitter: nothing in, nothing out", "[tool_stream]") {
    CHECK(split_in_chunks("", 1).empty());
    CHECK(split_in_chunks("\r\n", 1) == std::vector<std::string>{""});
}
