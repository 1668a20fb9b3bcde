// Shell completion and help topics: the CLI described from its CLI11 tree, the scripts made
// from that description (every command and option of the real CLI in them), and help topics
// that follow the settings and exit-code tables.
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <catch2/catch.hpp>
#include <functional>
#include <set>
#include <sstream>
#include <string>
#include <vector>

#include "cli/completion.hpp"
#include "cli/help_topics.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/settings.hpp"

using namespace stackemu;
using namespace stackemu::cli;

namespace {

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

// The real CLI, as stackemu-full builds it for `completion` and `help`.
struct whole_cli {
    CLI::App app;
    std::function<int()> action;
    whole_cli() {
        configure_root(app);
        for (const auto& c : all_commands())
            c.add(app, action);
    }
};

// Lines of the script between `start` and the next line that is exactly "}".
std::string function_body(const std::string& script, std::string_view start) {
    const auto at = script.find(start);
    REQUIRE(at != std::string::npos);
    const auto end = script.find("\n}\n", at);
    REQUIRE(end != std::string::npos);
    return script.substr(at, end - at);
}

// The `'key') ...` line of a case table, or "" when there is none.
std::string case_line(const std::string& body, const std::string& key) {
    std::istringstream lines(body);
    const auto prefix = fmt::format("{})", shell_quote(key));
    for (std::string line; std::getline(lines, line);) {
        const auto first = line.find_first_not_of(' ');
        if (first != std::string::npos && line.compare(first, prefix.size(), prefix) == 0)
            return line;
    }
    return "";
}

// Walks CLI11 directly (not describe_cli): every visible command path and its option names.
void each_command(CLI::App& app, const std::string& path,
                  const std::function<void(const std::string&, CLI::App&)>& visit) {
    visit(path, app);
    for (auto* sub : app.get_subcommands(std::function<bool(CLI::App*)>{}))
        if (!sub->get_group().empty())
            each_command(
                *sub, path.empty() ? sub->get_name() : fmt::format("{} {}", path, sub->get_name()),
                visit);
}

std::vector<std::string> option_names(CLI::App& app) {
    std::vector<std::string> out;
    for (auto* o : app.get_options()) {
        for (const auto& s : o->get_snames())
            out.push_back(fmt::format("-{}", s));
        for (const auto& l : o->get_lnames())
            out.push_back(fmt::format("--{}", l));
    }
    return out;
}

const command_spec& find(const command_spec& c, std::string_view name) {
    for (const auto& s : c.subcommands)
        if (s.name == name) return s;
    FAIL("no command " << name);
    return c;
}

const option_spec& option(const command_spec& c, std::string_view name) {
    for (const auto& o : c.options)
        for (const auto& n : o.names)
            if (n == name) return o;
    FAIL("no option " << name << " on " << c.name);
    return c.options.front();
}

}  // namespace

TEST_CASE("completion: the shells by name; another is an error naming the supported ones",
          "[completion]") {
    CHECK(parse_shell("bash") == shell_kind::bash);
    CHECK(parse_shell("zsh") == shell_kind::zsh);
    CHECK(parse_shell("fish") == shell_kind::fish);
    const auto tcsh = parse_shell("tcsh");
    REQUIRE_FALSE(tcsh);
    CHECK(tcsh.error().code == errc::invalid_argument);
    CHECK(contains(tcsh.error().message, "'tcsh'"));
    CHECK(contains(tcsh.error().message, "bash, zsh, fish"));
}

TEST_CASE("completion: words are single-quoted, a quote in them closed and escaped",
          "[completion]") {
    CHECK(shell_quote("") == "''");
    CHECK(shell_quote("--ram") == "'--ram'");
    CHECK(shell_quote("it's $HOME `x`") == "'it'\\''s $HOME `x`'");
}

