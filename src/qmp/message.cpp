// Classification and encoding of QMP messages (qmp-spec.rst, sections 2.2-2.6).
#include "qmp/message.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <limits>

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

result<message> parse_message(std::string_view text) {
    json msg = json::parse(text, nullptr, /*allow_exceptions=*/false);
    if (msg.is_discarded())
        return protocol(fmt::format("invalid JSON from the peer: {:.200}", text));
    return classify(msg);
}

std::string encode_command(std::string_view name, const json& arguments, std::uint64_t id,
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
    out.push_back('\n');
    return out;
}

}  // namespace stackemu::qmp
