// `stackemu doctor`: checks what a start needs and says what to fix.
#include <fmt/format.h>
#include <sys/stat.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/accel_probe.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "provision/manifest.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

enum class verdict { ok, warn, fail };

struct finding {
    verdict v = verdict::ok;
    std::string what;
    std::string fix;
};

// First line of `program --version`, or nullopt when it cannot run.
std::optional<std::string> version_of(const std::string& program) {
    auto r = run_tool({program, "--version"});
    if (!r || r->exit_code != 0) return std::nullopt;
    return r->out.substr(0, r->out.find('\n'));
}

// The image doctor checks: --image, else the one this instance last ran (state.json), else
// the built image for the arch. A user on their own image is not told the default is missing.
fs::path image_to_check(const instance& inst, const std::string& flag) {
    if (!flag.empty()) return flag;
    if (auto text = read_file(inst.paths.state.string())) {
        auto j = nlohmann::json::parse(*text, nullptr, false);
        if (j.is_object() && j.contains("image") && j["image"].is_string() &&
            !j["image"].get<std::string>().empty())
            return j["image"].get<std::string>();
    }
    return provision::default_image(inst.config.image_dir, to_string(inst.config.guest_arch));
}

std::vector<finding> diagnose(const instance& inst, const fs::path& image) {
    std::vector<finding> out;
    const auto& s = inst.config;
    const std::string qemu =
        s.qemu.empty() ? std::string(default_qemu_binary(s.guest_arch)) : s.qemu;
    if (auto v = version_of(qemu))
        out.push_back({verdict::ok, fmt::format("{}: {}", qemu, *v), ""});
    else
        out.push_back({verdict::fail, fmt::format("{} cannot be run", qemu),
                       "run scripts/setup (installs qemu-system-x86 and qemu-system-arm), or set "
                       "EMULATOR_QEMU"});
    if (auto v = version_of("qemu-img"))
        out.push_back({verdict::ok, "qemu-img: " + *v, ""});
    else
        out.push_back({verdict::fail, "qemu-img cannot be run", "run scripts/setup (qemu-utils)"});

    // The accelerator, chosen exactly as start would.
    const auto host = host_facts::current();
    auto m = provision::load_manifest(image);
    accel_probe_inputs in;
    in.mode = s.accel;
    in.guest = s.guest_arch;
    in.host = host.arch.value_or(s.guest_arch);
    in.qemu_binary = qemu;
    in.kernel = m && m->kernel_boot ? std::optional<fs::path>(m->kernel_boot->kernel)
                                    : host_kernel_for_probe();
    const char* cache = std::getenv("XDG_CACHE_HOME");
    const char* home = std::getenv("HOME");
    in.cache_file =
        (cache && *cache ? fs::path(cache) : fs::path(home ? home : "/tmp") / ".cache") /
        "stackemu" / "accel-verdicts.json";
    asio::io_context ctx;
    auto fut = asio::co_spawn(ctx, choose_accelerator(in), asio::use_future);
    ctx.run();
    auto accel = fut.get();
    if (accel)
        out.push_back({accel->accel == accelerator::tcg && s.accel == accel_mode::automatic
                           ? verdict::warn
                           : verdict::ok,
                       "accelerator " + accel->reason,
                       accel->accel == accelerator::tcg ? "guests run emulated (slower); fine for "
                                                          "tests"
                                                        : ""});
    else
        out.push_back({verdict::fail, "accelerator: " + accel.error().what(),
                       "set EMULATOR_ACCEL=auto or tcg"});

    auto fw = find_uefi_firmware(default_uefi_firmware_candidates(),
                                 [](const fs::path& p) { return fs::exists(p); });
    if (fw)
        out.push_back({verdict::ok, "arm64 UEFI firmware: " + fw->string(), ""});
    else
        out.push_back({s.guest_arch == architecture::arm64 ? verdict::fail : verdict::warn,
                       "no arm64 UEFI firmware", "install qemu-efi-aarch64 (scripts/setup)"});

    if (m)
        out.push_back({verdict::ok,
                       fmt::format("image {} (build {}, profile {})", image.string(), m->build_id,
                                   m->prof.name),
                       ""});
    else
        out.push_back({verdict::fail, m.error().what(),
                       "build it with `stackemu build-image`, or pass --image to start"});

    std::error_code ec;
    const bool running = fs::exists(inst.paths.qmp_socket, ec);
    for (const auto& [name, port, env] :
         {std::tuple{"dashboard", s.ports.dashboard, "EMULATOR_DASHBOARD_PORT"},
          std::tuple{"backend", s.ports.backend, "EMULATOR_BACKEND_PORT"},
          std::tuple{"minio", s.ports.minio, "EMULATOR_MINIO_PORT"},
          std::tuple{"inbucket", s.ports.inbucket, "EMULATOR_INBUCKET_PORT"}}) {
        if (!host_port_in_use(port))
            out.push_back({verdict::ok, fmt::format("port {} ({}) is free", port, name), ""});
        else
            out.push_back({running ? verdict::ok : verdict::fail,
                           fmt::format("port {} ({}) is in use{}", port, name,
                                       running ? " (by this running emulator, presumably)" : ""),
                           running ? "" : fmt::format("free it, or set {}", env)});
    }

    struct stat st {};
    if (::stat(s.run_dir.c_str(), &st) != 0) {
        out.push_back(
            {verdict::ok, "run directory " + s.run_dir.string() + " will be created (0700)", ""});
    } else if (st.st_uid != ::getuid()) {
        out.push_back({verdict::fail,
                       "run directory " + s.run_dir.string() + " belongs to another user",
                       "set EMULATOR_RUN_DIR to a directory of yours"});
    } else if ((st.st_mode & 077) != 0) {
        out.push_back(
            {verdict::warn,
             fmt::format("run directory {} is mode {:o}", s.run_dir.string(), st.st_mode & 0777),
             "start makes it 0700; or `chmod 700` it now"});
    } else if (::access(s.run_dir.c_str(), W_OK) != 0) {
        out.push_back({verdict::fail, "run directory " + s.run_dir.string() + " is not writable",
                       "fix its permissions or set EMULATOR_RUN_DIR"});
    } else {
        out.push_back(
            {verdict::ok, "run directory " + s.run_dir.string() + " is private (0700)", ""});
    }
    out.push_back(
        {verdict::ok,
         inst.paths.sockets_relocated
             ? fmt::format("socket paths under {} are too long for sun_path; sockets go "
                           "to {}",
                           inst.paths.vm_dir.string(), inst.paths.socket_dir.string())
             : fmt::format("socket paths fit ({} bytes)", inst.paths.qmp_socket.string().size()),
         ""});
    return out;
}

}  // namespace

