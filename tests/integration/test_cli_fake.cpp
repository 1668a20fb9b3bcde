// The real stackemu binary against fake-qemu put in place of qemu-system (EMULATOR_QEMU): every
// command as a user runs it, with its own run directory, free ports and the fake's behaviour
// per scenario. Only generous ceilings against hangs; no timing is asserted.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "support/process.hpp"

extern char** environ;

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
namespace exit_code = stackemu::lifecycle::exit_code;

namespace {

// No command here takes more than a few seconds; only a hang reaches these.
constexpr auto command_ceiling = 120s;
constexpr auto process_ceiling = 30s;

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

std::size_t occurrences(std::string_view text, std::string_view part) {
    std::size_t n = 0;
    for (auto at = text.find(part); at != std::string_view::npos; at = text.find(part, at + 1))
        ++n;
    return n;
}

struct port_set {
    std::uint16_t dashboard = 0;
    std::uint16_t backend = 0;
    std::uint16_t minio = 0;
    std::uint16_t inbucket = 0;
};

// Four distinct free ports: all bound to port 0 at once, then released.
port_set free_ports() {
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

// A listening socket on 127.0.0.1:port held by the test.
struct held_port {
    int fd = -1;
    explicit held_port(std::uint16_t port) {
        fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_port = htons(port);
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        REQUIRE(::listen(fd, 4) == 0);
    }
    ~held_port() { ::close(fd); }
    held_port(const held_port&) = delete;
    held_port& operator=(const held_port&) = delete;
};

// A guest that boots, prints its ready marker and answers HTTP and the agent.
json console_step(int after_ms, std::string_view line) {
    return json{{"after_ms", after_ms}, {"line", line}};
}
json console_action(int after_ms, std::string_view action) {
    return json{{"after_ms", after_ms}, {"action", action}};
}
json happy_guest() {
    return json{
        {"console",
         json::array({console_step(20, "[    0.000000] Linux version 6.1.0-fake"),
                      console_step(20, "starting services"),
                      console_step(20, "STACK_EMULATOR_READY"), console_action(0, "ready")})}};
}

using stackemu::test::process_gone;

bool wait_gone(pid_t pid) {
    return stackemu::test::wait_gone(pid, process_ceiling);
}

// Live fake-qemu processes whose command line names `dir` (QEMU's -daemonize chdirs to /, so
// the command line, not the cwd, ties them to a test).
std::vector<pid_t> fakes_under(const fs::path& dir) {
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

struct cli_result {
    int code = -1;  // exit status, 128+signal, or -1 when it hung and was killed
    std::string out;
    std::string err;
};

// What the image's manifest profile asks for.
struct profile_options {
    bool agent = true;
    bool probes = true;
};

// One sandbox per test: an image with its manifest, a run directory and the fake's settings.
// The destructor kills any fake-qemu the test left behind and removes everything.
struct sandbox {
    fs::path dir;
    port_set ports = free_ports();
    json fake = happy_guest();  // STACKEMU_FAKE_QEMU of the commands run with `run`
    int spawned = 0;

    explicit sandbox(profile_options profile = {}) {
        static int counter = 0;
        dir = fs::path("/tmp") /
              ("stackemu-cli-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(dir);
        fs::create_directories(dir / "cache");
        std::ofstream(dir / "vmlinuz") << "not a kernel\n";
        std::ofstream(dir / "initrd.img") << "not an initrd\n";
        const auto image = dir / "base.qcow2";
        REQUIRE(std::system(("qemu-img create -q -f qcow2 '" + image.string() + "' 64M").c_str()) ==
                0);
        json probes = json::array();
        if (profile.probes)
            probes.push_back({{"name", "backend"}, {"forward", "backend"}, {"path", "/health"}});
        const json manifest = {
            {"format", 1},
            {"arch", "amd64"},
            {"disk", "base.qcow2"},
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
              {"probes", probes},
              {"ready_marker", "STACK_EMULATOR_READY"},
              {"failure_markers", json::array({"STACK_CLOUD_INIT_FAILED"})},
              {"agent", profile.agent}}},
            {"build_id", "cli-test-1"}};
        std::ofstream(dir / "base.json") << manifest.dump(2) << "\n";
    }

    ~sandbox() {
        for (pid_t pid : fakes_under(dir)) {
            ::kill(pid, SIGKILL);
            wait_gone(pid);
        }
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    sandbox(const sandbox&) = delete;
    sandbox& operator=(const sandbox&) = delete;

    fs::path image() const { return dir / "base.qcow2"; }
    fs::path vm_dir(const std::string& name = "") const {
        return name.empty() ? dir / "run" / "vm" : dir / "run" / "instances" / name / "vm";
    }
    std::vector<std::string> start_args(std::vector<std::string> extra = {}) const {
        std::vector<std::string> args{"start", "--image", image().string(), "--accel", "tcg",
                                      "--ram", "512",     "--cpus",         "1"};
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    }

    // Starts `stackemu args...` with this sandbox's environment; stdout and stderr go to files.
    pid_t spawn(const std::vector<std::string>& args, const port_set& p, const json& behaviour,
                fs::path& out, fs::path& err) {
        const int n = ++spawned;
        out = dir / ("cli-" + std::to_string(n) + ".out");
        err = dir / ("cli-" + std::to_string(n) + ".err");
        std::vector<std::string> env_text;
        for (char** e = environ; *e; ++e) {
            const std::string_view v(*e);
            if (v.starts_with("EMULATOR_") || v.starts_with("STACKEMU_FAKE_QEMU=") ||
                v.starts_with("XDG_CACHE_HOME=") || v.starts_with("XDG_RUNTIME_DIR="))
                continue;
            env_text.emplace_back(v);
        }
        env_text.push_back("EMULATOR_RUN_DIR=" + (dir / "run").string());
        env_text.push_back("EMULATOR_IMAGE_DIR=" + dir.string());
        env_text.push_back("EMULATOR_READY_TIMEOUT=60");  // --ready-timeout overrides it
        env_text.push_back(std::string("EMULATOR_QEMU=") + STACKEMU_FAKE_QEMU_EXE);
        env_text.push_back("EMULATOR_DASHBOARD_PORT=" + std::to_string(p.dashboard));
        env_text.push_back("EMULATOR_BACKEND_PORT=" + std::to_string(p.backend));
        env_text.push_back("EMULATOR_MINIO_PORT=" + std::to_string(p.minio));
        env_text.push_back("EMULATOR_INBUCKET_PORT=" + std::to_string(p.inbucket));
        env_text.push_back("STACKEMU_FAKE_QEMU=" + behaviour.dump());
        env_text.push_back("XDG_CACHE_HOME=" + (dir / "cache").string());
        env_text.insert(env_text.end(), extra_env.begin(), extra_env.end());

        std::vector<std::string> argv_text{STACKEMU_CLI_EXE};
        argv_text.insert(argv_text.end(), args.begin(), args.end());
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
        posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        pid_t pid = -1;
        const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        REQUIRE(rc == 0);
        return pid;
    }

    // Waits for a spawned command; at the ceiling it is killed and reported as hung (-1).
    static cli_result finish(pid_t pid, const fs::path& out, const fs::path& err) {
        cli_result r;
        r.code = stackemu::test::wait_child(pid, command_ceiling).value_or(-1);
        r.out = slurp(out);
        r.err = slurp(err);
        return r;
    }

    cli_result run_as(const std::vector<std::string>& args, const port_set& p,
                      const json& behaviour) {
        fs::path out, err;
        const pid_t pid = spawn(args, p, behaviour, out, err);
        auto r = finish(pid, out, err);
        std::string command = "stackemu";
        for (const auto& a : args)
            command += " " + a;
        INFO(command << "\nstdout: " << r.out << "\nstderr: " << r.err);
        CHECK(r.code != -1);  // did not hang
        return r;
    }
    cli_result run(const std::vector<std::string>& args) { return run_as(args, ports, fake); }
    std::vector<std::string> extra_env;  // NAME=value of settings the defaults leave unset

    // `status --json` parsed (an empty object when it printed no JSON).
    json status(const std::string& name = "") {
        std::vector<std::string> args{"status", "--json"};
        if (!name.empty()) args.insert(args.end(), {"--name", name});
        auto r = run(args);
        auto j = json::parse(r.out, nullptr, false);
        if (j.is_discarded() || !j.is_object()) return json::object();
        j["__exit"] = r.code;
        return j;
    }

    std::vector<pid_t> fakes() const { return fakes_under(dir); }
    // True once no fake-qemu of this sandbox runs.
    bool no_fakes_left() const {
        for (pid_t pid : fakes())
            if (!stackemu::test::wait_gone(pid, process_ceiling)) return false;
        return fakes().empty();
    }
};

json parse_json(const std::string& text) {
    auto j = json::parse(text, nullptr, false);
    INFO(text);
    REQUIRE_FALSE(j.is_discarded());
    return j;
}

// Starts the default instance and checks it is ready; returns the fake's pid.
pid_t start_ready(sandbox& sb) {
    auto started = sb.run(sb.start_args());
    INFO("start stderr: " << started.err);
    REQUIRE(started.code == exit_code::ok);
    auto st = sb.status();
    REQUIRE(st.value("state", "") == "ready");
    REQUIRE(st.contains("pid"));
    return st["pid"].get<pid_t>();
}

// Starts the default instance; for a fake that wedges soon after, where `status` may already
// see it unhealthy (under the sanitizers a `status` takes longer than the fake's 100 ms).
void start_ok(sandbox& sb) {
    auto started = sb.run(sb.start_args());
    INFO("start stderr: " << started.err);
    REQUIRE(started.code == exit_code::ok);
}

// Waits (within the ceiling) until `status` reports `state`.
bool wait_for_state(sandbox& sb, std::string_view state) {
    const auto deadline = std::chrono::steady_clock::now() + process_ceiling;
    while (std::chrono::steady_clock::now() < deadline) {
        if (sb.status().value("state", "") == state) return true;
        std::this_thread::sleep_for(50ms);
    }
    return false;
}

}  // namespace

TEST_CASE("stackemu against the fake: start status stop events logs and reset", "[cli]") {
    sandbox sb;
    auto started = sb.run(sb.start_args());
    INFO(started.err);
    REQUIRE(started.code == exit_code::ok);
    CHECK(contains(started.out, "ready in"));
    REQUIRE(sb.fakes().size() == 1);

    auto st = sb.run({"status", "--json"});
    CHECK(st.code == exit_code::ok);
    const auto sj = parse_json(st.out);
    CHECK(sj["state"] == "ready");
    CHECK(sj["exit_code"] == 0);
    CHECK(sj["qemu_status"] == "running");
    CHECK(sj["instance"] == "default");
    REQUIRE(sj.contains("pid"));
    CHECK(sj["pid"].get<pid_t>() == sb.fakes().front());
    REQUIRE(sj["probes"].size() == 1);
    CHECK(sj["probes"][0]["ok"] == true);

    auto stopped = sb.run({"stop", "--json"});
    INFO(stopped.err);
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto stop_json = parse_json(stopped.out);
    CHECK(stop_json["clean"] == true);
    CHECK((stop_json["rung"] == "agent-shutdown" || stop_json["rung"] == "powerdown"));
    CHECK(sb.no_fakes_left());

    auto after = sb.run({"status"});
    CHECK(after.code == exit_code::stopped);
    CHECK(contains(after.out, "stopped"));

    auto events = sb.run({"events"});
    CHECK(events.code == exit_code::ok);
    CHECK(contains(events.out, "SHUTDOWN"));
    auto events_json = sb.run({"events", "--json"});
    bool guest_shutdown = false;
    std::istringstream lines(events_json.out);
    for (std::string line; std::getline(lines, line);) {
        auto j = json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("event", "") == "SHUTDOWN")
            guest_shutdown = j["data"] == json{{"guest", true}, {"reason", "guest-shutdown"}};
    }
    CHECK(guest_shutdown);

    auto logs = sb.run({"logs"});
    CHECK(logs.code == exit_code::ok);
    CHECK(contains(logs.out, "Linux version 6.1.0-fake"));
    CHECK(contains(logs.out, "starting services"));
    CHECK(contains(logs.out, "STACK_EMULATOR_READY"));

    REQUIRE(fs::exists(sb.vm_dir() / "disk.qcow2"));
    REQUIRE(fs::exists(sb.vm_dir() / "state.json"));
    auto reset = sb.run({"reset"});
    INFO(reset.err);
    CHECK(reset.code == exit_code::ok);
    CHECK_FALSE(fs::exists(sb.vm_dir() / "disk.qcow2"));
    CHECK_FALSE(fs::exists(sb.vm_dir() / "state.json"));
    CHECK(fs::exists(sb.vm_dir() / "serial.log"));
    CHECK(contains(slurp(sb.vm_dir() / "serial.log"), "STACK_EMULATOR_READY"));
}

TEST_CASE("stackemu stop: a guest without an agent is powered down by the ACPI button", "[cli]") {
    sandbox sb({.agent = false, .probes = true});
    sb.fake["agent"] = false;
    start_ready(sb);
    auto stopped = sb.run({"stop", "--json"});
    INFO(stopped.err);
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto j = parse_json(stopped.out);
    CHECK(j["rung"] == "powerdown");
    CHECK(j["clean"] == true);
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu stop: a guest ignoring the agent and the button is ended by quit", "[cli]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    start_ready(sb);
    auto stopped = sb.run({"stop", "--json", "--stop-timeout", "1"});
    INFO(stopped.err);
    CHECK(stopped.code == exit_code::stopped_forcibly);
    const auto j = parse_json(stopped.out);
    CHECK(j["rung"] == "quit");
    CHECK(j["clean"] == false);
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "stopped");
}

