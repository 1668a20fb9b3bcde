// QEMU 7.2's QMP input parser (json-lexer.c, json-streamer.c, json-parser.c), byte for byte.
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "qemu_json.hpp"

namespace stackemu::fake {

// Sans-io: bytes in, complete JSON values or QEMU's parse errors out, with QEMU's quirks:
// single-quoted strings, recovery after a lexical error at the next structural character or
// control byte, a top-level value emitted as soon as its brackets balance (or go negative).
// The structural framer of src/qmp cannot serve here: it rejects non-objects fatally, while
// QEMU answers every broken input with an error and reads on.
class json_reader {
  public:
    struct item {
        std::optional<value> json;  // set on success
        std::string error;          // "JSON parse error, ..." otherwise
    };

    // Feeds bytes; appends every value or error they complete to `out`.
    void feed(std::string_view bytes, std::vector<item>& out);
    void reset();

  private:
    enum class token_type {
        lcurly,
        rcurly,
        lsquare,
        rsquare,
        colon,
        comma,
        integer,
        floating,
        keyword,
        string,
        error
    };
    struct token {
        token_type type;
        std::string text;
    };

    void feed_char(unsigned char c, std::vector<item>& out);
    void process_token(token_type type, std::vector<item>& out);

    int state_ = 0;
    std::string token_;
    std::vector<token> tokens_;
    long brace_count_ = 0;
    long bracket_count_ = 0;
    std::size_t token_size_ = 0;
};

}  // namespace stackemu::fake
