// An instance's configuration and the precedence of its sources (instance_config.hpp).
#include "lifecycle/instance_config.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <set>

#include "lifecycle/files.hpp"
#include "provision/known_keys.hpp"

namespace stackemu::lifecycle {

using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// Where a named instance looks for ports when a default one is taken: past upstream's four.
constexpr std::uint16_t first_automatic_port = 26704;

constexpr std::array<config_key, 13> keys = {{
    {"image", "--image", "", "image", "", config_kind::path, 0, 0, true,
     "the image (qcow2 with its manifest beside it); default: the built image for the "
     "architecture under EMULATOR_IMAGE_DIR"},
    {"arch", "--arch", "EMULATOR_ARCH", "architecture", "", config_kind::architecture, 0, 0, true,
     "guest architecture: amd64 or arm64 (default: the host's)"},
    {"ram", "--ram", "EMULATOR_RAM", "RAM", "MiB", config_kind::number, min_ram_mib, max_ram_mib,
     true, "guest memory in MiB (default: the image profile's recommendation, else 4096)"},
    {"cpus", "--cpus", "EMULATOR_CPUS", "vCPUs", "", config_kind::number, min_cpus, max_cpus, true,
     "guest vCPUs (default: the image profile's recommendation, else 4)"},
    {"accel", "--accel", "EMULATOR_ACCEL", "accelerator", "", config_kind::accelerator, 0, 0, true,
     "auto, kvm, hvf or tcg (default auto)"},
    {"dashboard_port", "", "EMULATOR_DASHBOARD_PORT", "dashboard port", "", config_kind::number, 1,
     65535, true, "host port of the dashboard forward (default 26700)"},
    {"backend_port", "", "EMULATOR_BACKEND_PORT", "backend port", "", config_kind::number, 1, 65535,
     true, "host port of the backend forward (default 26701)"},
    {"minio_port", "", "EMULATOR_MINIO_PORT", "MinIO port", "", config_kind::number, 1, 65535, true,
     "host port of the MinIO forward (default 26702)"},
    {"inbucket_port", "", "EMULATOR_INBUCKET_PORT", "Inbucket port", "", config_kind::number, 1,
     65535, true, "host port of the Inbucket forward (default 26703)"},
    {"share", "--share", "", "shared directory", "", config_kind::path, 0, 0, true,
     "a host directory the guest sees under the 9p tag hostshare (default: none)"},
    {"share_writable", "--share-writable", "", "share writable", "", config_kind::boolean, 0, 0,
     true, "export the shared directory writable: true or false (default false)"},
    {"ready_timeout", "--ready-timeout", "EMULATOR_READY_TIMEOUT", "ready timeout", "s",
     config_kind::number, 1, max_timeout_seconds, false,
     "seconds start waits for ready (default 240)"},
    {"stop_timeout", "--stop-timeout", "EMULATOR_STOP_TIMEOUT", "stop timeout", "s",
     config_kind::number, 1, max_timeout_seconds, false,
     "seconds the guest gets to shut down (default 90)"},
}};

const config_key& key_named(std::string_view name) {
    return *std::find_if(keys.begin(), keys.end(), [&](const auto& k) { return k.name == name; });
}

// A flag's errors read as they always have; other sources are named in front.
std::unexpected<error> named_failure(std::string_view what, const error& e) {
    if (what.starts_with("--")) return std::unexpected(e);
    return fail(e.code, fmt::format("{}: {}", what, e.message));
}

// The text of a record's value, so that it is checked by the very parser flags use.
std::optional<std::string> json_as_text(const json& v) {
    if (v.is_string()) return v.get<std::string>();
    if (v.is_number_unsigned()) return std::to_string(v.get<std::uint64_t>());
    if (v.is_boolean()) return v.get<bool>() ? "true" : "false";
    return std::nullopt;
}

std::unexpected<error> damaged(const fs::path& file, std::string_view what) {
    return fail(
        errc::invalid_argument,
        fmt::format("the instance configuration {} is damaged ({}): fix it by hand (README.md, "
                    "\"Instance configuration\", lists the keys), or move it away and the next "
                    "`stackemu start` records the configuration again; nothing was "
                    "changed",
                    file.string(), what));
}

}  // namespace

std::string_view to_string(config_source s) {
    switch (s) {
        case config_source::flag:
            return "flag";
        case config_source::environment:
            return "env";
        case config_source::record:
            return "record";
        case config_source::profile:
            return "profile";
        case config_source::automatic:
            return "auto";
        case config_source::builtin:
            return "default";
    }
    return "unknown";
}

