// `start`: launch QEMU with its CPUs stopped, connect QMP and the serial console, `cont`, and
// let the state machine decide from events, console lines, the agent and the probes. No
// sleeps: every wait is on an event or a deadline.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <asio.hpp>
#include <fstream>
#include <sstream>

#include "lifecycle/accel_probe.hpp"
#include "lifecycle/console_scanner.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/controller_detail.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/http_probe.hpp"
#include "lifecycle/image_check.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/snapshot.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "lifecycle/vm_process.hpp"
#include "provision/iso.hpp"
#include "provision/kernel_arch.hpp"
#include "qmp/commands.hpp"
#include "qmp/qga.hpp"

namespace stackemu::lifecycle {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

namespace {

// True when the overlay exists and records this manifest's base and build.
bool overlay_current(const instance_paths& paths, const provision::manifest& m) {
    std::error_code ec;
    if (!fs::exists(paths.disk, ec)) return false;
    auto text = read_file(paths.vm_dir / "overlay.json");
    json j = text ? json::parse(*text, nullptr, false) : json();
    return j.is_object() && j.value("build_id", "") == m.build_id &&
           j.value("base", "") == m.disk.string();
}

// The overlay records the base build it sits on; another build means a new overlay
// (upstream compared only size and mtime: defect 10).
result<void> ensure_overlay(const instance_paths& paths, const provision::manifest& m,
                            const progress_sink& say, std::optional<std::uint64_t> bytes) {
    const fs::path record = paths.vm_dir / "overlay.json";
    std::error_code ec;
    if (fs::exists(paths.disk, ec)) {
        if (overlay_current(paths, m)) return {};
        auto text = read_file(record);
        json j = text ? json::parse(*text, nullptr, false) : json();
        const std::string old = j.is_object() ? j.value("build_id", "unknown") : "unknown";
        if (say)
            say(fmt::format("the image changed (build {} -> {}): recreating the overlay {}", old,
                            m.build_id, paths.disk.string()));
    }
    const fs::path tmp = paths.disk.string() + ".new";
    fs::remove(tmp, ec);
    std::vector<std::string> create = {"qemu-img",      "create",    "-q",    "-f",
                                       "qcow2",         "-F",        "qcow2", "-b",
                                       m.disk.string(), tmp.string()};
    if (bytes) create.push_back(std::to_string(*bytes));
    auto made = run_tool(create);
    if (!made) return fail(made.error());
    if (made->exit_code != 0)
        return fail(
            errc::process_failed,
            fmt::format("qemu-img could not create the overlay {}: {}", tmp.string(), made->err));
    ::chmod(tmp.c_str(), 0600);
    fs::rename(tmp, paths.disk, ec);
    if (ec) return fail(errc::io_error, "cannot put the overlay in place: " + ec.message());
    return write_file_atomically(
        record, json{{"build_id", m.build_id}, {"base", m.disk.string()}}.dump(2) + "\n", 0600);
}

// The STACKCFG ISO: the instance name and the host ports, for a guest that links to itself.
result<fs::path> write_runtime_config(const instance_paths& paths,
                                      const std::vector<resolved_forward>& forwards) {
    provision::runtime_config config;
    config.instance_name = paths.display_name();
    for (const auto& f : forwards) {
        if (f.name == "dashboard") config.dashboard_port = f.host_port;
        if (f.name == "backend") config.backend_port = f.host_port;
        if (f.name == "minio") config.minio_port = f.host_port;
        if (f.name == "inbucket") config.inbucket_port = f.host_port;
    }
    auto files = provision::runtime_config_files(config);
    if (!files) return fail(files.error());
    const fs::path out = paths.vm_dir / "config.iso";
    if (auto written = provision::write_iso(out, std::string(provision::config_label), *files);
        !written)
        return fail(written.error());
    ::chmod(out.c_str(), 0600);
    return out;
}

// The directory as QEMU will open it, judged before anything is created. A writable share is
// announced to the guest on the kernel command line (stackemu.hostshare=rw), which only an
// image that boots its kernel directly lets us set.
result<host_share> resolve_host_share(host_share share, const provision::manifest& m) {
    const auto named = share.dir.string();
    std::error_code ec;
    auto dir = fs::canonical(share.dir, ec);
    if (ec)
        return fail(errc::invalid_argument,
                    fmt::format("--share {}: {}: name an existing directory", named, ec.message()));
    if (!fs::is_directory(dir, ec))
        return fail(errc::invalid_argument,
                    fmt::format("--share {}: not a directory: name the directory to share", named));
    if (dir == dir.root_path())
        return fail(errc::invalid_argument,
                    fmt::format("--share {}: refusing to export the host's root directory to the "
                                "guest; name the project directory the guest needs",
                                named));
    if (::access(dir.c_str(), R_OK | X_OK) != 0)
        return fail(errc::invalid_argument,
                    fmt::format("--share {}: the directory is not readable by you, so QEMU "
                                "could not read it either",
                                named));
    if (share.writable && !m.kernel_boot)
        return fail(errc::invalid_argument,
                    fmt::format("--share-writable: the image boots by firmware, so the guest "
                                "cannot be told to mount {} writable; share it read-only",
                                named));
    share.dir = std::move(dir);
    return share;
}

// A taken host port fails QEMU anyway; checking first gives the name of the setting.
result<void> check_ports_free(const std::vector<resolved_forward>& forwards) {
    for (const auto& f : forwards)
        if (host_port_in_use(f.host_port))
            return fail(
                errc::invalid_argument,
                fmt::format("host port {} (the {} forward) is already in use on 127.0.0.1: "
                            "stop what uses it, or choose another port{}",
                            f.host_port, f.name, f.setting.empty() ? "" : " with " + f.setting));
    return {};
}

// What `start` can judge before it creates anything, so that bad input leaves the run
// directory as it was: the manifest and its architecture, the base image when a new overlay
// will sit on it, and the host ports while no VM and no other command holds the instance
// (the port check under the lock decides; this one only comes first).
result<provision::manifest> preflight(const settings& s, const instance_paths& paths,
                                      const fs::path& image) {
    auto m = provision::load_manifest(image);
    if (!m) return fail(m.error());
    auto image_arch = parse_architecture(m->arch);
    if (!image_arch) return fail(image_arch.error());
    if (*image_arch != s.guest_arch)
        return fail(errc::invalid_argument,
                    fmt::format("the image {} is for {}, but EMULATOR_ARCH/--arch is {}: pick the "
                                "image for {} or set the architecture to {}",
                                image.string(), m->arch, to_string(s.guest_arch),
                                to_string(s.guest_arch), m->arch));
    if (m->kernel_boot) {
        // A manifest that lies about its kernel's arch would boot to a silent console.
        auto kernel_arch = provision::kernel_arch_of(m->kernel_boot->kernel);
        if (!kernel_arch) return fail(kernel_arch.error());
        if (*kernel_arch && **kernel_arch != m->arch)
            return fail(errc::invalid_argument,
                        fmt::format("the manifest of {} says \"arch\": \"{}\", but its kernel {} "
                                    "is an {} kernel: set \"arch\" to \"{}\" in the manifest, or "
                                    "give it a kernel built for {}",
                                    image.string(), m->arch, m->kernel_boot->kernel.string(),
                                    **kernel_arch, **kernel_arch, m->arch));
    }
    if (!overlay_current(paths, *m))
        if (auto usable = check_base_image(m->disk); !usable) return fail(usable.error());
    std::error_code ec;
    const auto held = holder(paths.lock.string());
    if (!fs::exists(paths.qmp_socket, ec) && held && !*held)
        if (auto free = check_ports_free(resolve_forwards(m->prof, s)); !free)
            return fail(free.error());
    return m;
}

// The instance's configuration as this start runs it, in vm/config.json: written the first
// time and whenever a flag or variable changed it, never otherwise (a fall-back to a cold boot
// changes nothing in it). Keys another version wrote stay.
result<void> record_configuration(const instance_paths& paths, const config_values& values,
                                  const progress_sink& say) {
    auto existing = read_record(paths.config);
    if (!existing) return fail(existing.error());
    const auto before = *existing ? (*existing)->document : json::object();
    const auto after = updated_document(before, values);
    if (*existing && after == before) return {};
    if (auto written = write_record(paths.config, after); !written) return written;
    if (!*existing && say)
        say(
            fmt::format("recorded the instance's configuration in {} (`stackemu config show` "
                        "explains it)",
                        paths.config.string()));
    return {};
}

fs::path cache_dir() {
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "stackemu";
    const char* home = std::getenv("HOME");
    return fs::path(home ? home : "/tmp") / ".cache" / "stackemu";
}

std::string tail_of_file(const fs::path& p, std::size_t max_bytes = 4096) {
    auto text = read_file(p);
    if (!text) return {};
    return text->size() > max_bytes ? text->substr(text->size() - max_bytes) : *text;
}

// Everything the concurrent watchers of one start share. Lives as long as any watcher.
struct start_run : std::enable_shared_from_this<start_run> {
    start_run(const asio::any_io_executor& ex, readiness_profile rp, instance_paths p,
              std::size_t tail_lines)
        : profile(std::move(rp)),
          paths(std::move(p)),
          scanner(default_max_console_line, tail_lines),
          done(ex, clock_type::time_point::max()),
          deadline(ex),
          silent_console(ex),
          serial(ex),
          prober(ex) {}