// Both monitors wedged: the guest agent is still asked first (issue 16.1); this guest ignores
// it, so the signals end QEMU.
TEST_CASE("stackemu stop: a wedged QEMU monitor is ended by SIGTERM", "[cli]") {
    sandbox sb;
    sb.fake["hang_qmp_after_ms"] = 100;
    sb.fake["cooperative_guest"] = false;
    sb.extra_env = {"EMULATOR_REPLY_TIMEOUT=1"};
    start_ok(sb);
    // The monitor stops answering shortly after ready: status sees it first.
    REQUIRE(wait_for_state(sb, "monitor-busy"));
    auto stopped = sb.run({"stop", "--json", "--stop-timeout", "1"});
    INFO(stopped.err);
    CHECK(stopped.code == exit_code::stopped_forcibly);
    const auto j = parse_json(stopped.out);
    CHECK(j["rung"] == "sigterm");
    REQUIRE(j["rungs"].size() == 2);
    CHECK(j["rungs"][0]["rung"] == "agent-shutdown");
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE("stackemu stop: a wedged QEMU that ignores SIGTERM is ended by SIGKILL", "[cli]") {
    sandbox sb;
    sb.fake["hang_qmp_after_ms"] = 100;
    sb.fake["ignore_sigterm"] = true;
    sb.fake["cooperative_guest"] = false;
    sb.extra_env = {"EMULATOR_REPLY_TIMEOUT=1"};
    start_ok(sb);
    REQUIRE(wait_for_state(sb, "monitor-busy"));
    auto stopped = sb.run({"stop", "--json", "--stop-timeout", "1"});
    INFO(stopped.err);
    CHECK(stopped.code == exit_code::stopped_forcibly);
    const auto j = parse_json(stopped.out);
    CHECK(j["rung"] == "sigkill");
    REQUIRE(j["rungs"].size() == 3);
    CHECK(j["rungs"][0]["rung"] == "agent-shutdown");
    CHECK(j["rungs"][1]["rung"] == "sigterm");
    CHECK(sb.no_fakes_left());
    // SIGKILL leaves no clean exit behind, but stop removed the sockets: stopped, not crashed.
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE("stackemu start: the failure marker fails the start and stops the VM", "[cli]") {
    sandbox sb;
    sb.fake = {{"console", json::array({console_step(20, "cloud-init: running modules"),
                                        console_step(20, "cloud-init: module x failed"),
                                        console_step(20, "STACK_CLOUD_INIT_FAILED"),
                                        console_step(60000, "STACK_EMULATOR_READY"),
                                        console_action(0, "ready")})}};
    const auto t0 = std::chrono::steady_clock::now();
    auto started = sb.run(sb.start_args({"--ready-timeout", "600"}));
    const auto took = std::chrono::steady_clock::now() - t0;
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "the guest reported STACK_CLOUD_INIT_FAILED"));
    CHECK(contains(started.err, "cloud-init: running modules"));
    CHECK(contains(started.err, "cloud-init: module x failed"));
    CHECK(took < 60s);  // the marker, not the 600 s deadline nor the late ready line
    CHECK(sb.no_fakes_left());
    auto st = sb.status();
    CHECK(st.value("state", "") == "failed");
    CHECK(st.value("__exit", -1) == exit_code::failed);
    CHECK(contains(st.value("detail", ""), "STACK_CLOUD_INIT_FAILED"));
}

