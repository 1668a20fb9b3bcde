// Classification and encoding of QMP messages (qmp-spec.rst, sections 2.2-2.6).
#include "qmp/message.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <limits>

#include "qmp/framer.hpp"

namespace stackemu::qmp {

std::string qemu_version::to_string() const {
    return fmt::format("{}.{}.{}", major, minor, micro);
}

bool greeting::offers(std::string_view capability) const {
    return std::ranges::find(capabilities, capability) != capabilities.end();
}

namespace {

std::unexpected<error> protocol(std::string what) {
    return fail(errc::protocol_error, std::move(what));
}

result<message> classify_greeting(const json& body) {
    if (!body.is_object()) return fail(errc::bad_greeting, "the QMP greeting is not an object");
    auto version = body.find("version");
    auto caps = body.find("capabilities");
    if (version == body.end() || !version->is_object() || caps == body.end() || !caps->is_array())
        return fail(errc::bad_greeting, "the QMP greeting lacks version or capabilities");
    auto qemu = version->find("qemu");
    if (qemu == version->end() || !qemu->is_object())
        return fail(errc::bad_greeting, "the QMP greeting lacks version.qemu");
    greeting g;
    for (auto [key, field] :
         {std::pair{"major", &g.version.major}, std::pair{"minor", &g.version.minor},
          std::pair{"micro", &g.version.micro}}) {
        auto it = qemu->find(key);
        // Range-checked before get<int>(), which would wrap 4294967304 around to 8.
        constexpr std::int64_t int_max = std::numeric_limits<int>::max();
        const bool is_version =
            it != qemu->end() &&
            (it->is_number_unsigned() ? it->get<std::uint64_t>() <= std::uint64_t(int_max)
                                      : it->is_number_integer() && it->get<std::int64_t>() >= 0 &&
                                            it->get<std::int64_t>() <= int_max);
        if (!is_version)
            return fail(
                errc::bad_greeting,
                fmt::format("the QMP greeting's version.qemu.{} is not a version number", key));
        *field = it->get<int>();
    }
    if (auto pkg = version->find("package"); pkg != version->end() && pkg->is_string())
        g.version.package = pkg->get<std::string>();
    for (const auto& cap : *caps) {
        if (!cap.is_string())
            return fail(errc::bad_greeting, "the QMP greeting has a non-string capability");
        g.capabilities.push_back(cap.get<std::string>());
    }
    return g;
}

std::optional<json> id_of(const json& msg) {
    if (auto it = msg.find("id"); it != msg.end()) return *it;
    return std::nullopt;
}

}  // namespace

bool is_state_event(std::string_view name) {
    static constexpr std::array<std::string_view, 9> state_events{
        "SHUTDOWN", "GUEST_PANICKED", "GUEST_CRASHLOADED", "RESET", "STOP",
        "RESUME",   "POWERDOWN",      "SUSPEND",           "WAKEUP"};
    return std::ranges::find(state_events, name) != state_events.end();
}

result<message> classify(const json& msg) {
    if (!msg.is_object()) return protocol("a QMP message must be a JSON object");
    if (auto it = msg.find("QMP"); it != msg.end()) return classify_greeting(*it);
    if (auto it = msg.find("return"); it != msg.end()) return success_reply{id_of(msg), *it};
    if (auto it = msg.find("error"); it != msg.end()) {
        const json& err = *it;
        if (!err.is_object()) return protocol("a QMP error member must be an object");
        auto cls = err.find("class");
        auto desc = err.find("desc");
        if (cls == err.end() || !cls->is_string() || desc == err.end() || !desc->is_string())
            return protocol("a QMP error lacks a string class or desc");
        return error_reply{id_of(msg), cls->get<std::string>(), desc->get<std::string>()};
    }
    if (auto it = msg.find("event"); it != msg.end()) {
        if (!it->is_string()) return protocol("a QMP event name must be a string");
        event ev;
        ev.name = it->get<std::string>();
        if (auto data = msg.find("data"); data != msg.end()) ev.data = *data;
        if (auto ts = msg.find("timestamp"); ts != msg.end()) {
            if (!ts->is_object()) return protocol("a QMP event timestamp must be an object");
            auto s = ts->find("seconds");
            auto us = ts->find("microseconds");
            if (s == ts->end() || !s->is_number_integer() || us == ts->end() ||
                !us->is_number_integer())
                return protocol("a QMP event timestamp lacks integer seconds/microseconds");
            ev.seconds = s->get<std::int64_t>();
            ev.microseconds = us->get<std::int64_t>();
        }
        return ev;
    }
    return protocol(fmt::format("unrecognised QMP message: {:.200}", msg.dump()));
}

namespace {

// Only finds where a text stops being JSON: parse() without exceptions does not say.
struct error_position final : json::json_sax_t {
    std::size_t at = 0;
    bool null() override { return true; }
    bool boolean(bool) override { return true; }
    bool number_integer(number_integer_t) override { return true; }
    bool number_unsigned(number_unsigned_t) override { return true; }
    bool number_float(number_float_t, const string_t&) override { return true; }
    bool string(string_t&) override { return true; }
    bool binary(binary_t&) override { return true; }
    bool start_object(std::size_t) override { return true; }
    bool key(string_t&) override { return true; }
    bool end_object() override { return true; }
    bool start_array(std::size_t) override { return true; }
    bool end_array() override { return true; }
    bool parse_error(std::size_t position, const std::string&,
                     const nlohmann::detail::exception&) override {
        at = position;  // bytes read, the offending one included
        return false;
    }
};

}  // namespace

result<message> parse_message(std::string_view text, std::uint64_t stream_offset) {
    json msg = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (msg.is_discarded()) {
        error_position where;
        json::sax_parse(text, &where);
        const std::size_t at = std::min(where.at > 0 ? where.at - 1 : 0, text.size());
        const bool utf8 = at < text.size() && static_cast<unsigned char>(text[at]) >= 0x80;
        return fail(malformed_message(stream_offset + at, text.substr(at),
                                      utf8 ? "not UTF-8" : "not JSON"));
    }
    return classify(msg);
}

std::string encode_command(std::string_view name, const json& arguments, std::uint64_t id,
                           bool oob) {
    std::string out = encode_command_compact(name, arguments, id, oob);
    out.push_back('\n');
    return out;
}

std::string encode_command_compact(std::string_view name, const json& arguments, std::uint64_t id,
                                   bool oob) {
    // Written by hand so that "execute" comes first, as in QEMU's documentation and logs.
    constexpr auto utf8 = json::error_handler_t::replace;
    std::string out = oob ? R"({"exec-oob":)" : R"({"execute":)";
    out += json(name).dump(-1, ' ', false, utf8);
    if (!arguments.is_null() && !(arguments.is_object() && arguments.empty())) {
        out += R"(,"arguments":)";
        out += arguments.dump(-1, ' ', false, utf8);
    }
    out += fmt::format(R"(,"id":{}}})", id);
    return out;
}

}  // namespace stackemu::qmp
