// The fault tests' sandbox: one instance driven through the real `stackemu` binary against
// fake-qemu (an image, a run directory, free ports, the fake's options), the commands it
// spawns, and the checks that every fault test makes of what a fault left behind. Shared by
// test_fault_matrix.cpp (killed processes) and test_wire_faults.cpp (faults on the wire).
// Header-only: it needs STACKEMU_CLI_EXE and STACKEMU_FAKE_QEMU_EXE.
#pragma once

#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstring>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <utility>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/snapshot.hpp"
#include "support/cli_harness.hpp"
#include "support/process.hpp"

extern char** environ;

namespace stackemu::test::fault {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
namespace exit_code = stackemu::lifecycle::exit_code;
namespace snap_exit = stackemu::lifecycle::snapshot_exit;
using stackemu::test::cli::cli_result;
using stackemu::test::cli::contains;
using stackemu::test::cli::slurp;

// Ceilings against hangs only: no command here takes more than a few seconds.
inline constexpr auto command_ceiling = 120s;
inline constexpr auto phase_ceiling = 60s;  // for the controller to reach the phase under test
// `status` takes no lock and waits on nothing for long: it must always answer within this.
inline constexpr auto status_ceiling = 20s;

// Waits until `path` holds `text` after byte `from`, woken by inotify on the file's directory
// (written, created or renamed into place). The offset of the match, or nullopt at the ceiling.
inline std::optional<std::size_t> wait_for_text(const fs::path& path, std::string_view text,
                                                std::size_t from = 0,
                                                std::chrono::milliseconds ceiling = phase_ceiling) {
    const fs::path dir = path.parent_path();
    fs::create_directories(dir);
    const int fd = ::inotify_init1(IN_CLOEXEC | IN_NONBLOCK);
    REQUIRE(fd >= 0);
    REQUIRE(::inotify_add_watch(fd, dir.c_str(),
                                IN_MODIFY | IN_CREATE | IN_MOVED_TO | IN_CLOSE_WRITE) >= 0);
    const auto deadline = std::chrono::steady_clock::now() + ceiling;
    std::optional<std::size_t> found;
    for (;;) {
        const auto content = slurp(path);
        if (const auto at = content.find(text, std::min(from, content.size()));
            at != std::string::npos) {
            found = at;
            break;
        }
        const auto left = std::chrono::duration_cast<std::chrono::milliseconds>(
            deadline - std::chrono::steady_clock::now());
        if (left <= 0ms) break;
        pollfd p{fd, POLLIN, 0};
        ::poll(&p, 1, static_cast<int>(left.count()));
        char events[4096];
        while (::read(fd, events, sizeof events) > 0) {
        }
    }
    ::close(fd);
    return found;
}

// The pid in the "fake-qemu[PID]: ..." line of QEMU's -D log that holds byte `at`.
inline pid_t fake_pid_at(const std::string& log, std::size_t at) {
    const auto line = log.rfind('\n', at);
    const auto start = line == std::string::npos ? 0 : line + 1;
    constexpr std::string_view prefix = "fake-qemu[";
    REQUIRE(log.compare(start, prefix.size(), prefix) == 0);
    return std::stoi(log.substr(start + prefix.size()));
}

inline json console_step(int after_ms, std::string_view line) {
    return json{{"after_ms", after_ms}, {"line", line}};
}

// Boots, prints its ready marker, then answers HTTP and the agent.
inline json happy_guest() {
    return json{{"console", json::array({console_step(20, "[    0.000000] Linux version 6.1.0"),
                                         console_step(20, "STACK_EMULATOR_READY"),
                                         json{{"after_ms", 0}, {"action", "ready"}}})}};
}

// Boots and never gets ready: the controller waits for it until --ready-timeout.
inline json endless_boot() {
    return json{{"console", json::array({console_step(20, "booting slowly")})}};
}

// QEMU's log line for a QMP command the fake received ("qmp: <- {...}").
inline std::string command_mark(std::string_view command) {
    return fmt::format("\"execute\": \"{}\"", command);
}

struct running_command {
    pid_t pid = -1;
    fs::path out, err;
};

// One instance per test: an image with its manifest (agent and a backend probe), a run
// directory, free ports. The destructor kills the commands and fake QEMUs a test left behind.
struct sandbox {
    fs::path dir;
    stackemu::test::cli::port_set ports = stackemu::test::cli::free_ports();
    json fake = happy_guest();           // STACKEMU_FAKE_QEMU of the commands started from here
    std::vector<std::string> extra_env;  // NAME=value, after the defaults (so they win)
    int spawned = 0;
    std::vector<pid_t> unfinished;

