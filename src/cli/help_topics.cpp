#include "cli/help_topics.hpp"

#include <fmt/format.h>

#include <functional>

#include "lifecycle/exit_codes.hpp"
#include "lifecycle/guest_exec.hpp"
#include "lifecycle/settings.hpp"
#include "lifecycle/snapshot.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;

// ---- configuration ----

struct setting_row {
    std::string_view variables;  // the EMULATOR_* (or other) variable(s)
    std::string_view flags;      // the flags that override it, and on which commands
    std::string meaning;
    std::string default_text;
};

std::string seconds(std::chrono::seconds s) {
    return fmt::format("{} s", s.count());
}

// Defaults come from a default-constructed `settings`, the values the program starts from.
std::vector<setting_row> setting_rows() {
    const settings d;
    return {
        {"EMULATOR_NAME", "--name", "the instance: each has its own run directory and ports",
         "the default instance"},
        {"EMULATOR_RUN_DIR", "", "where instances live (vm/, instances/NAME/vm/)",
         "~/.stack/emulator/run"},
        {"EMULATOR_IMAGE_DIR", "--image-dir (build-image, pull)", "where images are built to",
         "~/.stack/emulator/images"},
        {"EMULATOR_RAM, EMULATOR_RAM_MB", "--ram", "guest memory in MiB",
         fmt::format("{} (or the image profile's recommendation)", d.ram_mib)},
        {"EMULATOR_CPUS", "--cpus", "guest vCPUs",
         fmt::format("{} (or the image profile's recommendation)", d.cpus)},
        {"EMULATOR_ARCH", "--arch", "guest architecture: amd64 or arm64", "the host's"},
        {"EMULATOR_ACCEL", "--accel", "accelerator: auto, kvm, hvf or tcg",
         std::string(to_string(d.accel))},
        {"EMULATOR_READY_TIMEOUT", "--ready-timeout", "how long start waits for ready",
         seconds(d.ready_timeout)},
        {"EMULATOR_STOP_TIMEOUT", "--stop-timeout", "how long the guest gets to shut down",
         seconds(d.stop_timeout)},
        {"EMULATOR_DASHBOARD_PORT", "", "host port forwarded to the dashboard",
         std::to_string(d.ports.dashboard)},
        {"EMULATOR_BACKEND_PORT", "", "host port forwarded to the backend",
         std::to_string(d.ports.backend)},
        {"EMULATOR_MINIO_PORT", "", "host port forwarded to MinIO", std::to_string(d.ports.minio)},
        {"EMULATOR_INBUCKET_PORT", "", "host port forwarded to Inbucket",
         std::to_string(d.ports.inbucket)},
        {"EMULATOR_QEMU", "--qemu (qmp --scratch)", "the QEMU binary",
         "qemu-system-<arch> from PATH"},
        {"EMULATOR_REPLY_TIMEOUT", "",
         "the longest wait for one reply from QEMU's monitor or the guest agent",
         seconds(d.reply_timeout)},
        {"EMULATOR_PROVISION_TIMEOUT", "--timeout (build-image)", "the provisioning budget",
         seconds(d.provision_timeout)},
        {"EMULATOR_DISK_SIZE", "", "the disk of a built image (qemu-img size: 12G, 512M)",
         fmt::format("{}G", d.disk_size_bytes >> 30)},
        {"EMULATOR_BUILD_RAM", "--ram (build-image)", "the build VM's memory in MiB",
         "the profile's"},
        {"EMULATOR_BUILD_CPUS", "--cpus (build-image)", "the build VM's vCPUs", "the profile's"},
        {"STACKEMU_PROFILE_PATH", "",
         "':'-separated directories searched for build-image profiles first",
         "the installed share/stackemu/cloud-init, then the source tree"},
        {"XDG_CACHE_HOME", "", "the cache (accelerator verdicts, Debian bases) is its stackemu/",
         "~/.cache"},
    };
}

std::string configuration_text() {
    std::string out =
        "stackemu configuration\n"
        "\n"
        "Every setting has a built-in default and an environment variable; most instance\n"
        "settings also have a flag. When one setting is given in several places, the first of\n"
        "these wins:\n"
        "\n"
        "  1. a command-line flag (--ram 2048)\n"
        "  2. an EMULATOR_* environment variable (EMULATOR_RAM=2048)\n"
        "  3. the instance's record: what the instance was created with, kept in its\n"
        "     directory (`stackemu config show` lists the effective settings and where each\n"
        "     came from; `stackemu config set|reset` changes a stopped instance's record)\n"
        "  4. the image profile's recommended resources (RAM and vCPUs)\n"
        "  5. the built-in default\n"
        "\n"
        "An empty variable (EMULATOR_RAM=) is an error, not the default: unset it instead.\n"
        "Invalid values are refused before anything is created, naming the variable or flag.\n"
        "\n"
        "Settings:\n";
    for (const auto& row : setting_rows()) {
        out += fmt::format("\n  {}\n      {}; default {}\n", row.variables, row.meaning,
                           row.default_text);
        if (!row.flags.empty()) out += fmt::format("      flag: {}\n", row.flags);
    }
    out +=
        "\n"
        "`stackemu COMMAND --help` lists each command's flags; `stackemu help exit-codes` what\n"
        "the commands return.\n";
    return out;
}

