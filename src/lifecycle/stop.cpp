// `stop`: the escalation ladder. The guest's own shutdown first (agent, else ACPI power
// button), so its databases close cleanly; then `quit`; then SIGTERM and SIGKILL, sent only
// to the process verified through the QMP socket.
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <unistd.h>

#include <array>
#include <asio.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>

#include "lifecycle/controller.hpp"
#include "lifecycle/controller_detail.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/snapshot.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "lifecycle/vm_process.hpp"
#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "qmp/qga.hpp"

namespace stackemu::lifecycle {

using namespace std::chrono_literals;
using nlohmann::json;
using clock_type = std::chrono::steady_clock;

namespace detail {

connected_vm::connected_vm() = default;
connected_vm::connected_vm(connected_vm&&) noexcept = default;
connected_vm& connected_vm::operator=(connected_vm&&) noexcept = default;
connected_vm::~connected_vm() = default;

std::string qemu_binary_for(const settings& s) {
    return s.qemu.empty() ? std::string(default_qemu_binary(s.guest_arch)) : s.qemu;
}

asio::awaitable<stop_outcome> run_ladder(ladder_inputs in) {
    stop_outcome out;
    out.was_running = true;
    const auto t_all = clock_type::now();
    auto say = [&](std::string_view line) {
        if (in.progress) in.progress(line);
    };
    auto& c = *in.qmp;
    qmp::event_filter filter;
    filter.names = {"SHUTDOWN", "POWERDOWN"};
    auto events = c.subscribe(filter);

    // Waits for the process to go; SHUTDOWN alone is not enough, the overlay is closed by exit.
    auto gone_within = [&](std::chrono::milliseconds budget) -> asio::awaitable<bool> {
        co_return co_await in.process->wait_exit(budget);
    };
    // QEMU says SHUTDOWN before any exit it chooses (a guest power-off, our quit): an exit
    // without one, before we signalled it, is a crash or a kill.
    bool shutdown_seen = false;
    bool guest_down = false;           // SHUTDOWN(guest) seen: later rungs only end the process
    bool late_guest_shutdown = false;  // the guest's own SHUTDOWN, just past the budget
    auto crashed = [&](std::string_view while_doing) {
        while (auto e = events.try_next()) {
            if (e->name != "SHUTDOWN") continue;
            shutdown_seen = true;
            late_guest_shutdown = e->data.value("guest", false);
        }
        if (shutdown_seen) return;
        out.crashed = true;
        out.note = fmt::format(
            "QEMU exited without a SHUTDOWN event while {}: it crashed or was killed", while_doing);
    };

    bool guest_rung = !in.skip_guest_rung;
    if (guest_rung) {
        auto st = co_await qmp::query_status(c);
        if (st && st->status == "prelaunch") {
            // Its CPUs never ran (a start ended before `cont`): no guest to ask, nothing to lose.
            guest_rung = false;
            say("the guest never ran (QEMU is in prelaunch); quitting QEMU");
        } else if (st && st->status == "paused") {
            // A paused guest cannot see the power button: run its CPUs first.
            (void)co_await qmp::cont(c);
        }
    }
    if (guest_rung) {
        const auto t0 = clock_type::now();
        std::string rung = "powerdown";
        bool asked = false;
        if (in.await_guest_poweroff) {
            asked = true;
            rung = "guest-poweroff";
            say("waiting for the guest to power itself off");
        } else if (in.agent_socket) {
            qmp::qga::client_options qo;
            qo.connect_timeout = 1000ms;
            qo.sync_timeout = 1500ms;
            qo.no_reply_grace = 300ms;
            qo.command_timeout = reply_timeout();
            const qmp::endpoint ep = qmp::unix_endpoint{in.agent_socket->string()};
            auto agent = co_await qmp::qga::client::connect(ep, qo);
            if (agent) {
                auto sent = co_await qmp::qga::shutdown(*agent, "powerdown");
                if (sent) {
                    asked = true;
                    rung = "agent-shutdown";
                    say("asked the guest agent to shut the guest down");
                }
            }
        }
        if (!asked) {
            auto pd = co_await qmp::system_powerdown(c);
            if (pd) {
                asked = true;
                say("pressed the ACPI power button (system_powerdown)");
            }
        }
        if (asked) {
            // SHUTDOWN(guest-shutdown) then exit, within the budget.
            auto shutdown = co_await events.wait_for(
                [](const qmp::event& e) { return e.name == "SHUTDOWN"; }, in.first_rung_budget);
            bool guest_clean = false;
            const auto t_shutdown = clock_type::now();
            if (shutdown) {
                shutdown_seen = true;
                guest_clean = shutdown->data.value("guest", false);
            }
            // EOF (disconnected) without SHUTDOWN still means the process may be going.
            bool exited =
                co_await gone_within(shutdown ? (guest_clean ? 1000ms : 10000ms) : 2000ms);
            out.rungs.push_back({rung, ms_since(t0)});
            if (!exited && guest_clean) {
                // The guest is down (issue 16.6): QEMU only has to exit, and `quit` hurries a
                // process that lingers. Nothing of the guest is forced.
                guest_down = true;
                say("the guest has shut down; QEMU is slow to exit: hurrying it with quit");
                const auto t_quit = clock_type::now();
                auto q = co_await qmp::quit(c, 5000ms);
                exited = co_await gone_within(q ? 10000ms : 3000ms);
                out.rungs.push_back({"quit", ms_since(t_quit)});
            }
            if (exited && shutdown) out.exit_after_shutdown_ms = ms_since(t_shutdown);
            if (exited) {
                // A SHUTDOWN that came after the budget but before the exit was seen is still
                // the guest's own clean shutdown: nothing was forced.
                if (!shutdown) crashed("the guest was asked to shut down");
                out.clean = guest_clean || late_guest_shutdown;
                out.rung = rung;
                out.total_ms = ms_since(t_all);
                co_return out;
            }
            if (!guest_down)
                say(fmt::format("the guest did not shut down within {} s; quitting QEMU",
                                in.first_rung_budget.count() / 1000.0));
        }
    }

    if (!guest_down) {
        const auto t0 = clock_type::now();
        // Gone before we asked (killed meanwhile): that exit is not quit's doing.
        const bool gone_before = in.process->exited();
        auto q = co_await qmp::quit(c, 5000ms);
        const bool exited = co_await gone_within(q ? 10000ms : 3000ms);
        out.rungs.push_back({"quit", ms_since(t0)});
        if (exited) {
            // We asked it to quit: its exit, with or without a reply or SHUTDOWN (QEMU can
            // close before either is flushed), is this rung's outcome, not a crash (16.5).
            if (gone_before) {
                crashed("it was about to be asked to quit");
            } else {
                while (events.try_next()) {
                }
            }
            out.rung = "quit";
            if (!q && !gone_before) out.note = "QEMU exited on quit without replying";
            out.total_ms = ms_since(t_all);
            co_return out;
        }
        say("QEMU did not quit; sending SIGTERM");
    } else {
        say("QEMU did not exit after the guest's shutdown; sending SIGTERM");
    }
    {
        const auto t0 = clock_type::now();
        (void)in.process->signal(SIGTERM);
        const bool exited = co_await gone_within(5000ms);
        out.rungs.push_back({"sigterm", ms_since(t0)});
        if (exited) {
            out.rung = "sigterm";
            out.clean = guest_down;
            out.total_ms = ms_since(t_all);
            co_return out;
        }
        say("QEMU ignored SIGTERM; sending SIGKILL");
    }
    const auto t0 = clock_type::now();
    (void)in.process->signal(SIGKILL);
    (void)co_await gone_within(5000ms);
    out.rungs.push_back({"sigkill", ms_since(t0)});
    out.rung = "sigkill";
    out.clean = guest_down;
    out.total_ms = ms_since(t_all);
    co_return out;
}

asio::awaitable<result<connected_vm>> connect_monitor(instance_paths paths,
                                                      std::filesystem::path socket,
                                                      std::string qemu_binary,
                                                      std::chrono::milliseconds timeout) {
    qmp::client_options o;
    o.connect_timeout = timeout;
    // The greeting is a reply too, and follows EMULATOR_REPLY_TIMEOUT like every other: a
    // loaded host greets late, and another client on the socket delays it until it leaves.
    o.greeting_timeout = reply_timeout();
    o.command_timeout = reply_timeout();
    const qmp::endpoint ep = qmp::unix_endpoint{socket.string()};
    auto c = co_await qmp::client::connect(ep, o);
    if (!c) co_return fail(c.error());
    auto pid = c->peer_pid();
    if (!pid) co_return fail(errc::internal, "cannot read the QMP peer's process id");
    auto proc = verify_peer(*pid, qemu_binary, launched_identity(read_state(paths)));
    if (!proc) co_return fail(proc.error());
    connected_vm vm;
    vm.qmp = std::make_unique<qmp::client>(std::move(*c));
    vm.process = std::make_unique<verified_process>(std::move(*proc));
    vm.log = std::make_unique<event_log>(*vm.qmp, paths);
    co_return vm;
}

asio::awaitable<result<connected_vm>> connect_vm(instance_paths paths, std::string qemu_binary,
                                                 std::chrono::milliseconds timeout) {
    const auto socket = paths.qmp_socket;
    co_return co_await connect_monitor(std::move(paths), socket, std::move(qemu_binary), timeout);
}

asio::awaitable<result<connected_vm>> connect_vm_settled(instance_paths paths,
                                                         std::string qemu_binary) {
    auto vm = co_await connect_vm(paths, qemu_binary, 2000ms);
    // A QEMU that is dying may accept and then drop the connection: look again until it either
    // answers or refuses, so a kill -9 in progress reads as a crash.
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer pause(ex);
    for (int attempt = 0; attempt < 10 && !vm && vm.error().code == errc::disconnected; ++attempt) {
        pause.expires_after(100ms);
        std::error_code ignored;
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        vm = co_await connect_vm(paths, qemu_binary, 2000ms);
    }
    co_return vm;
}

// The process holding the listening Unix socket bound at `path`: its inode from /proc/net/unix
// (a listening entry: __SO_ACCEPTCON), then the process with an fd on that inode. Needed when
// the socket cannot be connected to at all: a wedged QEMU accepts no more connections, and
// once its small backlog is full of abandoned ones (status, earlier tries), connect() fails.
std::optional<pid_t> listener_pid(const std::string& path) {
    constexpr unsigned long accepting = 0x10000;  // __SO_ACCEPTCON
    std::ifstream table("/proc/net/unix");
    std::string line;
    std::getline(table, line);  // header
    std::optional<std::string> inode;
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        // Num RefCount Protocol Flags Type St Inode Path
        std::array<std::string, 8> column;
        for (auto& c : column)
            fields >> c;
        const auto& flags = column[3];
        const auto& ino = column[6];
        const auto& bound = column[7];
        if (bound == path && (std::stoul(flags, nullptr, 16) & accepting)) {
            inode = ino;
            break;
        }
    }
    if (!inode) return std::nullopt;
    const std::string wanted = "socket:[" + *inode + "]";
    std::error_code ec;
    for (const auto& proc : std::filesystem::directory_iterator("/proc", ec)) {
        const auto name = proc.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        std::error_code fd_ec;
        for (const auto& fd : std::filesystem::directory_iterator(proc.path() / "fd", fd_ec)) {
            std::error_code link_ec;
            if (std::filesystem::read_symlink(fd.path(), link_ec).native() == wanted)
                return static_cast<pid_t>(std::stol(name));
        }
    }
    return std::nullopt;
}

// A QEMU whose monitor accepts but never answers (its main loop is wedged): neither the guest
// rung nor `quit` can reach it, so SIGTERM, then SIGKILL, to the process behind the socket
// (SO_PEERCRED, verified as for a QMP connection).
asio::awaitable<result<stop_outcome>> stop_unresponsive(instance_paths paths, std::string qemu,
                                                        progress_sink progress) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) co_return fail(errc::io_error, "cannot create a socket");
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    const auto path = paths.qmp_socket.native();
    std::memcpy(addr.sun_path, path.c_str(), std::min(path.size(), sizeof addr.sun_path - 1));
    ucred cred{};
    socklen_t len = sizeof cred;
    const bool connected = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0 &&
                           ::getsockopt(fd, SOL_SOCKET, SO_PEERCRED, &cred, &len) == 0 &&
                           cred.pid > 0;
    const int connect_errno = errno;
    ::close(fd);
    pid_t peer = cred.pid;
    if (!connected) {
        // A full backlog (EAGAIN) means a listener that no longer accepts: find it in /proc
        // (it is then verified like a QMP peer). Any other failure: nothing listens there.
        const auto listener = connect_errno == EAGAIN ? listener_pid(path) : std::optional<pid_t>{};
        if (!listener)
            co_return fail(errc::connect_failed, "cannot reach the process behind the QMP socket");
        peer = *listener;
    }
    auto proc = verify_peer(peer, qemu, launched_identity(read_state(paths)));
    if (!proc) co_return fail(proc.error());
    stop_outcome out;
    out.was_running = true;
    const auto t_all = clock_type::now();
    if (progress) progress("QEMU's monitor does not answer; sending SIGTERM");
    co_await signal_rungs(*proc, progress, out);
    out.total_ms = ms_since(t_all);
    co_return out;
}