    readiness_profile profile;
    instance_paths paths;
    vm_machine machine;
    console_scanner scanner;
    asio::steady_timer done;
    asio::steady_timer deadline;
    asio::steady_timer silent_console;  // the empty-console warning; cancelled with the run
    asio::local::stream_protocol::socket serial;
    http_prober prober;
    progress_sink progress;
    bool echo_console = false;
    clock_type::time_point t0 = clock_type::now();
    std::vector<phase_time> phases;
    bool finished = false;
    bool ready = false;
    bool qemu_alive = true;
    std::optional<report_failure> failure;
    bool first_byte_seen = false;
    bool warm = false;  // restored from the ready state: the guest clock needs setting
    std::string silent_console_hint;  // what to check when the console stays empty

    void mark(std::string name) { phases.push_back({std::move(name), detail::ms_since(t0)}); }

    void feed(const vm_input& in) {
        if (finished) return;
        auto t = step(profile, machine, in);
        machine = std::move(t.next);
        qemu_alive = machine.qemu_alive;
        for (auto& a : t.actions) {
            if (std::holds_alternative<report_ready>(a)) {
                ready = true;
            } else if (auto* f = std::get_if<report_failure>(&a)) {
                failure = *f;
                mark("failure_detected");
            } else if (auto* r = std::get_if<record_event>(&a)) {
                detail::append_event(paths,
                                     json{{"record", r->what}, {"at", detail::now_iso8601()}});
            } else if (auto* s = std::get_if<report_stopped>(&a)) {
                if (!ready && !failure)
                    failure =
                        report_failure{cause::guest_shutdown,
                                       s->clean ? "the guest powered itself off before it was ready"
                                                : "QEMU exited before the VM was ready"};
            }
        }
        if (t.why == cause::readiness || t.why == cause::ready) {
            // Name the condition just met, for the phase breakdown.
        }
        const bool terminal = machine.state == vm_state::failed ||
                              machine.state == vm_state::crashed ||
                              machine.state == vm_state::stopped;
        if (ready || failure || terminal) finish();
    }

