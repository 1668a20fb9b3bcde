// Turns QMP messages into the bytes a (possibly hostile) QEMU puts on the wire.
#pragma once

#include <cstddef>
#include <string>

#include "options.hpp"
#include "qemu_json.hpp"

namespace stackemu::fake {

// Pure. QEMU ends every message with CRLF (the monitor turns "\n" into "\r\n", pretty
// output included). Hostile extras: whitespace noise or non-JSON garbage after each message.
class wire_shaper {
  public:
    wire_shaper(const options& opts, bool pretty);

    std::string frame(const value& message);

  private:
    bool pretty_;
    bool noise_;
    bool garbage_;
    std::size_t count_ = 0;
};

// A `bytes`-sized JSON array of schema-like entries, as compact text, for clients with small line
// or message caps.
std::string huge_schema_text(std::size_t bytes);

}  // namespace stackemu::fake