asio::awaitable<void> signal_rungs(const verified_process& proc, progress_sink progress,
                                   stop_outcome& out) {
    for (const int sig : {SIGTERM, SIGKILL}) {
        const auto t0 = clock_type::now();
        (void)proc.signal(sig);
        const bool exited = co_await proc.wait_exit(5000ms);
        out.rung = sig == SIGTERM ? "sigterm" : "sigkill";
        out.rungs.push_back({out.rung, ms_since(t0)});
        if (exited) break;
        if (sig == SIGTERM && progress) progress("QEMU ignored SIGTERM; sending SIGKILL");
    }
}

asio::awaitable<stop_outcome> stop_without_monitor(ladder_inputs in, verified_process& proc,
                                                   const std::string& qemu) {
    auto say = [&](std::string_view line) {
        if (in.progress) in.progress(line);
    };
    // The second monitor is its own channel: when it answers, the whole ladder runs on it.
    auto second = co_await connect_monitor(in.paths, in.paths.monitor_socket, qemu, 2000ms);
    if (second) {
        say("using the second monitor (monitor.sock)");
        in.qmp = second->qmp.get();
        in.process = second->process.get();
        co_return co_await run_ladder(in);
    }
    stop_outcome out;
    out.was_running = true;
    const auto t_all = clock_type::now();
    if (in.agent_socket) {
        // No monitor at all: the guest agent still reaches the guest; QEMU's exit within the
        // budget is the guest's own power-off (nothing else was asked of it).
        const auto t0 = clock_type::now();
        qmp::qga::client_options qo;
        qo.connect_timeout = 1000ms;
        qo.sync_timeout = std::min<std::chrono::milliseconds>(reply_timeout(), 5000ms);
        qo.no_reply_grace = 300ms;
        qo.command_timeout = reply_timeout();
        const qmp::endpoint ep = qmp::unix_endpoint{in.agent_socket->string()};
        auto agent = co_await qmp::qga::client::connect(ep, qo);
        if (agent && co_await qmp::qga::shutdown(*agent, "powerdown")) {
            say("asked the guest agent to shut the guest down");
            const bool exited = co_await proc.wait_exit(in.first_rung_budget);
            out.rungs.push_back({"agent-shutdown", ms_since(t0)});
            if (exited) {
                out.rung = "agent-shutdown";
                out.clean = true;
                out.total_ms = ms_since(t_all);
                co_return out;
            }
            say(fmt::format("the guest did not shut down within {} s; sending SIGTERM",
                            in.first_rung_budget.count() / 1000.0));
        }
    }
    co_await signal_rungs(proc, in.progress, out);
    out.total_ms = ms_since(t_all);
    co_return out;
}

}  // namespace detail

