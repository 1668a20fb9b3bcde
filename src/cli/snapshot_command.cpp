// snapshot save|load|delete|list: a thin shell over src/lifecycle/snapshot.hpp.
#include <fmt/chrono.h>
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <iostream>
#include <optional>

#include "cli/completion.hpp"
#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/settings.hpp"
#include "lifecycle/snapshot.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;

constexpr const char* exit_codes_text =
    "Exit codes: 0 done; 1 error (the message says what); 2 bad command line or snapshot name "
    "(nothing was done); 3 no snapshot of that name; 4 load refused: the snapshot does not fit "
    "this VM (what differs is listed), or it is disk-only and the VM runs; 5 save: the name is "
    "taken (--replace overwrites); 6 QEMU's snapshot job (or qemu-img) failed or did not "
    "conclude in time (after a failed live load the VM is left paused); 7 another stackemu "
    "command holds the instance.\n"
    "Names: 1 to 64 of letters, digits, '.', '_' and '-', starting with a letter or digit, not "
    "all digits.\n"
    "A running VM is snapshotted live (RAM and devices, through QMP); a stopped VM's disk "
    "only (qemu-img on its overlay). With --json the result, or the error, is one JSON object "
    "on stdout.";

std::string iso_utc(std::int64_t sec) {
    return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z",
                       std::chrono::sys_seconds{std::chrono::seconds{sec}});
}

std::string clock_text(std::int64_t sec, std::int64_t nsec) {
    return fmt::format("{:02}:{:02}:{:02}.{:03}", sec / 3600, (sec / 60) % 60, sec % 60,
                       nsec / 1000000);
}

std::string size_text(std::uint64_t bytes) {
    if (bytes >= (1ull << 30)) return fmt::format("{:.1f} GiB", bytes / double(1ull << 30));
    if (bytes >= (1ull << 20)) return fmt::format("{:.1f} MiB", bytes / double(1ull << 20));
    if (bytes >= (1ull << 10)) return fmt::format("{:.1f} KiB", bytes / double(1ull << 10));
    return fmt::format("{} B", bytes);
}

json differences_json(const std::vector<fingerprint_difference>& ds) {
    json out = json::array();
    for (const auto& d : ds)
        out.push_back({{"field", d.field},
                       {"snapshot", d.snapshot},
                       {"current", d.current},
                       {"summary", d.summary}});
    return out;
}

// Reports an error: the message on stderr, and with --json the same as an object on stdout.
int failure(std::string_view action, const std::string& name, const error& e, bool as_json) {
    const int code = snapshot_exit_code(e);
    fmt::print(stderr, "stackemu snapshot {}: {}\n", action, e.what());
    if (as_json) {
        json j = {{"ok", false},
                  {"action", action},
                  {"error", {{"code", to_string(e.code)}, {"message", e.what()}}},
                  {"exit_code", code}};
        if (!name.empty()) j["name"] = name;
        std::cout << j.dump(2) << std::endl;
    }
    return code;
}

struct operation_options {
    std::string name;
    std::optional<std::string> timeout;
    bool replace = false;
    bool force = false;
};

enum class verb { save, load, remove };

const char* verb_name(verb v) {
    switch (v) {
        case verb::save:
            return "save";
        case verb::load:
            return "load";
        case verb::remove:
            return "delete";
    }
    return "?";
}

int run_operation(verb v, const instance_options& io, const operation_options& oo) {
    const char* action = verb_name(v);
    auto inst = resolve_instance(io);
    if (!inst) {
        failure(action, oo.name, inst.error(), io.json);
        return snapshot_exit::usage;
    }
    snapshot_request req;
    req.inst = std::move(*inst);
    req.name = oo.name;
    req.replace = oo.replace;
    req.force = oo.force;
    if (oo.timeout) {
        auto seconds = parse_decimal(*oo.timeout, "--timeout", 1, max_timeout_seconds);
        if (!seconds) return failure(action, oo.name, seconds.error(), io.json);
        req.timeout = std::chrono::seconds(*seconds);
    }
    const auto display = req.inst.paths.display_name();
    result<snapshot_outcome> r;
    if (v == verb::save)
        r = run_on_context(save_snapshot(std::move(req)));
    else if (v == verb::load)
        r = run_on_context(load_snapshot(std::move(req)));
    else
        r = run_on_context(delete_snapshot(std::move(req)));
    if (!r) return failure(action, oo.name, r.error(), io.json);
    const auto& o = *r;
    if (io.json) {
        std::cout << json{{"ok", true},
                          {"action", action},
                          {"instance", display},
                          {"name", o.name},
                          {"running", o.running},
                          {"method", o.method},
                          {"vm_state", o.vm_state},
                          {"vm_state_size", o.vm_state_size},
                          {"replaced", o.replaced},
                          {"qemu_status", o.qemu_status},
                          {"job_ms", o.job_ms},
                          {"total_ms", o.total_ms},
                          {"note", o.note},
                          {"exit_code", snapshot_exit::ok}}
                         .dump(2)
                  << std::endl;
        return snapshot_exit::ok;
    }
    const std::string what =
        o.running ? "the running VM" : "the stopped VM's disk (qemu-img on its overlay)";
    switch (v) {
        case verb::save:
            fmt::print("saved {}snapshot \"{}\" of {} in {:.2f} s{}{}\n",
                       o.vm_state ? "" : "disk-only ", o.name, what, o.total_ms / 1000,
                       o.vm_state
                           ? fmt::format(" (RAM and device state {})", size_text(o.vm_state_size))
                           : "",
                       o.replaced ? ", replacing the older one" : "");
            break;
        case verb::load:
            fmt::print("loaded snapshot \"{}\" into {} in {:.2f} s\n", o.name, what,
                       o.total_ms / 1000);
            break;
        case verb::remove:
            fmt::print("deleted snapshot \"{}\" from {} in {:.2f} s\n", o.name, what,
                       o.total_ms / 1000);
            break;
    }
    if (!o.note.empty()) fmt::print(stderr, "note: {}\n", o.note);
    return snapshot_exit::ok;
}

