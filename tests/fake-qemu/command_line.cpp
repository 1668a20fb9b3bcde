// Parsing of QEMU command-line options (qemu-options.hx) for the fake.
#include "command_line.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <map>

namespace stackemu::fake {

namespace {

// key=value,key,... as QemuOpts splits it (",," escapes a comma; a bare key means "on").
std::vector<std::pair<std::string, std::string>> split_opts(std::string_view text,
                                                            std::string_view implied_key = {}) {
    std::vector<std::pair<std::string, std::string>> out;
    std::vector<std::string> parts{""};
    for (std::size_t i = 0; i < text.size(); ++i) {
        if (text[i] == ',') {
            if (i + 1 < text.size() && text[i + 1] == ',') {
                parts.back() += ',';
                ++i;
            } else {
                parts.emplace_back();
            }
        } else {
            parts.back() += text[i];
        }
    }
    for (std::size_t i = 0; i < parts.size(); ++i) {
        const auto& part = parts[i];
        if (part.empty()) continue;
        const auto eq = part.find('=');
        if (eq == std::string::npos) {
            if (i == 0 && !implied_key.empty())
                out.emplace_back(implied_key, part);
            else if (part.starts_with("no"))
                out.emplace_back(part.substr(2), "off");
            else
                out.emplace_back(part, "on");
        } else {
            out.emplace_back(part.substr(0, eq), part.substr(eq + 1));
        }
    }
    return out;
}

std::optional<std::string> find(const std::vector<std::pair<std::string, std::string>>& opts,
                                std::string_view key) {
    std::optional<std::string> found;
    for (const auto& [k, v] : opts)
        if (k == key) found = v;
    return found;
}

bool is_on(const std::optional<std::string>& v) {
    return v && (*v == "on" || *v == "yes" || *v == "true" || *v == "y");
}

std::optional<int> to_int(std::string_view s) {
    int v = 0;
    auto [p, ec] = std::from_chars(s.data(), s.data() + s.size(), v);
    if (ec != std::errc() || p != s.data() + s.size()) return std::nullopt;
    return v;
}

// hostfwd=tcp:[HOST]:HPORT-[GUEST]:GPORT
std::optional<forward_spec> parse_hostfwd(const std::string& rule) {
    std::string_view r = rule;
    if (r.starts_with("tcp:"))
        r.remove_prefix(4);
    else if (r.starts_with("udp:"))
        return std::nullopt;
    const auto dash = r.find('-');
    if (dash == std::string_view::npos) return std::nullopt;
    const auto host_part = r.substr(0, dash);
    const auto guest_part = r.substr(dash + 1);
    const auto hc = host_part.rfind(':');
    const auto gc = guest_part.rfind(':');
    if (hc == std::string_view::npos || gc == std::string_view::npos) return std::nullopt;
    auto host_port = to_int(host_part.substr(hc + 1));
    auto guest_port = to_int(guest_part.substr(gc + 1));
    if (!host_port || !guest_port) return std::nullopt;
    forward_spec f;
    f.host = std::string(host_part.substr(0, hc));
    f.host_port = *host_port;
    f.guest_port = *guest_port;
    f.rule = rule;
    return f;
}

std::unexpected<error> bad(std::string text) {
    return fail(errc::invalid_argument, std::move(text));
}

}  // namespace

bool takes_no_argument(std::string_view option) {
    static constexpr std::array<std::string_view, 33> flags{"S",
                                                            "daemonize",
                                                            "no-shutdown",
                                                            "nodefaults",
                                                            "no-reboot",
                                                            "nographic",
                                                            "snapshot",
                                                            "enable-kvm",
                                                            "no-user-config",
                                                            "no-hpet",
                                                            "no-acpi",
                                                            "s",
                                                            "full-screen",
                                                            "win2k-hack",
                                                            "no-fd-bootchk",
                                                            "no-quit",
                                                            "preconfig",
                                                            "only-migratable",
                                                            "enable-sync-profile",
                                                            "version",
                                                            "h",
                                                            "help",
                                                            "curses",
                                                            "portrait",
                                                            "alt-grab",
                                                            "ctrl-grab",
                                                            "singlestep",
                                                            "xen-attach",
                                                            "enable-fips",
                                                            "semihosting",
                                                            "old-param",
                                                            "perfmap",
                                                            "no-frame"};
    return std::ranges::find(flags, option) != flags.end();
}

result<launch_config> parse_command_line(const std::vector<std::string>& args) {
    launch_config c;
    std::vector<std::pair<std::string, std::string>> mons;  // (-mon text, chardev id)
    for (std::size_t i = 0; i < args.size(); ++i) {
        std::string_view arg = args[i];
        if (!arg.starts_with('-')) continue;  // QEMU takes a bare word as the disk image
        std::string_view opt = arg.substr(arg.starts_with("--") ? 2 : 1);
        if (opt == "version") {
            c.version = true;
            continue;
        }
        if (opt == "S")
            c.start_paused = true;
        else if (opt == "daemonize")
            c.daemonize = true;
        else if (opt == "no-shutdown")
            c.no_shutdown = true;
        else if (opt == "no-reboot")
            c.no_reboot = true;
        if (takes_no_argument(opt)) continue;
        if (i + 1 >= args.size()) return bad(fmt::format("{}: requires an argument", arg));
        const std::string value = args[++i];
        const std::string text = fmt::format("{} {}", arg, value);

        if (opt == "qmp" || opt == "qmp-pretty") {
            // unix:PATH,server=on,wait=off
            if (!value.starts_with("unix:"))
                return bad(fmt::format("{}: fake-qemu supports only unix: QMP sockets", text));
            auto opts = split_opts(std::string_view(value).substr(5), "path");
            qmp_spec q;
            q.socket.path = find(opts, "path");
            q.socket.option = text;
            q.pretty = opt == "qmp-pretty" || is_on(find(opts, "pretty"));
            c.qmp.push_back(q);
        } else if (opt == "chardev") {
            auto opts = split_opts(value, "backend");
            chardev_spec ch;
            ch.backend = find(opts, "backend").value_or("");
            ch.id = find(opts, "id").value_or("");
            ch.logfile = find(opts, "logfile");
            ch.logappend = is_on(find(opts, "logappend"));
            ch.server = is_on(find(opts, "server"));
            ch.socket.option = text;
            if (ch.backend == "socket") {
                ch.socket.path = find(opts, "path");
                if (auto fd = find(opts, "fd")) ch.socket.fd = to_int(*fd);
            } else if (ch.backend == "file") {
                ch.file_path = find(opts, "path");
            }
            c.chardevs.push_back(ch);
        } else if (opt == "mon") {
            auto opts = split_opts(value, "chardev");
            if (find(opts, "mode").value_or("readline") != "control") continue;
            mons.emplace_back(text, find(opts, "chardev").value_or(""));
            qmp_spec q;
            q.chardev = find(opts, "chardev");
            q.pretty = is_on(find(opts, "pretty"));
            c.qmp.push_back(q);
        } else if (opt == "serial") {
            if (value.starts_with("chardev:"))
                c.serial_chardev = value.substr(8);
            else if (value.starts_with("file:"))
                c.serial_file = value.substr(5);
        } else if (opt == "device") {
            auto opts = split_opts(value, "driver");
            const auto driver = find(opts, "driver").value_or("");
            if (driver == "virtserialport" &&
                find(opts, "name").value_or("") == "org.qemu.guest_agent.0") {
                if (auto ch = find(opts, "chardev")) c.agent_chardevs.push_back(*ch);
            } else if (driver == "pvpanic" || driver == "pvpanic-pci") {
                c.pvpanic = true;
            }
        } else if (opt == "name") {
            auto opts = split_opts(value, "guest");
            c.name = find(opts, "guest");
        } else if (opt == "pidfile") {
            c.pidfile = value;
        } else if (opt == "D") {
            c.debug_log = value;
        } else if (opt == "action") {
            if (auto panic = find(split_opts(value), "panic")) c.panic_action = *panic;
        } else if (opt == "netdev" || opt == "nic") {
            for (const auto& [k, v] : split_opts(value, "type")) {
                if (k != "hostfwd") continue;
                auto f = parse_hostfwd(v);
                if (!f) return bad(fmt::format("{}: Invalid host forwarding rule '{}'", text, v));
                f->netdev = text;
                c.forwards.push_back(*f);
            }
        } else if (opt == "blockdev" || opt == "drive") {
            std::string_view v = value;
            if (v.starts_with('{')) continue;  // JSON -blockdev: not needed by stackemu
            if (auto node = find(split_opts(value), "node-name")) c.block_nodes.push_back(*node);
        }
    }
    // -mon chardev=X must name a -chardev (QEMU: chardev "X" not found).
    for (std::size_t m = 0, q = 0; q < c.qmp.size(); ++q) {
        if (!c.qmp[q].chardev) continue;
        const auto& [text, id] = mons[m++];
        auto it = std::ranges::find(c.chardevs, id, &chardev_spec::id);
        if (it == c.chardevs.end())
            return bad(fmt::format("{}: chardev \"{}\" not found", text, id));
    }
    if (c.serial_chardev &&
        std::ranges::find(c.chardevs, *c.serial_chardev, &chardev_spec::id) == c.chardevs.end())
        return bad(fmt::format("-serial chardev:{}: chardev \"{}\" not found", *c.serial_chardev,
                               *c.serial_chardev));
    return c;
}

}  // namespace stackemu::fake