std::span<const config_key> config_keys() {
    return keys;
}

result<const config_key*> find_config_key(std::string_view name) {
    for (const auto& k : keys)
        if (k.name == name) return &k;
    std::vector<std::string_view> known;
    for (const auto& k : keys)
        known.push_back(k.name);
    const auto near = provision::nearest_key(name, known);
    std::string listed;
    for (auto k : known) {
        if (!listed.empty()) listed += ", ";
        listed += k;
    }
    return fail(errc::invalid_argument,
                fmt::format("'{}' is not a setting of an instance{} (the settings: {})", name,
                            near.empty() ? "" : fmt::format(": did you mean '{}'?", near), listed));
}

result<json> parse_config_value(const config_key& key, std::string_view text,
                                std::string_view what) {
    switch (key.kind) {
        case config_kind::path: {
            if (text.empty() || text.front() != '/')
                return fail(errc::invalid_argument,
                            fmt::format("{} must be an absolute path (got '{}')", what, text));
            return json(fs::path(text).lexically_normal().string());
        }
        case config_kind::architecture: {
            auto a = parse_architecture(text);
            if (!a) return named_failure(what, a.error());
            return json(std::string(to_string(*a)));
        }
        case config_kind::accelerator: {
            auto m = parse_accel_mode(text);
            if (!m) return named_failure(what, m.error());
            return json(std::string(to_string(*m)));
        }
        case config_kind::boolean:
            if (text == "true") return json(true);
            if (text == "false") return json(false);
            return fail(errc::invalid_argument,
                        fmt::format("{} must be true or false (got '{}')", what, text));
        case config_kind::number: {
            auto n = parse_decimal(text, what, key.min, key.max);
            if (!n) return std::unexpected(n.error());
            return json(*n);
        }
    }
    return fail(errc::invalid_argument, fmt::format("{}: unknown kind of setting", what));
}

std::string value_text(const json& value) {
    if (value.is_null()) return "none";
    if (value.is_string()) return value.get<std::string>();
    return value.dump();
}

result<config_values> environment_layer(const env_lookup& env) {
    config_values out;
    for (const auto& k : keys) {
        if (k.variable.empty()) continue;
        std::string variable(k.variable);
        auto text = env(variable);
        // EMULATOR_RAM_MB is the other spelling of EMULATOR_RAM (from_environment refuses
        // the two disagreeing).
        if (!text && k.name == "ram") {
            variable = "EMULATOR_RAM_MB";
            text = env(variable);
        }
        if (!text) continue;
        auto value = parse_config_value(k, *text, variable);
        if (!value) return std::unexpected(value.error());
        out[std::string(k.name)] = {std::move(*value), config_source::environment, variable};
    }
    return out;
}

result<void> check_sizes_fit_host(const config_values& values, const host_facts& host) {
    for (const auto& [name, v] : values) {
        if (v.source != config_source::flag && v.source != config_source::environment) continue;
        if (!v.value.is_number_integer() || v.value.get<std::int64_t>() < 0) continue;
        const auto n = v.value.get<std::uint64_t>();
        if (name == "ram")
            if (auto ok = check_ram_fits_host(n, v.origin, host); !ok) return ok;
        if (name == "cpus")
            if (auto ok = check_cpus_fit_host(n, v.origin, host); !ok) return ok;
    }
    return {};
}

config_values profile_layer(const provision::resources& recommended, std::string_view origin) {
    config_values out;
    if (recommended.ram_mib)
        out["ram"] = {json(*recommended.ram_mib), config_source::profile, std::string(origin)};
    if (recommended.cpus)
        out["cpus"] = {json(*recommended.cpus), config_source::profile, std::string(origin)};
    return out;
}

config_values builtin_layer(architecture arch, const fs::path& image_dir) {
    const settings defaults;
    auto value = [](json v) { return sourced_value{std::move(v), config_source::builtin, ""}; };
    return {
        {"image", value(provision::default_image(image_dir, to_string(arch)).string())},
        {"arch", value(std::string(to_string(arch)))},
        {"ram", value(defaults.ram_mib)},
        {"cpus", value(defaults.cpus)},
        {"accel", value(std::string(to_string(defaults.accel)))},
        {"dashboard_port", value(defaults.ports.dashboard)},
        {"backend_port", value(defaults.ports.backend)},
        {"minio_port", value(defaults.ports.minio)},
        {"inbucket_port", value(defaults.ports.inbucket)},
        {"share_writable", value(false)},
        {"ready_timeout", value(static_cast<std::uint64_t>(defaults.ready_timeout.count()))},
        {"stop_timeout", value(static_cast<std::uint64_t>(defaults.stop_timeout.count()))},
    };
}

