// Finding the guest agent's guest-sync-delimited answer among stale bytes (qmp/qga_sync).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "qmp/framer.hpp"
#include "qmp/qga_sync.hpp"

using stackemu::errc;
using stackemu::qmp::framer;
using stackemu::qmp::qga::sync_reader;

namespace {

const std::string ff(1, stackemu::qmp::qga::sync_sentinel);

struct scanned {
    bool answered = false;
    std::uint64_t stale = 0;
    std::vector<std::string> later;  // messages framed after the answer
    bool later_failed = false;
};

scanned scan(const std::string& stream, std::size_t chunk) {
    framer messages;
    sync_reader reader(42);
    scanned out;
    for (std::size_t i = 0; i < stream.size(); i += chunk)
        out.answered = reader.feed(std::string_view(stream).substr(i, chunk), messages);
    out.stale = reader.stale_replies();
    if (!out.answered) return out;
    for (;;) {
        auto next = messages.next();
        if (!next) {
            out.later_failed = true;
            break;
        }
        if (!*next) break;
        out.later.emplace_back(**next);
    }
    return out;
}

// The same outcome for every chunk size, from one byte to the whole stream.
scanned scan_every_split(const std::string& stream) {
    const auto whole = scan(stream, stream.size());
    for (std::size_t chunk = 1; chunk < stream.size(); ++chunk) {
        const auto split = scan(stream, chunk);
        INFO("chunk size " << chunk);
        CHECK(split.answered == whole.answered);
        CHECK(split.stale == whole.stale);
        CHECK(split.later == whole.later);
        CHECK(split.later_failed == whole.later_failed);
    }
    return whole;
}

}  // namespace

TEST_CASE("qga sync: the answer after the sentinel ends the sync and keeps what follows") {
    const auto r = scan_every_split(ff + R"({"return": 42})" + "\n" + R"({"return": {}, "id": 1})");
    CHECK(r.answered);
    CHECK(r.stale == 0);
    CHECK(r.later == std::vector<std::string>{R"({"return": {}, "id": 1})"});
}

TEST_CASE("qga sync: bytes before the sentinel and other tokens' answers are stale") {
    const auto r =
        scan_every_split(R"({"return": 42} half a req)" + ff + R"({"return": 7})" + ff +
                         R"({"error": {"class": "X", "desc": "y"}})" + ff + R"({"return": 42})");
    CHECK(r.answered);
    CHECK(r.stale == 2);
}

TEST_CASE("qga sync: garbage after an earlier sentinel waits for the next one") {
    const auto r = scan_every_split(ff + "}} not json {" + ff + R"({"return": 42})");
    CHECK(r.answered);
}

TEST_CASE("qga sync: no sentinel means no answer") {
    const auto r = scan_every_split(R"({"return": 42})");
    CHECK_FALSE(r.answered);
    CHECK(r.stale == 0);
}

TEST_CASE("qga sync: the answer's token must match exactly as a number") {
    CHECK_FALSE(scan_every_split(ff + R"({"return": 42.0})").answered);
    CHECK_FALSE(scan_every_split(ff + R"({"return": "42"})").answered);
    CHECK_FALSE(scan_every_split(ff + R"({"return": 18446744073709551658})").answered);
}

TEST_CASE("qga sync: a sentinel after the answer reaches the next command whatever the split") {
    // It used to be dropped when it came in the same read as the answer, and to fail the next
    // command when it came in a later read.
    const auto r = scan_every_split(ff + R"({"return": 42})" + ff + R"({"return": 1})");
    CHECK(r.answered);
    CHECK(r.later_failed);
}
