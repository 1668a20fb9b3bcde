// QEMU 7.2's JSON output (qobject/qjson.c, qobject/qdict.c, util/unicode.c) reimplemented.
#include "qemu_json.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cstdint>
#include <numeric>

namespace stackemu::fake {

namespace {

constexpr unsigned qdict_buckets = 512;  // QDICT_BUCKET_MAX

// qdict.c's tdb_hash().
unsigned tdb_hash(std::string_view name) {
    std::uint32_t value = 0x238F13AFu * static_cast<std::uint32_t>(name.size());
    for (std::size_t i = 0; i < name.size(); ++i)
        value = value +
                (static_cast<std::uint32_t>(static_cast<unsigned char>(name[i])) << (i * 5 % 24));
    return 1103515243u * value + 12345u;
}

void append_string(std::string& out, std::string_view s) {
    out += '"';
    std::size_t i = 0;
    while (i < s.size()) {
        std::size_t length = 0;
        int cp = mod_utf8_codepoint(s.substr(i), length);
        i += length;
        switch (cp) {
            case '"':
                out += "\\\"";
                break;
            case '\\':
                out += "\\\\";
                break;
            case '\b':
                out += "\\b";
                break;
            case '\f':
                out += "\\f";
                break;
            case '\n':
                out += "\\n";
                break;
            case '\r':
                out += "\\r";
                break;
            case '\t':
                out += "\\t";
                break;
            default:
                if (cp < 0) cp = 0xFFFD;
                if (cp > 0xFFFF) {
                    out += fmt::format("\\u{:04X}\\u{:04X}", 0xD800 + ((cp - 0x10000) >> 10),
                                       0xDC00 + ((cp - 0x10000) & 0x3FF));
                } else if (cp < 0x20 || cp >= 0x7F) {
                    out += fmt::format("\\u{:04X}", cp);
                } else {
                    out += static_cast<char>(cp);
                }
        }
    }
    out += '"';
}

void newline(std::string& out, bool pretty, int indent) {
    if (!pretty) return;
    out += '\n';
    out.append(static_cast<std::size_t>(indent) * 4, ' ');
}

void append(std::string& out, const value& v, bool pretty, int indent) {
    switch (v.type()) {
        case value::value_t::null:
            out += "null";
            break;
        case value::value_t::boolean:
            out += v.get<bool>() ? "true" : "false";
            break;
        case value::value_t::number_integer:
            out += fmt::format("{}", v.get<std::int64_t>());
            break;
        case value::value_t::number_unsigned:
            out += fmt::format("{}", v.get<std::uint64_t>());
            break;
        case value::value_t::number_float: {
            // qnum_to_string(): "%.17g", so 0.1 is 0.10000000000000001 and 1e400 is inf.
            char buffer[64];
            std::snprintf(buffer, sizeof buffer, "%.17g", v.get<double>());
            out += buffer;
            break;
        }
        case value::value_t::string:
            append_string(out, v.get_ref<const std::string&>());
            break;
        case value::value_t::object: {
            out += '{';
            const char* sep = "";
            for (const auto& key : qdict_order(v)) {
                out += sep;
                newline(out, pretty, indent + 1);
                append_string(out, key);
                out += ": ";
                append(out, v.at(key), pretty, indent + 1);
                sep = pretty ? "," : ", ";
            }
            newline(out, pretty, indent);
            out += '}';
            break;
        }
        case value::value_t::array: {
            out += '[';
            const char* sep = "";
            for (const auto& element : v) {
                out += sep;
                newline(out, pretty, indent + 1);
                append(out, element, pretty, indent + 1);
                sep = pretty ? "," : ", ";
            }
            newline(out, pretty, indent);
            out += ']';
            break;
        }
        default:
            out += "null";
            break;
    }
}

}  // namespace

int mod_utf8_codepoint(std::string_view s, std::size_t& length) {
    static constexpr int min_cp[5] = {0x80, 0x800, 0x10000, 0x200000, 0x4000000};
    length = s.empty() ? 0 : 1;
    if (s.empty() || s[0] == 0) return -1;
    const auto byte0 = static_cast<unsigned char>(s[0]);
    if (byte0 < 0x80) return byte0;
    if (byte0 >= 0xFE) return -1;        // impossible bytes
    if ((byte0 & 0x40) == 0) return -1;  // unexpected continuation byte
    unsigned len = 0;
    unsigned mask = 0x80;
    for (; byte0 & mask; mask >>= 1)
        ++len;
    int cp = static_cast<int>(byte0 & (mask - 1));
    for (unsigned i = 1; i < len; ++i) {
        const unsigned byte = i < s.size() ? static_cast<unsigned char>(s[i]) : 0;
        if ((byte & 0xC0) != 0x80) return -1;  // continuation byte missing
        ++length;
        cp = (cp << 6) | static_cast<int>(byte & 0x3F);
    }
    if (cp > 0x10FFFF) return -1;
    if ((cp >= 0xFDD0 && cp <= 0xFDEF) || (cp & 0xFFFE) == 0xFFFE) return -1;  // noncharacter
    if (cp >= 0xD800 && cp <= 0xDFFF) return -1;                               // surrogate
    if (cp < min_cp[len - 2] && !(cp == 0 && len == 2)) return -1;  // overlong, not \xC0\x80
    return cp;
}

std::vector<std::string> qdict_order(const value& v) {
    std::vector<std::string> keys;
    for (const auto& [key, _] : v.items())
        keys.push_back(key);
    std::vector<std::size_t> index(keys.size());
    std::iota(index.begin(), index.end(), 0);
    std::stable_sort(index.begin(), index.end(), [&](std::size_t a, std::size_t b) {
        const unsigned bucket_a = tdb_hash(keys[a]) % qdict_buckets;
        const unsigned bucket_b = tdb_hash(keys[b]) % qdict_buckets;
        if (bucket_a != bucket_b) return bucket_a < bucket_b;
        return a > b;  // QLIST_INSERT_HEAD: the newest entry of a bucket comes first
    });
    std::vector<std::string> ordered;
    for (auto i : index)
        ordered.push_back(keys[i]);
    return ordered;
}

std::vector<std::string> ghash_order(const std::vector<std::string>& keys) {
    if (keys.size() > 7) return keys;
    // glib: 8 slots, mod 7, index (hash * 11) % mod, probing with a growing step.
    std::vector<const std::string*> slots(8, nullptr);
    for (const auto& key : keys) {
        std::uint32_t hash = 5381;
        for (char c : key)
            hash = (hash << 5) + hash + static_cast<std::uint32_t>(static_cast<signed char>(c));
        if (hash < 2) hash = 2;
        std::uint32_t index = (hash * 11) % 7;
        std::uint32_t step = 0;
        while (slots[index] != nullptr)
            index = (index + ++step) & 7;
        slots[index] = &key;
    }
    std::vector<std::string> ordered;
    for (const auto* slot : slots)
        if (slot) ordered.push_back(*slot);
    return ordered;
}

std::string to_qemu_json(const value& v, bool pretty) {
    std::string out;
    append(out, v, pretty, 0);
    return out;
}

}  // namespace stackemu::fake
