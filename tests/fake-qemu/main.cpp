// fake-qemu: stands in for qemu-system-x86_64, taking its arguments; behaviour from
// STACKEMU_FAKE_QEMU (a JSON object or @file).
#include <fcntl.h>
#include <fmt/format.h>
#include <sys/inotify.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio.hpp>
#include <csignal>
#include <cstdio>
#include <cstdlib>
#include <cstring>
#include <filesystem>
#include <map>
#include <string>
#include <vector>

#include "command_line.hpp"
#include "options.hpp"
#include "server.hpp"
#include "socket_setup.hpp"

namespace {

using namespace stackemu::fake;

std::string program_name = "qemu-system-x86_64";

// The pidfile this process wrote: QEMU removes it on any exit, an error exit included.
std::string own_pidfile;

[[noreturn]] void die(const std::string& message) {
    std::fprintf(stderr, "%s: %s\n", program_name.c_str(), message.c_str());
    if (!own_pidfile.empty()) ::unlink(own_pidfile.c_str());
    std::exit(1);
}

// Socket files and the pidfile the process created, removed on a clean exit as QEMU does.
std::vector<std::string> created_paths;

int bind_socket(const socket_spec& spec) {
    if (spec.fd) {
        if (!is_listening_socket(*spec.fd))
            die(fmt::format("{}: fd {} is not a listening socket", spec.option, *spec.fd));
        return *spec.fd;
    }
    if (!spec.path) die(fmt::format("{}: fake-qemu needs path= or fd=", spec.option));
    auto fd = listen_unix(*spec.path);
    if (!fd) die(fmt::format("{}: {}", spec.option, fd.error().message));
    created_paths.push_back(*spec.path);
    return *fd;
}

// As qemu_write_pidfile(): mode 0600, "PID\n".
void write_pidfile(const std::string& path) {
    const int fd =
        ::open(path.c_str(), O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, S_IRUSR | S_IWUSR);
    if (fd < 0)
        die(fmt::format("cannot create PID file: Cannot open pid file: {}", std::strerror(errno)));
    const auto text = fmt::format("{}\n", ::getpid());
    const bool written = ::write(fd, text.data(), text.size()) == static_cast<ssize_t>(text.size());
    ::close(fd);
    if (!written)
        die(fmt::format("cannot create PID file: Failed to write pid file: {}",
                        std::strerror(errno)));
    created_paths.push_back(path);
    own_pidfile = path;
}

void cleanup() {
    for (const auto& p : created_paths)
        ::unlink(p.c_str());
}

void debug_line(int debug_fd, const std::string& line) {
    if (debug_fd < 0) return;
    const auto text = fmt::format("fake-qemu[{}]: {}\n", ::getpid(), line);
    if (::write(debug_fd, text.data(), text.size()) < 0) return;
}

// hold_launch_until: blocks until `path` exists, woken by inotify on its directory.
void wait_for_file(const std::string& path) {
    const std::string dir = std::filesystem::path(path).parent_path().string();
    const int fd = ::inotify_init1(IN_CLOEXEC);
    if (fd < 0) die("hold_launch_until: inotify_init1 failed");
    if (::inotify_add_watch(fd, dir.c_str(), IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) < 0)
        die(fmt::format("hold_launch_until: cannot watch {}: {}", dir, std::strerror(errno)));
    char events[4096];
    // The watch is in place before the first look: a file created in between is not missed.
    while (::access(path.c_str(), F_OK) != 0)
        if (::read(fd, events, sizeof events) < 0 && errno != EINTR)
            die(fmt::format("hold_launch_until: {}", std::strerror(errno)));
    ::close(fd);
}

}  // namespace

