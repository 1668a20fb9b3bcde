// start, stop, status, reset, list, pause, resume: thin shells over src/lifecycle.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/exit_codes.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

// Progress on stderr with the time since the command began, so stdout stays the result.
progress_sink stderr_progress(bool quiet) {
    if (quiet) return {};
    const auto t0 = std::chrono::steady_clock::now();
    return [t0](std::string_view line) {
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fmt::print(stderr, "[{:6.2f}s] {}\n", s, line);
    };
}

json phases_json(const std::vector<phase_time>& phases) {
    json j = json::array();
    for (const auto& p : phases)
        j.push_back({{"phase", p.name}, {"ms", p.ms}});
    return j;
}

// A guest can print a line of any length (the scanner keeps 64 KiB of one): the report shows
// its start and says how much is left out; serial.log has it whole.
std::string shorten_console_line(const std::string& line) {
    constexpr std::size_t shown = 400;
    if (line.size() <= shown) return line;
    return fmt::format("{} [... {} more bytes]", line.substr(0, shown), line.size() - shown);
}

int settings_error(std::string_view command, const error& e) {
    report(command, e);
    return exit_code::usage;
}

int error_exit(std::string_view command, const error& e) {
    report(command, e);
    return e.code == errc::busy ? exit_code::busy : exit_code::error;
}

// ---- start ----
void add_start(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand("start", "Start the emulator and wait until it is ready");
    auto o = add_instance_options(cmd, option_set::runtime);
    struct extra {
        std::string image;
        bool keep_on_failure = false;
        bool cold = false;
        bool console = false;
        bool quiet = false;
        std::string append;
        std::string share;
        bool share_writable = false;
    };
    auto x = std::make_shared<extra>();
    cmd->add_option("--image", x->image,
                    "image (qcow2 with its .json manifest beside it); default "
                    "EMULATOR_IMAGE_DIR/stack-emulator-<arch>.qcow2");
    cmd->add_flag("--keep-on-failure", x->keep_on_failure,
                  "leave a VM that failed to start running, for debugging");
    cmd->add_flag(
        "--cold", x->cold,
        "boot from scratch even when the saved ready state (`snapshot save stackemu-ready`) fits");
    cmd->add_flag("--console", x->console, "echo the guest's console while it boots");
    cmd->add_flag("-q,--quiet", x->quiet, "no progress lines");
    cmd->add_option("--append", x->append,
                    "extra kernel command-line arguments (images that boot a kernel directly)");
    cmd->add_option("--share", x->share,
                    "a host directory the guest sees under the 9p tag hostshare, read-only "
                    "(the stack profile mounts it at /mnt/hostshare); never the host's /");
    cmd->add_flag("--share-writable", x->share_writable,
                  "export the --share directory writable (kernel-boot images)");
    cmd->callback([o, x, &action] {
        action = [o, x]() -> int {
            if (x->share_writable && x->share.empty())
                return settings_error(
                    "start", make_error(errc::invalid_argument,
                                        "--share-writable needs --share DIR: name the directory "
                                        "to export"));
            auto inst = resolve_instance(*o);
            if (!inst) return settings_error("start", inst.error());
            start_request req;
            if (!x->share.empty())
                req.share = host_share{fs::absolute(x->share), x->share_writable};
            req.inst = std::move(*inst);
            if (!x->image.empty()) req.image = fs::absolute(x->image);
            req.keep_on_failure = x->keep_on_failure;
            req.cold = x->cold;
            req.extra_cmdline = x->append;
            req.progress = stderr_progress(x->quiet);
            req.echo_console = x->console;
            const auto paths = req.inst.paths;
            auto outcome = run_on_context(start(std::move(req)));
            if (!outcome) return error_exit("start", outcome.error());
            const auto& r = *outcome;
            if (o->json) {
                json j = {{"ready", r.ready},
                          {"already_running", r.already_running},
                          {"accelerator", r.accel_reason},
                          {"total_ms", r.total_ms},
                          {"phases", phases_json(r.phases)},
                          {"failure", r.failure},
                          {"cause", to_string(r.why)},
                          {"last_lines", r.last_lines},
                          {"vm_kept", r.vm_kept},
                          {"warm", r.warm},
                          {"warm_note", r.warm_note},
                          {"clock_note", r.clock_note},
                          {"peak_rss_kib", peak_rss_kib()}};
                if (r.pid) j["pid"] = *r.pid;
                std::cout << j.dump(2) << std::endl;
            } else if (r.already_running && !r.failure.empty()) {
                fmt::print(stderr, "stackemu start: {}\n", r.failure);
            } else if (r.already_running) {
                fmt::print("already running (pid {}){}\n", r.pid.value_or(-1),
                           r.ready ? "" : ", but its CPUs are not running");
            } else if (r.ready) {
                fmt::print("ready in {:.1f} s (pid {}{})\n", r.total_ms / 1000, r.pid.value_or(-1),
                           r.warm ? ", restored from the saved ready state" : "");
            } else {
                fmt::print(stderr, "stackemu start: failed: {}\n", r.failure);
                if (!r.last_lines.empty()) {
                    fmt::print(stderr, "--- last {} console lines ({}) ---\n", r.last_lines.size(),
                               paths.serial_log.string());
                    for (const auto& l : r.last_lines)
                        fmt::print(stderr, "{}\n", shorten_console_line(l));
                    fmt::print(stderr, "---\n");
                }
                fmt::print(stderr, "{}\n",
                           r.vm_kept ? "the VM is still running (--keep-on-failure): `stackemu "
                                       "stop` ends it"
                                     : fmt::format("logs: {}", paths.vm_dir.string()));
            }
            if (r.already_running && !r.failure.empty()) return exit_code::failed;
            if (r.already_running) return r.ready ? exit_code::ok : exit_code::paused;
            return r.ready ? exit_code::ok : exit_code::failed;
        };
    });
}

