// `stackemu pull`: downloads a prebuilt image and its manifest into the image directory.
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
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/settings.hpp"
#include "provision/download.hpp"

namespace stackemu::cli {
namespace {

using namespace std::chrono_literals;
using clock_type = std::chrono::steady_clock;
using nlohmann::json;
namespace exit_code = lifecycle::exit_code;

constexpr std::string_view pull_footer =
    R"(The image is downloaded to <image dir>/stack-emulator-<arch>.qcow2.part, its SHA-256 compared
with --sha256, then renamed to stack-emulator-<arch>.qcow2; its manifest is written beside it
last. Nothing is installed unless the checksum matches; on a mismatch the partial file is
removed and both checksums are shown.

  --url        No download location is built in: pass the URL of the qcow2 (http or https).
  --sha256     Required. The manifest's base.sha256 is the checksum of the base the image was
               built from, not of the qcow2 itself, and a checksum fetched from the same server
               would not protect against a tampered server; so the qcow2's SHA-256 is given here,
               as its publisher states it.
  --manifest-url
               Default: the --url with .qcow2 replaced by .json. The manifest must be for
               --arch and boot through the firmware (kernel and initrd files are not fetched).

An interrupted download resumes where it stopped when the same command runs again (an HTTP
Range request; a server that ignores ranges gets the file downloaded from the start).
Proxies: the usual variables apply as for curl (https_proxy, http_proxy, all_proxy, no_proxy);
localhost, 127.0.0.1 and ::1 are always reached directly.)";

std::string human_bytes(std::uint64_t n) {
    if (n < 1024) return fmt::format("{} B", n);
    if (n < (1ull << 20)) return fmt::format("{:.1f} KiB", static_cast<double>(n) / 1024.0);
    if (n < (1ull << 30))
        return fmt::format("{:.1f} MiB", static_cast<double>(n) / static_cast<double>(1ull << 20));
    return fmt::format("{:.2f} GiB", static_cast<double>(n) / static_cast<double>(1ull << 30));
}

std::string human_duration(double seconds) {
    const long s = std::lround(seconds);
    if (s < 60) return fmt::format("{}s", s);
    if (s < 3600) return fmt::format("{}m{:02}s", s / 60, s % 60);
    return fmt::format("{}h{:02}m", s / 3600, (s % 3600) / 60);
}

// A bar redrawn in place on a terminal; a plain line every few seconds otherwise (logs, CI).
class progress_display {
  public:
    explicit progress_display(bool terminal) : terminal_(terminal) {}

    void update(const provision::transfer_progress& p) {
        const auto now = clock_type::now();
        if (!started_) {
            started_ = true;
            start_ = now;
            last_ = now;
        }
        last_progress_ = p;
        if (now - last_ < (terminal_ ? 100ms : 5s)) return;
        last_ = now;
        draw(now);
    }

    void note(std::string_view text) {
        // A note during a transfer comes after its last byte (e.g. "verifying"): close the bar.
        if (started_) finish();
        clear_line();
        fmt::print(stderr, "stackemu pull: {}\n", text);
    }

    // The final state of the transfer, then a newline on a terminal.
    void finish() {
        if (!started_) return;
        const auto now = clock_type::now();
        if (terminal_) {
            draw(now);
            std::fputc('\n', stderr);
            drawn_ = false;
        } else {
            const double secs = seconds_since_start(now);
            const auto moved = last_progress_.done - last_progress_.resumed_from;
            fmt::print(stderr, "stackemu pull: downloaded {} in {}{}\n", human_bytes(moved),
                       human_duration(secs),
                       secs > 0 ? fmt::format(" ({}/s)", human_bytes(static_cast<std::uint64_t>(
                                                             static_cast<double>(moved) / secs)))
                                : std::string());
        }
        started_ = false;
    }

  private:
    double seconds_since_start(clock_type::time_point now) const {
        return std::chrono::duration<double>(now - start_).count();
    }

    void clear_line() {
        if (terminal_ && drawn_) {
            std::fputs("\r\x1b[K", stderr);
            drawn_ = false;
        }
    }

