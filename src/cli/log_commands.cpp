// logs and events: the console log and the QMP event record, kept across stops; -f follows
// them through inotify (no polling).
#include <fmt/chrono.h>
#include <sys/inotify.h>
#include <unistd.h>

#include <CLI/CLI.hpp>
#include <asio.hpp>
#include <csignal>
#include <deque>
#include <filesystem>
#include <fstream>
#include <iostream>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/exit_codes.hpp"

namespace stackemu::cli {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;
using namespace stackemu::lifecycle;

// The last `n` lines of the file (all when n == 0) and the offset after them.
std::pair<std::vector<std::string>, std::uintmax_t> last_lines(const fs::path& p, std::size_t n) {
    std::ifstream in(p, std::ios::binary);
    std::deque<std::string> lines;
    std::string line;
    std::uintmax_t offset = 0;
    while (std::getline(in, line)) {
        offset += line.size() + 1;
        lines.push_back(std::move(line));
        if (n && lines.size() > n) lines.pop_front();
    }
    return {{lines.begin(), lines.end()}, offset};
}

// Calls `emit` for every complete line appended to `p` after `offset`, until interrupted.
void follow(const fs::path& p, std::uintmax_t offset,
            const std::function<void(const std::string&)>& emit) {
    asio::io_context ctx;
    int fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    if (fd < 0) return;
    ::inotify_add_watch(fd, p.parent_path().c_str(),
                        IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE);
    asio::posix::stream_descriptor watch(ctx, fd);
    asio::signal_set stop_signals(ctx, SIGINT, SIGTERM);
    stop_signals.async_wait([&](std::error_code, int) { watch.close(); });
    std::string partial;
    auto drain = [&] {
        std::error_code ec;
        const auto size = fs::file_size(p, ec);
        if (ec) return;
        if (size < offset) offset = 0;  // truncated or replaced: read from the start
        std::ifstream in(p, std::ios::binary);
        in.seekg(static_cast<std::streamoff>(offset));
        std::string chunk((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
        offset += chunk.size();
        partial += chunk;
        for (std::size_t nl = 0; (nl = partial.find('\n')) != std::string::npos;) {
            emit(partial.substr(0, nl));
            partial.erase(0, nl + 1);
        }
    };
    drain();
    std::array<char, 4096> events{};
    std::function<void()> arm = [&] {
        watch.async_read_some(asio::buffer(events), [&](std::error_code ec, std::size_t) {
            if (ec) return;
            drain();
            arm();
        });
    };
    arm();
    ctx.run();
}

std::string event_line(const json& j) {
    if (j.contains("event")) {
        const auto secs = j.value("seconds", std::int64_t{0});
        const auto usecs = j.value("microseconds", std::int64_t{0});
        const auto tp = std::chrono::system_clock::time_point(std::chrono::seconds(secs));
        std::string data = j.contains("data") && !j["data"].empty() ? " " + j["data"].dump() : "";
        return fmt::format("{:%Y-%m-%dT%H:%M:%S}.{:06}Z {}{}", tp, usecs,
                           j["event"].get<std::string>(), data);
    }
    std::string rest;
    for (const auto& [k, v] : j.items())
        if (k != "record" && k != "at") rest += fmt::format(" {}={}", k, v.dump());
    return fmt::format("{} stackemu: {}{}", j.value("at", ""), j.value("record", ""), rest);
}

void add_logs(CLI::App& app, std::function<int()>& action) {
    auto* cmd =
        app.add_subcommand("logs", "Show the guest's serial console log (kept across stops)");
    auto o = add_instance_options(cmd, option_set::name_only);
    struct extra {
        bool follow = false;
        bool qemu = false;
        std::size_t lines = 100;
    };
    auto x = std::make_shared<extra>();
    cmd->add_flag("-f,--follow", x->follow, "keep printing new lines as they arrive");
    cmd->add_flag("--qemu", x->qemu, "QEMU's own log (qemu.log) instead of the console");
    cmd->add_option("-n,--lines", x->lines, "how many last lines (0: all)")->capture_default_str();
    cmd->callback([o, x, &action] {
        action = [o, x]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("logs", inst.error());
                return exit_code::usage;
            }
            const fs::path p = x->qemu ? inst->paths.qemu_log : inst->paths.serial_log;
            std::error_code ec;
            if (!fs::exists(p, ec) && !x->follow) {
                report("logs", make_error(errc::not_found,
                                          fmt::format("no log yet at {}: the instance has not been "
                                                      "started",
                                                      p.string())));
                return exit_code::error;
            }
            // --json: one object a line, {"line": TEXT}; a console's stray bytes that are not
            // UTF-8 are replaced, never a reason to fail.
            const bool as_json = o->json;
            auto print = [as_json](const std::string& l) {
                if (as_json)
                    std::cout << json{{"line", l}}.dump(-1, ' ', false,
                                                        json::error_handler_t::replace)
                              << '\n';
                else
                    std::cout << l << '\n';
            };
            auto [lines, offset] = last_lines(p, x->lines);
            for (const auto& l : lines)
                print(l);
            std::cout.flush();
            if (x->follow)
                follow(p, offset, [&print](const std::string& l) {
                    print(l);
                    std::cout.flush();
                });
            return exit_code::ok;
        };
    });
}

void add_events(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "events", "Show the QMP events and controller records of the instance (events.jsonl)");
    auto o = add_instance_options(cmd, option_set::name_only);
    auto follow_flag = std::make_shared<bool>(false);
    cmd->add_flag("-f,--follow", *follow_flag, "keep printing new events as they are recorded");
    cmd->callback([o, follow_flag, &action] {
        action = [o, follow_flag]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("events", inst.error());
                return exit_code::usage;
            }
            const bool as_json = o->json;
            auto print = [as_json](const std::string& raw) {
                auto j = json::parse(raw, nullptr, false);
                if (j.is_discarded()) return;
                std::cout << (as_json ? j.dump() : event_line(j)) << std::endl;
            };
            auto [lines, offset] = last_lines(inst->paths.events, 0);
            for (const auto& l : lines)
                print(l);
            if (*follow_flag) follow(inst->paths.events, offset, print);
            return exit_code::ok;
        };
    });
}

}  // namespace

void add_logs_command(CLI::App& app, std::function<int()>& action) {
    add_logs(app, action);
}
void add_events_command(CLI::App& app, std::function<int()>& action) {
    add_events(app, action);
}

}  // namespace stackemu::cli