namespace {

// The stop itself; the caller holds the instance lock.
asio::awaitable<result<stop_outcome>> stop_locked(stop_request req) {
    const auto& paths = req.inst.paths;
    const auto qemu = detail::qemu_binary_for(req.inst.config);

    std::error_code ec;
    if (!std::filesystem::exists(paths.qmp_socket, ec)) {
        stop_outcome out;
        out.rung = "none";
        out.note = "not running";
        detail::update_state(paths, json{{"state", "stopped"}});
        co_return out;
    }
    auto saved = detail::read_state(paths);
    detail::ladder_inputs in;
    in.paths = paths;
    in.progress = req.progress;
    in.first_rung_budget = req.first_rung_budget.value_or(
        std::chrono::duration_cast<std::chrono::milliseconds>(req.inst.config.stop_timeout));
    if (saved.value("agent", false)) in.agent_socket = paths.qga_socket;
    auto finish = [&](const stop_outcome& out) {
        detail::remove_sockets(paths);
        detail::update_state(paths, json{{"state", out.crashed ? "crashed" : "stopped"},
                                         {"stopped_at", detail::now_iso8601()},
                                         {"stop_rung", out.rung},
                                         {"stop_clean", out.clean}});
    };
    auto crashed_before = [&] {
        // The socket file outlived its QEMU: it was killed without a clean exit.
        detail::remove_sockets(paths);
        stop_outcome out;
        out.rung = "none";
        out.note =
            "QEMU had already exited without a clean shutdown (crashed); removed its stale sockets";
        detail::update_state(paths, json{{"state", "crashed"}});
        return out;
    };

    auto vm = co_await detail::connect_vm_settled(paths, qemu);
    if (!vm) {
        // Another process behind the socket: refused, and nothing is signalled.
        if (vm.error().code == errc::wrong_state) co_return fail(vm.error());
        if (const auto launched = detail::launched_identity(saved)) {
            // Liveness from the process itself: a refused or full socket is not a death (16.2).
            auto proc = open_launched(*launched);
            if (!proc && proc.error().code == errc::not_found) co_return crashed_before();
            if (!proc) co_return fail(proc.error());
            if (req.progress)
                req.progress(fmt::format(
                    "QEMU (pid {}) runs, but its monitor cannot be used ({}); asking the guest "
                    "to shut down through its other channels",
                    proc->pid(), vm.error().what()));
            detail::update_state(paths, json{{"state", "stopping"}});
            auto out = co_await detail::stop_without_monitor(in, *proc, qemu);
            finish(out);
            co_return out;
        }
        // A launch that recorded no identity (an older stackemu): the socket decides.
        if (vm.error().code == errc::connect_failed || vm.error().code == errc::disconnected)
            co_return crashed_before();
        // No greeting or no answer to qmp_capabilities while we hold the lock: QEMU is hung.
        // A monitor that answers with garbage (not QMP, a reply for a greeting) cannot be
        // asked either: stop must still end the VM, so both go to the signal rungs.
        const auto why = vm.error().code;
        if (why != errc::timeout && why != errc::protocol_error && why != errc::bad_greeting &&
            why != errc::message_too_large)
            co_return fail(vm.error());
        auto forced = co_await detail::stop_unresponsive(paths, qemu, req.progress);
        if (!forced) co_return forced;
        finish(*forced);
        co_return forced;
    }
    in.qmp = vm->qmp.get();
    in.process = vm->process.get();
    // Fast start on: keep the state as it is now, so the next start resumes it with every
    // write the guest made (a stale ready state would discard them).
    auto refreshed = co_await refresh_ready_state(req.inst, *vm->qmp);
    if (refreshed) {
        if (req.progress)
            req.progress(fmt::format("saved the running state for the next start ({:.0f} ms)",
                                     refreshed->total_ms));
    } else if (refreshed.error().code != errc::not_found && req.progress) {
        req.progress("the next start will boot cold: the running state was not saved (" +
                     refreshed.error().what() + ")");
    }
    detail::update_state(paths, json{{"state", "stopping"}});
    auto out = co_await detail::run_ladder(in);
    finish(out);
    co_return out;
}

// An instance never started (or removed) has no vm/ directory: nothing runs there, and a lock
// file is not made just to find that out.
bool never_started(const instance_paths& paths) {
    std::error_code ec;
    return !std::filesystem::exists(paths.vm_dir, ec);
}

stop_outcome not_started() {
    stop_outcome out;
    out.rung = "none";
    out.note = "not running (never started)";
    return out;
}

}  // namespace

