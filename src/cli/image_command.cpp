// `stackemu image init`: writes the manifest that makes your own kernel, initrd and disk (or a
// firmware-booted disk) a stackemu image, checked as `start` will read it.
#include <fmt/format.h>
#include <sys/stat.h>

#include <CLI/CLI.hpp>
#include <iostream>
#include <nlohmann/json.hpp>
#include <tuple>

#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/controller_detail.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/image_check.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/settings.hpp"
#include "provision/image_init.hpp"
#include "provision/kernel_arch.hpp"

namespace stackemu::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

constexpr std::string_view init_footer =
    R"(Writes IMAGE.json (the manifest, docs/manifest.md describes every key) for files you made
yourself. A kernel boot names --kernel and --initrd (and --cmdline, default console=ttyS0, or
console=ttyAMA0 for arm64); without them the --disk boots through its firmware.
The manifest goes beside --disk (disk.qcow2 -> disk.json) or to --output. Without --disk an
empty qcow2 (--disk-size, default 64M) is made beside the manifest: stackemu's overlay,
snapshots and fast start need a disk even when the guest never mounts it.
The architecture is read from the kernel's header; --arch must agree with it.
Nothing is overwritten without --force.

  stackemu image init --kernel vmlinuz --initrd initrd.img --output my-guest.json \
      --forward web:8080 --probe web:/health --ready-marker GUEST_READY
  stackemu start --image my-guest.json)";

struct init_options {
    std::string kernel, initrd, disk, output, arch, disk_size = "64M", match = "prefix";
    std::optional<std::string> cmdline;
    std::optional<std::string> ram, cpus;  // the recommended VM size
    std::vector<std::string> forwards, probes, failure_markers;
    std::string ready_marker;
    bool agent = false, force = false, json_out = false;
};

int fail_with(const init_options& o, const error& e) {
    if (o.json_out) {
        std::cout << json{{"ok", false}, {"error", e.what()}, {"exit_code", exit_error}}.dump(2)
                  << std::endl;
        return exit_error;
    }
    return report("image init", e);
}

std::string identity_of(const fs::path& p) {
    struct stat st {};
    if (::stat(p.c_str(), &st) != 0) return p.string();
    return fmt::format("{}:{}:{}:{}", fs::absolute(p).string(), st.st_size, st.st_mtim.tv_sec,
                       st.st_mtim.tv_nsec);
}

int run_init(const init_options& o) {
    fs::path manifest_path;
    if (!o.output.empty())
        manifest_path = fs::path(o.output).replace_extension(".json");
    else if (!o.disk.empty())
        manifest_path = fs::path(o.disk).replace_extension(".json");
    else
        return fail_with(
            o, make_error(errc::invalid_argument,
                          "say where the manifest goes: --output IMAGE.json (or --disk, and it "
                          "goes beside the disk)"));
    manifest_path = fs::absolute(manifest_path).lexically_normal();
    std::error_code ec;
    if (fs::exists(manifest_path, ec) && !o.force)
        return fail_with(
            o, make_error(errc::already_exists,
                          fmt::format("{} exists: --force replaces it", manifest_path.string())));

    provision::image_init_spec spec;
    spec.manifest_path = manifest_path;
    for (const auto& [flag, value] :
         {std::pair{"--kernel", &o.kernel}, std::pair{"--initrd", &o.initrd}}) {
        if (value->empty()) continue;
        if (!fs::is_regular_file(*value, ec))
            return fail_with(
                o, make_error(errc::not_found, fmt::format("{} {}: no such file", flag, *value)));
    }
    if (!o.kernel.empty()) spec.kernel = fs::absolute(o.kernel).lexically_normal();
    if (!o.initrd.empty()) spec.initrd = fs::absolute(o.initrd).lexically_normal();
    spec.cmdline = o.cmdline;

    // The kernel's header decides; a flag that disagrees is refused rather than believed.
    std::optional<std::string> detected;
    if (spec.kernel) {
        auto arch = provision::kernel_arch_of(*spec.kernel);
        if (!arch) return fail_with(o, arch.error());
        detected = *arch;
    }
    if (!o.arch.empty() && detected && *detected != o.arch)
        return fail_with(
            o, make_error(errc::invalid_argument,
                          fmt::format("--arch {}, but {} is an {} kernel: drop --arch, or give "
                                      "a kernel built for {}",
                                      o.arch, o.kernel, *detected, o.arch)));
    if (!o.arch.empty())
        spec.arch = o.arch;
    else if (detected)
        spec.arch = *detected;
    else if (spec.kernel)
        return fail_with(
            o, make_error(errc::invalid_argument,
                          fmt::format("cannot tell the architecture of {} from its header (a "
                                      "compressed kernel?): pass --arch amd64 or --arch arm64",
                                      o.kernel)));
    else
        spec.arch = std::string(lifecycle::to_string(
            lifecycle::host_facts::current().arch.value_or(lifecycle::architecture::amd64)));

    const bool make_disk = o.disk.empty();
    spec.disk = make_disk ? fs::path(manifest_path).replace_extension(".qcow2")
                          : fs::absolute(o.disk).lexically_normal();
    if (make_disk && fs::exists(spec.disk, ec) && !o.force)
        return fail_with(
            o, make_error(errc::already_exists,
                          fmt::format("{} exists: name it with --disk to use it, or --force "
                                      "to replace it with an empty disk",
                                      spec.disk.string())));
    if (!make_disk)
        if (auto usable = lifecycle::check_base_image(spec.disk); !usable)
            return fail_with(o, usable.error());

    spec.forwards = o.forwards;
    spec.probes = o.probes;
    spec.ready_marker = o.ready_marker;
    spec.failure_markers = o.failure_markers;
    spec.match =
        o.match == "exact" ? provision::marker_match::exact : provision::marker_match::prefix;
    spec.agent = o.agent;
    // Checked like start's --ram and --cpus: the same text must mean the same size there.
    for (auto [flag, text, min, max, slot] :
         {std::tuple{"--ram", &o.ram, lifecycle::min_ram_mib, lifecycle::max_ram_mib,
                     &spec.recommended.ram_mib},
          std::tuple{"--cpus", &o.cpus, lifecycle::min_cpus, lifecycle::max_cpus,
                     &spec.recommended.cpus}}) {
        if (!*text) continue;
        auto value = lifecycle::parse_decimal(**text, flag, min, max);
        if (!value) return fail_with(o, value.error());
        *slot = static_cast<std::uint32_t>(*value);
    }
    spec.created = lifecycle::detail::now_iso8601();
    spec.stackemu_version = "0.1.0";
    auto identity = [&] {
        std::string out = spec.arch + "|" + spec.cmdline.value_or("");
        for (const auto& p : {spec.kernel, spec.initrd})
            if (p) out += "|" + identity_of(*p);
        if (!make_disk) out += "|" + identity_of(spec.disk);
        return out;
    };
    spec.identity = identity();
    // Checked before anything is written: bad flags leave no disk and no manifest behind.
    auto m = provision::manifest_for_init(spec);
    if (!m) return fail_with(o, m.error());

    if (make_disk) {
        fs::remove(spec.disk, ec);
        auto made = lifecycle::run_tool(
            {"qemu-img", "create", "-q", "-f", "qcow2", spec.disk.string(), o.disk_size});
        if (!made) return fail_with(o, made.error());
        if (made->exit_code != 0)
            return fail_with(
                o, make_error(errc::process_failed,
                              fmt::format("qemu-img create {} {} failed: {}", spec.disk.string(),
                                          o.disk_size, made->err)));
    }
    const auto text = provision::to_json_text(*m, manifest_path.parent_path());
    if (auto written = lifecycle::write_file_atomically(manifest_path.string(), text, 0644);
        !written)
        return fail_with(o, written.error());

    const auto warnings = provision::image_init_warnings(spec);
    if (o.json_out) {
        std::cout << json{{"ok", true},
                          {"exit_code", exit_ok},
                          {"manifest", manifest_path.string()},
                          {"disk", spec.disk.string()},
                          {"disk_created", make_disk},
                          {"arch", spec.arch},
                          {"boot", spec.kernel ? "kernel" : "firmware"},
                          {"warnings", warnings}}
                         .dump(2)
                  << std::endl;
        return exit_ok;
    }
    for (const auto& w : warnings)
        fmt::print(stderr, "stackemu image init: note: {}\n", w);
    fmt::print("wrote {} ({} boot, {}{})\nstart it with: stackemu start --image {}\n",
               manifest_path.string(), spec.kernel ? "kernel" : "firmware", spec.arch,
               make_disk ? fmt::format(", new empty disk {}", spec.disk.string()) : "",
               manifest_path.string());
    return exit_ok;
}

}  // namespace

