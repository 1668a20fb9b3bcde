// Options every instance command shares; flags override the EMULATOR_* environment.
#pragma once

#include <CLI/App.hpp>
#include <memory>
#include <optional>
#include <string>

#include "lifecycle/controller.hpp"

namespace stackemu::cli {

struct instance_options {
    std::string name;
    std::optional<std::string> ram;
    std::optional<std::string> cpus;
    std::optional<std::string> arch;
    std::optional<std::string> accel;
    std::optional<std::string> ready_timeout;
    std::optional<std::string> stop_timeout;
    bool json = false;
};

enum class option_set { name_only, runtime };

std::shared_ptr<instance_options> add_instance_options(CLI::App* cmd, option_set which);

// The settings from the environment with the flags on top, validated, and the instance laid out.
result<lifecycle::instance> resolve_instance(const instance_options& o);

}  // namespace stackemu::cli
