// Cuts a QMP byte stream into JSON texts by structure (braces, strings, escapes), never by newline.
#pragma once

#include <cstddef>
#include <cstdint>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::qmp {

// QEMU accepts 64 MiB per message; it sends more than 64 KiB (query-qmp-schema), so a line
// limit is wrong and the cap must be large but finite (qmp.md, "Framing").
inline constexpr std::size_t default_max_message = 64u << 20;
inline constexpr std::size_t max_nesting = 1024;

// "malformed message from QEMU at byte offset N: <hex of up to 16 bytes from there> (why)".
error malformed_message(std::uint64_t offset, std::string_view from_there,
                        std::string_view why = {});

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

    // Where in the whole stream (bytes fed since construction or reset) the message last
    // returned by next() begins: error messages name offsets in the stream.
    std::uint64_t message_offset() const { return message_offset_; }
    // Bytes held that belong to no complete message yet.
    std::size_t buffered() const { return buffer_.size() - consumed_; }
    // Forgets all state, including a previous error (QGA resynchronisation).
    void reset();

  private:
    std::string buffer_;
    std::uint64_t base_ = 0;  // stream offset of buffer_[0]
    std::uint64_t message_offset_ = 0;
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
