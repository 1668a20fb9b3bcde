#include "cli/completion.hpp"

#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <functional>
#include <ranges>

#include "lifecycle/settings.hpp"

namespace stackemu::cli {
namespace {

constexpr std::string_view instances_hint = "stackemu:instances";
constexpr std::string_view snapshots_hint = "stackemu:snapshots";

// CLI11 keeps an option's validators private; get_validator(index) throws past the last one.
std::vector<const CLI::Validator*> validators_of(CLI::Option& option) {
    std::vector<const CLI::Validator*> out;
    for (int i = 0;; ++i) {
        try {
            out.push_back(option.get_validator(i));
        } catch (const CLI::OptionNotFound&) {
            return out;
        }
    }
}

// "{a,b,c}", the form CLI::IsMember and offers_choices describe their sets in.
std::optional<std::vector<std::string>> choices_in(std::string_view description) {
    if (description.size() < 2 || description.front() != '{' || description.back() != '}')
        return std::nullopt;
    std::vector<std::string> out;
    for (const auto part : std::views::split(description.substr(1, description.size() - 2), ','))
        out.emplace_back(part.begin(), part.end());
    return out;
}

option_spec describe_option(CLI::Option& option) {
    option_spec spec;
    for (const auto& n : option.get_snames())
        spec.names.push_back(fmt::format("-{}", n));
    for (const auto& n : option.get_lnames())
        spec.names.push_back(fmt::format("--{}", n));
    spec.description = option.get_description();
    spec.value = option.get_items_expected_max() == 0 ? value_kind::none : value_kind::free;
    if (spec.value == value_kind::none) return spec;
    for (const auto* v : validators_of(option)) {
        if (v->get_name() == instances_hint) {
            spec.value = value_kind::instances;
        } else if (v->get_name() == snapshots_hint) {
            spec.value = value_kind::snapshots;
        } else if (auto choices = choices_in(v->get_description())) {
            spec.value = value_kind::choices;
            spec.choices = std::move(*choices);
        }
    }
    return spec;
}

// ---- Text helpers shared by the generators ----

std::string quoted_words(const std::vector<std::string>& words) {
    std::string out;
    for (const auto& w : words) {
        if (!out.empty()) out += ' ';
        out += shell_quote(w);
    }
    return out;
}

std::string joined_path(const std::string& parent, const std::string& name) {
    return parent.empty() ? name : fmt::format("{} {}", parent, name);
}

// Calls `visit(path, command)` for the root ("") and every command under it, parents first.
void for_each_command(const command_spec& c, const std::string& path,
                      const std::function<void(const std::string&, const command_spec&)>& visit) {
    visit(path, c);
    for (const auto& sub : c.subcommands)
        for_each_command(sub, joined_path(path, sub.name), visit);
}

std::string_view kind_name(value_kind k) {
    switch (k) {
        case value_kind::none:
            return "none";
        case value_kind::free:
            return "free";
        case value_kind::choices:
            return "choices";
        case value_kind::instances:
            return "instances";
        case value_kind::snapshots:
            return "snapshots";
    }
    return "none";
}

// The kind of a command's positional arguments: the first one that says more than "free".
const option_spec* positional_of(const command_spec& c) {
    for (const auto& p : c.positionals)
        if (p.value != value_kind::free) return &p;
    return c.positionals.empty() ? nullptr : &c.positionals.front();
}

// The tables bash and zsh share (`case` reads the same in both): for a command path, its
// subcommands and options; for a path and an option, what its value is; for a path, what its
// positional arguments are. Results go to the caller's locals _se_words and _se_kind.
std::string posix_tables(const command_spec& root, std::string_view fn) {
    std::string subcommands, options, values, positionals;
    for_each_command(root, "", [&](const std::string& path, const command_spec& c) {
        const auto key = shell_quote(path);
        if (!c.subcommands.empty()) {
            std::vector<std::string> names;
            for (const auto& s : c.subcommands)
                names.push_back(s.name);
            subcommands += fmt::format("        {}) _se_words=({}) ;;\n", key, quoted_words(names));
        }
        std::vector<std::string> names;
        for (const auto& o : c.options) {
            names.insert(names.end(), o.names.begin(), o.names.end());
            if (o.value == value_kind::none) continue;
            for (const auto& n : o.names) {
                values +=
                    fmt::format("        {}) _se_kind={}",
                                shell_quote(fmt::format("{}|{}", path, n)), kind_name(o.value));
                if (o.value == value_kind::choices)
                    values += fmt::format("; _se_words=({})", quoted_words(o.choices));
                values += " ;;\n";
            }
        }
        options += fmt::format("        {}) _se_words=({}) ;;\n", key, quoted_words(names));
        if (const auto* p = positional_of(c)) {
            positionals += fmt::format("        {}) _se_kind={}", key, kind_name(p->value));
            if (p->value == value_kind::choices)
                positionals += fmt::format("; _se_words=({})", quoted_words(p->choices));
            positionals += " ;;\n";
        }
    });
    std::string out;
    out += fmt::format(
        "# The subcommands of the command path $1 ('' is {0} itself, then e.g. 'snapshot').\n"
        "{1}_subcommands() {{\n    _se_words=()\n    case $1 in\n{2}    esac\n}}\n\n",
        fn.substr(1), fn, subcommands);
    out += fmt::format(
        "# The options of the command path $1.\n"
        "{0}_options() {{\n    _se_words=()\n    case $1 in\n{1}    esac\n}}\n\n",
        fn, options);
    out += fmt::format(
        "# What the value of option $2 of the command path $1 is: none (a flag), free, choices\n"
        "# (then in _se_words), instances or snapshots.\n"
        "{0}_option_value() {{\n    _se_kind=none\n    _se_words=()\n    case \"$1|$2\" in\n"
        "{1}    esac\n}}\n\n",
        fn, values);
    out += fmt::format(
        "# What the positional arguments of the command path $1 are (none when it takes none).\n"
        "{0}_positional() {{\n    _se_kind=none\n    _se_words=()\n    case $1 in\n{1}    esac\n"
        "}}\n\n",
        fn, positionals);
    // What both shells do with the tables; each defines {fn}_add and {fn}_value, and the
    // caller's locals cur, prev, cmd_path and name.
    out += fmt::format(R"sh(# Extends the caller's cmd_path when $1 is a subcommand of it.
{0}_enter() {{
    local w
    {0}_subcommands "$cmd_path"
    for w in "${{_se_words[@]}}"; do
        if [[ $w == "$1" ]]; then
            cmd_path=${{cmd_path:+$cmd_path }}$1
            return 0
        fi
    done
    return 1
}}

# Offers what may stand at the cursor ($cur, after $prev) in the command path: an option's
# value, options, subcommands, or the positional arguments (else the options).
{0}_offer() {{
    if [[ $prev == -* ]]; then
        {0}_option_value "$cmd_path" "$prev"
        if [[ $_se_kind != none ]]; then
            {0}_value "$_se_kind"
            return 0
        fi
    fi
    if [[ $cur == -* ]]; then
        {0}_options "$cmd_path"
        {0}_add "${{_se_words[@]}}"
        return 0
    fi
    {0}_subcommands "$cmd_path"
    if ((${{#_se_words[@]}} > 0)); then
        {0}_add "${{_se_words[@]}}"
        return 0
    fi
    {0}_positional "$cmd_path"
    if [[ $_se_kind != none ]]; then
        {0}_value "$_se_kind"
    else
        {0}_options "$cmd_path"
        {0}_add "${{_se_words[@]}}"
    fi
    return 0
}}

)sh",
                       fn);
    return out;
}

}  // namespace

CLI::Validator offers_choices(const std::vector<std::string>& choices) {
    std::string description = "{";
    for (const auto& c : choices) {
        if (description.size() > 1) description += ',';
        description += c;
    }
    description += '}';
    return CLI::Validator([](std::string&) { return std::string{}; }, description,
                          "stackemu:choices");
}

CLI::Validator offers_instances() {
    return CLI::Validator([](std::string&) { return std::string{}; }, "",
                          std::string(instances_hint));
}

CLI::Validator offers_snapshots() {
    return CLI::Validator([](std::string&) { return std::string{}; }, "",
                          std::string(snapshots_hint));
}

CLI::Validator offers_architectures() {
    using lifecycle::architecture;
    return offers_choices(
        {std::string(to_string(architecture::amd64)), std::string(to_string(architecture::arm64))});
}

CLI::Validator offers_accel_modes() {
    using lifecycle::accel_mode;
    std::vector<std::string> names;
    for (auto m : {accel_mode::automatic, accel_mode::kvm, accel_mode::hvf, accel_mode::tcg})
        names.emplace_back(to_string(m));
    return offers_choices(names);
}

command_spec describe_cli(CLI::App& app) {
    command_spec spec;
    spec.name = app.get_name();
    spec.description = app.get_description();
    for (CLI::Option* option : app.get_options()) {
        auto o = describe_option(*option);
        (o.names.empty() ? spec.positionals : spec.options).push_back(std::move(o));
    }
    for (CLI::App* sub : app.get_subcommands(std::function<bool(CLI::App*)>{}))
        if (!sub->get_group().empty()) spec.subcommands.push_back(describe_cli(*sub));
    return spec;
}

result<shell_kind> parse_shell(std::string_view name) {
    if (name == "bash") return shell_kind::bash;
    if (name == "zsh") return shell_kind::zsh;
    if (name == "fish") return shell_kind::fish;
    return fail(errc::invalid_argument,
                fmt::format("no completion for the shell '{}'; the supported shells are {}", name,
                            supported_shells));
}

std::string shell_quote(std::string_view text) {
    std::string out = "'";
    for (char c : text) {
        if (c == '\'')
            out += "'\\''";
        else
            out += c;
    }
    out += '\'';
    return out;
}

std::string bash_completion(const command_spec& root, std::string_view program) {
    const std::string fn = fmt::format("_{}", program);
    std::string out = fmt::format(
        "# bash completion for {0}, generated by `{0} completion bash` from its command\n"
        "# definitions. Enable with: source <({0} completion bash)\n\n",
        program);
    out += posix_tables(root, fn);
    out += fmt::format(R"bash(# Adds the words of "$@" that start with $cur to COMPREPLY.
{0}_add() {{
    local w
    for w in "$@"; do
        [[ $w == "$cur"* ]] && COMPREPLY+=("$w")
    done
}}

# Completes a value of kind $1 (choices are in _se_words). Instance and snapshot names come
# from the program itself; when it fails, there are none, and nothing is printed.
{0}_value() {{
    local -a found=()
    case $1 in
        choices) {0}_add "${{_se_words[@]}}" ;;
        instances)
            mapfile -t found < <("${{COMP_WORDS[0]}}" __complete instances 2>/dev/null)
            {0}_add "${{found[@]}}" ;;
        snapshots)
            if [[ -n $name ]]; then
                mapfile -t found < <("${{COMP_WORDS[0]}}" __complete snapshots --name "$name" 2>/dev/null)
            else
                mapfile -t found < <("${{COMP_WORDS[0]}}" __complete snapshots 2>/dev/null)
            fi
            {0}_add "${{found[@]}}" ;;
        free)
            compopt -o filenames 2>/dev/null
            mapfile -t COMPREPLY < <(compgen -f -- "$cur") ;;
    esac
}}

{0}() {{
    local cur=${{COMP_WORDS[COMP_CWORD]}} prev='' cmd_path='' name='' word i
    local -a _se_words=()
    local _se_kind=none
    COMPREPLY=()
    ((COMP_CWORD > 0)) && prev=${{COMP_WORDS[COMP_CWORD - 1]}}
    # bash splits --opt=value into '--opt' '=' 'value'.
    if [[ $cur == = && $prev == -* ]]; then
        cur=''
    elif [[ $prev == = ]] && ((COMP_CWORD > 1)); then
        prev=${{COMP_WORDS[COMP_CWORD - 2]}}
    fi
    # The words before the cursor: subcommands extend the command path, options that take a
    # value skip it (remembering --name for snapshot names).
    for ((i = 1; i < COMP_CWORD; i++)); do
        word=${{COMP_WORDS[i]}}
        case $word in
            -*)
                {0}_option_value "$cmd_path" "$word"
                [[ $_se_kind == none ]] && continue
                [[ ${{COMP_WORDS[i + 1]}} == = ]] && ((i++))
                ((i + 1 < COMP_CWORD)) || break
                ((i++))
                [[ $word == --name ]] && name=${{COMP_WORDS[i]}}
                ;;
            *) {0}_enter "$word" ;;
        esac
    done
    {0}_offer
}}

