// `stackemu qmp`: send QMP commands to a monitor and print QEMU's replies as JSON.
//
// It talks to the second monitor (monitor.sock), never the controller's, so an ad-hoc session
// never blocks stackemu itself. --scratch launches a throwaway QEMU (`-M none`) to talk to,
// ended afterwards through the stop ladder (lifecycle/scratch_qemu).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/scratch_qemu.hpp"
#include "qmp/client.hpp"

namespace stackemu::cli {
namespace {

using nlohmann::json;

struct qmp_request {
    std::string name;
    json arguments = json::object();
};

// "query-status", "query-status {}" or a whole {"execute":..., "arguments":...} object.
result<qmp_request> parse_request(std::string_view text) {
    auto trimmed = std::string(text);
    while (!trimmed.empty() && std::isspace(static_cast<unsigned char>(trimmed.back())))
        trimmed.pop_back();
    const auto first = trimmed.find_first_not_of(" \t");
    if (first == std::string::npos) return fail(errc::invalid_argument, "empty command");
    trimmed.erase(0, first);
    if (trimmed.front() == '{') {
        auto whole = json::parse(trimmed, nullptr, false);
        if (whole.is_discarded() || !whole.is_object() || !whole.contains("execute") ||
            !whole["execute"].is_string())
            return fail(errc::invalid_argument,
                        R"(a JSON command must look like {"execute": "NAME", "arguments": {...}})");
        qmp_request r{whole["execute"].get<std::string>(),
                      whole.value("arguments", json::object())};
        if (!r.arguments.is_object())
            return fail(errc::invalid_argument, "\"arguments\" must be a JSON object");
        return r;
    }
    const auto space = trimmed.find_first_of(" \t");
    qmp_request r{trimmed.substr(0, space), json::object()};
    if (space != std::string::npos) {
        auto args = json::parse(trimmed.substr(space), nullptr, false);
        if (args.is_discarded() || !args.is_object())
            return fail(errc::invalid_argument,
                        fmt::format("the arguments of {} must be one JSON object, e.g. "
                                    "'{{\"device\": \"disk0\"}}'",
                                    r.name));
        r.arguments = std::move(args);
    }
    for (char c : r.name)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '_')
            return fail(
                errc::invalid_argument,
                fmt::format("'{}' is not a QMP command name (letters, digits, - and _)", r.name));
    return r;
}

struct qmp_run {
    std::string socket;
    std::string scratch_qemu;  // --scratch: the QEMU binary to launch instead of a socket
    std::vector<qmp_request> requests;
    bool from_stdin = false;
    bool pretty = false;
    std::chrono::milliseconds timeout{30000};
};

void print_reply(const json& value, bool pretty) {
    std::cout << (pretty ? value.dump(2) : value.dump()) << std::endl;
}

// Runs the requests in order; returns the exit code. The first failure stops the batch.
asio::awaitable<int> run_requests(qmp::client& c, const qmp_run& job) {
    int code = exit_ok;
    auto one = [&](qmp_request r) -> asio::awaitable<bool> {
        auto reply = co_await c.execute(r.name, r.arguments, job.timeout);
        if (!reply) {
            auto e = reply.error();
            // The client's own text speaks to a library user; say what it means here.
            if (e.code == errc::message_too_large)
                e.message = fmt::format(
                    "the reply to {} was larger than {} MiB, the most stackemu reads in one QMP "
                    "message, so the connection was dropped (nothing was changed): a real QEMU "
                    "never answers that much; check that {} is QEMU's monitor",
                    r.name, qmp::default_max_message >> 20, job.socket);
            code = report("qmp", e);
            co_return false;
        }
        print_reply(*reply, job.pretty);
        co_return true;
    };
    for (const auto& r : job.requests)
        if (!co_await one(r)) break;
    if (job.from_stdin && code == exit_ok) {
        std::string line;
        while (std::getline(std::cin, line)) {
            if (line.find_first_not_of(" \t\r") == std::string::npos) continue;
            auto r = parse_request(line);
            if (!r) {
                code = report("qmp", r.error());
                break;
            }
            if (!co_await one(*r)) break;
        }
    }
    co_return code;
}

asio::awaitable<int> run_on_socket(qmp_run job) {
    const qmp::endpoint ep = qmp::unix_endpoint{job.socket};
    auto c = co_await qmp::client::connect(ep);
    if (!c) {
        auto e = c.error();
        if (e.code == errc::connect_failed)
            e.message +=
                " (is the emulator running? `stackemu status` tells; "
                "--socket names another monitor)";
        co_return report("qmp", e);
    }
    co_return co_await run_requests(*c, job);
}

// The scratch QEMU is ended whatever the requests did; either failure makes the exit code.
asio::awaitable<int> run_on_scratch(qmp_run job) {
    auto progress = [](std::string_view line) { fmt::print(stderr, "stackemu qmp: {}\n", line); };
    auto scratch = co_await lifecycle::scratch_qemu::start(job.scratch_qemu, job.timeout, progress);
    if (!scratch) co_return report("qmp", scratch.error());
    int code = co_await run_requests(scratch->monitor(), job);
    if (auto ended = co_await scratch->end(); !ended) {
        const int failed = report("qmp", ended.error());
        if (code == exit_ok) code = failed;
    }
    co_return code;
}

}  // namespace