TEST_CASE("stackemu start --keep-on-failure leaves the failed VM for stop", "[cli]") {
    sandbox sb;
    sb.fake = {{"console", json::array({console_step(20, "cloud-init: running modules"),
                                        console_step(20, "STACK_CLOUD_INIT_FAILED")})}};
    auto started = sb.run(sb.start_args({"--keep-on-failure"}));
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "STACK_CLOUD_INIT_FAILED"));
    CHECK(contains(started.err, "--keep-on-failure"));
    CHECK(sb.fakes().size() == 1);
    auto st = sb.status();
    CHECK(st.value("state", "") == "failed");
    CHECK(st.value("__exit", -1) == exit_code::failed);
    CHECK(st.contains("pid"));

    auto stopped = sb.run({"stop"});
    INFO(stopped.err);
    CHECK((stopped.code == exit_code::stopped_cleanly ||
           stopped.code == exit_code::stopped_forcibly));
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu start: a guest kernel panic fails the start", "[cli]") {
    sandbox sb;
    sb.fake = {{"console",
                json::array({console_step(20, "Kernel panic - not syncing: VFS: Unable to mount"),
                             console_action(10, "panic")})}};
    auto started = sb.run(sb.start_args());
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "panic"));
    CHECK(contains(started.err, "VFS: Unable to mount"));
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "failed");
}