complete -F {0} {1}
)bash",
                       fn, program);
    return out;
}

std::string zsh_completion(const command_spec& root, std::string_view program) {
    const std::string fn = fmt::format("_{}", program);
    std::string out = fmt::format(
        "#compdef {0}\n"
        "# zsh completion for {0}, generated by `{0} completion zsh` from its command\n"
        "# definitions. Install as _{0} in a directory on $fpath, or: source <({0} completion "
        "zsh)\n\n",
        program);
    out += posix_tables(root, fn);
    out += fmt::format(
        R"zsh({0}_add() {{
    compadd -- "$@"
}}

# Offers values of kind $1 (choices are in _se_words). Instance and snapshot names come
# from the program itself; when it fails, there are none, and nothing is printed.
{0}_value() {{
    local -a found
    case $1 in
        choices) compadd -- "${{_se_words[@]}}" ;;
        instances)
            found=(${{(f)"$("${{words[1]}}" __complete instances 2>/dev/null)"}})
            compadd -- "${{found[@]}}" ;;
        snapshots)
            if [[ -n $name ]]; then
                found=(${{(f)"$("${{words[1]}}" __complete snapshots --name "$name" 2>/dev/null)"}})
            else
                found=(${{(f)"$("${{words[1]}}" __complete snapshots 2>/dev/null)"}})
            fi
            compadd -- "${{found[@]}}" ;;
        free) _files ;;
    esac
}}