TEST_CASE("completion: the description reads flags, values, choices, hints and hidden commands",
          "[completion]") {
    CLI::App app{"demo"};
    std::string text;
    bool flag = false;
    std::vector<std::string> many;
    auto* sub = app.add_subcommand("go", "go somewhere");
    sub->add_flag("-q,--quiet", flag, "quiet");
    sub->add_option("--image", text, "a file");
    sub->add_option("--mode", text, "a mode")->check(CLI::IsMember({"prefix", "exact"}));
    sub->add_option("--accel", text, "accel")->check(offers_accel_modes());
    sub->add_option("--name", text, "instance")->check(offers_instances());
    sub->add_option("NAME", many, "snapshots")->check(offers_snapshots());
    auto* hidden = app.add_subcommand("__secret", "for scripts");
    hidden->group("");

    const auto d = describe_cli(app);
    REQUIRE(d.subcommands.size() == 1);
    const auto& go = d.subcommands.front();
    CHECK(go.name == "go");
    CHECK(go.description == "go somewhere");
    CHECK(option(go, "--quiet").names == std::vector<std::string>{"-q", "--quiet"});
    CHECK(option(go, "-q").value == value_kind::none);
    CHECK(option(go, "--image").value == value_kind::free);
    CHECK(option(go, "--mode").value == value_kind::choices);
    CHECK(option(go, "--mode").choices == std::vector<std::string>{"prefix", "exact"});
    CHECK(option(go, "--accel").choices == std::vector<std::string>{"auto", "kvm", "hvf", "tcg"});
    CHECK(option(go, "--name").value == value_kind::instances);
    CHECK(option(go, "--help").value == value_kind::none);
    REQUIRE(go.positionals.size() == 1);
    CHECK(go.positionals.front().value == value_kind::snapshots);
}

TEST_CASE("completion: the hints change no value and no help line of a plain option",
          "[completion]") {
    CLI::App app{"demo"};
    std::string name, accel;
    app.add_option("--name", name, "instance")->check(offers_instances());
    app.add_option("--accel", accel, "accel")->check(offers_accel_modes());
    const char* argv[] = {"demo", "--name", "any thing", "--accel", "not-one-of-them"};
    REQUIRE_NOTHROW(app.parse(5, const_cast<char**>(argv)));
    CHECK(name == "any thing");
    CHECK(accel == "not-one-of-them");  // the command's own check, with its message, decides
    CHECK(contains(app.help(), "--accel TEXT:{auto,kvm,hvf,tcg}"));
}

TEST_CASE("completion: the bash script has every command and every option of the CLI",
          "[completion]") {
    whole_cli cli;
    const auto script = bash_completion(describe_cli(cli.app), "stackemu");
    const auto subcommands = function_body(script, "_stackemu_subcommands() {");
    const auto options = function_body(script, "_stackemu_options() {");
    int commands = 0;
    each_command(cli.app, "", [&](const std::string& path, CLI::App& app) {
        ++commands;
        INFO("command path '" << path << "'");
        const auto listed = case_line(options, path);
        for (const auto& name : option_names(app)) {
            INFO(name);
            CHECK(contains(listed, shell_quote(name)));
        }
        const auto subs = case_line(subcommands, path);
        for (auto* sub : app.get_subcommands(std::function<bool(CLI::App*)>{})) {
            INFO(sub->get_name());
            CHECK(contains(subs, shell_quote(sub->get_name())) == !sub->get_group().empty());
        }
    });
    CHECK(commands > 20);
    CHECK_FALSE(contains(subcommands, "__complete"));
    CHECK(contains(script, "\ncomplete -F _stackemu stackemu\n"));
}

TEST_CASE("completion: values by kind in the bash tables", "[completion]") {
    whole_cli cli;
    const auto d = describe_cli(cli.app);
    const auto script = bash_completion(d, "stackemu");
    const auto values = function_body(script, "_stackemu_option_value() {");
    const auto positionals = function_body(script, "_stackemu_positional() {");
    CHECK(contains(case_line(values, "start|--accel"),
                   "_se_kind=choices; _se_words=('auto' 'kvm' 'hvf' 'tcg')"));
    CHECK(contains(case_line(values, "start|--arch"), "_se_words=('amd64' 'arm64')"));
    CHECK(contains(case_line(values, "start|--name"), "_se_kind=instances"));
    CHECK(contains(case_line(values, "snapshot load|--name"), "_se_kind=instances"));
    CHECK(contains(case_line(values, "start|--image"), "_se_kind=free"));
    CHECK(contains(case_line(values, "logs|-n"), "_se_kind=free"));
    CHECK(case_line(values, "start|--json").empty());  // a flag takes no value
    CHECK(contains(case_line(positionals, "snapshot load"), "_se_kind=snapshots"));
    CHECK(contains(case_line(positionals, "snapshot delete"), "_se_kind=snapshots"));
    CHECK(contains(case_line(positionals, "snapshot save"), "_se_kind=free"));
    CHECK(contains(case_line(positionals, "completion"), "_se_words=('bash' 'zsh' 'fish')"));
    CHECK(contains(case_line(positionals, "help"), "'configuration'"));
    // The dynamic names come from the program, with errors kept out of the prompt.
    CHECK(contains(script, "__complete instances 2>/dev/null"));
    CHECK(contains(script, "__complete snapshots --name \"$name\" 2>/dev/null"));

    const auto& start = find(d, "start");
    CHECK(option(start, "--accel").value == value_kind::choices);
    const auto& load = find(find(d, "snapshot"), "load");
    REQUIRE(load.positionals.size() == 1);
    CHECK(load.positionals.front().value == value_kind::snapshots);
}