int run_list(const instance_options& io) {
    auto inst = resolve_instance(io);
    if (!inst) {
        failure("list", "", inst.error(), io.json);
        return snapshot_exit::usage;
    }
    const auto display = inst->paths.display_name();
    auto r = run_on_context(list_snapshots(*inst));
    if (!r) return failure("list", "", r.error(), io.json);
    const auto& l = *r;
    if (io.json) {
        json list = json::array();
        for (const auto& e : l.snapshots) {
            json j = {{"name", e.info.name},
                      {"id", e.info.id},
                      {"vm_state", e.vm_state},
                      {"vm_state_size", e.info.vm_state_size},
                      {"date", iso_utc(e.info.date_sec)},
                      {"date_sec", e.info.date_sec},
                      {"date_nsec", e.info.date_nsec},
                      {"vm_clock", clock_text(e.info.vm_clock_sec, e.info.vm_clock_nsec)},
                      {"vm_clock_ns", e.info.vm_clock_sec * 1000000000 + e.info.vm_clock_nsec},
                      {"compatible", e.fit.compatible ? json(*e.fit.compatible) : json(nullptr)},
                      {"reason", e.fit.reason},
                      {"differences", differences_json(e.fit.differences)}};
            if (e.record) {
                j["method"] = e.record->method;
                j["saved_at"] = e.record->saved_at;
                j["fingerprint"] =
                    e.record->fingerprint ? to_json(*e.record->fingerprint) : json(nullptr);
            } else {
                j["fingerprint"] = nullptr;
            }
            list.push_back(std::move(j));
        }
        std::cout << json{{"ok", true},
                          {"action", "list"},
                          {"instance", display},
                          {"running", l.running},
                          {"current", l.current ? to_json(*l.current) : json(nullptr)},
                          {"snapshots", list},
                          {"exit_code", snapshot_exit::ok}}
                         .dump(2)
                  << std::endl;
        return snapshot_exit::ok;
    }
    if (l.snapshots.empty()) {
        fmt::print("{}: no snapshots ({})\n", display, l.running ? "running" : "stopped");
        return snapshot_exit::ok;
    }
    fmt::print("{:<24} {:>12} {:<21} {:>13} {}\n", "NAME", "VM STATE", "DATE (UTC)", "GUEST CLOCK",
               "COMPATIBLE");
    for (const auto& e : l.snapshots) {
        const std::string fits = !e.fit.compatible ? "unknown" : *e.fit.compatible ? "yes" : "no";
        fmt::print("{:<24} {:>12} {:<21} {:>13} {}\n", e.info.name,
                   e.vm_state ? size_text(e.info.vm_state_size) : "disk-only",
                   iso_utc(e.info.date_sec), clock_text(e.info.vm_clock_sec, e.info.vm_clock_nsec),
                   fits);
        if (!e.fit.reason.empty()) fmt::print("    {}\n", e.fit.reason);
    }
    return snapshot_exit::ok;
}

void add_operation(CLI::App* group, verb v, std::function<int()>& action) {
    const char* description = v == verb::save   ? "Save a snapshot named NAME"
                              : v == verb::load ? "Load the snapshot NAME (the VM's state, or "
                                                  "the stopped VM's disk, goes back to it)"
                                                : "Delete the snapshot NAME";
    auto* cmd = group->add_subcommand(verb_name(v), description);
    cmd->footer(exit_codes_text);
    auto io = add_instance_options(cmd, option_set::name_only);
    auto oo = std::make_shared<operation_options>();
    auto* name = cmd->add_option("NAME", oo->name, "snapshot name")->required();
    if (v != verb::save) name->check(offers_snapshots());
    cmd->add_option("--timeout", oo->timeout, "seconds QEMU's snapshot job may take (default 600)");
    if (v == verb::save)
        cmd->add_flag("--replace", oo->replace, "overwrite an existing snapshot of that name");
    if (v == verb::load)
        cmd->add_flag("--force", oo->force,
                      "load without checking the compatibility fingerprint (QEMU then checks the "
                      "state itself; a failed load leaves the VM paused)");
    cmd->callback([v, io, oo, &action] {
        action = [v, io, oo]() -> int { return run_operation(v, *io, *oo); };
    });
}

}  // namespace

void add_snapshot_commands(CLI::App& app, std::function<int()>& action) {
    auto* group = app.add_subcommand(
        "snapshot",
        "Named snapshots: save, load, delete, list (live on a running VM, disk-only when "
        "stopped)");
    group->require_subcommand(1);
    group->footer(exit_codes_text);
    add_operation(group, verb::save, action);
    add_operation(group, verb::load, action);
    add_operation(group, verb::remove, action);
    auto* list = group->add_subcommand(
        "list", "List the snapshots: name, RAM state size, date, guest clock, compatible or not");
    list->footer(exit_codes_text);
    auto io = add_instance_options(list, option_set::name_only);
    list->callback([io, &action] { action = [io]() -> int { return run_list(*io); }; });
}

}  // namespace stackemu::cli