{0}() {{
    local cur=${{words[CURRENT]}} prev=${{words[CURRENT - 1]}} cmd_path='' name='' word
    local -i i
    local -a _se_words
    local _se_kind=none
    # The words before the cursor: subcommands extend the command path, options that take a
    # value skip it (remembering --name for snapshot names).
    for ((i = 2; i < CURRENT; i++)); do
        word=${{words[i]}}
        case $word in
            -*=*)
                [[ ${{word%%=*}} == --name ]] && name=${{word#*=}} ;;
            -*)
                {0}_option_value "$cmd_path" "$word"
                [[ $_se_kind == none ]] && continue
                ((i + 1 < CURRENT)) || break
                ((i++))
                [[ $word == --name ]] && name=${{words[i]}}
                ;;
            *) {0}_enter "$word" ;;
        esac
    done
    if [[ $cur == -*=* ]]; then
        {0}_option_value "$cmd_path" "${{cur%%=*}}"
        compset -P '*='
        [[ $_se_kind != none ]] && {0}_value "$_se_kind"
        return 0
    fi
    {0}_offer
}}

# Sourced or eval'd: register. Autoloaded from $fpath: complete now.
if [[ $funcstack[1] == {0} ]]; then
    {0} "$@"
else
    compdef {0} {1}
