// `stackemu config show|set|reset`: the instance's configuration, where each value comes from,
// and changing the record (vm/config.json) of a stopped instance. Runs in the one-shot binary.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <filesystem>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/lifecycle_shell.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/instance_config.hpp"
#include "lifecycle/instance_lock.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

constexpr std::string_view precedence_text =
    "precedence: command-line flag > EMULATOR_* variable > the instance's record > the image "
    "profile's recommendation > built-in default";

constexpr std::string_view config_footer =
    R"(An instance remembers how it was made: its first `start` records the settings below in
<instance>/vm/config.json, and later commands use them. Each setting comes from, first to
last: a command-line flag, an EMULATOR_* variable, the record, the image profile's recommended
size (ram, cpus), the built-in default. A flag or variable that changes a recorded value is
recorded by the next `start` of the stopped instance (which says what changed), and refused
while it runs. `config set` and `config reset` change the record of a stopped instance.

Exit codes: 0 done, 1 refused (the instance runs) or failed, 2 bad key or value, 7 busy.)";

std::string name_option(const instance_paths& paths) {
    return paths.name.empty() ? std::string() : " --name " + paths.name;
}

std::string origin_text(const sourced_value& v) {
    if (v.source == config_source::record) return "record";
    if (v.origin.empty()) return std::string(to_string(v.source));
    return fmt::format("{} ({})", to_string(v.source), v.origin);
}

int run_show(const instance_options& o) {
    auto c = resolve_configured(
        o, {.use = record_use::required, .pick_free_ports = true, .check_host = false, .name = {}});
    if (!c) return settings_error("config show", c.error());
    const auto& paths = c->inst.paths;
    if (o.json) {
        json settings = json::object();
        for (const auto& key : config_keys()) {
            auto it = c->values.find(key.name);
            const bool set = it != c->values.end();
            settings[std::string(key.name)] = {
                {"value", set ? it->second.value : json(nullptr)},
                {"source",
                 std::string(to_string(set ? it->second.source : config_source::builtin))},
                {"from", set ? it->second.origin : std::string()},
                {"recorded", c->record && c->record->values.contains(key.name)}};
        }
        std::cout << json{{"instance", paths.display_name()},
                          {"record", paths.config.string()},
                          {"recorded", c->record.has_value()},
                          {"running", vm_running(paths)},
                          {"settings", settings},
                          {"precedence", precedence_text}}
                         .dump(2)
                  << std::endl;
        return exit_code::ok;
    }
    fmt::print("{}: {}\n", paths.display_name(),
               c->record ? fmt::format("recorded in {}", paths.config.string())
                         : fmt::format("nothing recorded yet (the first start writes {})",
                                       paths.config.string()));
    fmt::print("{:<16} {:<40} {}\n", "SETTING", "VALUE", "FROM");
    for (const auto& key : config_keys()) {
        auto it = c->values.find(key.name);
        if (it == c->values.end()) {
            fmt::print("{:<16} {:<40} {}\n", key.name, "none", "default");
            continue;
        }
        auto value = value_text(it->second.value);
        if (!key.unit.empty()) value += fmt::format(" {}", key.unit);
        fmt::print("{:<16} {:<40} {}\n", key.name, value, origin_text(it->second));
    }
    fmt::print("{}\n", precedence_text);
    return exit_code::ok;
}

// What `config set` and `config reset` share: the key, the instance, its lock, and the check
// that no VM of it runs, all before anything is written.
struct change_target {
    const config_key* key = nullptr;
    configured_instance configured;
};

result<change_target> prepare_change(const instance_options& o, std::string_view key_name) {
    auto key = find_config_key(key_name);
    if (!key) return std::unexpected(key.error());
    // The record as it is, without any flag: what `set` changes is the record itself.
    auto c = resolve_configured(
        o,
        {.use = record_use::required, .pick_free_ports = false, .check_host = false, .name = {}});
    if (!c) return std::unexpected(c.error());
    return change_target{*key, std::move(*c)};
}

// Refuses a running VM: its configuration is fixed until it stops. Under the instance lock.
result<void> check_stopped(const instance_paths& paths, std::string_view verb,
                           std::string_view key) {
    if (!vm_running(paths)) return {};
    return fail(
        errc::wrong_state,
        fmt::format("{} is running, so its configuration cannot change: run `stackemu "
                    "stop{}` first, then `stackemu config {}{} {}...` (or pass the "
                    "flag to the next `stackemu start`)",
                    paths.display_name(), name_option(paths), verb, name_option(paths), key));
}