    sandbox() {
        static int counter = 0;
        dir = fs::path("/tmp") /
              ("stackemu-fault-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(dir);
        fs::create_directories(dir / "cache");
        std::ofstream(dir / "vmlinuz") << "not a kernel\n";
        std::ofstream(dir / "initrd.img") << "not an initrd\n";
        // The image and manifest of the CLI tests (agent, four forwards, a backend probe).
        stackemu::test::cli::sandbox::make_qcow2(dir / "base.qcow2");
        const json manifest = stackemu::test::cli::manifest_for("base.qcow2");
        std::ofstream(dir / "base.json") << manifest.dump(2) << "\n";
    }

    ~sandbox() {
        for (pid_t pid : unfinished) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
        stackemu::test::cli::kill_fakes_under(dir);
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    sandbox(const sandbox&) = delete;
    sandbox& operator=(const sandbox&) = delete;

    fs::path vm_dir() const { return dir / "run" / "vm"; }
    fs::path qemu_log() const { return vm_dir() / "qemu.log"; }
    fs::path release_file() const { return dir / "release-launch"; }
    std::size_t qemu_log_size() const { return slurp(qemu_log()).size(); }

    std::vector<std::string> start_args(std::vector<std::string> extra = {}) const {
        std::vector<std::string> args{"start",   "--image", (dir / "base.qcow2").string(),
                                      "--accel", "tcg",     "--ram",
                                      "512",     "--cpus",  "1"};
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    }

    std::vector<std::string> environment() const {
        std::vector<std::string> env;
        for (char** e = environ; *e; ++e) {
            const std::string_view v(*e);
            if (v.starts_with("EMULATOR_") || v.starts_with("STACKEMU_FAKE_QEMU=") ||
                v.starts_with("XDG_CACHE_HOME=") || v.starts_with("XDG_RUNTIME_DIR="))
                continue;
            env.emplace_back(v);
        }
        env.push_back("EMULATOR_RUN_DIR=" + (dir / "run").string());
        env.push_back("EMULATOR_IMAGE_DIR=" + dir.string());
        env.push_back("EMULATOR_READY_TIMEOUT=600");  // a ceiling: the fakes decide the outcome
        env.push_back(std::string("EMULATOR_QEMU=") + STACKEMU_FAKE_QEMU_EXE);
        env.push_back("EMULATOR_DASHBOARD_PORT=" + std::to_string(ports.dashboard));
        env.push_back("EMULATOR_BACKEND_PORT=" + std::to_string(ports.backend));
        env.push_back("EMULATOR_MINIO_PORT=" + std::to_string(ports.minio));
        env.push_back("EMULATOR_INBUCKET_PORT=" + std::to_string(ports.inbucket));
        env.push_back("STACKEMU_FAKE_QEMU=" + fake.dump());
        env.push_back("XDG_CACHE_HOME=" + (dir / "cache").string());
        // getenv() finds the first entry of a name: an extra one replaces the default.
        for (const auto& extra : extra_env) {
            const auto name = extra.substr(0, extra.find('=') + 1);
            std::erase_if(env, [&](const std::string& e) { return e.starts_with(name); });
            env.push_back(extra);
        }
        return env;
    }

    // Starts `stackemu args...` without waiting; stdout and stderr go to files.
    running_command spawn(const std::vector<std::string>& args) {
        running_command c;
        const int n = ++spawned;
        c.out = dir / fmt::format("cli-{}-{}.out", n, args.front());
        c.err = dir / fmt::format("cli-{}-{}.err", n, args.front());
        std::vector<std::string> argv_text{STACKEMU_CLI_EXE};
        argv_text.insert(argv_text.end(), args.begin(), args.end());
        auto env_text = environment();
        std::vector<char*> argv;
        for (auto& a : argv_text)
            argv.push_back(a.data());
        argv.push_back(nullptr);
        std::vector<char*> envp;
        for (auto& e : env_text)
            envp.push_back(e.data());
        envp.push_back(nullptr);
        posix_spawn_file_actions_t actions;
        posix_spawn_file_actions_init(&actions);
        posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
        posix_spawn_file_actions_addopen(&actions, 1, c.out.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0600);
        posix_spawn_file_actions_addopen(&actions, 2, c.err.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0600);
        const int rc = ::posix_spawn(&c.pid, argv[0], &actions, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        REQUIRE(rc == 0);
        unfinished.push_back(c.pid);
        return c;
    }

    // Waits for a spawned command (killed and reported as -1 at the ceiling).
    cli_result finish(const running_command& c,
                      std::chrono::milliseconds ceiling = command_ceiling) {
        cli_result r;
        r.code = stackemu::test::wait_child(c.pid, ceiling).value_or(-1);
        std::erase(unfinished, c.pid);
        r.out = slurp(c.out);
        r.err = slurp(c.err);
        UNSCOPED_INFO(c.out.filename().string()
                      << " -> " << r.code << "\nstdout: " << r.out << "\nstderr: " << r.err);
        return r;
    }

    // kill -9 of a spawned command, reaped.
    void kill_command(const running_command& c) {
        REQUIRE(::kill(c.pid, SIGKILL) == 0);
        REQUIRE(stackemu::test::wait_child(c.pid, command_ceiling) == 128 + SIGKILL);
        std::erase(unfinished, c.pid);
    }

    cli_result run(const std::vector<std::string>& args,
                   std::chrono::milliseconds ceiling = command_ceiling) {
        auto r = finish(spawn(args), ceiling);
        CHECK(r.code != -1);  // did not hang
        return r;
    }

    // `status --json`, answered within the status ceiling; "__exit" holds its exit code.
    json status() {
        auto r = run({"status", "--json"}, status_ceiling);
        REQUIRE(r.code != -1);
        auto j = json::parse(r.out, nullptr, false);
        INFO(r.out);
        REQUIRE(j.is_object());
        CHECK(j.value("exit_code", -1) == r.code);
        j["__exit"] = r.code;
        return j;
    }

    std::vector<pid_t> fakes() const { return stackemu::test::cli::fakes_under(dir); }
    bool no_fakes_left() const {
        for (pid_t pid : fakes())
            if (!stackemu::test::wait_gone(pid, 30s)) return false;
        return fakes().empty();
    }

    // Starts the instance, ready; returns QEMU's pid.
    pid_t start_ready() {
        auto r = run(start_args({"--quiet"}));
        REQUIRE(r.code == exit_code::ok);
        auto st = status();
        REQUIRE(st.value("state", "") == "ready");
        return st["pid"].get<pid_t>();
    }
};

// ---- Other clients of QEMU's monitor ----

// A client of the Unix socket at `path` that stays connected (closed by the destructor).
struct socket_client {
    int fd = -1;
    socket_client() = default;
    explicit socket_client(int f) : fd(f) {}
    socket_client(socket_client&& o) noexcept : fd(std::exchange(o.fd, -1)) {}
    socket_client& operator=(socket_client&&) = delete;
    ~socket_client() {
        if (fd >= 0) ::close(fd);
    }
};

// Connects without blocking; the errno of a refused connect (EAGAIN: the backlog is full).
inline std::pair<socket_client, int> connect_unix(const fs::path& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    REQUIRE(fd >= 0);
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::memcpy(addr.sun_path, path.c_str(),
                std::min(path.native().size(), sizeof addr.sun_path - 1));
    const int rc = ::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr);
    const int err = rc == 0 ? 0 : errno;
    return {socket_client(fd), err};
}

// Another client holding QEMU's monitor at `path`: connected and greeted (QEMU serves one
// client per monitor, so everyone else waits in its backlog until this one leaves).
inline socket_client hold_monitor(const fs::path& path) {
    auto [client, err] = connect_unix(path);
    REQUIRE(err == 0);
    std::string seen;
    const auto deadline = std::chrono::steady_clock::now() + phase_ceiling;
    while (!contains(seen, "\"QMP\"") && std::chrono::steady_clock::now() < deadline) {
        pollfd p{client.fd, POLLIN, 0};
        ::poll(&p, 1, 1000);
        char buffer[4096];
        const auto n = ::read(client.fd, buffer, sizeof buffer);
        if (n > 0) seen.append(buffer, static_cast<std::size_t>(n));
    }
    REQUIRE(contains(seen, "\"QMP\""));
    return std::move(client);
}

// Connects to `path` until a connect fails with EAGAIN (a listener nobody accepts on, its
// backlog full); the connections are kept, as abandoned ones would be.
inline std::vector<socket_client> fill_backlog(const fs::path& path) {
    std::vector<socket_client> held;
    for (int i = 0; i < 64; ++i) {
        auto [client, err] = connect_unix(path);
        if (err == EAGAIN) return held;
        REQUIRE(err == 0);
        held.push_back(std::move(client));
    }
    FAIL("the backlog of " << path << " never filled");
    return held;
}

// ---- What the next commands must find after a fault ----

// state.json, when there is one, is whole: the old or the new content, never a mix.
inline void check_state_whole(const sandbox& sb) {
    const auto path = sb.vm_dir() / "state.json";
    if (!fs::exists(path)) return;
    const auto text = slurp(path);
    INFO("state.json: " << text);
    const auto j = json::parse(text, nullptr, false);
    CHECK(j.is_object());
}

// snapshots.json, when there is one, parses; returns the names it records.
inline std::set<std::string> recorded_snapshots(const sandbox& sb) {
    std::set<std::string> names;
    const auto path = sb.vm_dir() / "snapshots.json";
    if (!fs::exists(path)) return names;
    const auto j = json::parse(slurp(path), nullptr, false);
    REQUIRE(j.is_object());
    for (const auto& s : j["snapshots"])
        names.insert(s["name"].get<std::string>());
    return names;
}

// Nobody holds the instance lock: the killed command's lock went with it.
inline void check_lock_free(const sandbox& sb) {
    auto held = stackemu::lifecycle::holder((sb.vm_dir() / "lock").string());
    REQUIRE(held);
    CHECK_FALSE(held->has_value());
}

// The overlay is a sound qcow2 (QEMU's death must not have left it damaged).
inline void check_overlay(const sandbox& sb) {
    auto checked = stackemu::lifecycle::run_tool(
        {"qemu-img", "check", "-q", (sb.vm_dir() / "disk.qcow2").string()});
    REQUIRE(checked);
    INFO(checked->out << checked->err);
    CHECK(checked->exit_code == 0);
}

// While a command holds the instance, status answers at once and names it: "starting" for a
// start, "busy" for the others.
inline void check_status_during(sandbox& sb, const std::string& operation) {
    const auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(st.value("state", "") == (operation == "start" ? "starting" : "busy"));
    CHECK(st.value("__exit", -1) ==
          (operation == "start" ? exit_code::not_healthy : exit_code::busy));
    CHECK(contains(st.value("detail", ""), "stackemu " + operation + " (pid"));
}
}  // namespace stackemu::test::fault