void add_qmp_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "qmp", "Send QMP commands to the emulator's ad-hoc monitor and print the replies as JSON");
    struct options {
        std::string socket;
        std::string command;
        std::string arguments;
        bool scratch = false;
        bool pretty = false;
        double timeout = 30;
        std::string qemu;
    };
    auto o = std::make_shared<options>();
    cmd->add_option("COMMAND", o->command,
                    "QMP command, e.g. query-status; '-' or nothing reads one command per line "
                    "from stdin (NAME [JSON-ARGS] or a whole {\"execute\":...} object)");
    cmd->add_option("ARGUMENTS", o->arguments, "the command's arguments as one JSON object");
    cmd->add_option("--socket", o->socket,
                    "QMP socket to talk to (default: the instance's monitor.sock)");
    cmd->add_flag("--scratch", o->scratch,
                  "launch a throwaway QEMU (-M none) for the session and quit it afterwards");
    cmd->add_option("--qemu", o->qemu,
                    "QEMU binary for --scratch (default: EMULATOR_QEMU, else "
                    "qemu-system-<EMULATOR_ARCH>)");
    cmd->add_flag("--pretty", o->pretty, "indent the JSON output");
    cmd->add_option("--timeout", o->timeout, "seconds to wait for each reply")
        ->check(seconds_within(0.001, 86400.0))
        ->capture_default_str();
    cmd->callback([o, &action] {
        action = [o]() -> int {
            qmp_run job;
            job.pretty = o->pretty;
            job.timeout = std::chrono::milliseconds(static_cast<long>(o->timeout * 1000));
            if (o->command.empty() || o->command == "-") {
                if (!o->arguments.empty())
                    return report("qmp", make_error(errc::invalid_argument,
                                                    "ARGUMENTS need a COMMAND before them"));
                job.from_stdin = true;
            } else {
                auto r =
                    parse_request(o->command + (o->arguments.empty() ? "" : " " + o->arguments));
                if (!r) return report("qmp", r.error()) + 1;  // usage error: exit 2
                job.requests.push_back(std::move(*r));
            }
            if (o->scratch) {
                if (!o->socket.empty())
                    return report("qmp", make_error(errc::invalid_argument,
                                                    "--scratch and --socket exclude each other")) +
                           1;
                // The settings as every command reads them: EMULATOR_QEMU, EMULATOR_ARCH and
                // EMULATOR_REPLY_TIMEOUT.
                auto inst = resolve_instance(instance_options{});
                if (!inst) return report("qmp", inst.error()) + 1;  // settings: exit 2
                job.scratch_qemu =
                    o->qemu.empty() ? lifecycle::detail::qemu_binary_for(inst->config) : o->qemu;
                return run_on_context(run_on_scratch(std::move(job)));
            }
            if (!o->socket.empty()) {
                job.socket = o->socket;
            } else {
                auto inst = resolve_instance(instance_options{});
                if (!inst) return report("qmp", inst.error()) + 1;  // settings: exit 2
                job.socket = inst->paths.monitor_socket.string();
            }
            return run_on_context(run_on_socket(std::move(job)));
        };
    });
}

}  // namespace stackemu::cli
