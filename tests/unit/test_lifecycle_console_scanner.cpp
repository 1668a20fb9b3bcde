// The console scanner: whole clean lines from any chunking, whole-line markers, a line cap.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "lifecycle/console_scanner.hpp"

using namespace stackemu::lifecycle;

namespace {

using namespace std::string_literals;

// What firmware and a Debian guest put on a serial console, escapes, NUL and all.
const std::string console_text =
    "\x1b"
    "c\x1b[2J\x1b[01;01HSeaBIOS (version 1.16.2)\r\n"
    "Booting from Hard Disk...\r\n"
    "\x1b[0m\x1b[32m  OK  \x1b[0m] Started ssh.service\r\n"
    "\x1b]0;title\x07"
    "STACK_EMULATOR_READY\r\n"
    "nul\0byte\n"
    "\r\n"
    "echo STACK_CLOUD_INIT_FAILED\n"
    "\x1b(BSTACK_CLOUD_INIT_FAILED\r\r\n"
    "tail without newline"s;

const std::vector<std::string> console_lines = {"SeaBIOS (version 1.16.2)",
                                                "Booting from Hard Disk...",
                                                "  OK  ] Started ssh.service",
                                                "STACK_EMULATOR_READY",
                                                "nulbyte",
                                                "",
                                                "echo STACK_CLOUD_INIT_FAILED",
                                                "STACK_CLOUD_INIT_FAILED"};

std::vector<std::string> texts(const std::vector<console_text_line>& lines) {
    std::vector<std::string> out;
    for (const auto& line : lines)
        out.push_back(line.text);
    return out;
}

std::vector<std::string> scan(console_scanner& s, const std::vector<std::string>& chunks) {
    std::vector<std::string> out;
    for (const auto& chunk : chunks) {
        for (auto& line : texts(s.feed(chunk)))
            out.push_back(std::move(line));
    }
    return out;
}

}  // namespace

TEST_CASE("the sample console text holds a NUL byte") {
    REQUIRE(console_text.find('\0') != std::string::npos);
}

TEST_CASE("a console read in one chunk gives clean lines") {
    console_scanner s;
    CHECK(scan(s, {console_text}) == console_lines);
    auto tail = s.finish();
    REQUIRE(tail.has_value());
    CHECK(tail->text == "tail without newline");
    CHECK_FALSE(s.finish().has_value());
}

TEST_CASE("every split point of the console gives the same lines") {
    for (std::size_t split = 0; split <= console_text.size(); ++split) {
        CAPTURE(split);
        console_scanner s;
        REQUIRE(scan(s, {console_text.substr(0, split), console_text.substr(split)}) ==
                console_lines);
        REQUIRE(s.finish()->text == "tail without newline");
    }
}

TEST_CASE("every pair of split points gives the same lines") {
    for (std::size_t a = 0; a <= console_text.size(); ++a) {
        for (std::size_t b = a; b <= console_text.size(); ++b) {
            console_scanner s;
            auto got = scan(s, {console_text.substr(0, a), console_text.substr(a, b - a),
                                console_text.substr(b)});
            if (got != console_lines) {
                CAPTURE(a, b);
                REQUIRE(got == console_lines);
            }
        }
    }
}

TEST_CASE("the console fed byte by byte gives the same lines") {
    console_scanner s;
    std::vector<std::string> chunks;
    for (char c : console_text)
        chunks.emplace_back(1, c);
    CHECK(scan(s, chunks) == console_lines);
}

TEST_CASE("a line over the cap is truncated and the following lines survive") {
    // Built by append: GCC 12 misreports `std::string(n, c) + "..."` under -Warray-bounds.
    std::string input(100, 'a');
    input += "STACK_CLOUD_INIT_FAILED\nnext\nlast\n";
    for (std::size_t split = 0; split <= input.size(); ++split) {
        CAPTURE(split);
        console_scanner s(16);
        auto first = s.feed(input.substr(0, split));
        auto second = s.feed(input.substr(split));
        first.insert(first.end(), second.begin(), second.end());
        REQUIRE(first.size() == 3);
        CHECK(first[0].text == std::string(16, 'a'));
        CHECK(first[0].truncated);
        CHECK(first[1].text == "next");
        CHECK_FALSE(first[1].truncated);
        CHECK(first[2].text == "last");
    }
}

TEST_CASE("a line of exactly the cap is not truncated") {
    console_scanner s(4);
    auto lines = s.feed("abcd\nabcde\n");
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].text == "abcd");
    CHECK_FALSE(lines[0].truncated);
    CHECK(lines[1].text == "abcd");
    CHECK(lines[1].truncated);
}

