// Cuts the guest's serial output into clean lines for marker matching and failure reports.
#pragma once

#include <cstddef>
#include <deque>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "provision/manifest.hpp"

namespace stackemu::lifecycle {

inline constexpr std::size_t default_max_console_line = std::size_t{64} * 1024;
inline constexpr std::size_t default_console_history = 40;  // upstream prints the last 40 lines

struct console_text_line {
    std::string text;        // without terminal escapes, CR, NUL or other control bytes
    bool truncated = false;  // the raw line was longer than the cap; the rest was dropped
};

// Removes ANSI/VT escape sequences (CSI, OSC, two-byte ESC forms) and control bytes other
// than TAB. Firmware paints the console with them (SeaBIOS, edk2), and a marker printed
// after one must still match.
std::string strip_terminal_codes(std::string_view raw);

// True when `line`, once cleaned and with surrounding blanks removed, starts with `marker` as a
// whole word (prefix: `GUEST_READY uptime=1.8`, not `GUEST_READY_SOON`) or is exactly `marker`
// (exact). A marker inside a longer line (a log quoting it, an echo of a command) never counts.
bool is_marker_line(std::string_view line, std::string_view marker,
                    provision::marker_match match = provision::marker_match::prefix);

// The kernel's own panic line ("Kernel panic - not syncing: ..."), printed with or without a
// printk timestamp: a panic seen on the console needs no pvpanic device in the guest.
bool is_kernel_panic_line(std::string_view line);

// Sans-io: bytes in as they arrive, in chunks of any size; whole lines out. The raw line is
// buffered until its '\n', so a split anywhere (inside CRLF or an escape sequence) gives the
// same lines. A line longer than the cap keeps its first max_line raw bytes and the rest is
// skipped up to the next '\n', so one runaway line cannot hide the lines after it.
class console_scanner {
  public:
    explicit console_scanner(std::size_t max_line = default_max_console_line,
                             std::size_t history = default_console_history);

    std::vector<console_text_line> feed(std::string_view bytes);
    // The unterminated last line at end of stream, if any bytes are pending.
    std::optional<console_text_line> finish();

    // The most recent lines, oldest first, for failure reports.
    const std::deque<std::string>& last_lines() const { return history_; }

  private:
    console_text_line complete_line();

    std::size_t max_line_;
    std::size_t history_size_;
    std::string pending_;  // raw bytes of the current line, at most max_line_
    bool overflowed_ = false;
    std::deque<std::string> history_;
};

}  // namespace stackemu::lifecycle