int main(int argc, char** argv) {
    std::vector<std::string> args(argv + 1, argv + argc);
    auto opts = options_from_environment();
    if (!opts) die(opts.error().message);
    program_name = opts->program_name;
    auto cfg = parse_command_line(args);
    if (!cfg) die(cfg.error().message);
    if (cfg->version) {
        std::printf(
            "QEMU emulator version %d.%d.%d (%s)\n"
            "Copyright (c) 2003-2022 Fabrice Bellard and the QEMU Project developers\n",
            opts->major, opts->minor, opts->micro, opts->package.c_str());
        return 0;
    }

    // The command line decides what it controls; the JSON options cover the rest.
    opts->start_paused = opts->start_paused || cfg->start_paused;
    opts->no_shutdown = opts->no_shutdown || cfg->no_shutdown;
    opts->no_reboot = opts->no_reboot || cfg->no_reboot;
    if (cfg->name) opts->name = cfg->name;
    if (!opts->pvpanic) opts->pvpanic = cfg->pvpanic;
    if (cfg->panic_action) opts->panic_action = *cfg->panic_action;
    if (!cfg->block_nodes.empty()) opts->block_nodes = cfg->block_nodes;

    if (opts->startup_error) {
        std::string message = *opts->startup_error;
        if (message.empty()) {
            message =
                cfg->forwards.empty()
                    ? fmt::format("{}: startup error requested by STACKEMU_FAKE_QEMU", program_name)
                    : fmt::format("{}: {}: Could not set up host forwarding rule '{}'",
                                  program_name, cfg->forwards.front().netdev,
                                  cfg->forwards.front().rule);
        }
        if (!message.ends_with('\n')) message += '\n';
        std::fputs(message.c_str(), stderr);
        return 1;
    }

    int debug_fd = -1;
    if (cfg->debug_log) {
        auto fd = open_logfile(*cfg->debug_log, true);
        if (!fd) die(fmt::format("-D {}: {}", *cfg->debug_log, fd.error().message));
        debug_fd = *fd;
    }

    // QEMU daemonizes before it creates any backend (qemu_maybe_daemonize() precedes
    // qemu_create_early_backends()), so its sockets are the daemon's: SO_PEERCRED on a
    // connection names the daemon, as the pidfile does. The launcher leaves only when the
    // daemon is ready for connections (qmp.md); an error before that still reaches the
    // launcher's stderr, and the launcher exits 1.
    int ready_fd = -1;
    if (cfg->daemonize) {
        int ready[2];
        if (::pipe(ready) != 0) die("cannot create pipe");
        const pid_t child = ::fork();
        if (child < 0) die("cannot fork");
        if (child > 0) {
            ::close(ready[1]);
            char byte = 0;
            const auto n = ::read(ready[0], &byte, 1);
            std::_Exit(n == 1 ? 0 : 1);
        }
        ::close(ready[0]);
        ::setsid();
        ready_fd = ready[1];
    }
    if (cfg->pidfile) write_pidfile(*cfg->pidfile);

    // Everything is bound before -daemonize returns, in QEMU's order: the chardevs (-chardev
    // and -qmp, in early backends), then the host forwards (late backends).
    std::map<std::string, int> chardev_listeners;
    std::map<std::string, int> chardev_logs;
    for (const auto& ch : cfg->chardevs) {
        if (ch.backend == "socket" && ch.server) chardev_listeners[ch.id] = bind_socket(ch.socket);
        if (ch.logfile) {
            auto fd = open_logfile(*ch.logfile, ch.logappend);
            if (!fd) die(fmt::format("{}: {}", ch.socket.option, fd.error().message));
            chardev_logs[ch.id] = *fd;
        }
        if (ch.backend == "file" && ch.file_path) {
            auto fd = open_logfile(*ch.file_path, ch.logappend);
            if (!fd) die(fmt::format("{}: {}", ch.socket.option, fd.error().message));
            chardev_logs[ch.id] = *fd;
        }
    }
    std::vector<std::pair<int, bool>> qmp;  // fd, pretty
    for (const auto& q : cfg->qmp) {
        if (q.chardev) {
            auto it = chardev_listeners.find(*q.chardev);
            if (it == chardev_listeners.end())
                die(fmt::format("-mon chardev={}: fake-qemu needs a server socket chardev",
                                *q.chardev));
            qmp.emplace_back(it->second, q.pretty);
            chardev_listeners.erase(it);
        } else {
            qmp.emplace_back(bind_socket(q.socket), q.pretty);
        }
    }
    std::vector<std::pair<int, int>> forwards;  // fd, guest port
    for (const auto& f : cfg->forwards) {
        auto fd = listen_tcp(f.host, f.host_port);
        if (!fd)
            die(fmt::format("{}: Could not set up host forwarding rule '{}'", f.netdev, f.rule));
        forwards.emplace_back(*fd, f.guest_port);
    }
    int serial_listen = -1;
    int serial_log = -1;
    if (cfg->serial_chardev) {
        if (auto it = chardev_listeners.find(*cfg->serial_chardev); it != chardev_listeners.end()) {
            serial_listen = it->second;
            chardev_listeners.erase(it);
        }
        if (auto it = chardev_logs.find(*cfg->serial_chardev); it != chardev_logs.end()) {
            serial_log = it->second;
            chardev_logs.erase(it);
        }
    } else if (cfg->serial_file) {
        auto fd = open_logfile(*cfg->serial_file);
        if (!fd) die(fmt::format("-serial file:{}: {}", *cfg->serial_file, fd.error().message));
        serial_log = *fd;
    }
    std::vector<int> agents;
    for (const auto& id : cfg->agent_chardevs) {
        if (auto it = chardev_listeners.find(id); it != chardev_listeners.end()) {
            agents.push_back(it->second);
            chardev_listeners.erase(it);
        }
    }
    // Other server chardevs accept and stay mute, like an unused chardev in QEMU.
    std::vector<int> mute;
    for (const auto& [id, fd] : chardev_listeners)
        mute.push_back(fd);

    if (opts->hold_launch_until) {
        debug_line(debug_fd,
                   fmt::format("holding the launch until {} exists", *opts->hold_launch_until));
        wait_for_file(*opts->hold_launch_until);
        debug_line(debug_fd, "launch released");
    }

    if (ready_fd >= 0) {
        const int null = ::open("/dev/null", O_RDWR);
        ::dup2(null, 0);
        ::dup2(null, 1);
        ::dup2(null, 2);
        if (null > 2) ::close(null);
        const char byte = 0;
        if (::write(ready_fd, &byte, 1) != 1) std::_Exit(1);
        ::close(ready_fd);
    }

    if (opts->ignore_sigterm) std::signal(SIGTERM, SIG_IGN);
    asio::io_context ctx;
    asio::signal_set signals(ctx, SIGINT, SIGHUP);
    if (!opts->ignore_sigterm) signals.add(SIGTERM);

    server srv(ctx.get_executor(), *opts);
    if (debug_fd >= 0)
        srv.set_log([debug_fd](const std::string& line) { debug_line(debug_fd, line); });
    for (auto [fd, pretty] : qmp)
        srv.adopt_qmp_listener(fd, pretty);
    if (serial_listen >= 0 || serial_log >= 0) srv.adopt_serial(serial_listen, serial_log);
    for (int fd : agents)
        srv.adopt_agent_listener(fd);
    for (int fd : mute)
        srv.adopt_mute_listener(fd);
    for (auto [fd, port] : forwards)
        srv.adopt_http_forward(fd, port);

    signals.async_wait([&](std::error_code ec, int signo) {
        if (ec) return;
        std::fprintf(stderr, "%s: terminating on signal %d\n", program_name.c_str(), signo);
        srv.host_signal();
    });
    exit_status status;
    srv.on_exit([&](exit_status s) {
        status = s;
        ctx.stop();
    });
    srv.start();
    ctx.run();

    if (status.signal) {
        std::signal(status.signal, SIG_DFL);
        std::raise(status.signal);
    }
    if (status.abrupt) std::_Exit(status.code);  // a crash leaves its files behind
    cleanup();
    return status.code;
}
