// stop, status, reset, list, pause, resume: thin shells over src/lifecycle (start is in
// start_command.cpp: it needs the image tools the one-shot binary leaves out).
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <chrono>
#include <filesystem>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/lifecycle_shell.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/exit_codes.hpp"

namespace stackemu::cli {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

lifecycle::progress_sink stderr_progress(bool quiet) {
    if (quiet) return {};
    const auto t0 = std::chrono::steady_clock::now();
    return [t0](std::string_view line) {
        const double s =
            std::chrono::duration<double>(std::chrono::steady_clock::now() - t0).count();
        fmt::print(stderr, "[{:6.2f}s] {}\n", s, line);
    };
}

int settings_error(std::string_view command, const error& e) {
    report(command, e);
    return exit_code::usage;
}

int error_exit(std::string_view command, const error& e) {
    report(command, e);
    return e.code == errc::busy ? exit_code::busy : exit_code::error;
}

namespace {

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
    j.update(size_and_ports_json(inst.config));
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
                // Each with its own record: its size and ports are its own.
                auto configured = resolve_configured(*o, {.use = record_use::lenient,
                                                          .pick_free_ports = false,
                                                          .check_host = false,
                                                          .name = n});
                if (!configured) continue;
                const auto& inst = configured->inst;
                auto r = run_on_context(status(inst, false));
                all.push_back(status_json(r, inst));
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
void add_pause_resume(CLI::App& app, std::function<int()>& action, bool pausing) {
    {
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

void add_stop_command(CLI::App& app, std::function<int()>& action) {
    add_stop(app, action);
}
void add_status_command(CLI::App& app, std::function<int()>& action) {
    add_status(app, action);
}
void add_list_command(CLI::App& app, std::function<int()>& action) {
    add_list(app, action);
}
void add_reset_command(CLI::App& app, std::function<int()>& action) {
    add_reset(app, action);
}
void add_pause_command(CLI::App& app, std::function<int()>& action) {
    add_pause_resume(app, action, true);
}
void add_resume_command(CLI::App& app, std::function<int()>& action) {
    add_pause_resume(app, action, false);
}

}  // namespace stackemu::cli
