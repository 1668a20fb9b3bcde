// `stackemu build-image`: a profile's provisioning run on a base image, compressed into an image.
#include <fmt/format.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <chrono>
#include <cmath>
#include <cstdio>
#include <iostream>
#include <nlohmann/json.hpp>

#include "cli/completion.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/build_image.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/settings.hpp"
#include "provision/profile.hpp"

namespace stackemu::cli {
namespace {

using clock_type = std::chrono::steady_clock;
using nlohmann::json;
namespace exit_code = lifecycle::exit_code;
namespace fs = std::filesystem;

// The user-facing stackemu this process stands for: profiles are found from its prefix
// (<prefix>/bin/stackemu -> <prefix>/share/stackemu), and this binary is
// <prefix>/libexec/stackemu/stackemu-full (in the build tree src/libexec/stackemu/).
fs::path front_binary() {
    std::error_code ec;
    const auto exe = fs::read_symlink("/proc/self/exe", ec);
    if (ec) return {};
    const auto dir = exe.parent_path();
    if (dir.filename() == "stackemu" && dir.parent_path().filename() == "libexec")
        return dir.parent_path().parent_path() / "bin" / "stackemu";
    return exe;
}

constexpr std::string_view build_footer =
    R"(Boots the base with the profile's cloud-init seed (label cidata) and bundle (label
STACKBUNDLE: the profile's bundle_files and --payload as payload.tar), no host forwards. The
guest's progress lines are shown with the time since the command began; the build ends the
moment a whole console line is the profile's done or failed marker (STACK_CLOUD_INIT_DONE /
STACK_CLOUD_INIT_FAILED), a guest panic, QEMU exiting, or EMULATOR_PROVISION_TIMEOUT (3200 s).
On success the guest powers itself off (90 s, then the stop ladder), the disk is checked and
compressed (qemu-img convert -c) to a temporary name that is renamed into place, and the
manifest is written last. On failure: the cause, the guest's last 50 lines, the VM stopped,
no image written; the logs are kept in <image dir>/build-logs/ either way.

Profiles are directories cloud-init/<name>/ (profile.json, user-data, meta-data, files), found
in $STACKEMU_PROFILE_PATH, the installed share/stackemu/cloud-init, then the source tree; a
--profile with a '/' names a directory. Bases: `debian` builds Debian 12 from Debian packages
with debootstrap (plus the profile's base_packages), cached in ~/.cache/stackemu/bases by its
recipe; a qcow2 file; or an http(s) URL with --sha256.

Exit codes: 0 built; 1 failed (the message says why); 2 bad command line, profile or base;
6 the guest's provisioning failed (marker, panic, QEMU exit, timeout); 7 busy (a build of
this profile runs).
Settings: EMULATOR_IMAGE_DIR, EMULATOR_RUN_DIR, EMULATOR_ARCH, EMULATOR_ACCEL, EMULATOR_QEMU,
EMULATOR_PROVISION_TIMEOUT, EMULATOR_DISK_SIZE, EMULATOR_BUILD_RAM, EMULATOR_BUILD_CPUS (both
default to the profile's build size).)";

struct build_options {
    std::string profile = "demo";
    std::string base = "debian";
    std::string sha256;
    std::optional<std::string> payload;
    std::optional<std::string> output;
    std::optional<std::string> image_dir;
    std::optional<std::string> arch;
    std::optional<std::string> accel;
    std::optional<std::string> ram;
    std::optional<std::string> cpus;
    std::optional<std::string> timeout;
    bool rebuild_base = false;
    bool if_changed = false;
    bool keep_on_failure = false;
    bool verbose = false;
    bool json = false;
};

int exit_for(const error& e) {
    switch (e.code) {
        case errc::invalid_argument:
        case errc::not_found:
        case errc::checksum_mismatch:
            return exit_code::usage;
        case errc::busy:
            return exit_code::busy;
        default:
            return exit_code::error;
    }
}

// "[  12.3s] text": elapsed time since the command began, on every line.
class build_display {
  public:
    explicit build_display(bool terminal) : terminal_(terminal), t0_(clock_type::now()) {}

    void line(std::string_view text) {
        clear_bar();
        fmt::print(stderr, "[{:7.1f}s] {}\n", seconds(), text);
        std::fflush(stderr);
    }

    void percent(double pct) {
        if (terminal_) {
            constexpr int width = 30;
            const int fill = static_cast<int>(pct / 100.0 * width);
            fmt::print(
                stderr, "\r[{:7.1f}s] compressing {:5.1f}% [{}{}]\x1b[K", seconds(), pct,
                std::string(static_cast<std::size_t>(std::clamp(fill, 0, width)), '='),
                std::string(static_cast<std::size_t>(width - std::clamp(fill, 0, width)), ' '));
            bar_ = true;
            std::fflush(stderr);
        } else if (pct >= next_plain_) {
            fmt::print(stderr, "[{:7.1f}s] compressing: {:.0f}%\n", seconds(), pct);
            next_plain_ = (std::floor(pct / 10) + 1) * 10;  // the next whole ten percent
        }
    }

    void clear_bar() {
        if (bar_) {
            std::fputs("\r\x1b[K", stderr);
            bar_ = false;
        }
    }

  private:
    double seconds() const {
        return std::chrono::duration<double>(clock_type::now() - t0_).count();
    }
    bool terminal_;
    clock_type::time_point t0_;
    bool bar_ = false;
    double next_plain_ = 0;
};

result<std::uint32_t> size_setting(const std::optional<std::string>& flag,
                                   std::string_view flag_name, const lifecycle::env_lookup& env,
                                   std::string_view env_name, std::uint64_t min, std::uint64_t max,
                                   std::uint32_t fallback) {
    if (flag) {
        auto v = lifecycle::parse_decimal(*flag, flag_name, min, max);
        if (!v) return std::unexpected(v.error());
        return static_cast<std::uint32_t>(*v);
    }
    if (auto text = env(env_name)) {
        auto v = lifecycle::parse_decimal(*text, env_name, min, max);
        if (!v) return std::unexpected(v.error());
        return static_cast<std::uint32_t>(*v);
    }
    return fallback;
}

int run_build(const build_options& o) {
    auto env = lifecycle::process_environment();
    auto s = lifecycle::from_environment(env);
    if (!s) return report("build-image", s.error()), exit_code::usage;
    if (o.image_dir) {
        auto dir = lifecycle::expand_path(*o.image_dir, "--image-dir", env("HOME"));
        if (!dir) return report("build-image", dir.error()), exit_code::usage;
        s->image_dir = *dir;
    }
    if (o.arch) {
        auto a = lifecycle::parse_architecture(*o.arch);
        if (!a) return report("build-image", a.error()), exit_code::usage;
        s->guest_arch = *a;
    }
    if (o.accel) {
        auto a = lifecycle::parse_accel_mode(*o.accel);
        if (!a) return report("build-image", a.error()), exit_code::usage;
        s->accel = *a;
    }
    if (o.timeout) {
        auto t = lifecycle::parse_decimal(*o.timeout, "--timeout", 1, 86400);
        if (!t) return report("build-image", t.error()), exit_code::usage;
        s->provision_timeout = std::chrono::seconds(*t);
    }
    auto profile =
        provision::load_profile(o.profile, provision::default_profile_search_path(front_binary()));
    if (!profile) return report("build-image", profile.error()), exit_for(profile.error());

    lifecycle::build_request req;
    auto ram = size_setting(o.ram, "--ram", env, "EMULATOR_BUILD_RAM", 256, 1 << 20,
                            profile->file.build_ram_mib);
    if (!ram) return report("build-image", ram.error()), exit_code::usage;
    auto cpus = size_setting(o.cpus, "--cpus", env, "EMULATOR_BUILD_CPUS", 1, 256,
                             profile->file.build_cpus);
    if (!cpus) return report("build-image", cpus.error()), exit_code::usage;
    req.config = *s;
    req.profile = std::move(*profile);
    req.base = o.base;
    req.base_sha256 = o.sha256;
    if (o.payload) req.payload = fs::path(*o.payload);
    if (o.output) {
        auto out = lifecycle::expand_path(*o.output, "--output", env("HOME"));
        if (!out) {
            // A relative --output is relative to the working directory.
            req.output = fs::absolute(*o.output);
        } else {
            req.output = *out;
        }
    }
    req.ram_mib = *ram;
    req.cpus = *cpus;
    req.rebuild_base = o.rebuild_base;
    req.if_changed = o.if_changed;
    req.keep_on_failure = o.keep_on_failure;
    req.verbose = o.verbose;
    build_display display(::isatty(STDERR_FILENO) == 1);
    req.progress = [&display](std::string_view line) { display.line(line); };
    req.compress_progress = [&display](double pct) { display.percent(pct); };

    auto r = run_on_context(lifecycle::build_image(std::move(req)));
    display.clear_bar();
    if (!r) return report("build-image", r.error()), exit_for(r.error());
    json phases = json::object();
    for (const auto& p : r->phases)
        phases[p.name] = p.ms;
    if (o.json) {
        json out = {{"ok", r->ok},
                    {"up_to_date", r->up_to_date},
                    {"recipe", r->recipe},
                    {"image", r->image.string()},
                    {"manifest", r->manifest.string()},
                    {"logs", r->logs_dir.string()},
                    {"build_id", r->build_id},
                    {"base", r->base_source},
                    {"base_cached", r->base_cached},
                    {"bytes", r->image_bytes},
                    {"phases_ms", phases},
                    {"total_ms", r->total_ms}};
        if (!r->ok) {
            out["cause"] = std::string(lifecycle::to_string(r->why));
            out["failure"] = r->failure;
            out["last_lines"] = r->last_lines;
            out["failure_to_exit_ms"] = r->failure_to_exit_ms;
        }
        std::cout << out.dump(2) << std::endl;
    }
    if (!r->ok) {
        if (!o.json) {
            fmt::print(stderr, "stackemu build-image: failed: {}\n", r->failure);
            if (!r->last_lines.empty()) {
                fmt::print(stderr, "--- the guest's last {} console lines ---\n",
                           r->last_lines.size());
                for (const auto& l : r->last_lines)
                    fmt::print(stderr, "{}\n", l);
                fmt::print(stderr, "---\n");
            }
            fmt::print(stderr, "logs: {}\nno image was written.\n", r->logs_dir.string());
        }
        return exit_code::failed;
    }
    if (!o.json && r->up_to_date) {
        fmt::print("{} is up to date (build {})\n", r->image.string(), r->build_id);
    } else if (!o.json) {
        std::string breakdown;
        for (const auto& p : r->phases)
            breakdown +=
                fmt::format("{}{} {:.1f} s", breakdown.empty() ? "" : ", ", p.name, p.ms / 1000.0);
        fmt::print("built {} ({:.1f} MiB, build {}) in {:.1f} s: {}\nlogs: {}\n", r->image.string(),
                   static_cast<double>(r->image_bytes) / (1 << 20), r->build_id,
                   r->total_ms / 1000.0, breakdown, r->logs_dir.string());
    }
    return exit_code::ok;
}

}  // namespace

void add_build_image_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "build-image",
        "Build an image: provision a base with a profile, compress it (qcow2 + manifest)");
    auto o = std::make_shared<build_options>();
    cmd->add_option("--profile", o->profile,
                    "profile name (cloud-init/<name>) or directory; default demo");
    cmd->add_option("--base", o->base,
                    "debian (built from Debian packages, cached), a qcow2 file, or an http(s) URL; "
                    "default debian");
    cmd->add_option("--sha256", o->sha256,
                    "SHA-256 of the --base file or URL (required for a URL)");
    cmd->add_option("--payload", o->payload,
                    "file put on the bundle ISO as payload.tar (e.g. a `docker save` tarball)");
    cmd->add_option("--output", o->output,
                    "the image to write (default <image dir>/stack-emulator-<arch>.qcow2)");
    cmd->add_option("--image-dir", o->image_dir,
                    "where images live (EMULATOR_IMAGE_DIR, default ~/.stack/emulator/images)");
    cmd->add_option("--arch", o->arch, "amd64 or arm64 (EMULATOR_ARCH, default the host's)")
        ->check(offers_architectures());
    cmd->add_option("--accel", o->accel, "auto, kvm, hvf or tcg (EMULATOR_ACCEL)")
        ->check(offers_accel_modes());
    cmd->add_option("--ram", o->ram, "build VM MiB (EMULATOR_BUILD_RAM; default: the profile's)");
    cmd->add_option("--cpus", o->cpus,
                    "build VM vCPUs (EMULATOR_BUILD_CPUS; default: the profile's)");
    cmd->add_option("--timeout", o->timeout,
                    "provisioning budget in seconds (EMULATOR_PROVISION_TIMEOUT, default 3200)");
    cmd->add_flag("--rebuild-base", o->rebuild_base,
                  "build the debian base again, ignoring the cache");
    cmd->add_flag("--if-changed", o->if_changed,
                  "do nothing when the image exists and was built from the same profile files, "
                  "base and payload");
    cmd->add_flag("--keep-on-failure", o->keep_on_failure,
                  "leave a failed provisioning VM running for debugging (`stackemu stop "
                  "--name build-<profile>` ends it)");
    cmd->add_flag("--verbose,-v", o->verbose, "show every guest console line, not only progress");
    cmd->add_flag("--json", o->json, "machine-readable result on stdout");
    cmd->footer(std::string(build_footer));
    cmd->callback([o, &action] { action = [o]() -> int { return run_build(*o); }; });
}

}  // namespace stackemu::cli
