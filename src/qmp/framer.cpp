// Structural JSON framing for QMP streams.
#include "qmp/framer.hpp"

#include <fmt/format.h>

namespace stackemu::qmp {

namespace {

bool is_json_whitespace(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::string describe_byte(char c) {
    auto u = static_cast<unsigned char>(c);
    if (u >= 0x20 && u < 0x7f) return fmt::format("'{}'", c);
    return fmt::format("byte 0x{:02x}", u);
}

}  // namespace

error malformed_message(std::uint64_t offset, std::string_view from_there, std::string_view why) {
    std::string hex;
    for (char c : from_there.substr(0, 16))
        hex += fmt::format("{}{:02x}", hex.empty() ? "" : " ", static_cast<unsigned char>(c));
    if (from_there.size() > 16) hex += " ...";
    return make_error(errc::protocol_error,
                      fmt::format("malformed message from QEMU at byte offset {}: {}{}{}{}", offset,
                                  hex, why.empty() ? "" : " (", why, why.empty() ? "" : ")"));
}

framer::framer(std::size_t max_message_bytes) : max_message_(max_message_bytes) {
}

void framer::feed(std::string_view bytes) {
    // Drop what was consumed once it is at least half the buffer: amortised O(1) per byte.
    if (consumed_ > 0 && consumed_ * 2 >= buffer_.size()) {
        buffer_.erase(0, consumed_);
        base_ += consumed_;
        scan_ -= consumed_;
        consumed_ = 0;
    }
    buffer_.append(bytes);
}

void framer::reset() {
    buffer_.clear();
    consumed_ = scan_ = depth_ = 0;
    base_ = message_offset_ = 0;
    in_message_ = in_string_ = escaped_ = false;
    error_.reset();
}

result<std::optional<std::string_view>> framer::next() {
    if (error_) return fail(*error_);
    const std::size_t end = buffer_.size();
    while (scan_ < end) {
        const char c = buffer_[scan_];
        if (!in_message_) {
            if (is_json_whitespace(c)) {
                consumed_ = ++scan_;
                continue;
            }
            if (c != '{') {
                // Every QMP message is an object: anything else is not QMP at all.
                error_ = malformed_message(
                    base_ + scan_, std::string_view(buffer_).substr(scan_),
                    fmt::format("expected a JSON object, got {}", describe_byte(c)));
                return fail(*error_);
            }
            in_message_ = true;
            depth_ = 1;
            ++scan_;
            continue;
        }
        // Counted before the byte is looked at, so that a closing bracket cannot carry a message
        // one byte past the cap.
        if (++scan_ - consumed_ > max_message_) break;
        if (in_string_) {
            if (escaped_) {
                escaped_ = false;
            } else if (c == '\\') {
                escaped_ = true;
            } else if (c == '"') {
                in_string_ = false;
            }
        } else if (c == '"') {
            in_string_ = true;
        } else if (c == '{' || c == '[') {
            if (++depth_ > max_nesting) {
                error_ =
                    make_error(errc::protocol_error,
                               fmt::format("message nests deeper than {} levels", max_nesting));
                return fail(*error_);
            }
        } else if (c == '}' || c == ']') {
            if (--depth_ == 0) {
                std::string_view message(buffer_.data() + consumed_, scan_ - consumed_);
                message_offset_ = base_ + consumed_;
                consumed_ = scan_;
                in_message_ = false;
                return std::optional<std::string_view>(message);
            }
        }
    }
    if (in_message_ && scan_ - consumed_ > max_message_) {
        error_ =
            make_error(errc::message_too_large,
                       fmt::format("a QMP message exceeded the {} byte limit "
                                   "(raise the client's max_message_bytes if this is expected)",
                                   max_message_));
        return fail(*error_);
    }
    return std::optional<std::string_view>{};
}

}  // namespace stackemu::qmp