TEST_CASE("stackemu start: a panic seen only on the console fails the start without pvpanic",
          "[cli]") {
    sandbox sb;
    // No "panic" action: QEMU sends no GUEST_PANICKED, as for a guest without a pvpanic driver.
    sb.fake = {
        {"console", json::array({console_step(20, "starting services"),
                                 console_step(20,
                                              "[    1.9] Kernel panic - not syncing: Attempted "
                                              "to kill init! exitcode=0x00000100")})}};
    auto started = sb.run(sb.start_args({"--ready-timeout", "600"}));
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "the guest kernel panicked while booting"));
    CHECK(contains(started.err, "Attempted to kill init"));
    CHECK_FALSE(contains(started.err, "EMULATOR_READY_TIMEOUT"));
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu start: a ready line with more text after the marker is ready", "[cli]") {
    sandbox sb;
    sb.fake = {{"console", json::array({console_step(20, "starting services"),
                                        console_step(20, "STACK_EMULATOR_READY uptime=1.8"),
                                        console_action(0, "ready")})}};
    auto started = sb.run(sb.start_args({"--ready-timeout", "600"}));
    INFO(started.err);
    CHECK(started.code == exit_code::ok);
    CHECK(contains(started.out, "ready in"));
}

TEST_CASE("stackemu start: a console that stays empty is reported with its likely causes",
          "[cli]") {
    sandbox sb;
    sb.fake = {{"console", json::array()}};
    auto started = sb.run(sb.start_args({"--ready-timeout", "2"}));
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "the serial console stayed empty"));
    CHECK(contains(started.err, "built for amd64"));
    CHECK(contains(started.err, "console=ttyS0"));
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu logs --json prints one JSON object a line and stop records its rung", "[cli]") {
    sandbox sb;
    start_ready(sb);
    auto stopped = sb.run({"stop"});
    INFO(stopped.err);
    REQUIRE(stopped.code == exit_code::stopped_cleanly);
    auto logs = sb.run({"logs", "--json"});
    CHECK(logs.code == exit_code::ok);
    std::istringstream lines(logs.out);
    bool marker = false;
    int objects = 0;
    for (std::string line; std::getline(lines, line);) {
        auto j = json::parse(line, nullptr, false);
        REQUIRE_FALSE(j.is_discarded());
        ++objects;
        marker = marker || contains(j.value("line", ""), "STACK_EMULATOR_READY");
    }
    CHECK(objects >= 3);
    CHECK(marker);

    auto events = sb.run({"events", "--json"});
    json record;
    std::istringstream event_lines(events.out);
    for (std::string line; std::getline(event_lines, line);) {
        auto j = json::parse(line, nullptr, false);
        if (!j.is_discarded() && j.value("record", "") == "stopped") record = j;
    }
    INFO(events.out);
    REQUIRE(record.is_object());
    CHECK((record["rung"] == "agent-shutdown" || record["rung"] == "powerdown"));
    CHECK(record["clean"] == true);
    CHECK(record["total_ms"].is_number());
    CHECK(record["rungs"].is_object());
}

