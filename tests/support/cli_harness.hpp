// Running the real `stackemu` binary in integration tests: an exact environment, stdout and
// stderr captured through files, free host ports, and the fake QEMUs a test left behind.
// Header-only: it needs STACKEMU_CLI_EXE and STACKEMU_FAKE_QEMU_EXE, which the integration
// target defines.
#pragma once

#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <chrono>
#include <cstdint>
#include <filesystem>
#include <fstream>
#include <functional>
#include <map>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "lifecycle/process.hpp"
#include "support/process.hpp"

#if !defined(STACKEMU_CLI_EXE) || !defined(STACKEMU_FAKE_QEMU_EXE)
#error "cli_harness.hpp needs STACKEMU_CLI_EXE and STACKEMU_FAKE_QEMU_EXE"
#endif

extern char** environ;

namespace stackemu::test::cli {

namespace fs = std::filesystem;

inline std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

inline bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

struct port_set {
    std::uint16_t dashboard = 0;
    std::uint16_t backend = 0;
    std::uint16_t minio = 0;
    std::uint16_t inbucket = 0;
};

// Four distinct free ports on 127.0.0.1: all bound to port 0 at once, then released.
inline port_set free_ports() {
    std::array<int, 4> fds{};
    std::array<std::uint16_t, 4> ports{};
    for (std::size_t i = 0; i < fds.size(); ++i) {
        fds[i] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fds[i] >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        ports[i] = ntohs(addr.sin_port);
    }
    for (int fd : fds)
        ::close(fd);
    return {ports[0], ports[1], ports[2], ports[3]};
}

// A listening socket on 127.0.0.1:port, held by the test until destroyed.
class held_port {
  public:
    explicit held_port(std::uint16_t port) {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd_, 4) == 0);
    }
    ~held_port() { ::close(fd_); }
    held_port(const held_port&) = delete;
    held_port& operator=(const held_port&) = delete;

  private:
    int fd_ = -1;
};

struct cli_result {
    int code = -1;  // exit status, 128+signal, or -1 when it hung and was killed
    std::string out;
    std::string err;
};

// Runs `stackemu args...` with exactly `env` (NAME=value strings), stdin /dev/null, and
// stdout/stderr written to `io_dir`/NAME.out|.err. A command still running at `ceiling` is
// killed and reported with code -1.
inline cli_result run_cli(const std::vector<std::string>& args, const std::vector<std::string>& env,
                          const fs::path& io_dir, const std::string& name,
                          std::chrono::milliseconds ceiling = std::chrono::seconds(120)) {
    fs::create_directories(io_dir);
    const fs::path out = io_dir / (name + ".out");
    const fs::path err = io_dir / (name + ".err");
    std::vector<std::string> argv_text{STACKEMU_CLI_EXE};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<std::string> env_text = env;
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
    posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC, 0600);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    cli_result r;
    r.code = wait_child(pid, ceiling).value_or(-1);
    r.out = slurp(out);
    r.err = slurp(err);
    return r;
}

// Live fake-qemu processes whose command line names `dir` (QEMU's -daemonize chdirs to /, so
// the command line, not the cwd, ties them to a test).
inline std::vector<pid_t> fakes_under(const fs::path& dir) {
    std::vector<pid_t> pids;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/proc", ec)) {
        const auto name = entry.path().filename().string();
        if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
        const auto cmdline = slurp(entry.path() / "cmdline");
        const auto argv0 = std::string_view(cmdline).substr(0, cmdline.find('\0'));
        if (argv0 != STACKEMU_FAKE_QEMU_EXE || !contains(cmdline, dir.string() + "/")) continue;
        const pid_t pid = std::stoi(name);
        if (!process_gone(pid)) pids.push_back(pid);
    }
    return pids;
}

// The argv of a running process, from /proc.
inline std::vector<std::string> process_argv(pid_t pid) {
    const auto cmdline = slurp(fs::path("/proc") / std::to_string(pid) / "cmdline");
    std::vector<std::string> argv;
    std::size_t start = 0;
    while (start < cmdline.size()) {
        const auto end = cmdline.find('\0', start);
        argv.push_back(cmdline.substr(start, end - start));
        if (end == std::string::npos) break;
        start = end + 1;
    }
    return argv;
}

// Kills every fake QEMU under `dir` and waits for each to go.
inline void kill_fakes_under(const fs::path& dir) {
    for (pid_t pid : fakes_under(dir)) {
        ::kill(pid, SIGKILL);
        wait_gone(pid, std::chrono::seconds(30));
    }
}

// ---- a sandbox: an image with its manifest, a run directory, the fake's behaviour ----

using nlohmann::json;

inline json console_step(int after_ms, std::string_view line) {
    return json{{"after_ms", after_ms}, {"line", line}};
}

inline json happy_guest() {
    return json{{"console",
                 json::array({console_step(20, "booting"), console_step(20, "STACK_EMULATOR_READY"),
                              json{{"after_ms", 0}, {"action", "ready"}}})}};
}

inline json manifest_for(const std::string& disk) {
    return json{
        {"format", 1},
        {"arch", "amd64"},
        {"disk", disk},
        {"boot",
         {{"mode", "kernel"},
          {"kernel", "vmlinuz"},
          {"initrd", "initrd.img"},
          {"cmdline", "console=ttyS0"}}},
        {"profile",
         {{"name", "cli-test"},
          {"forwards", json::array({{{"name", "dashboard"}, {"guest", 8000}},
                                    {{"name", "backend"}, {"guest", 8001}},
                                    {{"name", "minio"}, {"guest", 9000}},
                                    {{"name", "inbucket"}, {"guest", 9001}}})},
          {"probes",
           json::array({{{"name", "backend"}, {"forward", "backend"}, {"path", "/health"}}})},
          {"ready_marker", "STACK_EMULATOR_READY"},
          {"failure_markers", json::array({"STACK_CLOUD_INIT_FAILED"})},
          {"agent", true}}},
        {"build_id", "cli-test-1"}};
}