TEST_CASE("a truncated line without a newline at the end is still reported") {
    console_scanner s(4);
    CHECK(s.feed("abcdefgh").empty());
    auto tail = s.finish();
    REQUIRE(tail.has_value());
    CHECK(tail->text == "abcd");
    CHECK(tail->truncated);
}

TEST_CASE("the default cap is 64 KiB") {
    console_scanner s;
    std::string input(default_max_console_line + 10, 'x');
    input += "\nok\n";
    auto lines = s.feed(input);
    REQUIRE(lines.size() == 2);
    CHECK(lines[0].text.size() == 64 * 1024);
    CHECK(lines[0].truncated);
    CHECK(lines[1].text == "ok");
}

TEST_CASE("the scanner keeps the last 40 lines oldest first") {
    console_scanner s;
    std::string input;
    for (int i = 0; i < 100; ++i)
        input += "line " + std::to_string(i) + "\r\n";
    s.feed(input);
    REQUIRE(s.last_lines().size() == 40);
    CHECK(s.last_lines().front() == "line 60");
    CHECK(s.last_lines().back() == "line 99");
}

TEST_CASE("a marker at the start of a line followed by more text matches by default") {
    CHECK(is_marker_line("GUEST_READY uptime=1.8", "GUEST_READY"));
    CHECK(is_marker_line("GUEST_READY: all services up", "GUEST_READY"));
    CHECK(is_marker_line("\x1b[0mGUEST_READY\tuptime=2", "GUEST_READY"));
    CHECK_FALSE(is_marker_line("GUEST_READY_SOON uptime=1.8", "GUEST_READY"));
    CHECK_FALSE(is_marker_line("GUEST_READY-ish", "GUEST_READY"));
    CHECK_FALSE(is_marker_line("GUEST_READY2", "GUEST_READY"));
    CHECK_FALSE(is_marker_line("not GUEST_READY yet", "GUEST_READY"));
}

TEST_CASE("an exact marker matches only the whole line") {
    using stackemu::provision::marker_match;
    CHECK(is_marker_line("  GUEST_READY ", "GUEST_READY", marker_match::exact));
    CHECK_FALSE(is_marker_line("GUEST_READY uptime=1.8", "GUEST_READY", marker_match::exact));
}

TEST_CASE("the kernel's panic line is recognised with or without a timestamp") {
    CHECK(is_kernel_panic_line("Kernel panic - not syncing: Attempted to kill init!"));
    CHECK(is_kernel_panic_line(
        "[    2.345678] Kernel panic - not syncing: VFS: Unable to mount root fs"));
    CHECK(is_kernel_panic_line("---[ end Kernel panic - not syncing: sysrq triggered crash ]---"));
    CHECK_FALSE(is_kernel_panic_line("panic=10 console=ttyS0"));
    CHECK_FALSE(is_kernel_panic_line("Kernel command line: panic=10"));
}

TEST_CASE("markers match whole lines only") {
    CHECK(is_marker_line("STACK_EMULATOR_READY", "STACK_EMULATOR_READY"));
    CHECK(is_marker_line("STACK_EMULATOR_READY\r", "STACK_EMULATOR_READY"));
    CHECK(is_marker_line("  STACK_EMULATOR_READY\t", "STACK_EMULATOR_READY"));
    CHECK(is_marker_line("\x1b[1;32mSTACK_EMULATOR_READY\x1b[0m", "STACK_EMULATOR_READY"));
    CHECK_FALSE(is_marker_line("STACK_EMULATOR_READY_SOON", "STACK_EMULATOR_READY"));
    CHECK_FALSE(is_marker_line("echo STACK_EMULATOR_READY", "STACK_EMULATOR_READY"));
    CHECK_FALSE(is_marker_line("[   12.3] STACK_EMULATOR_READY", "STACK_EMULATOR_READY"));
    CHECK_FALSE(is_marker_line("", "STACK_EMULATOR_READY"));
    CHECK_FALSE(is_marker_line("anything", ""));
}

TEST_CASE("terminal codes are stripped") {
    CHECK(strip_terminal_codes("\x1b[?25l\x1b[1;1Hplain\x1b[K") == "plain");
    CHECK(strip_terminal_codes("a\x1b]2;window title\x1b\\b") == "ab");
    CHECK(strip_terminal_codes("a\x1b=b\x1b>c\x1b"
                               "7d") == "abcd");
    CHECK(strip_terminal_codes("tab\tkept\x08\x7f") == "tab\tkept");
    CHECK(strip_terminal_codes("broken\x1b[12") == "broken");
    CHECK(strip_terminal_codes("utf-8 \xc3\xa9 kept") == "utf-8 \xc3\xa9 kept");
}