TEST_CASE("stackemu doctor checks the image the instance runs, or --image", "[cli]") {
    sandbox sb;
    // No stack-emulator-amd64.qcow2 in the image directory: only this instance's own image.
    start_ready(sb);
    auto doctor = sb.run({"doctor", "--json", "--accel", "tcg"});
    INFO(doctor.out << doctor.err);
    CHECK(contains(doctor.out, "image " + sb.image().string()));
    CHECK_FALSE(contains(doctor.out, "stack-emulator-amd64.qcow2"));
    auto named = sb.run(
        {"doctor", "--json", "--accel", "tcg", "--image", (sb.dir / "nothere.qcow2").string()});
    CHECK(named.code == exit_code::error);
    CHECK(contains(named.out, "no image at " + (sb.dir / "nothere.qcow2").string()));
    sb.run({"stop"});
}

TEST_CASE("stackemu start: QEMU crashing mid-boot fails the start", "[cli]") {
    sandbox sb;
    sb.fake = {
        {"console", json::array({console_step(20, "half booted"), console_action(10, "crash")})}};
    auto started = sb.run(sb.start_args());
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "QEMU"));
    CHECK(contains(started.err, "half booted"));
    CHECK(sb.no_fakes_left());
    auto st = sb.status();
    CHECK(st.value("__exit", -1) == exit_code::failed);
}