// ---- stop ----
void add_stop(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "stop", "Shut the guest down cleanly (agent or ACPI), escalating only if it does not");
    auto o = add_instance_options(cmd, option_set::runtime);
    auto quiet = std::make_shared<bool>(false);
    cmd->add_flag("-q,--quiet", *quiet, "no progress lines");
    cmd->callback([o, quiet, &action] {
        action = [o, quiet]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) return settings_error("stop", inst.error());
            stop_request req;
            req.inst = std::move(*inst);
            req.progress = stderr_progress(*quiet);
            auto outcome = run_on_context(stop(std::move(req)));
            if (!outcome) return error_exit("stop", outcome.error());
            const auto& r = *outcome;
            const int code = !r.was_running || r.clean ? exit_code::stopped_cleanly
                                                       : exit_code::stopped_forcibly;
            if (o->json) {
                json rungs = json::array();
                for (const auto& p : r.rungs)
                    rungs.push_back({{"rung", p.name}, {"ms", p.ms}});
                std::cout << json{{"was_running", r.was_running},
                                  {"clean", r.clean},
                                  {"rung", r.rung},
                                  {"rungs", rungs},
                                  {"total_ms", r.total_ms},
                                  {"exit_after_shutdown_ms", r.exit_after_shutdown_ms
                                                                 ? json(*r.exit_after_shutdown_ms)
                                                                 : json(nullptr)},
                                  {"note", r.note},
                                  {"peak_rss_kib", peak_rss_kib()}}
                                 .dump(2)
                          << std::endl;
            } else if (!r.was_running) {
                fmt::print("{}\n", r.note);
            } else {
                std::string steps;
                for (const auto& p : r.rungs)
                    steps += fmt::format("{}{} {:.0f} ms", steps.empty() ? "" : ", ", p.name, p.ms);
                fmt::print("stopped {} in {:.2f} s by {} ({})\n", r.clean ? "cleanly" : "forcibly",
                           r.total_ms / 1000, r.rung, steps);
                if (!r.note.empty()) fmt::print("{}\n", r.note);
            }
            return code;
        };
    });
}

json status_json(const status_outcome& r, const lifecycle::instance& inst) {
    json probes = json::array();
    for (const auto& p : r.probes)
        probes.push_back({{"url", p.url}, {"ok", p.ok}, {"detail", p.detail}});
    json j = {
        {"instance", inst.paths.display_name()}, {"state", r.state}, {"exit_code", r.exit_code},
        {"qemu_status", r.qemu_status},          {"probes", probes}, {"detail", r.detail},
        {"run_dir", inst.paths.vm_dir.string()}};
    if (r.pid) j["pid"] = *r.pid;
    for (const char* key : {"accel", "accel_reason", "image", "build_id", "started_at", "ready_ms"})
        if (r.saved.contains(key)) j[key] = r.saved[key];
    return j;
}

