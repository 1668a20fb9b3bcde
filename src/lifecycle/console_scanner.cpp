// Console line scanning and terminal-escape stripping.
#include "lifecycle/console_scanner.hpp"

#include <cctype>

namespace stackemu::lifecycle {

namespace {

constexpr char esc = '\x1b';
constexpr char bel = '\x07';

bool in_range(unsigned char c, unsigned char lo, unsigned char hi) {
    return c >= lo && c <= hi;
}

// Index just past the escape sequence that starts at raw[i] == ESC. An unterminated sequence
// runs to the end of the line: nothing after a broken escape is trustworthy for matching.
std::size_t skip_escape(std::string_view raw, std::size_t i) {
    const std::size_t n = raw.size();
    if (i + 1 >= n) return n;
    const auto kind = static_cast<unsigned char>(raw[i + 1]);
    if (kind == '[') {  // CSI: parameters 0x30-0x3F, intermediates 0x20-0x2F, final 0x40-0x7E
        std::size_t j = i + 2;
        while (j < n && in_range(static_cast<unsigned char>(raw[j]), 0x20, 0x3f))
            ++j;
        return j < n ? j + 1 : n;
    }
    if (kind == ']' || kind == 'P' || kind == '_' || kind == '^' || kind == 'X') {
        // OSC/DCS/APC/PM/SOS: a string ended by BEL or ST (ESC \).
        for (std::size_t j = i + 2; j < n; ++j) {
            if (raw[j] == bel) return j + 1;
            if (raw[j] == esc && j + 1 < n && raw[j + 1] == '\\') return j + 2;
        }
        return n;
    }
    // nF forms such as ESC ( B: intermediates, then one final byte.
    std::size_t j = i + 1;
    while (j < n && in_range(static_cast<unsigned char>(raw[j]), 0x20, 0x2f))
        ++j;
    return j < n ? j + 1 : n;
}

bool is_blank(char c) {
    return c == ' ' || c == '\t';
}

}  // namespace

std::string strip_terminal_codes(std::string_view raw) {
    std::string out;
    out.reserve(raw.size());
    for (std::size_t i = 0; i < raw.size();) {
        const auto c = static_cast<unsigned char>(raw[i]);
        if (c == static_cast<unsigned char>(esc)) {
            i = skip_escape(raw, i);
            continue;
        }
        if ((c < 0x20 && c != '\t') || c == 0x7f) {
            ++i;
            continue;
        }
        out += static_cast<char>(c);
        ++i;
    }
    return out;
}

bool is_marker_line(std::string_view line, std::string_view marker, provision::marker_match match) {
    if (marker.empty()) return false;
    const auto clean = strip_terminal_codes(line);
    std::string_view view = clean;
    while (!view.empty() && is_blank(view.front()))
        view.remove_prefix(1);
    while (!view.empty() && is_blank(view.back()))
        view.remove_suffix(1);
    if (view == marker) return true;
    if (match == provision::marker_match::exact || !view.starts_with(marker)) return false;
    // Whole word: what follows may not continue an identifier (READY vs READY_SOON).
    const auto next = static_cast<unsigned char>(view[marker.size()]);
    return !(std::isalnum(next) || next == '_' || next == '-');
}

bool is_kernel_panic_line(std::string_view line) {
    return line.find("Kernel panic - not syncing") != std::string_view::npos;
}

console_scanner::console_scanner(std::size_t max_line, std::size_t history)
    : max_line_(max_line), history_size_(history) {
}

std::vector<console_text_line> console_scanner::feed(std::string_view bytes) {
    std::vector<console_text_line> lines;
    while (!bytes.empty()) {
        const auto newline = bytes.find('\n');
        const auto body = bytes.substr(0, newline);
        const auto room = max_line_ - pending_.size();
        if (body.size() > room) overflowed_ = true;
        pending_.append(body.substr(0, room));
        if (newline == std::string_view::npos) break;
        lines.push_back(complete_line());
        bytes.remove_prefix(newline + 1);
    }
    return lines;
}

std::optional<console_text_line> console_scanner::finish() {
    if (pending_.empty() && !overflowed_) return std::nullopt;
    return complete_line();
}

console_text_line console_scanner::complete_line() {
    console_text_line line{strip_terminal_codes(pending_), overflowed_};
    pending_.clear();
    overflowed_ = false;
    if (history_size_ > 0) {
        if (history_.size() == history_size_) history_.pop_front();
        history_.push_back(line.text);
    }
    return line;
}

}  // namespace stackemu::lifecycle
