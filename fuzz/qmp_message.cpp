// Fuzz target: QMP message classification and command encoding (src/qmp/message). Invariants:
// the kind follows QMP's member precedence (QMP, return, error, event) and carries the JSON's
// own values, never a truncated or converted one; an encoded command is one line that frames as
// one message and reads back as the same name, arguments and id.
#include <nlohmann/json.hpp>
#include <string>
#include <variant>

#include "fuzz_support.hpp"
#include "qmp/framer.hpp"
#include "qmp/message.hpp"

namespace {

using namespace stackemu;
using fuzz::check;
using qmp::json;

bool same_id(const std::optional<json>& id, const json& msg) {
    auto it = msg.find("id");
    return it == msg.end() ? !id.has_value() : id.has_value() && *id == *it;
}

// nlohmann's == converts unsigned to signed before comparing: 2^64-1 would equal -1.
bool is_exactly(const json& j, std::int64_t v) {
    if (j.is_number_unsigned()) return v >= 0 && j.get<std::uint64_t>() == std::uint64_t(v);
    return j.is_number_integer() && j.get<std::int64_t>() == v;
}

bool is_valid_utf8(std::string_view s) {
    try {
        (void)json(std::string(s)).dump();
        return true;
    } catch (const json::type_error&) {
        return false;
    }
}

void check_classified(const json& msg, const qmp::message& m) {
    check(msg.is_object(), "only objects are messages");
    if (msg.contains("QMP")) {
        const auto* g = std::get_if<qmp::greeting>(&m);
        check(g != nullptr, "a QMP member makes a greeting");
        const auto& qemu = msg["QMP"]["version"]["qemu"];
        check(is_exactly(qemu["major"], g->version.major) &&
                  is_exactly(qemu["minor"], g->version.minor) &&
                  is_exactly(qemu["micro"], g->version.micro),
              "the greeting's version is QEMU's, not a converted number");
        check(g->capabilities.size() == msg["QMP"]["capabilities"].size(),
              "every capability is kept");
    } else if (msg.contains("return")) {
        const auto* r = std::get_if<qmp::success_reply>(&m);
        check(r != nullptr, "a return member makes a success reply");
        check(r->value == msg["return"] && same_id(r->id, msg), "a reply keeps value and id");
    } else if (msg.contains("error")) {
        const auto* e = std::get_if<qmp::error_reply>(&m);
        check(e != nullptr, "an error member makes an error reply");
        check(json(e->error_class) == msg["error"]["class"] &&
                  json(e->desc) == msg["error"]["desc"] && same_id(e->id, msg),
              "an error reply keeps class, desc and id");
    } else {
        const auto* ev = std::get_if<qmp::event>(&m);
        check(ev != nullptr && msg.contains("event"), "otherwise only an event is accepted");
        check(json(ev->name) == msg["event"], "an event keeps its name");
        if (auto ts = msg.find("timestamp"); ts != msg.end())
            check(is_exactly((*ts)["seconds"], ev->seconds) &&
                      is_exactly((*ts)["microseconds"], ev->microseconds),
                  "an event keeps its timestamp");
    }
}

void check_encoding(std::string_view name, const json& arguments, std::uint64_t id, bool oob) {
    const auto line = qmp::encode_command(name, arguments, id, oob);
    check(!line.empty() && line.back() == '\n' && line.find('\n') == line.size() - 1,
          "a command is exactly one line");
    qmp::framer f;
    f.feed(line);
    auto framed = f.next();
    check(framed && *framed && **framed == std::string_view(line).substr(0, line.size() - 1),
          "a command frames as one message");
    auto after = f.next();
    check(after && !*after && f.buffered() == 0, "nothing but the newline follows the command");
    const auto back = json::parse(**framed, nullptr, false);
    check(back.is_object(), "a command is a JSON object");
    const char* verb = oob ? "exec-oob" : "execute";
    check(back.contains(verb) && back[verb].is_string(), "the command name is where QEMU reads it");
    if (is_valid_utf8(name)) check(back[verb] == name, "the name reads back unchanged");
    check(back["id"] == id, "the id reads back unchanged");
    const bool omitted = arguments.is_null() || (arguments.is_object() && arguments.empty());
    check(back.contains("arguments") != omitted, "arguments are sent unless null or empty");
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
    const auto text = fuzz::as_text(data, size);
    const auto parsed = qmp::parse_message(text);
    const auto msg = json::parse(text, nullptr, false);
    if (parsed) {
        check(!msg.is_discarded(), "only valid JSON is classified");
        check_classified(msg, *parsed);
        if (!msg.is_discarded()) {
            const auto again = qmp::classify(msg);
            check(again && again->index() == parsed->index(), "classify agrees with parse");
        }
    } else {
        check(parsed.error().code == errc::protocol_error ||
                  parsed.error().code == errc::bad_greeting,
              "a refusal is a protocol error or a bad greeting");
        check(!parsed.error().message.empty(), "a refusal says what was wrong");
    }

    // Encoding: the input as a command name, and (when it is JSON) as the arguments.
    const std::uint64_t id = fuzz::seed_of(text);
    const auto name = text.substr(0, std::min<std::size_t>(text.size(), 64));
    check_encoding(name, msg.is_discarded() ? json(nullptr) : msg, id, (id & 1) != 0);
    return 0;
}
