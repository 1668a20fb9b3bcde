// Base64 (RFC 4648, section 4: standard alphabet, '=' padding) for the guest agent's byte fields.
#pragma once

#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu {

// Encodes arbitrary bytes; the output is padded to a multiple of four characters.
std::string base64_encode(std::string_view bytes);

// Decodes strict RFC 4648 base64: a multiple of four characters from the standard alphabet,
// '=' only as the final one or two characters, and zero padding bits (as every encoder writes,
// GLib's g_base64_encode included). No whitespace. Anything else is errc::invalid_argument.
result<std::string> base64_decode(std::string_view text);

}  // namespace stackemu
