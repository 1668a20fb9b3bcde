// Finding the guest agent's answer to guest-sync-delimited in a channel that may hold stale
// bytes: pure, so that it can be tested and fuzzed without a socket.
#pragma once

#include <cstdint>
#include <functional>
#include <string_view>

#include "qmp/framer.hpp"

namespace stackemu::qmp::qga {

// QGA_SENTINEL_BYTE: never valid in UTF-8 JSON, so it cannot occur inside a message.
inline constexpr char sync_sentinel = '\xff';

// Sans-io. After the client writes 0xFF and guest-sync-delimited {"id": token}, the agent
// precedes its reply with 0xFF. Everything before a sentinel is stale, and so is every message
// after one that is not {"return": token}: an earlier client's sync may still be queued
// (qga-schema.json, guest-sync-delimited). Bytes go in as read, in chunks of any size; the
// outcome does not depend on where the chunks are cut.
class sync_reader {
  public:
    // `observe` sees every message framed while looking for the answer (tracing).
    explicit sync_reader(std::int64_t token,
                         std::function<void(std::string_view)> observe = nullptr);

    // Feeds bytes read from the channel; `messages` frames them and must not be used by anyone
    // else until this returns true. True once the answer has come: every byte after it is then
    // in `messages`, for the commands that follow. Later calls feed `messages` directly.
    bool feed(std::string_view bytes, framer& messages);

    bool answered() const { return answered_; }
    // Messages after a sentinel that were not the answer.
    std::uint64_t stale_replies() const { return stale_replies_; }

  private:
    std::int64_t token_;
    std::function<void(std::string_view)> observe_;
    bool seen_sentinel_ = false;
    bool answered_ = false;
    std::uint64_t stale_replies_ = 0;
};

}  // namespace stackemu::qmp::qga