TEST_CASE("stackemu start: the ready deadline names what is missing", "[cli]") {
    sandbox sb;
    sb.fake = {{"console", json::array({console_step(20, "booting forever")})}};
    auto started = sb.run(sb.start_args({"--ready-timeout", "2"}));
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "EMULATOR_READY_TIMEOUT"));
    CHECK(contains(started.err, "the console line STACK_EMULATOR_READY"));
    CHECK(occurrences(started.err, "still missing") == 1);
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "failed");
}

TEST_CASE("stackemu start: a profile needing the agent times out against a guest without one",
          "[cli]") {
    sandbox sb;
    sb.fake["agent"] = false;
    auto started = sb.run(sb.start_args({"--ready-timeout", "2"}));
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "the guest agent"));
    CHECK_FALSE(contains(started.err, "the console line STACK_EMULATOR_READY"));
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu start: QEMU failing to set up a host forward fails the start", "[cli]") {
    sandbox sb;
    sb.fake = {{"startup_error", true}};
    auto started = sb.run(sb.start_args());
    INFO(started.err);
    CHECK((started.code == exit_code::failed || started.code == exit_code::error));
    CHECK(contains(started.err, "Could not set up host forwarding rule"));
    CHECK(contains(started.err, "EMULATOR_DASHBOARD_PORT"));
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "failed");
}

