// What a QMP message is (greeting, reply, error, event) and how commands are written: pure.
#pragma once

#include <compare>
#include <cstdint>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <string_view>
#include <variant>
#include <vector>

#include "common/error.hpp"

namespace stackemu::qmp {

using json = nlohmann::json;

struct qemu_version {
    int major = 0;
    int minor = 0;
    int micro = 0;
    std::string package;

    auto operator<=>(const qemu_version& other) const {
        return std::tie(major, minor, micro) <=> std::tie(other.major, other.minor, other.micro);
    }
    bool operator==(const qemu_version& other) const { return std::is_eq(*this <=> other); }
    std::string to_string() const;
};

struct greeting {
    qemu_version version;
    std::vector<std::string> capabilities;
    bool offers(std::string_view capability) const;
};

struct success_reply {
    std::optional<json> id;  // QEMU echoes any JSON value; absent when the request had none
    json value;
};

struct error_reply {
    std::optional<json> id;   // absent when QEMU could not read the request (qmp.md)
    std::string error_class;  // an open set: GenericError, CommandNotFound, ...
    std::string desc;         // for people; never parsed
};

struct event {
    std::string name;
    json data = json::object();
    // Both -1 when QEMU could not read its clock: signed on purpose.
    std::int64_t seconds = 0;
    std::int64_t microseconds = 0;
};

using message = std::variant<greeting, success_reply, error_reply, event>;

// Events that change the VM's run state (what the lifecycle state machine acts on): a bounded
// event queue never drops them. Others (BLOCK_IO_ERROR, RTC_CHANGE, JOB_STATUS_CHANGE...) are
// repeatable: losing some under a flood loses no state.
bool is_state_event(std::string_view name);

// Classifies one parsed JSON text. Anything that is not one of the four shapes is a protocol
// error naming what was wrong.
result<message> classify(const json& msg);
// Parses and classifies one framed text that began at `stream_offset` in its stream. Text that
// is not JSON (or not UTF-8) is a malformed_message() naming the offending byte's offset.
result<message> parse_message(std::string_view text, std::uint64_t stream_offset = 0);

// {"execute":NAME,"arguments":ARGS,"id":ID} followed by CRLF-free "\n"; "exec-oob" when oob.
// Arguments are omitted when null or an empty object, as QEMU's own tools do.
std::string encode_command(std::string_view name, const json& arguments, std::uint64_t id,
                           bool oob = false);
// The same without the "\n": QEMU's JSON streamer takes a message when its braces balance,
// and QEMU 7.2 reads monitor input a byte at a time (~14 us a byte), so every byte counts.
std::string encode_command_compact(std::string_view name, const json& arguments, std::uint64_t id,
                                   bool oob = false);

}  // namespace stackemu::qmp
