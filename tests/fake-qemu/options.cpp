// Parsing of the fake's JSON options.
#include "options.hpp"

#include <fmt/format.h>

#include <cstdlib>
#include <fstream>
#include <functional>
#include <map>
#include <sstream>

namespace stackemu::fake {

namespace {

using json = nlohmann::json;

std::unexpected<error> bad(std::string what) {
    return fail(errc::invalid_argument, "fake-qemu options: " + std::move(what));
}

result<std::string> get_string(const json& v, std::string_view key) {
    if (!v.is_string()) return bad(fmt::format("'{}' must be a string", key));
    return v.get<std::string>();
}

result<bool> get_bool(const json& v, std::string_view key) {
    if (!v.is_boolean()) return bad(fmt::format("'{}' must be true or false", key));
    return v.get<bool>();
}

result<std::uint64_t> get_count(const json& v, std::string_view key) {
    if (!v.is_number_unsigned() && !(v.is_number_integer() && v.get<std::int64_t>() >= 0))
        return bad(fmt::format("'{}' must be a non-negative integer", key));
    return v.get<std::uint64_t>();
}

result<std::vector<std::string>> get_strings(const json& v, std::string_view key) {
    if (!v.is_array()) return bad(fmt::format("'{}' must be an array of strings", key));
    std::vector<std::string> out;
    for (const auto& e : v) {
        if (!e.is_string()) return bad(fmt::format("'{}' must be an array of strings", key));
        out.push_back(e.get<std::string>());
    }
    return out;
}

result<event_burst> parse_burst(const json& v) {
    if (!v.is_object())
        return bad("'burst' must be {\"event\": NAME, \"count\": N, \"invalid_utf8\": BOOL}");
    event_burst b;
    for (const auto& [key, e] : v.items()) {
        if (key == "event") {
            auto s = get_string(e, "burst.event");
            if (!s) return fail(s.error());
            b.event = *s;
        } else if (key == "count") {
            auto n = get_count(e, "burst.count");
            if (!n) return fail(n.error());
            b.count = *n;
        } else if (key == "invalid_utf8") {
            auto f = get_bool(e, "burst.invalid_utf8");
            if (!f) return fail(f.error());
            b.invalid_utf8 = *f;
        } else {
            return bad(fmt::format("unknown burst key '{}'", key));
        }
    }
    return b;
}

result<console_step> parse_step(const json& j) {
    if (!j.is_object()) return bad("each console step must be an object");
    console_step step;
    for (const auto& [key, v] : j.items()) {
        if (key == "after_ms") {
            auto n = get_count(v, "after_ms");
            if (!n) return fail(n.error());
            step.after = std::chrono::milliseconds(*n);
        } else if (key == "burst") {
            auto b = parse_burst(v);
            if (!b) return fail(b.error());
            step.burst = *b;
        } else if (key != "line" && key != "action" && key != "info") {
            return bad(fmt::format("unknown console step key '{}'", key));
        }
    }
    if (j.contains("line")) {
        auto line = get_string(j["line"], "line");
        if (!line) return fail(line.error());
        step.line = *line;
        step.what = console_step::kind::line;
    } else if (j.contains("action")) {
        static const std::map<std::string, console_step::kind> actions{
            {"ready", console_step::kind::ready},
            {"panic", console_step::kind::panic},
            {"crash", console_step::kind::crash},
            {"poweroff", console_step::kind::poweroff},
            {"reboot", console_step::kind::reboot}};
        auto name = get_string(j["action"], "action");
        if (!name) return fail(name.error());
        auto it = actions.find(*name);
        if (it == actions.end()) return bad(fmt::format("unknown console action '{}'", *name));
        step.what = it->second;
    } else {
        return bad("a console step needs 'line' or 'action'");
    }
    if (j.contains("info")) step.info = value::parse(j["info"].dump());
    return step;
}

result<std::string> read_file(const std::string& path) {
    std::ifstream in(path);
    if (!in) return bad(fmt::format("cannot read {}", path));
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

result<wire_fault> parse_fault(const json& v) {
    if (!v.is_object())
        return bad(
            "'fault' must be {\"channel\": \"qmp\"|\"agent\", \"at\": N, \"kind\": "
            "\"cut\"|\"delay\"|\"garbage\"|\"wrong_id\"}");
    wire_fault f;
    for (const auto& [key, e] : v.items()) {
        if (key == "channel") {
            auto c = get_string(e, "fault.channel");
            if (!c) return fail(c.error());
            if (*c == "qmp")
                f.where = wire_fault::channel::qmp;
            else if (*c == "agent")
                f.where = wire_fault::channel::agent;
            else
                return bad(fmt::format("'fault.channel' must be qmp or agent, not '{}'", *c));
        } else if (key == "at") {
            auto n = get_count(e, "fault.at");
            if (!n) return fail(n.error());
            if (*n == 0) return bad("'fault.at' counts steps from 1");
            f.at = *n;
        } else if (key == "kind") {
            auto k = get_string(e, "fault.kind");
            if (!k) return fail(k.error());
            static const std::map<std::string, wire_fault::kind, std::less<>> kinds{
                {"cut", wire_fault::kind::cut},
                {"delay", wire_fault::kind::delay},
                {"garbage", wire_fault::kind::garbage},
                {"wrong_id", wire_fault::kind::wrong_id}};
            auto it = kinds.find(*k);
            if (it == kinds.end())
                return bad(fmt::format(
                    "'fault.kind' must be cut, delay, garbage or wrong_id, not '{}'", *k));
            f.what = it->second;
        } else if (key == "delay_ms") {
            auto n = get_count(e, "fault.delay_ms");
            if (!n) return fail(n.error());
            f.delay = std::chrono::milliseconds(*n);
        } else if (key == "armed_by") {
            auto path = get_string(e, "fault.armed_by");
            if (!path) return fail(path.error());
            f.armed_by = *path;
        } else {
            return bad(fmt::format("unknown fault key '{}'", key));
        }
    }
    if (!v.contains("channel") || !v.contains("at") || !v.contains("kind"))
        return bad("'fault' needs 'channel', 'at' and 'kind'");
    return f;
}

}  // namespace

std::string_view to_string(wire_fault::kind k) {
    switch (k) {
        case wire_fault::kind::cut:
            return "cut";
        case wire_fault::kind::delay:
            return "delay";
        case wire_fault::kind::garbage:
            return "garbage";
        case wire_fault::kind::wrong_id:
            return "wrong_id";
    }
    return "?";
}

result<options> parse_options(const json& j) {
    options o;
    if (j.is_null()) return o;
    if (!j.is_object()) return bad("the options must be a JSON object");
    using handler = std::function<result<void>(const json&)>;
    auto str = [](std::string& field, std::string_view key) -> handler {
        return [&field, key](const json& v) -> result<void> {
            auto s = get_string(v, key);
            if (!s) return fail(s.error());
            field = *s;
            return {};
        };
    };
    auto opt_str = [](std::optional<std::string>& field, std::string_view key) -> handler {
        return [&field, key](const json& v) -> result<void> {
            if (v.is_null()) {
                field.reset();
                return {};
            }
            auto s = get_string(v, key);
            if (!s) return fail(s.error());
            field = *s;
            return {};
        };
    };
    auto flag = [](bool& field, std::string_view key) -> handler {
        return [&field, key](const json& v) -> result<void> {
            auto b = get_bool(v, key);
            if (!b) return fail(b.error());
            field = *b;
            return {};
        };
    };
    auto millis = [](std::chrono::milliseconds& field, std::string_view key) -> handler {
        return [&field, key](const json& v) -> result<void> {
            auto n = get_count(v, key);
            if (!n) return fail(n.error());
            field = std::chrono::milliseconds(*n);
            return {};
        };
    };
    auto opt_count = [](std::optional<std::size_t>& field, std::string_view key) -> handler {
        return [&field, key](const json& v) -> result<void> {
            auto n = get_count(v, key);
            if (!n) return fail(n.error());
            field = *n;
            return {};
        };
    };

    std::map<std::string, handler, std::less<>> handlers{
        {"version",
         [&o](const json& v) -> result<void> {
             auto s = get_string(v, "version");
             if (!s) return fail(s.error());
             if (std::sscanf(s->c_str(), "%d.%d.%d", &o.major, &o.minor, &o.micro) != 3)
                 return bad("'version' must look like 7.2.22");
             return {};
         }},
        {"package", str(o.package, "package")},
        {"capabilities",
         [&o](const json& v) -> result<void> {
             auto list = get_strings(v, "capabilities");
             if (!list) return fail(list.error());
             o.capabilities = *list;
             return {};
         }},
        {"name", opt_str(o.name, "name")},
        {"kvm_enabled", flag(o.kvm_enabled, "kvm_enabled")},
        {"kvm_present", flag(o.kvm_present, "kvm_present")},
        {"program_name", str(o.program_name, "program_name")},
        {"start_paused", flag(o.start_paused, "start_paused")},
        {"no_shutdown", flag(o.no_shutdown, "no_shutdown")},
        {"no_reboot", flag(o.no_reboot, "no_reboot")},
        {"cooperative_guest", flag(o.cooperative_guest, "cooperative_guest")},
        {"powerdown_delay_ms", millis(o.powerdown_delay, "powerdown_delay_ms")},
        {"firmware_reset", flag(o.firmware_reset, "firmware_reset")},
        {"panic_action",
         [&o](const json& v) -> result<void> {
             auto s = get_string(v, "panic_action");
             if (!s) return fail(s.error());
             if (*s != "shutdown" && *s != "pause" && *s != "none" && *s != "exit-failure")
                 return bad("'panic_action' must be shutdown, pause, none or exit-failure");
             o.panic_action = *s;
             return {};
         }},
        {"pvpanic",
         [&o](const json& v) -> result<void> {
             auto b = get_bool(v, "pvpanic");
             if (!b) return fail(b.error());
             o.pvpanic = *b;
             return {};
         }},
        {"block_nodes",
         [&o](const json& v) -> result<void> {
             auto list = get_strings(v, "block_nodes");
             if (!list) return fail(list.error());
             o.block_nodes = *list;
             return {};
         }},
        {"state_file", opt_str(o.state_file, "state_file")},
        {"console",
         [&o](const json& v) -> result<void> {
             if (!v.is_array()) return bad("'console' must be an array of steps");
             for (const auto& step : v) {
                 auto s = parse_step(step);
                 if (!s) return fail(s.error());
                 o.console.push_back(*s);
             }
             return {};
         }},
        {"http_body", str(o.http_body, "http_body")},
        {"agent", flag(o.agent, "agent")},
        {"byte_by_byte", flag(o.byte_by_byte, "byte_by_byte")},
        {"coalesce", flag(o.coalesce, "coalesce")},
        {"pretty", flag(o.pretty, "pretty")},
        {"noise", flag(o.noise, "noise")},
        {"garbage", flag(o.garbage, "garbage")},
        {"error_without_id_before", opt_str(o.error_without_id_before, "error_without_id_before")},
        {"delay_reply",
         [&o](const json& v) -> result<void> {
             if (!v.is_object() || !v.contains("command") || !v.contains("ms"))
                 return bad("'delay_reply' must be {\"command\": NAME, \"ms\": N}");
             auto c = get_string(v["command"], "delay_reply.command");
             auto n = get_count(v["ms"], "delay_reply.ms");
             if (!c) return fail(c.error());
             if (!n) return fail(n.error());
             o.delay_reply = command_delay{*c, std::chrono::milliseconds(*n)};
             return {};
         }},
        {"never_answer", opt_str(o.never_answer, "never_answer")},
        {"close_after_messages", opt_count(o.close_after_messages, "close_after_messages")},
        {"close_mid_message",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "close_mid_message");
             if (!n) return fail(n.error());
             // Message 0 does not exist: the greeting is message 1.
             if (*n == 0) return bad("'close_mid_message' counts messages from 1");
             o.close_mid_message = *n;
             return {};
         }},
        {"event_before_greeting",
         [&o](const json& v) -> result<void> {
             if (v.is_boolean()) {
                 if (v.get<bool>())
                     o.event_before_greeting = "RESUME";
                 else
                     o.event_before_greeting.reset();
                 return {};
             }
             auto s = get_string(v, "event_before_greeting");
             if (!s) return fail(s.error());
             o.event_before_greeting = *s;
             return {};
         }},
        {"huge_reply",
         [&o](const json& v) -> result<void> {
             if (!v.is_object())
                 return bad("'huge_reply' must be {\"command\": NAME, \"bytes\": N}");
             huge_reply h{"query-qmp-schema", 10u << 20};
             if (v.contains("command")) {
                 auto c = get_string(v["command"], "huge_reply.command");
                 if (!c) return fail(c.error());
                 h.command = *c;
             }
             if (v.contains("bytes")) {
                 auto n = get_count(v["bytes"], "huge_reply.bytes");
                 if (!n) return fail(n.error());
                 h.bytes = *n;
             }
             o.huge = h;
             return {};
         }},
        {"greeting",
         [&o](const json& v) -> result<void> {
             o.greeting = value::parse(v.dump());
             return {};
         }},
        {"wrong_greeting",
         [&o](const json& v) -> result<void> {
             auto b = get_bool(v, "wrong_greeting");
             if (!b) return fail(b.error());
             // A greeting without "version", as some broken builds and proxies send.
             if (*b) o.greeting = value{{"QMP", value{{"capabilities", value::array({"oob"})}}}};
             return {};
         }},
        {"hang_qmp", flag(o.hang_qmp, "hang_qmp")},
        {"hang_qmp_after_ms",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "hang_qmp_after_ms");
             if (!n) return fail(n.error());
             o.hang_qmp_after = std::chrono::milliseconds(*n);
             return {};
         }},
        {"greeting_delay_ms",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "greeting_delay_ms");
             if (!n) return fail(n.error());
             o.greeting_delay = std::chrono::milliseconds(*n);
             return {};
         }},
        {"accept_limit",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "accept_limit");
             if (!n) return fail(n.error());
             o.accept_limit = static_cast<std::size_t>(*n);
             return {};
         }},
        {"quit_without_reply", flag(o.quit_without_reply, "quit_without_reply")},
        {"linger_after_shutdown_ms",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "linger_after_shutdown_ms");
             if (!n) return fail(n.error());
             o.linger_after_shutdown = std::chrono::milliseconds(*n);
             return {};
         }},
        {"ignore_sigterm", flag(o.ignore_sigterm, "ignore_sigterm")},
        {"ignore_quit", flag(o.ignore_quit, "ignore_quit")},
        {"crash_after_ms",
         [&o](const json& v) -> result<void> {
             auto n = get_count(v, "crash_after_ms");
             if (!n) return fail(n.error());
             o.crash_after = std::chrono::milliseconds(*n);
             return {};
         }},
        {"crash_signal",
         [&o](const json& v) -> result<void> {
             auto s = get_string(v, "crash_signal");
             if (!s) return fail(s.error());
             if (*s != "abort" && *s != "none") return bad("'crash_signal' must be abort or none");
             o.crash_abort = *s == "abort";
             return {};
         }},
        {"startup_error",
         [&o](const json& v) -> result<void> {
             if (v.is_boolean()) {
                 if (v.get<bool>())
                     o.startup_error = std::string();
                 else
                     o.startup_error.reset();
                 return {};
             }
             auto s = get_string(v, "startup_error");
             if (!s) return fail(s.error());
             o.startup_error = *s;
             return {};
         }},
        {"hold_launch_until", opt_str(o.hold_launch_until, "hold_launch_until")},
        {"job_never_concludes",
         [&o](const json& v) -> result<void> {
             // true: every job stalls; a job type ("snapshot-save"): only jobs of that type.
             if (v.is_string()) {
                 o.job_never_concludes = true;
                 o.never_concluding_job = v.get<std::string>();
                 return {};
             }
             auto b = get_bool(v, "job_never_concludes");
             if (!b) return fail(b.error());
             o.job_never_concludes = *b;
             o.never_concluding_job.clear();
             return {};
         }},
        {"job_error", opt_str(o.job_error, "job_error")},
        {"fault",
         [&o](const json& v) -> result<void> {
             auto f = parse_fault(v);
             if (!f) return fail(f.error());
             o.fault = *f;
             return {};
         }},
    };
    for (const auto& [key, v] : j.items()) {
        auto it = handlers.find(key);
        if (it == handlers.end()) return bad(fmt::format("unknown key '{}'", key));
        if (auto r = it->second(v); !r) return fail(r.error());
    }
    return o;
}

result<options> options_from_environment() {
    const char* raw = std::getenv("STACKEMU_FAKE_QEMU");
    if (!raw || !*raw) return options{};
    std::string text = raw;
    if (text.starts_with('@')) {
        auto content = read_file(text.substr(1));
        if (!content) return fail(content.error());
        text = *content;
    }
    auto j = json::parse(text, nullptr, false);
    if (j.is_discarded()) return bad("STACKEMU_FAKE_QEMU is not valid JSON");
    return parse_options(j);
}

}  // namespace stackemu::fake
