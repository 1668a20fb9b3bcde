// Fuzz target: finding the guest agent's guest-sync-delimited answer (src/qmp/qga_sync).
// Invariants: however the bytes are split, the same outcome and the same bytes left for later
// commands; nothing is an answer before a sentinel; stale bytes before our sentinel never hide
// our answer, and everything after the answer is kept for the commands that follow.
#include "qmp/qga_sync.hpp"

#include <optional>
#include <string>
#include <vector>

#include "fuzz_support.hpp"
#include "qmp/framer.hpp"

namespace {

using namespace stackemu;
using fuzz::check;

constexpr std::int64_t token = 4242;  // also in qga_sync.dict, so the fuzzer can write it

struct outcome {
    bool answered = false;
    std::uint64_t stale = 0;
    std::size_t buffered_after = 0;  // bytes held for later commands when answered
    std::vector<std::string> later;  // what those bytes frame as
    std::optional<errc> later_failure;

    bool operator==(const outcome&) const = default;
};

outcome scan(const std::vector<std::string_view>& chunks) {
    qmp::framer messages;
    qmp::qga::sync_reader reader(token);
    outcome out;
    for (auto chunk : chunks)
        out.answered = reader.feed(chunk, messages);
    check(out.answered == reader.answered(), "answered() tells what feed() said");
    out.stale = reader.stale_replies();
    if (!out.answered) return out;
    out.buffered_after = messages.buffered();
    for (;;) {
        auto next = messages.next();
        if (!next) {
            out.later_failure = next.error().code;
            break;
        }
        if (!*next) break;
        out.later.emplace_back(**next);
    }
    return out;
}

outcome check_splits(std::string_view stream) {
    auto whole = scan({stream});
    check(whole == scan(fuzz::byte_chunks(stream)), "one byte at a time gives what one feed gives");
    check(whole == scan(fuzz::random_chunks(stream, fuzz::seed_of(stream))),
          "random chunks give what one feed gives");
    return whole;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto junk = fuzz::as_text(data, size);
    const bool has_sentinel = junk.find(qmp::qga::sync_sentinel) != std::string_view::npos;

    // The input alone: the stale contents of a channel.
    const auto alone = check_splits(junk);
    if (!has_sentinel)
        check(!alone.answered && alone.stale == 0, "nothing counts before a sentinel");
    if (alone.answered)
        check(junk.find("4242") != std::string_view::npos, "an answer carries our token");

    // The same stale bytes, then our sentinel, our answer and a later reply.
    const std::string answer = R"({"return": 4242})";
    const std::string later = R"({"return": {}, "id": 7})";
    std::string stream(junk);
    stream += qmp::qga::sync_sentinel;
    stream += answer;
    stream += later;
    const auto with_answer = check_splits(stream);
    check(with_answer.answered, "stale bytes never hide the answer after our sentinel");
    if (!has_sentinel) {
        check(with_answer.stale == 0, "our answer is the first message after our sentinel");
        check(with_answer.buffered_after == later.size() && with_answer.later.size() == 1 &&
                  with_answer.later.front() == later && !with_answer.later_failure,
              "the bytes after the answer are kept for the next command");
    }
    return 0;
}