// The record with `document` in place, checked as a whole the way start would read it
// (distinct ports, vCPUs for the architecture), before it is written.
result<config_values> check_document(const configured_instance& c, const json& document) {
    auto parsed = parse_record(document.dump(), c.inst.paths.config);
    if (!parsed) return std::unexpected(parsed.error());
    auto env = environment_layer(process_environment());
    if (!env) return std::unexpected(env.error());
    auto values = resolve_config({}, *env, parsed->values, c.inst.config.guest_arch,
                                 c.inst.config.image_dir, {});
    auto s = c.inst.config;
    if (auto ok = apply_config(values, s); !ok) return std::unexpected(ok.error());
    return values;
}

result<void> write_locked(const instance_paths& paths, const settings& s, const json& document,
                          std::string_view verb, std::string_view key) {
    // First without the lock, which a refusal must not touch either; then under it.
    if (auto stopped = check_stopped(paths, verb, key); !stopped) return stopped;
    for (const auto& dir : {s.run_dir, paths.instance_dir, paths.vm_dir})
        if (auto made = ensure_private_dir(dir); !made) return made;
    auto lock = try_acquire(paths.lock.string(), "config");
    if (!lock) return std::unexpected(lock.error());
    if (auto stopped = check_stopped(paths, verb, key); !stopped) return stopped;
    return write_record(paths.config, document);
}

// A variable that still overrides the recorded value, said so the user is not surprised.
std::string overridden_note(const config_values& effective, std::string_view key) {
    auto it = effective.find(key);
    if (it == effective.end() || it->second.source != config_source::environment) return {};
    return fmt::format(" ({}={} is set and overrides it until unset)", it->second.origin,
                       value_text(it->second.value));
}

int change_error(std::string_view command, const error& e) {
    if (e.code == errc::invalid_argument) return settings_error(command, e);
    return error_exit(command, e);
}

int run_set(const instance_options& o, const std::string& key_name, const std::string& text) {
    auto t = prepare_change(o, key_name);
    if (!t) return change_error("config set", t.error());
    const auto& key = *t->key;
    const auto& c = t->configured;
    const auto what = fmt::format("config set {}", key.name);
    std::string given = text;
    if (key.kind == config_kind::path && !text.empty())
        given = fs::absolute(text).lexically_normal().string();
    auto value = parse_config_value(key, given, what);
    if (!value) return settings_error("config set", value.error());
    const auto host = host_facts::current();
    if (key.name == "ram")
        if (auto ok = check_ram_fits_host(value->get<std::uint64_t>(), what, host); !ok)
            return settings_error("config set", ok.error());
    if (key.name == "cpus")
        if (auto ok = check_cpus_fit_host(value->get<std::uint64_t>(), what, host); !ok)
            return settings_error("config set", ok.error());
    // What start would refuse later is refused now.
    std::error_code ec;
    if (key.name == "share") {
        const auto dir = fs::canonical(given, ec);
        if (ec || !fs::is_directory(dir, ec))
            return settings_error(
                "config set",
                make_error(errc::invalid_argument, fmt::format("{} {}: not an existing directory: "
                                                               "name the directory to share",
                                                               what, text)));
        if (dir == dir.root_path())
            return settings_error(
                "config set",
                make_error(errc::invalid_argument,
                           fmt::format("{} {}: refusing to export the host's root directory "
                                       "to the guest; name the project directory",
                                       what, text)));
        *value = dir.string();
    }
    if (key.name == "image")
        if (auto m = provision::load_manifest(given); !m)
            return settings_error("config set", m.error());

    const json before_document = c.record ? c.record->document : json::object();
    config_values change{{std::string(key.name), {*value, config_source::flag, what}}};
    const auto document = updated_document(before_document, change);
    auto effective = check_document(c, document);
    if (!effective) return settings_error("config set", effective.error());
    if (auto written = write_locked(c.inst.paths, c.inst.config, document, "set", key.name);
        !written)
        return change_error("config set", written.error());

    json before;  // null: not recorded
    if (c.record)
        if (auto it = c.record->values.find(key.name); it != c.record->values.end())
            before = it->second.value;
    if (o.json) {
        std::cout << json{{"instance", c.inst.paths.display_name()},
                          {"key", key.name},
                          {"before", before},
                          {"value", *value},
                          {"record", c.inst.paths.config.string()}}
                         .dump(2)
                  << std::endl;
    } else {
        fmt::print("{}: {} {} → {}{}{}: recorded in {}; the next start uses it{}\n",
                   c.inst.paths.display_name(), key.name,
                   before.is_null() ? std::string("(not recorded)") : value_text(before),
                   value_text(*value), key.unit.empty() ? "" : " ", key.unit,
                   c.inst.paths.config.string(), overridden_note(*effective, key.name));
    }
    return exit_code::ok;
}