    void draw(clock_type::time_point now) {
        const auto& p = last_progress_;
        const double secs = seconds_since_start(now);
        const auto moved = p.done >= p.resumed_from ? p.done - p.resumed_from : 0;
        const double rate = secs > 0.05 ? static_cast<double>(moved) / secs : 0.0;
        std::string rate_text =
            rate > 0 ? human_bytes(static_cast<std::uint64_t>(rate)) + "/s" : std::string("-");
        std::string line;
        if (p.total && *p.total > 0) {
            const double frac =
                std::min(1.0, static_cast<double>(p.done) / static_cast<double>(*p.total));
            const int pct = static_cast<int>(frac * 100.0);
            std::string eta = "-";
            if (rate > 0 && *p.total >= p.done)
                eta = human_duration(static_cast<double>(*p.total - p.done) / rate);
            if (terminal_) {
                constexpr int width = 30;
                const int fill = static_cast<int>(frac * width);
                line = fmt::format("{:>3}% [{}{}] {} / {}  {}  ETA {}", pct,
                                   std::string(static_cast<std::size_t>(fill), '='),
                                   std::string(static_cast<std::size_t>(width - fill), ' '),
                                   human_bytes(p.done), human_bytes(*p.total), rate_text, eta);
            } else {
                line = fmt::format("stackemu pull: {} of {} ({}%), {}, ETA {}", human_bytes(p.done),
                                   human_bytes(*p.total), pct, rate_text, eta);
            }
        } else {
            line = terminal_ ? fmt::format("{}  {}", human_bytes(p.done), rate_text)
                             : fmt::format("stackemu pull: {} so far, {}", human_bytes(p.done),
                                           rate_text);
        }
        if (terminal_) {
            fmt::print(stderr, "\r{}\x1b[K", line);
            drawn_ = true;
        } else {
            fmt::print(stderr, "{}\n", line);
        }
        std::fflush(stderr);
    }

    bool terminal_;
    bool started_ = false;
    bool drawn_ = false;
    clock_type::time_point start_{};
    clock_type::time_point last_{};
    provision::transfer_progress last_progress_{};
};

struct pull_options {
    std::string url;
    std::string sha256;
    std::string manifest_url;
    std::optional<std::string> image_dir;
    std::optional<std::string> arch;
    bool json = false;
};

int exit_for(const error& e) {
    switch (e.code) {
        case errc::invalid_argument:
            return exit_code::usage;
        case errc::busy:
            return exit_code::busy;
        default:
            return exit_code::error;
    }
}

int run_pull(const pull_options& o) {
    auto env = lifecycle::process_environment();
    auto s = lifecycle::from_environment(env);
    if (!s) {
        report("pull", s.error());
        return exit_code::usage;
    }
    provision::pull_request request;
    request.url = o.url;
    request.sha256 = o.sha256;
    request.manifest_url = o.manifest_url;
    request.image_dir = s->image_dir;
    request.arch = std::string(lifecycle::to_string(s->guest_arch));
    if (o.image_dir) {
        auto dir = lifecycle::expand_path(*o.image_dir, "--image-dir", env("HOME"));
        if (!dir) {
            report("pull", dir.error());
            return exit_code::usage;
        }
        request.image_dir = *dir;
    }
    if (o.arch) {
        auto a = lifecycle::parse_architecture(*o.arch);
        if (!a) {
            report("pull", a.error());
            return exit_code::usage;
        }
        request.arch = std::string(lifecycle::to_string(*a));
    }
    progress_display display(::isatty(STDERR_FILENO) == 1);
    request.transfer.progress = [&display](const provision::transfer_progress& p) {
        display.update(p);
    };
    request.transfer.note = [&display](std::string_view text) { display.note(text); };

    auto r = provision::pull_image(request);
    display.finish();
    if (!r) {
        report("pull", r.error());
        return exit_for(r.error());
    }
    if (o.json) {
        json out = {{"image", r->image.string()},
                    {"manifest", r->manifest.string()},
                    {"sha256", r->sha256},
                    {"bytes", r->bytes},
                    {"resumed_from", r->resumed_from},
                    {"restarted", r->restarted},
                    {"build_id", r->build_id},
                    {"profile", r->profile}};
        std::cout << out.dump(2) << std::endl;
    } else {
        fmt::print("installed {} ({}, build {}, profile {}, sha256 {})\n", r->image.string(),
                   human_bytes(r->bytes), r->build_id, r->profile, r->sha256);
    }
    return exit_code::ok;
}

}  // namespace

void add_pull_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "pull", "Download a prebuilt image and its manifest (resumable, SHA-256 verified)");
    auto o = std::make_shared<pull_options>();
    cmd->add_option("--url", o->url, "URL of the qcow2 image, http(s); none is built in")
        ->required();
    cmd->add_option("--sha256", o->sha256, "SHA-256 of the qcow2 (64 hex digits); required")
        ->required();
    cmd->add_option("--manifest-url", o->manifest_url,
                    "URL of the manifest (default: --url with .qcow2 replaced by .json)");
    cmd->add_option("--image-dir", o->image_dir,
                    "where images live (EMULATOR_IMAGE_DIR, default ~/.stack/emulator/images)");
    cmd->add_option("--arch", o->arch,
                    "amd64 or arm64 (EMULATOR_ARCH, default the host's): the image is installed "
                    "as stack-emulator-<arch>.qcow2")
        ->check(offers_architectures());
    cmd->add_flag("--json", o->json, "machine-readable output");
    cmd->footer(std::string(pull_footer));
    cmd->callback([o, &action] { action = [o]() -> int { return run_pull(*o); }; });
}

}  // namespace stackemu::cli