inline void write_text(const fs::path& path, std::string_view text) {
    std::ofstream out(path, std::ios::binary | std::ios::trunc);
    out << text;
    REQUIRE(out.good());
}

// Environment overrides of one case: a value, or nullopt to unset the variable.
using env_overrides = std::vector<std::pair<std::string, std::optional<std::string>>>;

struct sandbox {
    fs::path dir;
    fs::path images;
    fs::path run_dir;
    fs::path cache;
    fs::path io;  // the commands' stdout and stderr: outside what the disk check compares
    port_set ports = free_ports();
    json fake = happy_guest();
    int commands = 0;

    // Everything lives in /tmp/PREFIX<pid>-<n>, removed (with any fake QEMU) at the end.
    explicit sandbox(const std::string& prefix = "stackemu-cli-") {
        static int counter = 0;
        dir = fs::path("/tmp") /
              (prefix + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(dir);
        images = dir / "images";
        run_dir = dir / "run";
        cache = dir / "cache";
        io = dir / "io";
        for (const auto& d : {images, cache, io})
            fs::create_directories(d);
        write_text(images / "vmlinuz", "not a kernel\n");
        write_text(images / "initrd.img", "not an initrd\n");
        make_qcow2(image());
        write_text(images / "base.json", manifest_for("base.qcow2").dump(2) + "\n");
    }
    ~sandbox() {
        kill_fakes_under(dir);
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    sandbox(const sandbox&) = delete;
    sandbox& operator=(const sandbox&) = delete;

    fs::path image() const { return images / "base.qcow2"; }
    fs::path vm_dir() const { return run_dir / "vm"; }

    static void make_qcow2(const fs::path& path) {
        auto made = stackemu::lifecycle::run_tool(
            {"qemu-img", "create", "-q", "-f", "qcow2", path.string(), "64M"});
        REQUIRE(made);
        INFO(made->err);
        REQUIRE(made->exit_code == 0);
    }

    // Another image NAME.qcow2 (written by `disk`) with its manifest (changed by `edit`).
    void add_image(const std::string& name, const std::function<void(const fs::path&)>& disk,
                   const std::function<void(json&)>& edit = {}) {
        disk(images / (name + ".qcow2"));
        json m = manifest_for(name + ".qcow2");
        if (edit) edit(m);
        write_text(images / (name + ".json"), m.dump(2) + "\n");
    }

    // {image} {images} {run} {dir} {port.NAME} in case text become this sandbox's values.
    std::string expand(std::string text) const {
        const std::pair<std::string, std::string> table[] = {
            {"{image}", image().string()},
            {"{images}", images.string()},
            {"{run}", run_dir.string()},
            {"{dir}", dir.string()},
            {"{port.dashboard}", std::to_string(ports.dashboard)},
            {"{port.backend}", std::to_string(ports.backend)},
        };
        for (const auto& [key, value] : table)
            for (auto at = text.find(key); at != std::string::npos; at = text.find(key, at))
                text.replace(at, key.size(), value), at += value.size();
        return text;
    }

    std::vector<std::string> environment(const env_overrides& overrides) const {
        std::map<std::string, std::string> env;
        for (char** e = environ; *e; ++e) {
            const std::string_view v(*e);
            const auto eq = v.find('=');
            if (eq == std::string_view::npos) continue;
            const std::string name(v.substr(0, eq));
            if (name.starts_with("EMULATOR_") || name.starts_with("STACKEMU_") ||
                name.starts_with("XDG_"))
                continue;
            env[name] = std::string(v.substr(eq + 1));
        }
        env["EMULATOR_RUN_DIR"] = run_dir.string();
        env["EMULATOR_IMAGE_DIR"] = images.string();
        env["EMULATOR_READY_TIMEOUT"] = "60";
        env["EMULATOR_QEMU"] = STACKEMU_FAKE_QEMU_EXE;
        env["EMULATOR_DASHBOARD_PORT"] = std::to_string(ports.dashboard);
        env["EMULATOR_BACKEND_PORT"] = std::to_string(ports.backend);
        env["EMULATOR_MINIO_PORT"] = std::to_string(ports.minio);
        env["EMULATOR_INBUCKET_PORT"] = std::to_string(ports.inbucket);
        // One environment string may hold at most 128 KiB (MAX_ARG_STRLEN): a longer
        // behaviour goes through a file, which the fake reads as "@PATH".
        const auto behaviour = fake.dump();
        if (behaviour.size() < 64 * 1024) {
            env["STACKEMU_FAKE_QEMU"] = behaviour;
        } else {
            write_text(io / "fake-qemu.json", behaviour);
            env["STACKEMU_FAKE_QEMU"] = "@" + (io / "fake-qemu.json").string();
        }
        env["XDG_CACHE_HOME"] = cache.string();
        for (const auto& [name, value] : overrides) {
            if (value)
                env[name] = expand(*value);
            else
                env.erase(name);
        }
        std::vector<std::string> out;
        for (const auto& [name, value] : env)
            out.push_back(name + "=" + value);
        return out;
    }

    cli_result run(const std::vector<std::string>& args, const env_overrides& overrides = {}) {
        std::vector<std::string> expanded;
        for (const auto& a : args)
            expanded.push_back(expand(a));
        return run_cli(expanded, environment(overrides), io, "cmd-" + std::to_string(++commands));
    }

    std::vector<pid_t> fakes() const {
        auto pids = fakes_under(dir);
        std::sort(pids.begin(), pids.end());
        return pids;
    }
};

}  // namespace stackemu::test::cli