int run_reset(const instance_options& o, const std::string& key_name) {
    auto t = prepare_change(o, key_name);
    if (!t) return change_error("config reset", t.error());
    const auto& key = *t->key;
    const auto& c = t->configured;
    const bool recorded = c.record && c.record->values.contains(key.name);
    std::optional<config_values> effective;
    if (recorded) {
        const std::string removed[] = {std::string(key.name)};
        const auto document = updated_document(c.record->document, {}, removed);
        auto checked = check_document(c, document);
        if (!checked) return settings_error("config reset", checked.error());
        effective = std::move(*checked);
        if (auto written = write_locked(c.inst.paths, c.inst.config, document, "reset", key.name);
            !written)
            return change_error("config reset", written.error());
    }
    std::string now = "none";
    if (effective)
        if (auto it = effective->find(key.name); it != effective->end())
            now = fmt::format("{} ({})", value_text(it->second.value), origin_text(it->second));
    if (o.json) {
        std::cout << json{{"instance", c.inst.paths.display_name()},
                          {"key", key.name},
                          {"removed", recorded},
                          {"record", c.inst.paths.config.string()}}
                         .dump(2)
                  << std::endl;
    } else if (!recorded) {
        fmt::print("{}: {} is not recorded; nothing to reset\n", c.inst.paths.display_name(),
                   key.name);
    } else {
        fmt::print("{}: {} removed from the record; the next start uses {} and records it\n",
                   c.inst.paths.display_name(), key.name, now);
    }
    return exit_code::ok;
}

std::string keys_help() {
    std::string out = "\nSettings:\n";
    for (const auto& k : config_keys())
        out += fmt::format("  {:<16} {}\n", k.name, k.help);
    return out;
}

}  // namespace

void add_config_commands(CLI::App& app, std::function<int()>& action) {
    auto* group =
        app.add_subcommand("config",
                           "The instance's configuration: show (with where each value comes from), "
                           "set KEY VALUE, reset KEY");
    group->require_subcommand(1);
    group->footer(std::string(config_footer) + "\n" + keys_help());

    auto* show = group->add_subcommand(
        "show",
        "Every effective setting and where it comes from (flag, env, record, profile, "
        "default)");
    auto show_options = add_instance_options(show, option_set::name_only);
    show->callback([show_options, &action] {
        action = [show_options]() -> int { return run_show(*show_options); };
    });

    struct set_args {
        std::string key;
        std::string value;
    };
    auto* set = group->add_subcommand(
        "set", "Record KEY = VALUE for a stopped instance (checked like the flag)");
    set->footer(keys_help());
    auto set_options = add_instance_options(set, option_set::name_only);
    auto sa = std::make_shared<set_args>();
    set->add_option("KEY", sa->key, "the setting (config show lists them)")->required();
    set->add_option("VALUE", sa->value, "its value, as its flag takes it")->required();
    set->callback([set_options, sa, &action] {
        action = [set_options, sa]() -> int { return run_set(*set_options, sa->key, sa->value); };
    });

    auto* reset = group->add_subcommand(
        "reset",
        "Remove KEY from a stopped instance's record: the next start takes it from "
        "the variable, the profile or the default, and records that");
    auto reset_options = add_instance_options(reset, option_set::name_only);
    auto key = std::make_shared<std::string>();
    reset->add_option("KEY", *key, "the setting")->required();
    reset->callback([reset_options, key, &action] {
        action = [reset_options, key]() -> int { return run_reset(*reset_options, *key); };
    });
}

}  // namespace stackemu::cli