asio::awaitable<result<stop_outcome>> stop(stop_request req) {
    if (never_started(req.inst.paths)) co_return not_started();
    auto lock = try_acquire(req.inst.paths.lock.string(), req.operation);
    if (!lock) co_return fail(lock.error());
    const auto paths = req.inst.paths;
    auto out = co_await stop_locked(std::move(req));
    // How the stop ended goes beside the events it caused, for `stackemu events` after the fact.
    if (out && out->was_running) {
        json rungs = json::object();
        for (const auto& r : out->rungs)
            rungs[r.name] = r.ms;
        detail::append_event(paths, json{{"record", "stopped"},
                                         {"rung", out->rung},
                                         {"clean", out->clean},
                                         {"crashed", out->crashed},
                                         {"total_ms", out->total_ms},
                                         {"rungs", rungs},
                                         {"at", detail::now_iso8601()}});
    }
    co_return out;
}

asio::awaitable<result<stop_outcome>> reset(stop_request req) {
    const auto paths = req.inst.paths;
    if (never_started(paths)) co_return not_started();
    auto lock = try_acquire(paths.lock.string(), "reset");
    if (!lock) co_return fail(lock.error());
    auto stopped = co_await stop_locked(std::move(req));
    if (!stopped) co_return stopped;
    // The overlay and what describes it go; logs and the events record stay for diagnosis.
    std::error_code ec;
    for (const auto& p : {paths.disk, paths.vm_dir / "overlay.json", paths.state}) {
        std::filesystem::remove(p, ec);
        if (ec)
            co_return fail(errc::io_error,
                           fmt::format("cannot remove {}: {}", p.string(), ec.message()));
    }
    co_return stopped;
}

asio::awaitable<result<void>> set_paused(instance inst, bool paused) {
    const auto& paths = inst.paths;
    if (never_started(paths))
        co_return fail(errc::wrong_state, "the emulator is not running: `stackemu start` first");
    auto lock = try_acquire(paths.lock.string(), paused ? "pause" : "resume");
    if (!lock) co_return fail(lock.error());
    std::error_code ec;
    if (!std::filesystem::exists(paths.qmp_socket, ec))
        co_return fail(errc::wrong_state, "the emulator is not running: `stackemu start` first");
    auto vm = co_await detail::connect_vm(paths, detail::qemu_binary_for(inst.config), 3000ms);
    if (!vm) co_return fail(vm.error());
    result<void> done;
    if (paused)
        done = co_await qmp::stop(*vm->qmp);
    else
        done = co_await qmp::cont(*vm->qmp);
    if (!done) co_return fail(done.error());
    detail::update_state(paths, json{{"paused", paused}});
    detail::append_event(
        paths, json{{"record", paused ? "paused" : "resumed"}, {"at", detail::now_iso8601()}});
    co_return result<void>{};
}

}  // namespace stackemu::lifecycle
