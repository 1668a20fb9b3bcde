// HMP: savevm, loadvm, delvm, info snapshots/status/version/name/kvm, stop, cont, and friends.
#include "hmp.hpp"

#include <fmt/format.h>

#include <cctype>
#include <optional>

namespace stackemu::fake {

namespace {

bool is_space(char c) {
    return std::isspace(static_cast<unsigned char>(c)) != 0;
}

// monitor/hmp.c get_str(): a bare word, or a quoted string with \n \r \\ \' \" escapes.
std::optional<std::string> get_str(std::string_view& p) {
    while (!p.empty() && is_space(p.front()))
        p.remove_prefix(1);
    if (p.empty()) return std::nullopt;
    std::string out;
    if (p.front() == '"') {
        p.remove_prefix(1);
        while (!p.empty() && p.front() != '"') {
            if (p.front() == '\\' && p.size() > 1) {
                p.remove_prefix(1);
                const char c = p.front();
                out += c == 'n' ? '\n' : c == 'r' ? '\r' : c;
            } else {
                out += p.front();
            }
            p.remove_prefix(1);
        }
        if (p.empty()) return std::nullopt;  // unterminated string
        p.remove_prefix(1);
        return out;
    }
    while (!p.empty() && !is_space(p.front())) {
        out += p.front();
        p.remove_prefix(1);
    }
    return out;
}

bool at_end(std::string_view p) {
    while (!p.empty() && is_space(p.front()))
        p.remove_prefix(1);
    return p.empty();
}

std::string usage(std::string_view command, std::string_view problem) {
    return fmt::format("{}: {}\r\nTry \"help {}\" for more information\r\n", command, problem,
                       command);
}

std::string info(vm& machine, std::string_view rest) {
    std::string_view p = rest;
    auto what = get_str(p);
    if (!what) {
        return "info kvm  -- show KVM information\r\n"
               "info name  -- show the current VM name\r\n"
               "info snapshots  -- show the currently saved VM snapshots\r\n"
               "info status  -- show the current VM status (running|paused)\r\n"
               "info version  -- show the version of QEMU\r\n";
    }
    const auto& o = machine.config();
    if (*what == "snapshots") return machine.hmp_info_snapshots();
    if (*what == "version")
        return fmt::format("{}.{}.{}{}\r\n", o.major, o.minor, o.micro, o.package);
    if (*what == "name") return o.name ? *o.name + "\r\n" : "";
    if (*what == "kvm") {
        if (!o.kvm_present) return "kvm support: not compiled\r\n";
        return fmt::format("kvm support: {}\r\n", o.kvm_enabled ? "enabled" : "disabled");
    }
    if (*what == "status") {
        std::string out = fmt::format("VM status: {}", machine.running() ? "running" : "paused");
        if (!machine.running() && machine.state() != run_state::paused)
            out += fmt::format(" ({})", to_string(machine.state()));
        return out + "\r\n";
    }
    return fmt::format("unknown command: 'info {}'\r\n", *what);
}

}  // namespace

std::string hmp_execute(vm& machine, std::string_view command_line) {
    std::string_view p = command_line;
    while (!p.empty() && is_space(p.front()))
        p.remove_prefix(1);
    if (p.empty()) return "";
    std::size_t end = 0;
    while (end < p.size() && p[end] != '/' && !is_space(p[end]))
        ++end;
    const std::string name(p.substr(0, end));
    p.remove_prefix(end);

    if (name == "info") return info(machine, p);
    if (name == "savevm") {
        auto tag = get_str(p);
        if (!at_end(p)) return usage(name, "extraneous characters at the end of line");
        return machine.hmp_savevm(tag);
    }
    if (name == "loadvm" || name == "delvm") {
        auto tag = get_str(p);
        if (!tag) return usage(name, "string expected");
        if (!at_end(p)) return usage(name, "extraneous characters at the end of line");
        return name == "loadvm" ? machine.hmp_loadvm(*tag) : machine.hmp_delvm(*tag);
    }
    if (!at_end(p) &&
        (name == "stop" || name == "cont" || name == "c" || name == "system_powerdown" ||
         name == "system_reset" || name == "quit" || name == "q"))
        return usage(name, "extraneous characters at the end of line");
    if (name == "stop") {
        machine.stop();
        return "";
    }
    if (name == "cont" || name == "c") {
        auto r = machine.cont();
        return r ? "" : fmt::format("Error: {}\r\n", r.error().qemu_desc);
    }
    if (name == "system_powerdown") {
        machine.system_powerdown();
        return "";
    }
    if (name == "system_reset") {
        machine.system_reset();
        return "";
    }
    if (name == "quit" || name == "q") {
        machine.quit();
        return "";
    }
    return fmt::format("unknown command: '{}'\r\n", name);
}

}  // namespace stackemu::fake
