// Cuts a QMP byte stream into JSON texts by structure (braces, strings, escapes), never by newline.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::qmp {

// QEMU accepts 64 MiB per message; it sends more than 64 KiB (query-qmp-schema), so a line
// limit is wrong and the cap must be large but finite (qmp.md, "Framing").
inline constexpr std::size_t default_max_message = 64u << 20;
inline constexpr std::size_t max_nesting = 1024;

// Sans-io: bytes in, whole messages out. Each input byte is examined once (linear time):
// the scan position survives across feed() calls, and consumed bytes are dropped lazily.
// Between messages only whitespace is allowed (QEMU's CRLF, pretty-printing); every message
// must be a JSON object, as QMP messages are.
class framer {
  public:
    explicit framer(std::size_t max_message_bytes = default_max_message);

    // Appends bytes as they were read from the peer.
    void feed(std::string_view bytes);

    // The next complete message, valid until the next feed() or next() call; nullopt when more
    // bytes are needed. Errors are fatal: once one is returned, every later call returns it.
    result<std::optional<std::string_view>> next();

    // Bytes held that belong to no complete message yet.
    std::size_t buffered() const { return buffer_.size() - consumed_; }
    // Forgets all state, including a previous error (QGA resynchronisation).
    void reset();

  private:
    std::string buffer_;
    std::size_t consumed_ = 0;  // bytes before this belong to messages already returned
    std::size_t scan_ = 0;      // next byte to examine
    std::size_t depth_ = 0;
    bool in_message_ = false;
    bool in_string_ = false;
    bool escaped_ = false;
    std::size_t max_message_;
    std::optional<error> error_;
};

}  // namespace stackemu::qmp