// ---- exit codes ----

struct exit_row {
    int code;
    std::string_view commands;
    std::string_view meaning;
};

// The constants are the ones the commands return; only the words are written here.
constexpr exit_row exit_rows[] = {
    {exit_code::ok, "every command", "done; for start and status: the VM is ready and healthy"},
    {exit_code::error, "every command", "the command failed; the message says why"},
    {exit_code::usage, "every command", "bad command line or settings; nothing was done"},
    {exit_code::busy, "every command", "another stackemu command holds the instance"},
    {exit_code::stopped, "status, start", "no VM runs for this instance"},
    {exit_code::not_healthy, "status, start",
     "QEMU runs, but the VM is still starting, a probe fails, or the monitor is busy"},
    {exit_code::paused, "status, start", "the VM's CPUs are stopped"},
    {exit_code::failed, "status, start", "the last start failed or the VM crashed"},
    {exit_code::failed, "build-image, bench", "the build or a benchmark run failed"},
    {exit_code::stopped_cleanly, "stop", "the guest shut down when asked (power-down)"},
    {exit_code::stopped_forcibly, "stop", "a later rung (quit, SIGTERM, SIGKILL) ended QEMU"},
    {snapshot_exit::usage, "snapshot", "bad command line or snapshot name"},
    {snapshot_exit::not_found, "snapshot", "no snapshot of that name (load, delete)"},
    {snapshot_exit::incompatible, "snapshot",
     "load refused: the snapshot does not fit this VM (what differs is listed)"},
    {snapshot_exit::exists, "snapshot", "save: the name is taken (--replace overwrites)"},
    {snapshot_exit::job_failed, "snapshot",
     "QEMU's snapshot job (or qemu-img) failed or did not conclude in time"},
    {snapshot_exit::busy, "snapshot",
     "another stackemu command holds the instance, or QEMU's monitor is busy"},
    {exec_exit::timeout, "exec", "--timeout passed"},
    {exec_exit::failed, "exec", "stackemu could not run the command (VM down, agent mute, busy)"},
    {exec_exit::cannot_run, "exec", "the guest found the program but could not execute it"},
    {exec_exit::not_found, "exec", "no such program in the guest"},
};

std::string exit_codes_text() {
    std::string out =
        "stackemu exit codes\n"
        "\n"
        "Scripts may branch on these; they do not change. `exec` otherwise returns the guest\n"
        "command's own status (0-255, a signal n as 128+n).\n";
    std::string_view group;
    for (const auto& row : exit_rows) {
        if (row.commands != group) {
            group = row.commands;
            out += fmt::format("\n  {}:\n", group);
        }
        out += fmt::format("    {:>3}  {}\n", row.code, row.meaning);
    }
    return out;
}

struct topic_entry {
    help_topic topic;
    std::function<std::string()> text;
};

const std::vector<topic_entry>& topic_table() {
    static const std::vector<topic_entry> table = {
        {{"configuration", "every setting: its variable, flag and default, and their precedence"},
         configuration_text},
        {{"exit-codes", "what each command's exit code means"}, exit_codes_text},
    };
    return table;
}

std::string topic_names() {
    std::string out;
    for (const auto& t : topic_table()) {
        if (!out.empty()) out += ", ";
        out += t.topic.name;
    }
    return out;
}

}  // namespace

const std::vector<help_topic>& help_topics() {
    static const std::vector<help_topic> topics = [] {
        std::vector<help_topic> out;
        for (const auto& t : topic_table())
            out.push_back(t.topic);
        return out;
    }();
    return topics;
}

std::string help_index() {
    std::string out = "stackemu help TOPIC, where TOPIC is one of:\n\n";
    for (const auto& t : help_topics())
        out += fmt::format("  {:<15} {}\n", t.name, t.summary);
    out +=
        "\n"
        "`stackemu help COMMAND` (or `stackemu COMMAND --help`) describes a command;\n"
        "`stackemu --help` lists them. `stackemu completion bash|zsh|fish` prints a shell\n"
        "completion script.\n";
    return out;
}

result<std::string> help_topic_text(std::string_view name) {
    for (const auto& t : topic_table())
        if (t.topic.name == name) return t.text();
    return fail(errc::invalid_argument,
                fmt::format("no help topic '{}'; the topics are: {}", name, topic_names()));
}

}  // namespace stackemu::cli
