#include "cli/instance_options.hpp"

#include <CLI/CLI.hpp>

#include "cli/completion.hpp"

namespace stackemu::cli {

using namespace stackemu::lifecycle;

std::shared_ptr<instance_options> add_instance_options(CLI::App* cmd, option_set which) {
    auto o = std::make_shared<instance_options>();
    cmd->add_option("--name", o->name,
                    "instance name (EMULATOR_NAME); instances run side by side with their own "
                    "run directory and ports")
        ->check(offers_instances());
    cmd->add_flag("--json", o->json, "machine-readable output");
    if (which == option_set::runtime) {
        cmd->add_option("--ram", o->ram, "guest memory in MiB (EMULATOR_RAM, default 4096)");
        cmd->add_option("--cpus", o->cpus, "guest vCPUs (EMULATOR_CPUS, default 4)");
        cmd->add_option("--arch", o->arch, "guest architecture: amd64 or arm64 (EMULATOR_ARCH)")
            ->check(offers_architectures());
        cmd->add_option("--accel", o->accel, "auto, kvm, hvf or tcg (EMULATOR_ACCEL, default auto)")
            ->check(offers_accel_modes());
        cmd->add_option("--ready-timeout", o->ready_timeout,
                        "seconds to wait for ready (EMULATOR_READY_TIMEOUT, default 240)");
        cmd->add_option("--stop-timeout", o->stop_timeout,
                        "seconds the guest gets to shut down (EMULATOR_STOP_TIMEOUT, default 90)");
    }
    return o;
}

result<instance> resolve_instance(const instance_options& o) {
    auto env = process_environment();
    auto s = from_environment(env);
    if (!s) return std::unexpected(s.error());
    if (!o.name.empty()) {
        if (auto ok = check_instance_name(o.name, "--name"); !ok)
            return std::unexpected(ok.error());
        s->name = o.name;
    }
    if (o.ram) {
        auto v = parse_decimal(*o.ram, "--ram", min_ram_mib, max_ram_mib);
        if (!v) return std::unexpected(v.error());
        s->ram_mib = static_cast<std::uint32_t>(*v);
    }
    if (o.cpus) {
        auto v = parse_decimal(*o.cpus, "--cpus", min_cpus, max_cpus);
        if (!v) return std::unexpected(v.error());
        s->cpus = static_cast<std::uint32_t>(*v);
    }
    if (o.arch) {
        auto v = parse_architecture(*o.arch);
        if (!v) return std::unexpected(v.error());
        s->guest_arch = *v;
    }
    if (o.accel) {
        auto v = parse_accel_mode(*o.accel);
        if (!v) return std::unexpected(v.error());
        s->accel = *v;
    }
    if (o.ready_timeout) {
        auto v = parse_decimal(*o.ready_timeout, "--ready-timeout", 1, max_timeout_seconds);
        if (!v) return std::unexpected(v.error());
        s->ready_timeout = std::chrono::seconds(*v);
    }
    if (o.stop_timeout) {
        auto v = parse_decimal(*o.stop_timeout, "--stop-timeout", 1, max_timeout_seconds);
        if (!v) return std::unexpected(v.error());
        s->stop_timeout = std::chrono::seconds(*v);
    }
    if (auto ok = validate(*s); !ok) return std::unexpected(ok.error());
    set_reply_timeout(s->reply_timeout);
    auto inst = open_instance(std::move(*s));
    if (!inst) return inst;
    if (auto ours = check_instance_owner(*inst); !ours) return std::unexpected(ours.error());
    return inst;
}

}  // namespace stackemu::cli
