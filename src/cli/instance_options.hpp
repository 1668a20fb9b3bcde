// Options every instance command shares, and the instance's effective configuration: flags
// over the EMULATOR_* environment over the instance's record over the image profile's
// recommendation over the built-in defaults (lifecycle/instance_config.hpp).
#pragma once

#include <CLI/App.hpp>
#include <memory>
#include <optional>
#include <string>
#include <vector>

#include "lifecycle/controller.hpp"
#include "lifecycle/instance_config.hpp"

namespace stackemu::cli {

struct instance_options {
    std::string name;
    std::optional<std::string> ram;
    std::optional<std::string> cpus;
    std::optional<std::string> arch;
    std::optional<std::string> accel;
    std::optional<std::string> ready_timeout;
    std::optional<std::string> stop_timeout;
    // start's own, set by it before resolving.
    std::optional<std::string> image;
    std::optional<std::string> share;
    bool share_writable = false;
    bool json = false;
};

enum class option_set { name_only, runtime };

std::shared_ptr<instance_options> add_instance_options(CLI::App* cmd, option_set which);

// How a command takes the instance's record (vm/config.json).
enum class record_use {
    required,  // start and config: a damaged record is an error, and nothing is changed
    lenient,   // the others (stop must stop): a damaged one is reported and left out
};

struct configured_instance {
    lifecycle::instance inst;         // inst.config holds the effective settings
    lifecycle::config_values values;  // every setting with its source
    std::optional<lifecycle::config_record> record;
    std::vector<lifecycle::config_change> changes;  // flag/variable values unlike the record
};

struct resolve_options {
    record_use use = record_use::lenient;
    // A named instance moves ports still at their taken defaults (start, config show).
    bool pick_free_ports = false;
    // RAM and vCPUs given by flag or variable must fit the host (start: a stop or a status
    // must work whatever EMULATOR_CPUS says).
    bool check_host = false;
    std::optional<std::string> name;  // instead of --name / EMULATOR_NAME (list)
};

result<configured_instance> resolve_configured(const instance_options& o,
                                               const resolve_options& how = {});

// The effective settings, validated, and the instance laid out (lenient about the record).
result<lifecycle::instance> resolve_instance(const instance_options& o);

// The effective size and ports, for `status --json` and `list --json`.
nlohmann::json size_and_ports_json(const lifecycle::settings& s);

}  // namespace stackemu::cli
