// Shell completion as a user gets it: the script `stackemu completion bash` prints, sourced in
// a plain `bash --norc` (no bash-completion package), registers itself, and its function,
// called the way bash calls it (COMP_WORDS, COMP_CWORD), offers commands, options, fixed
// values, and the names of real instances and snapshots (two instances on the fake QEMU).
// Also `stackemu help` and the errors of `completion` and `help`.
#include <algorithm>
#include <catch2/catch.hpp>
#include <sstream>
#include <string>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "lifecycle/process.hpp"
#include "support/cli_harness.hpp"

namespace {

using namespace stackemu::test::cli;
namespace exit_code = stackemu::lifecycle::exit_code;

const std::vector<std::string> start_args{"start", "--image", "{image}", "--accel", "tcg",
                                          "--ram", "512",     "--cpus",  "1"};

// Sources the script ($1), then calls its completion function for the words after $2 (the
// program, as COMP_WORDS[0]) with the cursor on the last one, and prints the candidates.
constexpr const char* complete_driver = R"(
source "$1" || exit 90
program=$2
shift 2
COMP_WORDS=("$program" "$@")
COMP_CWORD=$((${#COMP_WORDS[@]} - 1))
COMP_LINE="${COMP_WORDS[*]}"
COMP_POINT=${#COMP_LINE}
COMPREPLY=()
function=$(complete -p stackemu | sed -n 's/.*-F \([^ ]*\) .*/\1/p')
"$function" stackemu "${COMP_WORDS[COMP_CWORD]}" "${COMP_WORDS[COMP_CWORD - 1]}"
printf '%s\n' "${COMPREPLY[@]}"
)";

struct bash_result {
    std::vector<std::string> lines;
    std::string err;
    int code = -1;
};

std::vector<std::string> split_lines(const std::string& text) {
    std::vector<std::string> out;
    std::istringstream in(text);
    for (std::string line; std::getline(in, line);)
        if (!line.empty()) out.push_back(line);
    return out;
}

// bash --norc with exactly `env` (the sandbox's), never a login shell's settings.
bash_result run_bash(const std::vector<std::string>& env, const std::string& script,
                     const std::vector<std::string>& args) {
    std::vector<std::string> argv{"env", "-i"};
    argv.insert(argv.end(), env.begin(), env.end());
    argv.insert(argv.end(), {"bash", "--norc", "--noprofile", "-c", script, "bash"});
    argv.insert(argv.end(), args.begin(), args.end());
    auto r = stackemu::lifecycle::run_tool(argv);
    REQUIRE(r);
    return {split_lines(r->out), r->err, r->exit_code};
}

std::vector<std::string> sorted(std::vector<std::string> v) {
    std::sort(v.begin(), v.end());
    return v;
}

bool has(const std::vector<std::string>& v, std::string_view word) {
    return std::find(v.begin(), v.end(), word) != v.end();
}

}  // namespace

TEST_CASE("completion: the bash script completes commands, options, values, instances, snapshots",
          "[cli][completion]") {
    sandbox sb;
    auto alpha_args = start_args;
    alpha_args.insert(alpha_args.end(), {"--name", "alpha"});
    auto alpha = sb.run(alpha_args);
    INFO(alpha.err);
    REQUIRE(alpha.code == exit_code::ok);
    const auto other = free_ports();
    const env_overrides beta_ports{{"EMULATOR_DASHBOARD_PORT", std::to_string(other.dashboard)},
                                   {"EMULATOR_BACKEND_PORT", std::to_string(other.backend)},
                                   {"EMULATOR_MINIO_PORT", std::to_string(other.minio)},
                                   {"EMULATOR_INBUCKET_PORT", std::to_string(other.inbucket)}};
    auto beta_args = start_args;
    beta_args.insert(beta_args.end(), {"--name", "beta"});
    auto beta = sb.run(beta_args, beta_ports);
    INFO(beta.err);
    REQUIRE(beta.code == exit_code::ok);
    auto saved = sb.run({"snapshot", "save", "ready-1", "--name", "alpha"});
    INFO(saved.err);
    REQUIRE(saved.code == exit_code::ok);

    auto generated = sb.run({"completion", "bash"});
    REQUIRE(generated.code == exit_code::ok);
    CHECK(generated.err.empty());
    const auto script = sb.dir / "stackemu.bash";
    write_text(script, generated.out);
    const auto env = sb.environment({});
    const auto complete = [&](std::vector<std::string> words) {
        std::vector<std::string> args{script.string(), STACKEMU_CLI_EXE};
        args.insert(args.end(), words.begin(), words.end());
        auto r = run_bash(env, complete_driver, args);
        INFO(r.err);
        CHECK(r.code == 0);
        CHECK(r.err.empty());
        return r.lines;
    };
    using words = std::vector<std::string>;

    // complete -p shows the registration.
    auto registered = run_bash(env, "source \"$1\" && complete -p stackemu", {script.string()});
    CHECK(registered.code == 0);
    CHECK(registered.lines == words{"complete -F _stackemu stackemu"});

    // Commands after `stackemu `, the hidden one left out.
    const auto commands = complete({""});
    for (const auto* c : {"start", "stop", "status", "list", "snapshot", "build-image", "exec",
                          "completion", "help"})
        CHECK(has(commands, c));
    CHECK_FALSE(has(commands, "__complete"));
    CHECK(sorted(complete({"st"})) == words{"start", "status", "stop"});

    // Options after `stackemu start --`.
    const auto options = complete({"start", "--"});
    for (const auto* o : {"--name", "--ram", "--cpus", "--accel", "--arch", "--image", "--json",
                          "--help", "--share", "--ready-timeout"})
        CHECK(has(options, o));
    CHECK_FALSE(has(options, "--follow"));  // logs's, not start's
    CHECK(complete({"start", "--ra"}) == words{"--ram"});

    // Fixed values.
    CHECK(complete({"start", "--accel", ""}) == words{"auto", "kvm", "hvf", "tcg"});
    CHECK(complete({"start", "--accel", "k"}) == words{"kvm"});
    CHECK(complete({"start", "--quiet", "--arch", ""}) == words{"amd64", "arm64"});
    CHECK(complete({"completion", ""}) == words{"bash", "zsh", "fish"});

    // Instance names after --name (bash splits --name=a into --name = a).
    CHECK(complete({"status", "--name", ""}) == words{"alpha", "beta"});
    CHECK(complete({"stop", "--name", "b"}) == words{"beta"});
    CHECK(complete({"stop", "--name", "=", "a"}) == words{"alpha"});
    CHECK(complete({"snapshot", "save", "--name", ""}) == words{"alpha", "beta"});

    // Snapshot names after snapshot load|delete, of the instance --name names.
    CHECK(complete({"snapshot", ""}) == words{"save", "load", "delete", "list"});
    CHECK(complete({"snapshot", "load", "--name", "alpha", ""}) == words{"ready-1"});
    CHECK(complete({"snapshot", "delete", "--name", "=", "alpha", "r"}) == words{"ready-1"});
    CHECK(complete({"snapshot", "load", "--name", "beta", ""}).empty());
    CHECK(complete({"snapshot", "load", ""}).empty());  // the default instance has none

    // Settings that do not parse: no names, no message in the prompt.
    auto bad = run_bash(sb.environment({{"EMULATOR_RUN_DIR", "relative/run"}}), complete_driver,
                        {script.string(), STACKEMU_CLI_EXE, "status", "--name", ""});
    CHECK(bad.code == 0);
    CHECK(bad.err.empty());
    CHECK(bad.lines.empty());

    // What the scripts ask for, directly.
    auto instances = sb.run({"__complete", "instances"});
    CHECK(instances.code == 0);
    CHECK(instances.out == "alpha\nbeta\n");
    auto snapshots = sb.run({"__complete", "snapshots", "--name", "alpha"});
    CHECK(snapshots.out == "ready-1\n");

    CHECK(sb.run({"stop", "--name", "alpha"}).code == exit_code::stopped_cleanly);
    CHECK(sb.run({"stop", "--name", "beta"}, beta_ports).code == exit_code::stopped_cleanly);
}

TEST_CASE("completion and help: the other shells, help topics, and bad words",
          "[cli][completion]") {
    sandbox sb;
    for (const auto* shell : {"zsh", "fish"}) {
        auto r = sb.run({"completion", shell});
        INFO(shell << ": " << r.err);
        CHECK(r.code == exit_code::ok);
        CHECK(r.out.size() > 1000);
        CHECK(contains(r.out, "--ready-timeout"));
    }
    auto tcsh = sb.run({"completion", "tcsh"});
    CHECK(tcsh.code == exit_code::usage);
    CHECK(tcsh.out.empty());
    CHECK(contains(tcsh.err, "'tcsh'"));
    CHECK(contains(tcsh.err, "bash, zsh, fish"));

    auto index = sb.run({"help"});
    CHECK(index.code == exit_code::ok);
    CHECK(contains(index.out, "configuration"));
    CHECK(contains(index.out, "exit-codes"));
    auto config = sb.run({"help", "configuration"});
    CHECK(config.code == exit_code::ok);
    CHECK(contains(config.out, "EMULATOR_RAM"));
    auto codes = sb.run({"help", "exit-codes"});
    CHECK(codes.code == exit_code::ok);
    CHECK(contains(codes.out, "another stackemu command holds the instance"));
    auto command = sb.run({"help", "snapshot", "load"});
    CHECK(command.code == exit_code::ok);
    CHECK(contains(command.out, "stackemu snapshot load"));
    CHECK(contains(command.out, "--force"));
    auto unknown = sb.run({"help", "nope"});
    CHECK(unknown.code == exit_code::usage);
    CHECK(unknown.out.empty());
    CHECK(contains(unknown.err, "'nope'"));
    CHECK(contains(unknown.err, "configuration, exit-codes"));
    CHECK(contains(unknown.err, "start"));
}
