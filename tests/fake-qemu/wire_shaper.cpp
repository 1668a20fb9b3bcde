// Message framing on the wire, with the hostile variants.
#include "wire_shaper.hpp"

#include <fmt/format.h>

#include <array>
#include <string_view>

namespace stackemu::fake {

wire_shaper::wire_shaper(const options& opts, bool pretty)
    : pretty_(pretty || opts.pretty), noise_(opts.noise), garbage_(opts.garbage) {
}

std::string wire_shaper::frame(const value& message) {
    std::string text = to_qemu_json(message, pretty_);
    std::string out;
    out.reserve(text.size() + 16);
    for (char c : text) {
        if (c == '\n') out += '\r';
        out += c;
    }
    out += "\r\n";
    // Valid JSON whitespace of every kind, blank lines included.
    static constexpr std::array<std::string_view, 4> noise{"\r\n", "  \t", "\n\n\r\n", " \r\n\t "};
    if (noise_) out += noise[count_ % noise.size()];
    if (garbage_) out += "#garbage: not JSON#\r\n";
    ++count_;
    return out;
}

std::string huge_schema_text(std::size_t bytes) {
    value entry = value::object();
    entry["name"] = fmt::format("x-fake-padding-type-{:08}", 0);
    entry["meta-type"] = "object";
    value member = value::object();
    member["name"] = "padding";
    member["type"] = "str";
    entry["members"] = value::array({member});
    // One entry is serialised and copied with its number rewritten in place: building and
    // serialising a million-entry JSON tree took over two minutes in a sanitizer build on a
    // busy machine, longer than the test's ceiling.
    const std::string pattern = to_qemu_json(entry);
    const auto digits = pattern.find("00000000");
    std::string out = "[";
    out.reserve(bytes + pattern.size() + 2);
    for (std::size_t i = 0; out.size() < bytes; ++i) {
        if (i > 0) out += ", ";
        const auto at = out.size();
        out += pattern;
        const auto number = fmt::format("{:08}", i % 100000000);
        out.replace(at + digits, number.size(), number);
    }
    out += ']';
    return out;
}

}  // namespace stackemu::fake
