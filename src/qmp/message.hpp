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

// Classifies one parsed JSON text. Anything that is not one of the four shapes is a protocol
// error naming what was wrong.
result<message> classify(const json& msg);
// Parses and classifies one framed text.
result<message> parse_message(std::string_view text);

// {"execute":NAME,"arguments":ARGS,"id":ID} followed by CRLF-free "\n"; "exec-oob" when oob.
// Arguments are omitted when null or an empty object, as QEMU's own tools do.
std::string encode_command(std::string_view name, const json& arguments, std::uint64_t id,
                           bool oob = false);

}  // namespace stackemu::qmp