config_values merge_layers(std::initializer_list<const config_values*> layers) {
    config_values out;
    for (const auto* layer : layers)
        for (const auto& [name, value] : *layer)
            out.emplace(name, value);  // an upper layer's value stays
    return out;
}

config_values resolve_config(
    const config_values& flags, const config_values& environment,
    const std::optional<config_values>& record, architecture default_arch,
    const fs::path& image_dir,
    const std::function<recommendation(const fs::path&)>& recommended_for) {
    const config_values no_record;
    const auto& recorded = record ? *record : no_record;
    // The architecture and image first: the profile that recommends a size is the image's.
    auto upper = merge_layers({&flags, &environment, &recorded});
    auto arch = default_arch;
    if (auto it = upper.find("arch"); it != upper.end() && it->second.value.is_string())
        if (auto a = parse_architecture(it->second.value.get<std::string>())) arch = *a;
    const auto builtin = builtin_layer(arch, image_dir);
    const auto image = configured_image(merge_layers({&upper, &builtin}));
    const auto recommended = recommended_for ? recommended_for(image) : recommendation{};
    const auto profile = profile_layer(recommended.size, recommended.origin);
    return merge_layers({&flags, &environment, &recorded, &profile, &builtin});
}

result<void> apply_config(const config_values& values, settings& s) {
    auto number = [&](std::string_view name) -> std::optional<std::uint64_t> {
        auto it = values.find(name);
        if (it == values.end() || !it->second.value.is_number_integer() ||
            it->second.value.get<std::int64_t>() < 0)
            return std::nullopt;
        return it->second.value.get<std::uint64_t>();
    };
    auto text = [&](std::string_view name) -> std::optional<std::string> {
        auto it = values.find(name);
        if (it == values.end() || !it->second.value.is_string()) return std::nullopt;
        return it->second.value.get<std::string>();
    };
    if (auto a = text("arch")) {
        auto parsed = parse_architecture(*a);
        if (!parsed) return std::unexpected(parsed.error());
        s.guest_arch = *parsed;
    }
    if (auto m = text("accel")) {
        auto parsed = parse_accel_mode(*m);
        if (!parsed) return std::unexpected(parsed.error());
        s.accel = *parsed;
    }
    if (auto v = number("ram")) s.ram_mib = static_cast<std::uint32_t>(*v);
    if (auto v = number("cpus")) s.cpus = static_cast<std::uint32_t>(*v);
    for (auto [name, field] :
         {std::pair{"dashboard_port", &s.ports.dashboard},
          std::pair{"backend_port", &s.ports.backend}, std::pair{"minio_port", &s.ports.minio},
          std::pair{"inbucket_port", &s.ports.inbucket}})
        if (auto v = number(name)) *field = static_cast<std::uint16_t>(*v);
    for (auto [name, field] :
         {std::pair{"ready_timeout", &s.ready_timeout}, std::pair{"stop_timeout", &s.stop_timeout}})
        if (auto v = number(name))
            *field = std::chrono::seconds(static_cast<std::chrono::seconds::rep>(*v));
    return validate(s);
}

fs::path configured_image(const config_values& values) {
    auto it = values.find("image");
    if (it == values.end() || !it->second.value.is_string()) return {};
    return it->second.value.get<std::string>();
}

std::optional<host_share> configured_share(const config_values& values) {
    auto it = values.find("share");
    if (it == values.end() || !it->second.value.is_string()) return std::nullopt;
    auto writable = values.find("share_writable");
    return host_share{it->second.value.get<std::string>(),
                      writable != values.end() && writable->second.value == true};
}

void pick_free_ports(config_values& values, const std::function<bool(std::uint16_t)>& taken) {
    constexpr std::array<std::string_view, 4> port_keys = {"dashboard_port", "backend_port",
                                                           "minio_port", "inbucket_port"};
    std::set<std::uint64_t> in_use;
    for (auto name : port_keys)
        if (auto it = values.find(name); it != values.end() && it->second.value.is_number())
            in_use.insert(it->second.value.get<std::uint64_t>());
    std::uint32_t candidate = first_automatic_port;
    for (auto name : port_keys) {
        auto it = values.find(name);
        if (it == values.end() || it->second.source != config_source::builtin) continue;
        const auto port = static_cast<std::uint16_t>(it->second.value.get<std::uint64_t>());
        if (!taken(port)) continue;
        while (candidate <= 65535 &&
               (in_use.contains(candidate) || taken(static_cast<std::uint16_t>(candidate))))
            ++candidate;
        if (candidate > 65535) return;  // nothing free: the port check says so
        it->second = {json(candidate), config_source::automatic, fmt::format("{} was taken", port)};
        in_use.insert(candidate);
    }
}

