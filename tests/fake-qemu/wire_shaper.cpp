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

value huge_schema(std::size_t bytes) {
    value entry = value::object();
    entry["name"] = fmt::format("x-fake-padding-type-{:08}", 0);
    entry["meta-type"] = "object";
    value member = value::object();
    member["name"] = "padding";
    member["type"] = "str";
    entry["members"] = value::array({member});
    // Every entry has the same length (8-digit names), so it is measured once: serialising each
    // one to count made a 100 MB reply take longer than a client's timeout in a sanitizer build.
    const std::size_t entry_size = to_qemu_json(entry).size() + 2;
    value list = value::array();
    for (std::size_t i = 0, size = 0; size < bytes; ++i, size += entry_size) {
        entry["name"] = fmt::format("x-fake-padding-type-{:08}", i);
        list.push_back(entry);
    }
    return list;
}

}  // namespace stackemu::fake