    void finish() {
        if (finished) return;
        finished = true;
        done.cancel();
        deadline.cancel();
        silent_console.cancel();
        std::error_code ignored;
        serial.close(ignored);
    }
};

asio::awaitable<void> watch_console(std::shared_ptr<start_run> run) {
    std::array<char, 8192> buf{};
    while (!run->finished) {
        std::error_code ec;
        std::size_t n = co_await run->serial.async_read_some(
            asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec || run->finished) co_return;
        if (!run->first_byte_seen) {
            run->first_byte_seen = true;
            run->mark("first_console_byte");
        }
        for (auto& line : run->scanner.feed(std::string_view(buf.data(), n))) {
            if (run->echo_console && run->progress) run->progress("guest: " + line.text);
            const bool was_seen = run->machine.flags.marker_seen;
            console_line input{line.text};
            run->feed(input);
            if (!was_seen && run->machine.flags.marker_seen) run->mark("ready_marker");
        }
    }
}

asio::awaitable<void> watch_events(std::shared_ptr<start_run> run, qmp::event_subscription events) {
    while (!run->finished) {
        auto ev = co_await events.next(24h);
        if (!ev) {
            if (ev.error().code == errc::timeout) continue;
            const auto code = ev.error().code;
            if (code == errc::protocol_error || code == errc::message_too_large) {
                // The client ended the session itself: say why, not "QEMU closed" (issue 16.4).
                run->failure = report_failure{cause::monitor_failed, ev.error().what()};
                run->finish();
                co_return;
            }
            qmp_eof eof{false};
            run->feed(eof);
            co_return;
        }
        // events.jsonl is written by the connection's event_log, this only drives the machine.
        qmp_event input{ev->name, ev->data};
        run->feed(input);
    }
}

asio::awaitable<void> watch_agent(std::shared_ptr<start_run> run) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer pause(ex);
    qmp::qga::client_options o;
    o.connect_timeout = 1000ms;
    o.sync_timeout = 1000ms;
    o.command_timeout = std::min<std::chrono::milliseconds>(5000ms, reply_timeout());
    const qmp::endpoint ep = qmp::unix_endpoint{run->paths.qga_socket.string()};
    while (!run->finished) {
        auto agent = co_await qmp::qga::client::connect(ep, o);
        if (agent) {
            auto pong = co_await qmp::qga::ping(*agent);
            if (pong && !run->finished) {
                run->mark("agent_up");
                agent_answered input;
                run->feed(input);
                if (run->warm) {
                    // The restored guest's clock stands where it was when the state was saved.
                    // Set while the probes run: qemu-ga's hwclock -w can take a second or two
                    // under TCG. The command's run waits for this before it returns.
                    const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
                                         std::chrono::system_clock::now().time_since_epoch())
                                         .count();
                    auto set = co_await qmp::qga::set_time(*agent, now);
                    if (set)
                        run->mark("clock_set");
                    else if (run->progress)
                        run->progress("could not set the guest clock: " + set.error().what());
                }
                co_return;
            }
        }
        pause.expires_after(200ms);
        std::error_code ignored;
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }
}