std::vector<config_change> changes_from_record(const config_values& values,
                                               const config_values& record) {
    std::vector<config_change> out;
    for (const auto& [name, v] : values) {
        if (v.source != config_source::flag && v.source != config_source::environment) continue;
        auto recorded = record.find(name);
        // A recorded instance without a share has none; any other key it lacks is new.
        if (recorded == record.end() && name != "share") continue;
        json before = recorded == record.end() ? json() : recorded->second.value;
        if (before == v.value) continue;
        out.push_back({name, std::move(before), v.value, v.source, v.origin});
    }
    return out;
}

std::string describe(const config_change& change) {
    const auto& k = key_named(change.key);
    return fmt::format("{} {} → {}{}{} (from {})", k.label, value_text(change.before),
                       value_text(change.after), k.unit.empty() ? "" : " ", k.unit, change.origin);
}

std::string running_refusal(const std::vector<config_change>& changes,
                            std::string_view name_option) {
    std::string what;
    std::string how;
    for (const auto& c : changes) {
        if (!key_named(c.key).shapes_vm) continue;
        if (!what.empty()) what += "; ";
        what += describe(c);
        if (c.source == config_source::flag && key_named(c.key).kind != config_kind::boolean)
            how += fmt::format(" {} {}", c.origin, value_text(c.after));
        else if (c.source == config_source::flag)
            how += fmt::format(" {}", c.origin);
    }
    if (what.empty()) return {};
    return fmt::format(
        "the instance is running, and {} needs a new VM: run `stackemu stop{}` and then "
        "`stackemu start{}{}` (the new values are then recorded), or drop the flag or variable "
        "to use the running VM as it is",
        what, name_option, name_option, how);
}

result<config_record> parse_record(std::string_view text, const fs::path& file) {
    auto j = json::parse(text, nullptr, false);
    if (j.is_discarded() || !j.is_object()) return damaged(file, "not a JSON object");
    if (auto f = j.find("format"); f != j.end() && *f != config_record_format) {
        if (f->is_number_unsigned() && f->get<std::uint64_t>() > config_record_format)
            return fail(errc::invalid_argument,
                        fmt::format("the instance configuration {} has format {}, written by a "
                                    "newer stackemu: use that version for this instance",
                                    file.string(), f->dump()));
        return damaged(file,
                       fmt::format("\"format\" is {}, not {}", f->dump(), config_record_format));
    }
    auto settings_it = j.find("settings");
    if (settings_it == j.end() || !settings_it->is_object())
        return damaged(file, "it has no \"settings\" object");
    config_record out;
    for (const auto& k : keys) {
        auto it = settings_it->find(k.name);
        if (it == settings_it->end()) continue;
        const auto text_value = json_as_text(*it);
        const auto where = fmt::format("\"{}\"", k.name);
        if (!text_value) return damaged(file, fmt::format("{} is {}", where, it->dump()));
        auto value = parse_config_value(k, *text_value, where);
        if (!value) return damaged(file, value.error().message);
        out.values[std::string(k.name)] = {std::move(*value), config_source::record, file.string()};
    }
    out.document = std::move(j);
    return out;
}

result<std::optional<config_record>> read_record(const fs::path& file) {
    // Not there (also: a part of the path is a file): no record; making the directories
    // later says what is wrong with the path.
    std::error_code ec;
    if (!fs::exists(file, ec) && !ec) return std::optional<config_record>{};
    auto text = read_file(file.string());
    if (!text) {
        if (text.error().code == errc::not_found) return std::optional<config_record>{};
        return std::unexpected(text.error());
    }
    auto parsed = parse_record(*text, file);
    if (!parsed) return std::unexpected(parsed.error());
    return std::optional<config_record>(std::move(*parsed));
}

json updated_document(const json& document, const config_values& values,
                      std::span<const std::string> remove) {
    json out = document.is_object() ? document : json::object();
    out["format"] = config_record_format;
    if (!out.contains("settings") || !out["settings"].is_object()) out["settings"] = json::object();
    for (const auto& [name, v] : values)
        out["settings"][name] = v.value;
    for (const auto& name : remove)
        out["settings"].erase(name);
    return out;
}

result<void> write_record(const fs::path& file, const json& document) {
    return write_file_atomically(file.string(), document.dump(2) + "\n", 0600);
}

}  // namespace stackemu::lifecycle