fi
)zsh",
        fn, program);
    return out;
}

std::string fish_completion(const command_spec& root, std::string_view program) {
    const std::string fn = fmt::format("__{}", program);
    std::string subcommands, takes_value, lines;
    for_each_command(root, "", [&](const std::string& path, const command_spec& c) {
        const auto at = shell_quote(fmt::format("{}_at {}", fn, shell_quote(path)));
        if (!c.subcommands.empty()) {
            std::vector<std::string> names;
            for (const auto& s : c.subcommands) {
                names.push_back(s.name);
                lines += fmt::format("complete -c {} -n {} -f -a {} -d {}\n", program, at,
                                     shell_quote(s.name), shell_quote(s.description));
            }
            subcommands += fmt::format("        case {}\n            printf '%s\\n' {}\n",
                                       shell_quote(path), quoted_words(names));
        }
        for (const auto& o : c.options) {
            std::string line = fmt::format("complete -c {} -n {}", program, at);
            for (const auto& n : o.names) {
                if (n.starts_with("--"))
                    line += fmt::format(" -l {}", shell_quote(n.substr(2)));
                else
                    line += fmt::format(" -s {}", shell_quote(n.substr(1)));
                if (o.value != value_kind::none)
                    takes_value += fmt::format(" {}", shell_quote(fmt::format("{}|{}", path, n)));
            }
            switch (o.value) {
                case value_kind::none:
                    break;
                case value_kind::free:
                    line += " -r -F";
                    break;
                case value_kind::choices:
                    line += fmt::format(" -r -f -a {}", shell_quote(quoted_words(o.choices)));
                    break;
                case value_kind::instances:
                case value_kind::snapshots:
                    line += fmt::format(
                        " -r -f -a {}",
                        shell_quote(fmt::format("({}_values {})", fn, kind_name(o.value))));
                    break;
            }
            lines += fmt::format("{} -d {}\n", line, shell_quote(o.description));
        }
        if (const auto* p = positional_of(c)) {
            switch (p->value) {
                case value_kind::none:
                    break;
                case value_kind::free:
                    lines += fmt::format("complete -c {} -n {} -F\n", program, at);
                    break;
                case value_kind::choices:
                    lines += fmt::format("complete -c {} -n {} -f -a {}\n", program, at,
                                         shell_quote(quoted_words(p->choices)));
                    break;
                case value_kind::instances:
                case value_kind::snapshots:
                    lines += fmt::format(
                        "complete -c {} -n {} -f -a {}\n", program, at,
                        shell_quote(fmt::format("({}_values {})", fn, kind_name(p->value))));
                    break;
            }
        }
    });
    return fmt::format(
        R"fish(# fish completion for {0}, generated by `{0} completion fish` from its command
# definitions. Install as {0}.fish in ~/.config/fish/completions, or: {0} completion fish | source

# The subcommands of a command path ('' is {0} itself, then e.g. 'snapshot').
function {1}_subcommands --argument-names cmd_path
    switch $cmd_path
{2}    end
end

# Whether option $2 of the command path $1 takes a value.
function {1}_takes_value --argument-names cmd_path option
    contains -- "$cmd_path|$option"{3}
end

# The command path of the words before the cursor.
function {1}_path
    set -l tokens (commandline -opc)
    set -l cmd_path ''
    set -l skip 0
    for token in $tokens[2..-1]
        if test $skip = 1
            set skip 0
            continue
        end
        switch $token
            case '-*=*'
            case '-*'
                {1}_takes_value "$cmd_path" $token; and set skip 1
            case '*'
                if contains -- $token ({1}_subcommands "$cmd_path")
                    set cmd_path (string trim -- "$cmd_path $token")
                end
        end
    end
    echo $cmd_path
end

function {1}_at --argument-names wanted
    set -l current ({1}_path)
    test "$current" = "$wanted"
end

# Instance or snapshot names from the program itself; when it fails, there are none.
function {1}_values --argument-names kind
    set -l tokens (commandline -opc)
    set -l args __complete $kind
    if test $kind = snapshots
        set -l at (contains -i -- --name $tokens)
        if test -n "$at"; and test (count $tokens) -gt $at
            set args $args --name $tokens[(math $at + 1)]
        end
    end
    command $tokens[1] $args 2>/dev/null
end

complete -c {0} -f
{4})fish",
        program, fn, subcommands, takes_value, lines);
}

std::string completion_script(shell_kind shell, const command_spec& root,
                              std::string_view program) {
    switch (shell) {
        case shell_kind::bash:
            return bash_completion(root, program);
        case shell_kind::zsh:
            return zsh_completion(root, program);
        case shell_kind::fish:
            return fish_completion(root, program);
    }
    return {};
}

}  // namespace stackemu::cli