// ---- status ----
void add_status(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "status",
        "Report the instance's state: ready 0, stopped 3, starting or unhealthy 4, "
        "paused 5, failed or crashed 6, busy 7");
    auto o = add_instance_options(cmd, option_set::name_only);
    cmd->callback([o, &action] {
        action = [o]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) return settings_error("status", inst.error());
            auto r = run_on_context(status(*inst, true));
            if (o->json) {
                std::cout << status_json(r, *inst).dump(2) << std::endl;
                return r.exit_code;
            }
            fmt::print("{}: {}", inst->paths.display_name(), r.state);
            if (r.pid) fmt::print(" (pid {})", *r.pid);
            fmt::print("\n");
            if (!r.detail.empty()) fmt::print("  {}\n", r.detail);
            for (const auto& p : r.probes)
                fmt::print("  {} {} {}\n", p.ok ? "ok  " : "FAIL", p.url, p.detail);
            return r.exit_code;
        };
    });
}

// ---- list ----
void add_list(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand("list", "List the instances under EMULATOR_RUN_DIR");
    auto o = add_instance_options(cmd, option_set::name_only);
    cmd->callback([o, &action] {
        action = [o]() -> int {
            auto base = resolve_instance(*o);
            if (!base) return settings_error("list", base.error());
            std::vector<std::string> names;
            std::error_code ec;
            if (fs::exists(base->config.run_dir / "vm", ec)) names.push_back("");
            for (const auto& e : fs::directory_iterator(base->config.run_dir / "instances", ec))
                if (e.is_directory()) names.push_back(e.path().filename().string());
            std::sort(names.begin() + (names.empty() || !names.front().empty() ? 0 : 1),
                      names.end());
            json all = json::array();
            for (const auto& n : names) {
                auto s = base->config;
                s.name = n;
                auto inst = open_instance(s);
                if (!inst) continue;
                auto r = run_on_context(status(*inst, false));
                all.push_back(status_json(r, *inst));
            }
            if (o->json) {
                std::cout << all.dump(2) << std::endl;
            } else if (all.empty()) {
                fmt::print("no instances under {}\n", base->config.run_dir.string());
            } else {
                for (const auto& j : all)
                    fmt::print("{:<20} {:<10} {}\n", j["instance"].get<std::string>(),
                               j["state"].get<std::string>(),
                               j.contains("pid") ? fmt::format("pid {}", j["pid"].get<int>()) : "");
            }
            return exit_code::ok;
        };
    });
}

// ---- reset ----
void add_reset(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "reset", "Stop cleanly, then remove the overlay disk and runtime state (images stay)");
    auto o = add_instance_options(cmd, option_set::runtime);
    cmd->callback([o, &action] {
        action = [o]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) return settings_error("reset", inst.error());
            stop_request req;
            req.inst = *inst;
            req.progress = stderr_progress(false);
            auto outcome = run_on_context(reset(std::move(req)));
            if (!outcome) return error_exit("reset", outcome.error());
            if (o->json) {
                std::cout << json{{"stopped_rung", outcome->rung}, {"clean", outcome->clean}}.dump(
                                 2)
                          << std::endl;
            } else {
                fmt::print("reset {}: overlay and state removed (logs kept in {})\n",
                           inst->paths.display_name(), inst->paths.vm_dir.string());
            }
            return exit_code::ok;
        };
    });
}

// ---- pause / resume ----
void add_pause_resume(CLI::App& app, std::function<int()>& action) {
    for (bool pausing : {true, false}) {
        auto* cmd = app.add_subcommand(
            pausing ? "pause" : "resume",
            pausing ? "Stop the guest's CPUs (QMP stop)" : "Run the guest's CPUs again (QMP cont)");
        auto o = add_instance_options(cmd, option_set::name_only);
        cmd->callback([o, pausing, &action] {
            action = [o, pausing]() -> int {
                const char* name = pausing ? "pause" : "resume";
                auto inst = resolve_instance(*o);
                if (!inst) return settings_error(name, inst.error());
                auto r = run_on_context(set_paused(*inst, pausing));
                if (!r) return error_exit(name, r.error());
                if (o->json)
                    std::cout << json{{"state", pausing ? "paused" : "running"}}.dump()
                              << std::endl;
                else
                    fmt::print("{}\n", pausing ? "paused" : "resumed");
                return exit_code::ok;
            };
        });
    }
}

}  // namespace

void add_lifecycle_commands(CLI::App& app, std::function<int()>& action) {
    add_start(app, action);
    add_stop(app, action);
    add_status(app, action);
    add_list(app, action);
    add_reset(app, action);
    add_pause_resume(app, action);
}

}  // namespace stackemu::cli