asio::awaitable<bool> probe_until_healthy(std::shared_ptr<start_run> run, std::string url) {
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer pause(ex);
    auto wait = 25ms;
    while (!run->finished) {
        auto answer = co_await run->prober.get(url, 2000ms);
        if (answer && answer->status >= 200 && answer->status < 400) co_return true;
        if (run->finished) co_return false;
        pause.expires_after(wait);
        std::error_code ignored;
        co_await pause.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
        wait = std::min<std::chrono::milliseconds>(wait * 2, 500ms);
    }
    co_return false;
}

asio::awaitable<void> watch_probes(std::shared_ptr<start_run> run, std::vector<std::string> urls) {
    for (const auto& url : urls)
        if (!co_await probe_until_healthy(run, url)) co_return;
    if (run->finished) co_return;
    run->mark("probes_healthy");
    all_probes_healthy input;
    run->feed(input);
}

asio::awaitable<void> watch_deadline(std::shared_ptr<start_run> run, std::chrono::seconds limit) {
    run->deadline.expires_after(limit);
    std::error_code ec;
    co_await run->deadline.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (ec || run->finished) co_return;
    // The state machine appends what is still missing.
    std::string what = fmt::format("ready within {} s (EMULATOR_READY_TIMEOUT)", limit.count());
    if (!run->first_byte_seen)
        what += fmt::format("; the serial console stayed empty: {}", run->silent_console_hint);
    deadline_passed input{what};
    run->feed(input);
}

// A guest that prints nothing at all is usually one that never booted (a kernel for another
// arch, no console=ttyS0): say so long before the ready timeout.
asio::awaitable<void> watch_silent_console(std::shared_ptr<start_run> run,
                                           std::chrono::seconds after) {
    if (run->finished) co_return;
    run->silent_console.expires_after(after);
    std::error_code ignored;
    co_await run->silent_console.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    if (run->finished || run->first_byte_seen || !run->progress) co_return;
    run->progress(fmt::format("no output on the serial console after {} s: {}", after.count(),
                              run->silent_console_hint));
}

void spawn_watcher(const asio::any_io_executor& ex, asio::awaitable<void> task) {
    asio::co_spawn(ex, std::move(task), asio::detached);
}

// Whether the instance's saved ready state can be loaded into the VM about to run: it exists in
// the overlay with RAM state, and its recorded fingerprint matches this VM's. The error says
// why not (errc::not_found when there is none at all).
asio::awaitable<result<void>> ready_state_usable(qmp::client& c, instance_paths paths,
                                                 std::vector<std::string> argv, std::string accel,
                                                 std::string build_id) {
    auto snaps = co_await qmp::query_snapshots(c, "disk0");
    if (!snaps) co_return fail(snaps.error());
    const auto it = std::find_if(snaps->begin(), snaps->end(), [](const qmp::snapshot_info& i) {
        return i.name == ready_state_name;
    });
    if (it == snaps->end()) co_return fail(errc::not_found, "no ready state saved");
    std::vector<snapshot_record> records;
    if (auto text = read_file((paths.vm_dir / "snapshots.json").string())) {
        auto j = json::parse(*text, nullptr, false);
        if (!j.is_discarded()) records = records_from_json(j);
    }
    const auto current = fingerprint_from_argv(argv, c.version().to_string(), accel, build_id);
    const auto verdict = judge_compatibility(*it, find_record(records, *it), current);
    if (verdict.compatible.value_or(false)) co_return result<void>{};
    std::string why = verdict.reason.empty() ? "its compatibility is unknown" : verdict.reason;
    // Name the setting that would make it fit: fast start is lost by a forgotten flag (12.4).
    const auto hint =
        fit_hint(verdict.differences, paths.name.empty() ? "" : " --name " + paths.name);
    if (!hint.empty()) why += "; " + hint;
    co_return fail(errc::incompatible, why);
}

// Long enough for a "quiet" kernel and a slow userland under TCG on a busy runner (the demo
// image prints its first line after ~30 s there), short beside the 240 s ready timeout.
constexpr std::chrono::seconds silent_console_warning{60};

std::string silent_console_hint(const provision::manifest& m) {
    const bool arm = m.arch == "arm64";
    if (!m.kernel_boot)
        return fmt::format(
            "the guest may not boot at all, or may not write to its first serial port: check that "
            "the disk is a bootable {} image and that its kernel runs with console={}",
            m.arch, arm ? "ttyAMA0" : "ttyS0");
    return fmt::format(
        "check that the kernel is built for {} (the manifest's \"arch\") and that the manifest's "
        "boot.cmdline has console={} (a kernel booted with \"quiet\" prints nothing until its "
        "userland does)",
        m.arch, arm ? "ttyAMA0" : "ttyS0");
}

