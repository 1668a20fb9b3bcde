// An instance's configuration: what its first `start` recorded (vm/config.json) and the
// precedence that decides each setting: command-line flag > EMULATOR_* variable > the
// instance's record > the image profile's recommended size > built-in default. Pure, apart
// from read_record / write_record at the end.
#pragma once

#include <cstdint>
#include <filesystem>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <span>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/settings.hpp"
#include "provision/manifest.hpp"

namespace stackemu::lifecycle {

inline constexpr int config_record_format = 1;

// Where a setting's value came from, in precedence order (`automatic`: a named instance's
// port moved off a taken default).
enum class config_source { flag, environment, record, profile, automatic, builtin };
// "flag", "env", "record", "profile", "auto", "default".
std::string_view to_string(config_source s);

enum class config_kind { path, architecture, accelerator, number, boolean };

// One setting an instance keeps.
struct config_key {
    std::string_view name;      // the record's key and `config set`'s: "ram"
    std::string_view flag;      // "--ram"; empty when there is none
    std::string_view variable;  // "EMULATOR_RAM"; empty when there is none
    std::string_view label;     // for change lines: "RAM"
    std::string_view unit;      // "MiB", "s" or empty
    config_kind kind = config_kind::number;
    std::uint64_t min = 0;  // numbers only
    std::uint64_t max = 0;
    // Fixed while QEMU runs: a different value needs a stop (timeouts only steer commands).
    bool shapes_vm = true;
    std::string_view help;
};
std::span<const config_key> config_keys();
// The key called `name`; otherwise an error naming the nearest key and listing every key.
result<const config_key*> find_config_key(std::string_view name);

// A value in its canonical JSON form: numbers for sizes, ports and timeouts; strings for the
// image, architecture, accelerator and share; a boolean for share_writable.
// `text` read as `key`'s flag reads it; `what` names the text's source in errors ("--ram",
// "EMULATOR_RAM", "config set ram"). Paths must be absolute (the shell makes them so).
result<nlohmann::json> parse_config_value(const config_key& key, std::string_view text,
                                          std::string_view what);
// How a value reads for people: 1024, amd64, /srv/project, true.
std::string value_text(const nlohmann::json& value);

struct sourced_value {
    nlohmann::json value;
    config_source source = config_source::builtin;
    std::string origin;  // "--ram", "EMULATOR_RAM", the record's path, "profile demo", ...
};
// One layer of settings, or the effective settings: key name -> value.
using config_values = std::map<std::string, sourced_value, std::less<>>;

// The EMULATOR_* variables that are set, each read as its flag would be.
result<config_values> environment_layer(const env_lookup& env);
// The image profile's recommended size.
config_values profile_layer(const provision::resources& recommended, std::string_view origin);
// Upstream's defaults: sizes, ports, timeouts, `arch` and the built image for it.
config_values builtin_layer(architecture arch, const std::filesystem::path& image_dir);

// For each key, the value of the first layer that has it.
config_values merge_layers(std::initializer_list<const config_values*> layers);

// The whole precedence. The image (and so the profile) follows from the upper layers:
// `recommended_for` reads the profile of the image that will run (nothing when unknown).
struct recommendation {
    provision::resources size;
    std::string origin;  // "profile demo"
};
config_values resolve_config(
    const config_values& flags, const config_values& environment,
    const std::optional<config_values>& record, architecture default_arch,
    const std::filesystem::path& image_dir,
    const std::function<recommendation(const std::filesystem::path&)>& recommended_for);

// RAM and vCPUs the user gave (by flag or variable) must fit the host; defaults, profiles
// and the record (checked when it was set) are not held to it. The error names the source.
result<void> check_sizes_fit_host(const config_values& values, const host_facts& host);

// Writes the effective values into `s` and checks the result (validate(): ranges, distinct
// ports, vCPUs for the architecture).
result<void> apply_config(const config_values& values, settings& s);
std::filesystem::path configured_image(const config_values& values);
std::optional<host_share> configured_share(const config_values& values);

// A named instance does not take ports another instance holds: each port still at its default
// that `taken` says is in use (by a listener or another instance's record) moves to the first
// free one from 26704 up, marked config_source::automatic.
void pick_free_ports(config_values& values, const std::function<bool(std::uint16_t)>& taken);

// ---- changes against the record ----

struct config_change {
    std::string key;
    nlohmann::json before;  // null: not set
    nlohmann::json after;
    config_source source = config_source::flag;
    std::string origin;
};
// The flag and variable values that differ from what the record holds.
std::vector<config_change> changes_from_record(const config_values& values,
                                               const config_values& record);
// "RAM 1024 → 4096 MiB (from EMULATOR_RAM)".
std::string describe(const config_change& change);
// Why a start of the running instance refuses `changes` (those that shape the VM), and what
// to run instead; empty when none of them needs a restart. `name_option`: "" or " --name b".
std::string running_refusal(const std::vector<config_change>& changes,
                            std::string_view name_option);

// ---- the record file (vm/config.json, 0600) ----

// {"format": 1, "settings": {...}}: keys this version does not know are kept when rewritten.
struct config_record {
    nlohmann::json document = nlohmann::json::object();
    config_values values;
};
// Checks a record's text; errors name the file, what is wrong, and what to do.
result<config_record> parse_record(std::string_view text, const std::filesystem::path& file);
// nullopt when the instance has none yet.
result<std::optional<config_record>> read_record(const std::filesystem::path& file);
// The document with `values` set (and `remove` removed) in its settings, everything else kept.
nlohmann::json updated_document(const nlohmann::json& document, const config_values& values,
                                std::span<const std::string> remove = {});
// Replaced atomically (temporary file, fsync, rename), mode 0600.
result<void> write_record(const std::filesystem::path& file, const nlohmann::json& document);

}  // namespace stackemu::lifecycle