TEST_CASE("completion: zsh and fish scripts name every command and long option", "[completion]") {
    whole_cli cli;
    const auto d = describe_cli(cli.app);
    const auto zsh = completion_script(shell_kind::zsh, d, "stackemu");
    const auto fish = completion_script(shell_kind::fish, d, "stackemu");
    CHECK(zsh.starts_with("#compdef stackemu\n"));
    CHECK(contains(zsh, "compdef _stackemu stackemu"));
    CHECK(contains(fish, "complete -c stackemu -f\n"));
    each_command(cli.app, "", [&](const std::string& path, CLI::App& app) {
        INFO("command path '" << path << "'");
        CHECK(contains(zsh, fmt::format("{})", shell_quote(path))));
        CHECK(contains(fish, shell_quote(fmt::format("__stackemu_at {}", shell_quote(path)))));
        for (auto* o : app.get_options())
            for (const auto& l : o->get_lnames()) {
                INFO(l);
                CHECK(contains(zsh, shell_quote(fmt::format("--{}", l))));
                CHECK(contains(fish, fmt::format("-l {}", shell_quote(l))));
            }
    });
    CHECK(contains(fish,
                   R"(-l 'accel' -r -f -a ''\''auto'\'' '\''kvm'\'' '\''hvf'\'' '\''tcg'\''')"));
    CHECK(contains(fish, "-l 'name' -r -f -a '(__stackemu_values instances)'"));
}

TEST_CASE("help: the index lists the topics; an unknown topic is an error naming them", "[help]") {
    const auto index = help_index();
    std::set<std::string> names;
    for (const auto& t : help_topics()) {
        names.insert(std::string(t.name));
        CHECK(contains(index, t.name));
        CHECK(help_topic_text(t.name).has_value());
    }
    CHECK(names == std::set<std::string>{"configuration", "exit-codes"});
    const auto unknown = help_topic_text("nope");
    REQUIRE_FALSE(unknown);
    CHECK(unknown.error().code == errc::invalid_argument);
    CHECK(contains(unknown.error().message, "'nope'"));
    CHECK(contains(unknown.error().message, "configuration, exit-codes"));
}

TEST_CASE("help configuration: every variable the settings read, with precedence and defaults",
          "[help]") {
    const auto text = help_topic_text("configuration").value();
    std::vector<std::string> asked;
    const lifecycle::env_lookup recorder =
        [&](std::string_view name) -> std::optional<std::string> {
        asked.emplace_back(name);
        if (name == "HOME") return "/home/dev";
        return std::nullopt;
    };
    REQUIRE(lifecycle::from_environment(recorder, {lifecycle::architecture::amd64, 2}));
    CHECK(asked.size() > 15);
    for (const auto& name : asked) {
        if (name == "HOME") continue;
        INFO(name);
        CHECK(contains(text, name));
    }
    // A flag whose help names a variable is listed with it.
    whole_cli cli;
    each_command(cli.app, "", [&](const std::string&, CLI::App& app) {
        for (auto* o : app.get_options()) {
            const auto& d = o->get_description();
            const auto at = d.find("EMULATOR_");
            if (at == std::string::npos) continue;
            const auto var =
                d.substr(at, d.find_first_not_of("ABCDEFGHIJKLMNOPQRSTUVWXYZ_", at) - at);
            INFO(o->get_name() << " mentions " << var);
            CHECK(contains(text, var));
        }
    });
    const lifecycle::settings defaults;
    for (const auto* step : {"1. a command-line flag", "2. an EMULATOR_* environment variable",
                             "3. the instance's record", "4. the image profile's recommended",
                             "5. the built-in default"})
        CHECK(contains(text, step));
    CHECK(contains(text, "stackemu config show"));
    CHECK(contains(
        text, fmt::format("default {} (or the image profile's recommendation)", defaults.ram_mib)));
    CHECK(contains(text, fmt::format("default {} s", defaults.ready_timeout.count())));
    CHECK(contains(text, "flag: --accel"));
}

TEST_CASE("help exit-codes: the codes the commands return, by command", "[help]") {
    const auto text = help_topic_text("exit-codes").value();
    for (const auto* line : {"      0  done", "      2  bad command line or settings",
                             "      7  another stackemu command holds the instance",
                             "      3  no VM runs for this instance", "  snapshot:\n",
                             "    127  no such program in the guest"})
        CHECK(contains(text, line));
}