// Without an agent nobody sets a restored guest's clock: say by how much it is behind.
std::string agentless_clock_note(std::optional<std::int64_t> saved_unix) {
    const auto now = std::chrono::duration_cast<std::chrono::seconds>(
                         std::chrono::system_clock::now().time_since_epoch())
                         .count();
    const std::string behind =
        saved_unix ? fmt::format("{} s", std::max<std::int64_t>(0, now - *saved_unix))
                   : std::string("the time since the last stop");
    return fmt::format(
        "the image has no guest agent, so the restored guest's clock was not set: "
        "it is behind the host by {} until the guest corrects it (NTP); an image "
        "with \"agent\": true gets its clock set at every fast start",
        behind);
}

struct launch_plan {
    start_request req;
    std::string qemu;
    std::vector<std::string> argv;
    std::vector<std::string> probe_urls;
    std::string accel;
    std::string build_id;
    provision::profile profile;
    std::string silent_console_hint;
    launch_context context;
    clock_type::time_point t0;
};

struct attempt_result {
    start_outcome outcome;
    bool fall_back_to_cold = false;  // the ready state could not be used: try a cold boot
    std::string failure;             // why, when falling back
};

// One launch of QEMU, from spawn to ready or failure. With `try_warm`, a compatible ready state
// saved in the overlay is loaded before the CPUs run; its failure asks for a cold boot.
asio::awaitable<result<attempt_result>> launch_and_wait(launch_plan plan, bool try_warm) {
    auto ex = co_await asio::this_coro::executor;
    const auto& req = plan.req;
    const auto& s = req.inst.config;
    const auto& paths = req.inst.paths;
    const auto& qemu = plan.qemu;
    const auto& argv = plan.argv;
    const auto& probe_urls = plan.probe_urls;
    const auto t0 = plan.t0;
    auto say = [&](std::string_view line) {
        if (req.progress) req.progress(line);
    };
    attempt_result result_of_attempt;
    auto& out = result_of_attempt.outcome;
    readiness_profile rp;
    rp.ready_marker = plan.profile.ready_marker;
    rp.failure_markers = plan.profile.failure_markers;
    rp.match = plan.profile.match;
    rp.requires_agent = plan.profile.agent;
    rp.requires_probes = !probe_urls.empty();
    auto run = std::make_shared<start_run>(ex, rp, paths, req.tail_lines);
    run->progress = req.progress;
    run->echo_console = req.echo_console;
    run->silent_console_hint = plan.silent_console_hint;
    run->t0 = t0;
    launch_requested launch_in;
    run->feed(launch_in);

    run->mark("prepared");  // settings, image, overlay, ports, accelerator and argv done
    say("launching QEMU");
    const launch_context& context = plan.context;
    launch_options launch_opts;
    launch_opts.context = context;
    // A fall-back launch must not be checked against the QEMU before it.
    detail::update_state(paths, json{{"pid", nullptr}, {"qemu", nullptr}});
    auto launched = launch_daemonized(argv, paths.qemu_stderr_log.string(), launch_opts);
    run->mark("spawn");
    if (!launched) {
        // With -daemonize and -D, QEMU writes its setup errors to the -D log, not stderr.
        std::string text = tail_of_file(paths.qemu_stderr_log) + tail_of_file(paths.qemu_log);
        out.why = cause::launch_failed;
        out.failure = launched.error().code == errc::process_failed
                          ? explain_launcher_failure(text, context)
                          : launched.error().what();
        out.phases = run->phases;
        out.total_ms = detail::ms_since(t0);
        detail::remove_sockets(paths);
        detail::update_state(paths, json{{"state", "failed"}, {"failure", out.failure}});
        co_return result_of_attempt;
    }

    // QEMU's daemon sets its own umask (027): tighten what it created to 0600. The 0700
    // directory already keeps others out; this keeps the files right if it is ever moved.
    for (const auto& p : {paths.qmp_socket, paths.monitor_socket, paths.serial_socket,
                          paths.qga_socket, paths.serial_log, paths.qemu_log})
        ::chmod(p.c_str(), 0600);

    auto vm = co_await detail::connect_vm(paths, qemu, 5000ms);
    if (!vm) {
        out.why = cause::launch_failed;
        out.failure = "QEMU started but its QMP socket did not answer: " + vm.error().what();
        // Never leave the QEMU we launched behind (defect 5).
        if (!req.keep_on_failure) {
            (void)co_await detail::stop_unresponsive(paths, qemu, req.progress);
            detail::remove_sockets(paths);
        }
        detail::update_state(paths, json{{"state", "failed"}, {"failure", out.failure}});
        co_return result_of_attempt;
    }
    out.pid = vm->process->pid();
    run->mark("qmp_greeting");
    // Who was launched: later commands check liveness and identity against it (16.2, 17.3).
    detail::update_state(
        paths, json{{"pid", *out.pid}, {"qemu", detail::identity_json(vm->process->identity())}});

    // Console and events are connected before the CPUs run: nothing the guest prints is missed.
    {
        std::error_code serial_ec;
        const asio::local::stream_protocol::endpoint serial_ep(paths.serial_socket.string());
        run->serial.connect(serial_ep, serial_ec);
        if (serial_ec)
            say("cannot read the serial console (" + serial_ec.message() +
                "); markers will be missed");
    }
    auto events = vm->qmp->subscribe();
    spawn_watcher(ex, watch_events(run, std::move(events)));
    spawn_watcher(ex, watch_console(run));
    spawn_watcher(ex, watch_deadline(run, s.ready_timeout));
    if (s.ready_timeout > silent_console_warning)
        spawn_watcher(ex, watch_silent_console(run, silent_console_warning));

    qmp_connected connected_in;
    run->feed(connected_in);
    if (try_warm) {
        const auto saved_at = ready_state_saved_at(paths);
        auto usable = co_await ready_state_usable(*vm->qmp, paths, argv, plan.accel, plan.build_id);
        if (usable && !ready_state_current(paths)) {
            out.warm_note =
                "the saved ready state is older than the disk (the VM ran after it was saved "
                "and was not stopped by `stackemu stop`): booting cold keeps what the guest "
                "wrote";
            say(out.warm_note);
        } else if (usable) {
            say("resuming the state saved at the last stop");
            const qmp::snapshot_target target{std::string(ready_state_name), "disk0", {"disk0"}};
            auto loaded = co_await qmp::snapshot_load(*vm->qmp, target, 120000ms);
            if (loaded) {
                run->warm = true;
                if (!plan.profile.agent) {
                    out.clock_note = agentless_clock_note(saved_at);
                    say(out.clock_note);
                }
                run->profile.ready_marker.clear();  // printed before the state was saved
                run->mark("state_loaded");
                // A restored guest gets a shorter leash: if it is not ready soon, boot cold.
                spawn_watcher(
                    ex, watch_deadline(run, std::min<std::chrono::seconds>(s.ready_timeout, 60s)));
            } else {
                result_of_attempt.fall_back_to_cold = true;
                result_of_attempt.failure =
                    "loading the ready state failed: " + loaded.error().what();
            }
        } else if (usable.error().code != errc::not_found) {
            out.warm_note = "the saved ready state was not used: " + usable.error().what();
            say(out.warm_note);
        }
        if (result_of_attempt.fall_back_to_cold) {
            run->finish();
            detail::ladder_inputs ladder;
            ladder.paths = paths;
            ladder.qmp = vm->qmp.get();
            ladder.process = vm->process.get();
            ladder.skip_guest_rung = true;
            (void)co_await detail::run_ladder(ladder);
            detail::remove_sockets(paths);
            co_return result_of_attempt;
        }
    }
    // From here the guest writes to the disk: the ready state no longer matches it.
    set_ready_state_current(paths, false);
    auto cont = co_await qmp::cont(*vm->qmp);
    if (!cont && !run->finished) {
        if (cont.error().code == errc::disconnected) {
            // QEMU went away rather than refused: the state machine names that.
            qmp_eof eof{false};
            run->feed(eof);
        } else {
            run->failure = report_failure{cause::launch_failed,
                                          "QEMU refused to run the CPUs: " + cont.error().what()};
            run->finish();
        }
    }
    say("guest booting");
    if (rp.requires_agent) spawn_watcher(ex, watch_agent(run));
    if (!probe_urls.empty()) spawn_watcher(ex, watch_probes(run, probe_urls));

    if (!run->finished) {
        std::error_code ignored;
        co_await run->done.async_wait(asio::redirect_error(asio::use_awaitable, ignored));
    }

    out.phases = run->phases;
    out.total_ms = detail::ms_since(t0);
    if (run->ready) {
        out.ready = true;
        out.warm = run->warm;
        detail::update_state(paths, json{{"state", "ready"},
                                         {"ready_at", detail::now_iso8601()},
                                         {"ready_ms", out.total_ms},
                                         {"failure", nullptr}});
        // A round trip first: its reply follows every event QEMU sent before it, so the event
        // log holds all of them before the connection closes (issue 17). Bounded short: a
        // monitor that wedges now must not hold up a verdict that is already in.
        (void)co_await vm->qmp->execute("query-status", json::object(), 1000ms);
        vm->log->flush();
        detail::append_event(paths, json{{"record", "ready"}, {"at", detail::now_iso8601()}});
        vm->qmp->close();
        co_return result_of_attempt;
    }

    const auto failure =
        run->failure.value_or(report_failure{cause::none, "the start ended without a verdict"});
    if (run->warm) result_of_attempt.fall_back_to_cold = true;
    result_of_attempt.failure = failure.reason;
    out.why = failure.why;
    out.failure = failure.reason;
    const auto& lines = run->scanner.last_lines();
    out.last_lines.assign(lines.begin(), lines.end());
    detail::append_event(
        paths,
        json{{"record", "start failed"}, {"cause", out.failure}, {"at", detail::now_iso8601()}});
    if (vm->qmp->is_open() && req.keep_on_failure && !run->warm) {
        out.vm_kept = true;
        detail::update_state(paths,
                             json{{"state", "failed"}, {"failure", out.failure}, {"kept", true}});
        vm->qmp->close();
        co_return result_of_attempt;
    }
    detail::ladder_inputs ladder;
    ladder.paths = paths;
    ladder.qmp = vm->qmp.get();
    ladder.process = vm->process.get();
    ladder.progress = req.progress;
    ladder.skip_guest_rung = true;
    (void)co_await detail::run_ladder(ladder);
    run->mark("failed_vm_stopped");
    out.phases = run->phases;
    out.total_ms = detail::ms_since(t0);
    detail::remove_sockets(paths);
    detail::update_state(paths, json{{"state", "failed"}, {"failure", out.failure}});
    co_return result_of_attempt;
}

}  // namespace

