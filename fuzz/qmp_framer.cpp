// Fuzz target: the QMP framer (src/qmp/framer). Invariants: however the bytes are split, the
// same messages and the same outcome; every message is the input's own text, in order, with
// only JSON whitespace between; none is over the cap; one valid JSON object is one message.
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "qmp/framer.hpp"

namespace {

using namespace stackemu;
using fuzz::check;

struct outcome {
    std::vector<std::string> messages;
    std::optional<error> failure;
    std::size_t buffered = 0;  // only meaningful without a failure (input stops at one)
};

outcome frame(const std::vector<std::string_view>& chunks, std::size_t cap) {
    qmp::framer f(cap);
    outcome out;
    for (auto chunk : chunks) {
        f.feed(chunk);
        for (;;) {
            auto next = f.next();
            if (!next) {
                out.failure = next.error();
                auto again = f.next();
                check(!again && again.error().code == next.error().code &&
                          again.error().message == next.error().message,
                      "an error is returned again by every later call");
                return out;
            }
            if (!*next) break;
            out.messages.emplace_back(**next);
        }
    }
    out.buffered = f.buffered();
    return out;
}

bool same(const outcome& a, const outcome& b) {
    if (a.messages != b.messages || a.failure.has_value() != b.failure.has_value()) return false;
    if (a.failure)
        return a.failure->code == b.failure->code && a.failure->message == b.failure->message;
    return a.buffered == b.buffered;
}

bool is_json_whitespace(char c) {
    return c == ' ' || c == '\t' || c == '\r' || c == '\n';
}

std::size_t skip_whitespace(std::string_view text, std::size_t pos) {
    while (pos < text.size() && is_json_whitespace(text[pos]))
        ++pos;
    return pos;
}

void check_cap(std::string_view text, std::size_t cap) {
    const auto whole = frame({text}, cap);
    check(same(whole, frame(fuzz::byte_chunks(text), cap)),
          "one byte at a time gives what one feed gives");
    check(same(whole, frame(fuzz::random_chunks(text, fuzz::seed_of(text)), cap)),
          "random chunks give what one feed gives");

    std::size_t pos = 0;
    for (const auto& m : whole.messages) {
        pos = skip_whitespace(text, pos);
        check(text.substr(pos, m.size()) == m, "a message is the next text of the input");
        check(m.front() == '{' && (m.back() == '}' || m.back() == ']'),
              "a message is framed from '{' to its closing bracket");
        check(m.size() <= cap, "no message is over the cap");
        pos += m.size();
    }
    if (!whole.failure) {
        pos = skip_whitespace(text, pos);
        check(whole.buffered == text.size() - pos, "what is buffered is the unfinished tail");
        check(whole.buffered == 0 || text[pos] == '{', "a buffered tail starts a message");
    }

    // One valid JSON object, within the cap, is exactly one message.
    const std::size_t first = skip_whitespace(text, 0);
    std::size_t last = text.size();
    while (last > first && is_json_whitespace(text[last - 1]))
        --last;
    const auto trimmed = text.substr(first, last - first);
    // (nlohmann's lexer takes a NUL byte for the end of input, so texts with one are left out.)
    if (!trimmed.empty() && trimmed.front() == '{' && trimmed.size() <= cap &&
        trimmed.find('\0') == std::string_view::npos && nlohmann::json::accept(trimmed)) {
        const bool too_deep =
            whole.failure && whole.failure->message.find("nests deeper") != std::string::npos;
        check(too_deep || (!whole.failure && whole.messages.size() == 1 &&
                           whole.messages.front() == trimmed),
              "a valid JSON object is framed as one message");
    }
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    check_cap(text, qmp::default_max_message);
    check_cap(text, 1 + fuzz::seed_of(text) % 64);  // small caps reach the limit paths
    return 0;
}