void add_image_commands(CLI::App& app, std::function<int()>& action) {
    auto* image = app.add_subcommand("image", "Make images from your own files (image init)");
    image->require_subcommand(1);
    auto o = std::make_shared<init_options>();
    auto* init = image->add_subcommand(
        "init", "Write the manifest that makes your kernel/initrd/disk a stackemu image");
    init->footer(std::string(init_footer));
    init->add_option("--kernel", o->kernel, "the kernel to boot directly (with --initrd)");
    init->add_option("--initrd", o->initrd, "the initrd/initramfs (with --kernel)");
    init->add_option("--cmdline", o->cmdline,
                     "the kernel command line (default: console=ttyS0; ttyAMA0 on arm64)");
    init->add_option("--disk", o->disk, "the qcow2 disk (default: a new empty one)");
    init->add_option("--disk-size", o->disk_size, "size of a new empty disk (qemu-img syntax)");
    init->add_option("--output", o->output, "where the manifest goes (default: beside --disk)");
    init->add_option("--arch", o->arch, "amd64 or arm64 (default: read from the kernel)")
        ->check(CLI::IsMember({"amd64", "arm64"}));
    init->add_option("--forward", o->forwards,
                     "NAME:GUEST_PORT[:HOST_PORT], a host forward on 127.0.0.1 (repeatable)");
    init->add_option("--probe", o->probes,
                     "FORWARD:/path, an HTTP GET that must answer 2xx/3xx for ready (repeatable)");
    init->add_option("--ready-marker", o->ready_marker,
                     "a console line that means ready (matched at the line's start)");
    init->add_option("--failure-marker", o->failure_markers,
                     "a console line that means the guest failed (repeatable)");
    init->add_option("--marker-match", o->match, "prefix (default) or exact")
        ->check(CLI::IsMember({"prefix", "exact"}));
    init->add_option("--ram", o->ram,
                     "the guest memory in MiB an instance gets without --ram (the manifest's "
                     "profile.resources; default 4096)");
    init->add_option("--cpus", o->cpus,
                     "the vCPUs an instance gets without --cpus (profile.resources; default 4)");
    init->add_flag("--agent", o->agent, "the guest runs qemu-ga on org.qemu.guest_agent.0");
    init->add_flag("--force", o->force, "replace an existing manifest (and a made disk)");
    init->add_flag("--json", o->json_out, "print the result as JSON");
    init->callback([o, &action] { action = [o] { return run_init(*o); }; });
}

}  // namespace stackemu::cli