asio::awaitable<result<start_outcome>> start(start_request req) {
    auto ex = co_await asio::this_coro::executor;
    const auto t0 = clock_type::now();
    const auto& s = req.inst.config;
    const auto& paths = req.inst.paths;
    auto say = [&](std::string_view line) {
        if (req.progress) req.progress(line);
    };
    start_outcome out;

    const fs::path image =
        req.image.value_or(provision::default_image(s.image_dir, to_string(s.guest_arch)));
    auto m = preflight(s, paths, image);
    if (!m) co_return fail(m.error());
    if (req.share) {
        auto share = resolve_host_share(*req.share, *m);
        if (!share) co_return fail(share.error());
        req.share = std::move(*share);
        // The record keeps the directory as QEMU opens it.
        if (req.record)
            if (auto it = req.record->find("share"); it != req.record->end())
                it->second.value = req.share->dir.string();
    }

    for (const auto& dir : {s.run_dir, paths.instance_dir, paths.vm_dir, paths.socket_dir})
        if (auto made = ensure_private_dir(dir); !made) co_return fail(made.error());

    auto lock = try_acquire(paths.lock.string(), "start");
    if (!lock) co_return fail(lock.error());

    const std::string qemu = detail::qemu_binary_for(s);
    std::error_code ec;
    if (fs::exists(paths.qmp_socket, ec)) {
        auto vm = co_await detail::connect_vm(paths, qemu, 3000ms);
        if (vm) {
            const auto refusal =
                running_refusal(req.changes, paths.name.empty() ? "" : " --name " + paths.name);
            if (!refusal.empty()) co_return fail(errc::wrong_state, refusal);
            out.already_running = true;
            out.pid = vm->process->pid();
            auto st = co_await qmp::query_status(*vm->qmp);
            out.ready = st && st->running;
            out.failure = st ? "" : st.error().what();
            auto saved = detail::read_state(paths);
            if (saved.value("state", "") == "failed") {
                // A VM kept by --keep-on-failure is not a running emulator.
                out.ready = false;
                out.failure = fmt::format(
                    "the VM of a failed start is still running "
                    "(--keep-on-failure: {}); `stackemu stop` ends it",
                    saved.value("failure", "unknown cause"));
            } else if (auto note = detail::interrupted_command_note(saved); !note.empty()) {
                // Nobody saw it become ready (or it is half-way through a shutdown).
                out.ready = false;
                out.failure = "a VM is running, but " + note;
            }
            co_return out;
        }
        // A refused connect is no proof of death: a wedged QEMU still holds its ports (16.2).
        if (const auto launched = detail::launched_identity(detail::read_state(paths));
            launched && vm.error().code != errc::wrong_state) {
            auto proc = open_launched(*launched);
            if (proc)
                co_return fail(errc::wrong_state,
                               fmt::format("QEMU (pid {}) is still running, but its monitor "
                                           "cannot be used ({}): `stackemu stop` ends it",
                                           proc->pid(), vm.error().what()));
            if (proc.error().code != errc::not_found) co_return fail(proc.error());
        }
        if (vm.error().code != errc::connect_failed) co_return fail(vm.error());
        detail::remove_sockets(paths);
        say("removed the stale sockets of a QEMU that had exited without a clean shutdown");
    }

    if (auto made = ensure_overlay(paths, *m, say, req.disk_bytes); !made)
        co_return fail(made.error());

    const auto forwards = resolve_forwards(m->prof, s);
    if (auto free = check_ports_free(forwards); !free) co_return fail(free.error());

    std::vector<std::string> config_changes;
    if (req.record) {
        auto recorded = record_configuration(paths, *req.record, say);
        if (!recorded) co_return fail(recorded.error());
        for (const auto& c : req.changes) {
            config_changes.push_back(describe(c));
            say(config_changes.back());
        }
    }

    const auto host = host_facts::current();
    accel_probe_inputs probe_in;
    probe_in.mode = s.accel;
    probe_in.guest = s.guest_arch;
    probe_in.host = host.arch.value_or(s.guest_arch);
    probe_in.qemu_binary = qemu;
    probe_in.kernel =
        m->kernel_boot ? std::optional<fs::path>(m->kernel_boot->kernel) : host_kernel_for_probe();
    probe_in.cache_file = cache_dir() / "accel-verdicts.json";
    auto accel = co_await choose_accelerator(probe_in);
    if (!accel) co_return fail(accel.error());
    out.accel_reason = accel->reason;
    say("accelerator: " + accel->reason);

    vm_spec spec;
    spec.qemu_binary = qemu;
    spec.guest_arch = s.guest_arch;
    spec.host_arch = probe_in.host;
    spec.accel = accel->accel;
    spec.cpus = s.cpus;
    spec.ram_mib = s.ram_mib;
    spec.name = paths.display_name();
    spec.overlay = paths.disk;
    if (m->kernel_boot) {
        std::string cmdline = m->kernel_boot->cmdline;
        if (!req.extra_cmdline.empty()) cmdline += " " + req.extra_cmdline;
        if (req.share && req.share->writable) cmdline += " stackemu.hostshare=rw";
        spec.boot = kernel_boot{m->kernel_boot->kernel, m->kernel_boot->initrd, cmdline};
    } else if (s.guest_arch == architecture::arm64) {
        auto fw = find_uefi_firmware(default_uefi_firmware_candidates(),
                                     [](const fs::path& p) { return fs::exists(p); });
        if (!fw) co_return fail(fw.error());
        spec.boot = firmware_boot{*fw};
    } else {
        spec.boot = firmware_boot{};
    }
    for (const auto& f : forwards)
        spec.forwards.push_back({f.host_port, f.guest_port});
    spec.files = files_of(paths);
    spec.share = req.share;
    for (const auto& [path, purpose] : req.extra_isos)
        spec.isos.push_back({path, purpose == "bundle" ? iso_purpose::bundle : iso_purpose::seed});
    if (req.runtime_config) {
        auto config = write_runtime_config(paths, forwards);
        if (!config) co_return fail(config.error());
        spec.isos.push_back({*config, iso_purpose::config});
    }
    const auto argv = build_qemu_argv(spec);

    std::vector<std::string> probe_urls;
    for (const auto& p : m->prof.probes)
        for (const auto& f : forwards)
            if (f.name == p.forward)
                probe_urls.push_back(fmt::format("http://127.0.0.1:{}{}", f.host_port, p.path));

    detail::write_state(paths, json{{"state", "launching"},
                                    {"instance", paths.display_name()},
                                    {"started_at", detail::now_iso8601()},
                                    {"image", image.string()},
                                    {"build_id", m->build_id},
                                    {"profile", m->prof.name},
                                    {"accel", to_string(accel->accel)},
                                    {"accel_reason", accel->reason},
                                    {"agent", m->prof.agent},
                                    {"probes", probe_urls},
                                    {"argv", argv}});
    detail::append_event(paths, json{{"record", "start"}, {"at", detail::now_iso8601()}});

    launch_plan plan;
    plan.req = req;
    plan.qemu = qemu;
    plan.argv = argv;
    plan.probe_urls = probe_urls;
    plan.accel = std::string(to_string(accel->accel));
    plan.build_id = m->build_id;
    plan.profile = m->prof;
    plan.silent_console_hint = silent_console_hint(*m);
    plan.t0 = t0;
    for (const auto& f : forwards)
        plan.context.forwards.push_back({f.host_port, f.setting});
    auto attempt = co_await launch_and_wait(plan, !req.cold);
    if (attempt && attempt->fall_back_to_cold) {
        say("fast start failed (" + attempt->failure + "); booting cold instead");
        attempt = co_await launch_and_wait(plan, false);
    }
    if (!attempt) co_return fail(attempt.error());
    attempt->outcome.accel_reason = accel->reason;
    attempt->outcome.config_changes = std::move(config_changes);
    co_return attempt->outcome;
}

}  // namespace stackemu::lifecycle
