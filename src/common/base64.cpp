// Base64 encoding and strict decoding (RFC 4648, section 4).
#include "common/base64.hpp"

#include <fmt/format.h>

#include <array>
#include <cstdint>

namespace stackemu {

namespace {

constexpr std::string_view alphabet =
    "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

constexpr std::uint8_t invalid = 0xff;

constexpr std::array<std::uint8_t, 256> make_decode_table() {
    std::array<std::uint8_t, 256> table{};
    for (auto& v : table)
        v = invalid;
    for (std::size_t i = 0; i < alphabet.size(); ++i)
        table[static_cast<unsigned char>(alphabet[i])] = static_cast<std::uint8_t>(i);
    return table;
}

constexpr auto decode_table = make_decode_table();

std::unexpected<error> bad(std::size_t position, std::string_view why) {
    return fail(errc::invalid_argument,
                fmt::format("invalid base64 at character {}: {}", position, why));
}

}  // namespace

std::string base64_encode(std::string_view bytes) {
    std::string out;
    out.reserve((bytes.size() + 2) / 3 * 4);
    std::size_t i = 0;
    for (; i + 3 <= bytes.size(); i += 3) {
        const std::uint32_t n =
            static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16 |
            static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8 |
            static_cast<unsigned char>(bytes[i + 2]);
        out.push_back(alphabet[n >> 18 & 63]);
        out.push_back(alphabet[n >> 12 & 63]);
        out.push_back(alphabet[n >> 6 & 63]);
        out.push_back(alphabet[n & 63]);
    }
    const std::size_t rest = bytes.size() - i;
    if (rest == 0) return out;
    std::uint32_t n = static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i])) << 16;
    if (rest == 2) n |= static_cast<std::uint32_t>(static_cast<unsigned char>(bytes[i + 1])) << 8;
    out.push_back(alphabet[n >> 18 & 63]);
    out.push_back(alphabet[n >> 12 & 63]);
    out.push_back(rest == 2 ? alphabet[n >> 6 & 63] : '=');
    out.push_back('=');
    return out;
}

result<std::string> base64_decode(std::string_view text) {
    if (text.size() % 4 != 0)
        return fail(errc::invalid_argument,
                    fmt::format("invalid base64: length {} is not a multiple of 4", text.size()));
    std::string out;
    out.reserve(text.size() / 4 * 3);
    for (std::size_t i = 0; i < text.size(); i += 4) {
        const bool last = i + 4 == text.size();
        // Padding: only in the last quantum, as "xx==" or "xxx=".
        std::size_t pad = 0;
        if (last && text[i + 3] == '=') pad = text[i + 2] == '=' ? 2 : 1;
        std::uint32_t n = 0;
        for (std::size_t k = 0; k < 4; ++k) {
            const char c = text[i + k];
            if (k >= 4 - pad) {
                n <<= 6;
                continue;
            }
            const std::uint8_t v = decode_table[static_cast<unsigned char>(c)];
            if (v == invalid)
                return bad(i + k, c == '=' ? "padding before the end"
                                           : fmt::format("byte 0x{:02x} is not in the alphabet",
                                                         static_cast<unsigned char>(c)));
            n = n << 6 | v;
        }
        // Non-zero bits under the padding mean a different encoder wrote different bytes.
        if ((pad == 1 && (n & 0xff) != 0) || (pad == 2 && (n & 0xffff) != 0))
            return bad(i + 3 - pad, "non-zero padding bits");
        out.push_back(static_cast<char>(n >> 16 & 0xff));
        if (pad < 2) out.push_back(static_cast<char>(n >> 8 & 0xff));
        if (pad < 1) out.push_back(static_cast<char>(n & 0xff));
    }
    return out;
}

}  // namespace stackemu