TEST_CASE("stackemu start: a host port already bound is refused before launching", "[cli]") {
    sandbox sb;
    held_port taken(sb.ports.backend);
    auto started = sb.run(sb.start_args());
    INFO(started.err);
    CHECK(started.code == exit_code::error);
    CHECK(contains(started.err, "EMULATOR_BACKEND_PORT"));
    CHECK(contains(started.err, std::to_string(sb.ports.backend)));
    CHECK(sb.fakes().empty());
    CHECK_FALSE(fs::exists(sb.vm_dir() / "qmp.sock"));
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE("stackemu: a QEMU killed by SIGKILL shows as crashed and the next start cleans up",
          "[cli]") {
    sandbox sb;
    const pid_t pid = start_ready(sb);
    REQUIRE(::kill(pid, SIGKILL) == 0);
    REQUIRE(wait_gone(pid));
    REQUIRE(fs::exists(sb.vm_dir() / "qmp.sock"));  // left behind

    auto st = sb.run({"status"});
    CHECK(st.code == exit_code::failed);
    CHECK(contains(st.out, "crashed"));

    auto again = sb.run(sb.start_args());
    INFO(again.err);
    CHECK(again.code == exit_code::ok);
    CHECK(contains(again.err, "stale sockets"));
    CHECK(sb.fakes().size() == 1);
    CHECK(sb.status().value("state", "") == "ready");
    auto stopped = sb.run({"stop"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu start: ten concurrent starts launch exactly one VM", "[cli]") {
    sandbox sb;
    struct child {
        pid_t pid;
        fs::path out, err;
    };
    std::vector<child> children(10);
    for (auto& c : children)
        c.pid = sb.spawn(sb.start_args(), sb.ports, sb.fake, c.out, c.err);
    int fresh = 0;
    int already = 0;
    int busy = 0;
    for (auto& c : children) {
        auto r = sandbox::finish(c.pid, c.out, c.err);
        INFO("stdout: " << r.out << "\nstderr: " << r.err);
        REQUIRE(r.code != -1);  // none hangs
        if (r.code == exit_code::busy) {
            ++busy;
            CHECK(contains(r.err, "busy"));
        } else {
            REQUIRE(r.code == exit_code::ok);
            if (contains(r.out, "already running"))
                ++already;
            else
                ++fresh;
        }
    }
    CHECK(fresh == 1);
    CHECK(fresh + already + busy == 10);
    CHECK(sb.fakes().size() == 1);
    auto st = sb.status();
    CHECK(st.value("state", "") == "ready");
    auto stopped = sb.run({"stop"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu: two instances run side by side", "[cli]") {
    sandbox sb;
    const port_set other = free_ports();
    start_ready(sb);
    auto b = sb.run_as(sb.start_args({"--name", "b"}), other, sb.fake);
    INFO(b.err);
    REQUIRE(b.code == exit_code::ok);
    CHECK(sb.fakes().size() == 2);

    auto listed = sb.run({"list", "--json"});
    CHECK(listed.code == exit_code::ok);
    const auto all = parse_json(listed.out);
    REQUIRE(all.is_array());
    REQUIRE(all.size() == 2);
    std::vector<std::string> names;
    for (const auto& j : all) {
        names.push_back(j["instance"].get<std::string>());
        CHECK(j["state"] == "ready");
    }
    std::sort(names.begin(), names.end());
    CHECK(names == std::vector<std::string>{"b", "default"});
    CHECK(all[0]["pid"] != all[1]["pid"]);

    auto stop_b = sb.run_as({"stop", "--name", "b"}, other, sb.fake);
    CHECK(stop_b.code == exit_code::stopped_cleanly);
    CHECK(sb.fakes().size() == 1);
    CHECK(sb.status().value("state", "") == "ready");
    auto stop_default = sb.run({"stop"});
    CHECK(stop_default.code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

TEST_CASE("stackemu pause and resume", "[cli]") {
    sandbox sb;
    start_ready(sb);
    auto paused = sb.run({"pause"});
    CHECK(paused.code == exit_code::ok);
    auto st = sb.status();
    CHECK(st.value("state", "") == "paused");
    CHECK(st.value("__exit", -1) == exit_code::paused);

    auto resumed = sb.run({"resume"});
    CHECK(resumed.code == exit_code::ok);
    st = sb.status();
    CHECK(st.value("state", "") == "ready");
    CHECK(st.value("__exit", -1) == exit_code::ok);

    auto stopped = sb.run({"stop"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}
