// Fuzz target: the console line scanner and marker matching (src/lifecycle/console_scanner).
// Invariants: however the bytes are split, the same lines; one line per '\n'; a line is its raw
// bytes (up to the cap) without terminal codes or control bytes; an exact marker counts only for
// a whole line equal to it, a prefix marker only at the line's start as a whole word, and never
// for a lookalike later in a longer line.
#include "lifecycle/console_scanner.hpp"

#include <algorithm>
#include <cctype>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"

namespace {

using namespace stackemu;
using fuzz::check;
using lifecycle::console_text_line;

constexpr std::string_view ready_marker = "STACK_READY";  // also in console_scanner.dict

struct outcome {
    std::vector<console_text_line> lines;  // finish()'s line last, if any
    std::vector<std::string> history;

    bool operator==(const outcome& o) const {
        if (lines.size() != o.lines.size() || history != o.history) return false;
        for (std::size_t i = 0; i < lines.size(); ++i)
            if (lines[i].text != o.lines[i].text || lines[i].truncated != o.lines[i].truncated)
                return false;
        return true;
    }
};

outcome scan(const std::vector<std::string_view>& chunks, std::size_t cap, std::size_t history) {
    lifecycle::console_scanner scanner(cap, history);
    outcome out;
    for (auto chunk : chunks)
        for (auto& line : scanner.feed(chunk))
            out.lines.push_back(std::move(line));
    if (auto last = scanner.finish()) out.lines.push_back(std::move(*last));
    check(!scanner.finish(), "finish() leaves nothing pending");
    out.history.assign(scanner.last_lines().begin(), scanner.last_lines().end());
    return out;
}

bool is_clean(std::string_view text) {
    return std::ranges::none_of(
        text, [](unsigned char c) { return (c < 0x20 && c != '\t') || c == 0x7f; });
}

std::string_view trimmed(std::string_view view) {
    while (!view.empty() && (view.front() == ' ' || view.front() == '\t'))
        view.remove_prefix(1);
    while (!view.empty() && (view.back() == ' ' || view.back() == '\t'))
        view.remove_suffix(1);
    return view;
}

void check_marker_rules(std::string_view raw_line) {
    using lifecycle::is_marker_line;
    using lifecycle::strip_terminal_codes;
    constexpr auto exact = provision::marker_match::exact;
    constexpr auto prefix = provision::marker_match::prefix;
    const auto clean = strip_terminal_codes(raw_line);
    check(strip_terminal_codes(clean) == clean, "cleaning twice changes nothing");
    check(clean.size() <= raw_line.size() && is_clean(clean), "cleaning only removes bytes");
    for (auto match : {exact, prefix})
        check(is_marker_line(clean, ready_marker, match) ==
                  is_marker_line(raw_line, ready_marker, match),
              "a line and its cleaned text match the same markers");
    const auto view = trimmed(clean);
    if (is_marker_line(raw_line, ready_marker, exact))
        check(view == ready_marker, "an exact marker line is the marker and blanks, nothing else");
    if (is_marker_line(raw_line, ready_marker, exact))
        check(is_marker_line(raw_line, ready_marker, prefix), "an exact match is a prefix match");
    if (is_marker_line(raw_line, ready_marker, prefix)) {
        check(view.starts_with(ready_marker), "a prefix marker line starts with the marker");
        if (view.size() > ready_marker.size()) {
            const auto next = static_cast<unsigned char>(view[ready_marker.size()]);
            check(!std::isalnum(next) && next != '_' && next != '-',
                  "a prefix marker is a whole word");
        }
    }
    // Lookalikes: text before the marker makes it no marker line in either mode; text after it
    // makes it a longer line for an exact marker.
    for (auto match : {exact, prefix})
        check(!is_marker_line("# " + std::string(raw_line), ready_marker, match),
              "a marker after other text is not a marker line");
    if (raw_line.find('\x1b') == std::string_view::npos)  // an open escape may swallow the text
        check(!is_marker_line(std::string(raw_line) + " #", ready_marker, exact),
              "an exact marker before other text is not a marker line");
    check(!is_marker_line(raw_line, ""), "an empty marker never matches");
}

void check_lines(std::string_view text, std::size_t cap, std::size_t history) {
    const auto whole = scan({text}, cap, history);
    check(whole == scan(fuzz::byte_chunks(text), cap, history),
          "one byte at a time gives what one feed gives");
    check(whole == scan(fuzz::random_chunks(text, fuzz::seed_of(text), 64), cap, history),
          "random chunks give what one feed gives");

    // The reference: split the raw bytes at '\n'; a last line without one counts if non-empty.
    std::vector<std::string_view> raw;
    for (std::string_view rest = text;;) {
        const auto nl = rest.find('\n');
        if (nl == std::string_view::npos) {
            if (!rest.empty()) raw.push_back(rest);
            break;
        }
        raw.push_back(rest.substr(0, nl));
        rest.remove_prefix(nl + 1);
    }
    check(whole.lines.size() == raw.size(), "one line per newline, plus an unterminated tail");
    for (std::size_t i = 0; i < raw.size() && i < whole.lines.size(); ++i) {
        const auto& line = whole.lines[i];
        check(line.truncated == (raw[i].size() > cap), "a line is truncated only over the cap");
        check(line.text == lifecycle::strip_terminal_codes(raw[i].substr(0, cap)),
              "a line is its raw bytes, cleaned");
        check(is_clean(line.text), "a line holds no control bytes");
        if (!line.truncated)
            check(lifecycle::is_marker_line(line.text, ready_marker) ==
                      lifecycle::is_marker_line(raw[i], ready_marker),
                  "the scanner's line matches a marker as its raw bytes do");
        check_marker_rules(raw[i]);
    }
    const std::size_t kept = std::min(history, whole.lines.size());
    check(whole.history.size() == kept, "the history holds the last lines");
    for (std::size_t i = 0; i < kept; ++i)
        check(whole.history[i] == whole.lines[whole.lines.size() - kept + i].text,
              "the history holds the last lines, oldest first");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    const auto seed = fuzz::seed_of(text);
    check_lines(text, lifecycle::default_max_console_line, lifecycle::default_console_history);
    check_lines(text, 1 + seed % 48, seed % 5);  // small caps and histories reach the edges
    return 0;
}
