// `stackemu __complete instances|snapshots [--name N]`: the names a completion script offers at
// TAB time, one a line. Hidden from help, and silent: any failure (no run directory, bad
// settings, a damaged record) means no names, exit 0, never a message in the user's prompt.
// It reads directories and vm/snapshots.json only, so it is fast and never waits on QEMU.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "cli/subcommands.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/settings.hpp"
#include "lifecycle/snapshot.hpp"

namespace stackemu::cli {
namespace {

namespace fs = std::filesystem;
using namespace stackemu::lifecycle;

// The named instances under the run directory (the default one needs no --name).
std::vector<std::string> instance_names(const settings& s) {
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(s.run_dir / "instances", ec)) {
        auto name = e.path().filename().string();
        if (e.is_directory(ec) && check_instance_name(name, "name")) names.push_back(name);
    }
    std::ranges::sort(names);
    return names;
}

// The snapshots stackemu recorded for the instance (vm/snapshots.json): no QEMU is asked.
std::vector<std::string> snapshot_names(settings s, const std::string& name) {
    if (!name.empty()) {
        if (!check_instance_name(name, "--name")) return {};
        s.name = name;
    }
    auto inst = open_instance(std::move(s));
    if (!inst) return {};
    std::ifstream in(inst->paths.vm_dir / "snapshots.json");
    if (!in) return {};
    std::stringstream text;
    text << in.rdbuf();
    std::vector<std::string> names;
    for (const auto& r : records_from_json(nlohmann::json::parse(text.str(), nullptr, false)))
        names.push_back(r.name);
    std::ranges::sort(names);
    const auto [first, last] = std::ranges::unique(names);
    names.erase(first, last);
    return names;
}

}  // namespace

void add_complete_values_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand("__complete", "names for shell completion scripts");
    cmd->group("");  // hidden: for the scripts, not for people
    cmd->require_subcommand(1);
    auto name = std::make_shared<std::string>();
    auto* instances = cmd->add_subcommand("instances", "instance names");
    auto* snapshots = cmd->add_subcommand("snapshots", "the instance's snapshot names");
    snapshots->add_option("--name", *name, "the instance");
    const auto run = [&action](bool want_snapshots, std::shared_ptr<std::string> instance) {
        action = [want_snapshots, instance]() -> int {
            auto s = from_environment(process_environment());
            if (!s) return 0;
            const auto names = want_snapshots ? snapshot_names(*s, *instance) : instance_names(*s);
            for (const auto& n : names)
                fmt::print("{}\n", n);
            return 0;
        };
    };
    instances->callback([run, name] { run(false, name); });
    snapshots->callback([run, name] { run(true, name); });
}

}  // namespace stackemu::cli
