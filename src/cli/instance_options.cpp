#include "cli/instance_options.hpp"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <set>
#include <utility>

#include "cli/completion.hpp"

namespace stackemu::cli {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// The flags given, each read as the setting it overrides.
result<config_values> flag_layer(const instance_options& o) {
    config_values out;
    const auto absolute = [](const std::optional<std::string>& p) -> std::optional<std::string> {
        if (!p || p->empty()) return p;
        return fs::absolute(*p).lexically_normal().string();
    };
    const std::pair<std::string_view, std::optional<std::string>> given[] = {
        {"ram", o.ram},
        {"cpus", o.cpus},
        {"arch", o.arch},
        {"accel", o.accel},
        {"ready_timeout", o.ready_timeout},
        {"stop_timeout", o.stop_timeout},
        {"image", absolute(o.image)},
        {"share", absolute(o.share)},
        {"share_writable", o.share_writable ? std::optional<std::string>("true") : std::nullopt},
    };
    for (const auto& [name, text] : given) {
        if (!text) continue;
        auto key = find_config_key(name);
        if (!key) return std::unexpected(key.error());
        auto value = parse_config_value(**key, *text, (*key)->flag);
        if (!value) return std::unexpected(value.error());
        out[std::string(name)] = {std::move(*value), config_source::flag,
                                  std::string((*key)->flag)};
    }
    return out;
}

// The host ports other instances under the run directory have recorded: a named instance
// picking ports leaves them to their owners, running or not.
std::set<std::uint16_t> ports_of_other_instances(const settings& s, const instance_paths& self) {
    std::set<std::uint16_t> out;
    std::vector<fs::path> records{s.run_dir / "vm" / "config.json"};
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(s.run_dir / "instances", ec))
        records.push_back(e.path() / "vm" / "config.json");
    for (const auto& file : records) {
        if (file == self.config) continue;
        auto record = read_record(file);
        if (!record || !*record) continue;
        for (const auto& [name, v] : (*record)->values)
            if (name.ends_with("_port") && v.value.is_number_unsigned())
                out.insert(static_cast<std::uint16_t>(v.value.get<std::uint64_t>()));
    }
    return out;
}

recommendation recommended_for(const fs::path& image) {
    auto m = provision::load_manifest(image);
    if (!m) return {};
    return {m->prof.recommended, fmt::format("profile {}", m->prof.name)};
}

}  // namespace

std::shared_ptr<instance_options> add_instance_options(CLI::App* cmd, option_set which) {
    auto o = std::make_shared<instance_options>();
    cmd->add_option("--name", o->name,
                    "instance name (EMULATOR_NAME); instances run side by side with their own "
                    "run directory and ports")
        ->check(offers_instances());
    cmd->add_flag("--json", o->json, "machine-readable output");
    if (which == option_set::runtime) {
        cmd->add_option("--ram", o->ram,
                        "guest memory in MiB (EMULATOR_RAM; default: the instance's record, "
                        "else the image profile's, else 4096)");
        cmd->add_option("--cpus", o->cpus,
                        "guest vCPUs (EMULATOR_CPUS; default: the instance's record, else the "
                        "image profile's, else 4)");
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

result<configured_instance> resolve_configured(const instance_options& o,
                                               const resolve_options& how) {
    auto env = process_environment();
    auto s = from_environment(env);
    if (!s) return std::unexpected(s.error());
    if (how.name) {
        s->name = *how.name;
    } else if (!o.name.empty()) {
        if (auto ok = check_instance_name(o.name, "--name"); !ok)
            return std::unexpected(ok.error());
        s->name = o.name;
    }
    auto flags = flag_layer(o);
    if (!flags) return std::unexpected(flags.error());
    auto environment = environment_layer(env);
    if (!environment) return std::unexpected(environment.error());

    auto inst = open_instance(*s);
    if (!inst) return std::unexpected(inst.error());
    if (auto ours = check_instance_owner(*inst); !ours) return std::unexpected(ours.error());

    configured_instance out;
    auto record = read_record(inst->paths.config);
    if (record) {
        out.record = std::move(*record);
    } else if (how.use == record_use::required) {
        return std::unexpected(record.error());
    } else {
        fmt::print(stderr, "stackemu: note: {} (using the settings without it)\n",
                   record.error().message);
    }
    out.values =
        resolve_config(*flags, *environment,
                       out.record ? std::optional<config_values>(out.record->values) : std::nullopt,
                       s->guest_arch, s->image_dir, recommended_for);
    if (how.pick_free_ports && !inst->paths.name.empty()) {
        const auto claimed = ports_of_other_instances(*s, inst->paths);
        pick_free_ports(out.values, [&](std::uint16_t port) {
            return claimed.contains(port) || host_port_in_use(port);
        });
    }
    if (auto ok = apply_config(out.values, *s); !ok) return std::unexpected(ok.error());
    if (how.check_host)
        if (auto ok = check_sizes_fit_host(out.values, host_facts::current()); !ok)
            return std::unexpected(ok.error());
    if (out.record) out.changes = changes_from_record(out.values, out.record->values);
    set_reply_timeout(s->reply_timeout);
    inst->config = std::move(*s);
    out.inst = std::move(*inst);
    return out;
}

result<instance> resolve_instance(const instance_options& o) {
    auto configured = resolve_configured(o);
    if (!configured) return std::unexpected(configured.error());
    return std::move(configured->inst);
}

json size_and_ports_json(const settings& s) {
    return json{{"ram_mib", s.ram_mib},
                {"cpus", s.cpus},
                {"ports",
                 {{"dashboard", s.ports.dashboard},
                  {"backend", s.ports.backend},
                  {"minio", s.ports.minio},
                  {"inbucket", s.ports.inbucket}}}};
}

}  // namespace stackemu::cli
