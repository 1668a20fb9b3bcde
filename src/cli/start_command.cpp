// start: a thin shell over src/lifecycle's start (in the full binary: starting makes the
// runtime config ISO with libisofs).
#include <fmt/format.h>
#include <fmt/ranges.h>
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
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

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
            if (!x->image.empty()) o->image = x->image;
            if (!x->share.empty()) o->share = x->share;
            o->share_writable = x->share_writable;
            auto configured = resolve_configured(*o, {.use = record_use::required,
                                                      .pick_free_ports = true,
                                                      .check_host = true,
                                                      .name = {}});
            if (!configured) return settings_error("start", configured.error());
            // Refused before the instance lock is even taken: nothing is touched. (start
            // checks again under the lock, for a VM launched in between.)
            const auto& named = configured->inst.paths.name;
            if (vm_running(configured->inst.paths))
                if (auto refusal = running_refusal(configured->changes,
                                                   named.empty() ? "" : " --name " + named);
                    !refusal.empty())
                    return error_exit("start", make_error(errc::wrong_state, refusal));
            start_request req;
            req.share = configured_share(configured->values);
            if (x->share_writable && !req.share)
                return settings_error(
                    "start", make_error(errc::invalid_argument,
                                        "--share-writable needs --share DIR: name the directory "
                                        "to export"));
            req.image = configured_image(configured->values);
            std::vector<std::string> picked;
            for (const auto& [name, v] : configured->values)
                if (v.source == config_source::automatic)
                    picked.push_back(
                        fmt::format("{} {} ({})", name, value_text(v.value), v.origin));
            req.record = configured->values;
            req.changes = configured->changes;
            req.inst = std::move(configured->inst);
            req.keep_on_failure = x->keep_on_failure;
            req.cold = x->cold;
            req.extra_cmdline = x->append;
            req.progress = stderr_progress(x->quiet);
            req.echo_console = x->console;
            if (!picked.empty() && !x->quiet)
                fmt::print(stderr, "stackemu start: default ports taken, so {} uses {}\n",
                           req.inst.paths.display_name(), fmt::join(picked, ", "));
            const auto paths = req.inst.paths;
            const auto effective = req.inst.config;
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
                          {"config_changes", r.config_changes},
                          {"peak_rss_kib", peak_rss_kib()}};
                j.update(size_and_ports_json(effective));
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

}  // namespace

void add_start_command(CLI::App& app, std::function<int()>& action) {
    add_start(app, action);
}

}  // namespace stackemu::cli