void add_doctor_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "doctor", "Check QEMU, the accelerator, firmware, image, ports, run directory and sockets");
    auto o = add_instance_options(cmd, option_set::runtime);
    auto image = std::make_shared<std::string>();
    cmd->add_option("--image", *image,
                    "the image to check (default: the one this instance last ran, else the built "
                    "image for the arch)");
    cmd->callback([o, image, &action] {
        action = [o, image]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("doctor", inst.error());
                return exit_code::usage;
            }
            auto findings = diagnose(*inst, image_to_check(*inst, *image));
            bool failed = false;
            json all = json::array();
            for (const auto& f : findings) {
                failed = failed || f.v == verdict::fail;
                const char* tag = f.v == verdict::ok     ? "ok"
                                  : f.v == verdict::warn ? "warn"
                                                         : "FAIL";
                all.push_back({{"verdict", tag}, {"what", f.what}, {"fix", f.fix}});
                if (!o->json) {
                    fmt::print("{:<5}{}\n", tag, f.what);
                    if (f.v != verdict::ok && !f.fix.empty()) fmt::print("     fix: {}\n", f.fix);
                }
            }
            if (o->json) std::cout << all.dump(2) << std::endl;
            return failed ? exit_code::error : exit_code::ok;
        };
    });
}

}  // namespace stackemu::cli
