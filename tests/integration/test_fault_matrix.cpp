// The fault matrix of issue 6 against the real `stackemu` binary and fake-qemu: the controller
// killed (SIGKILL) at each phase of start, stop, reset, snapshot save and load, and of stop's
// saving of the ready state; QEMU killed at each phase of start, stop and the snapshot jobs;
// concurrent commands on one instance. Each phase is reached deterministically: the fake holds
// the command that phase waits on (a held launch, a swallowed command, a job that never
// concludes, a guest that ignores the shutdown request) and the test waits, by inotify, for
// the mark that shows the controller got there (a line in QEMU's -D log, stackemu's progress
// on stderr, state.json). No sleeps; ceilings only against hangs.
#include <fcntl.h>
#include <fmt/format.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/inotify.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <optional>
#include <set>
#include <string>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/snapshot.hpp"
#include "support/cli_harness.hpp"
#include "support/process.hpp"

extern char** environ;

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
namespace exit_code = stackemu::lifecycle::exit_code;
namespace snap_exit = stackemu::lifecycle::snapshot_exit;
using stackemu::test::cli::cli_result;
using stackemu::test::cli::contains;
using stackemu::test::cli::slurp;

namespace {

// Ceilings against hangs only: no command here takes more than a few seconds.
constexpr auto command_ceiling = 120s;
constexpr auto phase_ceiling = 60s;  // for the controller to reach the phase under test
// `status` takes no lock and waits on nothing for long: it must always answer within this.
constexpr auto status_ceiling = 20s;

// Waits until `path` holds `text` after byte `from`, woken by inotify on the file's directory
// (written, created or renamed into place). The offset of the match, or nullopt at the ceiling.
std::optional<std::size_t> wait_for_text(const fs::path& path, std::string_view text,
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
pid_t fake_pid_at(const std::string& log, std::size_t at) {
    const auto line = log.rfind('\n', at);
    const auto start = line == std::string::npos ? 0 : line + 1;
    constexpr std::string_view prefix = "fake-qemu[";
    REQUIRE(log.compare(start, prefix.size(), prefix) == 0);
    return std::stoi(log.substr(start + prefix.size()));
}

json console_step(int after_ms, std::string_view line) {
    return json{{"after_ms", after_ms}, {"line", line}};
}

// Boots, prints its ready marker, then answers HTTP and the agent.
json happy_guest() {
    return json{{"console", json::array({console_step(20, "[    0.000000] Linux version 6.1.0"),
                                         console_step(20, "STACK_EMULATOR_READY"),
                                         json{{"after_ms", 0}, {"action", "ready"}}})}};
}

// Boots and never gets ready: the controller waits for it until --ready-timeout.
json endless_boot() {
    return json{{"console", json::array({console_step(20, "booting slowly")})}};
}

// QEMU's log line for a QMP command the fake received ("qmp: <- {...}").
std::string command_mark(std::string_view command) {
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
    json fake = happy_guest();  // STACKEMU_FAKE_QEMU of the commands started from here
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
        auto made = stackemu::lifecycle::run_tool(
            {"qemu-img", "create", "-q", "-f", "qcow2", (dir / "base.qcow2").string(), "64M"});
        REQUIRE(made);
        REQUIRE(made->exit_code == 0);
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
             {{"name", "fault-test"},
              {"forwards", json::array({{{"name", "dashboard"}, {"guest", 8000}},
                                        {{"name", "backend"}, {"guest", 8001}},
                                        {{"name", "minio"}, {"guest", 9000}},
                                        {{"name", "inbucket"}, {"guest", 9001}}})},
              {"probes",
               json::array({{{"name", "backend"}, {"forward", "backend"}, {"path", "/health"}}})},
              {"ready_marker", "STACK_EMULATOR_READY"},
              {"failure_markers", json::array({"STACK_CLOUD_INIT_FAILED"})},
              {"agent", true}}},
            {"build_id", "fault-test-1"}};
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

// ---- What the next commands must find after a fault ----

// state.json, when there is one, is whole: the old or the new content, never a mix.
void check_state_whole(const sandbox& sb) {
    const auto path = sb.vm_dir() / "state.json";
    if (!fs::exists(path)) return;
    const auto text = slurp(path);
    INFO("state.json: " << text);
    const auto j = json::parse(text, nullptr, false);
    CHECK(j.is_object());
}

// snapshots.json, when there is one, parses; returns the names it records.
std::set<std::string> recorded_snapshots(const sandbox& sb) {
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
void check_lock_free(const sandbox& sb) {
    auto held = stackemu::lifecycle::holder((sb.vm_dir() / "lock").string());
    REQUIRE(held);
    CHECK_FALSE(held->has_value());
}

// The overlay is a sound qcow2 (QEMU's death must not have left it damaged).
void check_overlay(const sandbox& sb) {
    auto checked = stackemu::lifecycle::run_tool(
        {"qemu-img", "check", "-q", (sb.vm_dir() / "disk.qcow2").string()});
    REQUIRE(checked);
    INFO(checked->out << checked->err);
    CHECK(checked->exit_code == 0);
}

// While a command holds the instance, status answers at once and names it: "starting" for a
// start, "busy" for the others.
void check_status_during(sandbox& sb, const std::string& operation) {
    const auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(st.value("state", "") == (operation == "start" ? "starting" : "busy"));
    CHECK(st.value("__exit", -1) ==
          (operation == "start" ? exit_code::not_healthy : exit_code::busy));
    CHECK(contains(st.value("detail", ""), "stackemu " + operation + " (pid"));
}

struct expected_after_kill {
    bool vm_alive = true;          // QEMU outlived the controller
    std::set<std::string> states;  // what `status` may truthfully say
    int status_exit = exit_code::ok;
    std::string detail;  // part of status' detail ("" to skip)
    // `start` on the surviving VM: ok (already running and ready) or failed (a VM whose
    // start or stop was interrupted is not reported ready).
    int restart_exit = exit_code::ok;
    std::string stop_command = "stop";
    // QEMU never ran the guest's CPUs (prelaunch): stop quits it at once, no guest to ask.
    bool never_ran = false;
};

// A start or stop killed half-way: its VM runs on, but status and start say it was never
// confirmed ready (or was half-way through a shutdown), and `stop_command` ends it.
expected_after_kill interrupted_command(std::string stop_command = "stop", bool never_ran = false) {
    expected_after_kill want;
    want.never_ran = never_ran;
    want.states = {"unhealthy"};
    want.status_exit = exit_code::not_healthy;
    want.detail = "interrupted";
    want.restart_exit = exit_code::failed;
    want.stop_command = std::move(stop_command);
    return want;
}

// A snapshot command killed half-way: the VM it worked on is as ready as before.
expected_after_kill still_ready() {
    expected_after_kill want;
    want.states = {"ready"};
    return want;
}

// After a controller was killed: status is truthful, the lock is free, state.json is whole,
// QEMU (when it survived) is reached through its socket and no second one is launched, and
// the instance stops and starts again normally.
void check_recovery(sandbox& sb, const expected_after_kill& want) {
    check_state_whole(sb);
    check_lock_free(sb);
    const auto alive = sb.fakes();
    if (want.vm_alive) {
        REQUIRE(alive.size() == 1);
        CHECK(fs::exists(sb.vm_dir() / "qmp.sock"));
    } else {
        CHECK(alive.empty());
    }

    auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(want.states.contains(st.value("state", "")));
    CHECK(st.value("__exit", -1) == want.status_exit);
    if (!want.detail.empty()) CHECK(contains(st.value("detail", ""), want.detail));
    if (want.vm_alive) CHECK(st.value("pid", -1) == alive.front());

    if (want.vm_alive) {
        // A second start finds the VM through its socket and launches no other.
        auto again = sb.run(sb.start_args({"--quiet"}));
        CHECK(again.code == want.restart_exit);
        if (want.restart_exit != exit_code::ok) CHECK(contains(again.err, "interrupted"));
        CHECK(sb.fakes() == alive);
    }

    // The handle works: the VM stops through its socket, and nothing is left running.
    auto stopped = sb.run({want.stop_command, "--stop-timeout", "3", "--json"});
    CHECK(stopped.code != exit_code::busy);
    CHECK((stopped.code == exit_code::ok || stopped.code == exit_code::stopped_forcibly));
    if (want.never_ran) {
        const auto j = json::parse(stopped.out, nullptr, false);
        REQUIRE(j.is_object());
        CHECK(j["rung"] == "quit");
        CHECK(j["rungs"].size() == 1);
    }
    CHECK(sb.no_fakes_left());
    check_state_whole(sb);
    const auto after = sb.status();
    CHECK((after.value("state", "") == "stopped" || after.value("state", "") == "crashed"));

    // And the instance starts afresh: one VM, ready; then a clean stop.
    sb.fake = happy_guest();
    auto fresh = sb.run(sb.start_args({"--quiet"}));
    CHECK(fresh.code == exit_code::ok);
    CHECK(sb.fakes().size() == 1);
    CHECK(sb.status().value("state", "") == "ready");
    CHECK(sb.run({"stop"}).code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

// After QEMU was killed under a command: the command reported it, status says crashed or
// failed (exit 6), the overlay is intact and the next start works.
void check_after_qemu_kill(sandbox& sb, const cli_result& r, int command_exit) {
    CHECK(r.code == command_exit);
    check_state_whole(sb);
    check_lock_free(sb);
    CHECK(sb.no_fakes_left());
    auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK((st.value("state", "") == "crashed" || st.value("state", "") == "failed"));
    CHECK(st.value("__exit", -1) == exit_code::failed);
    check_overlay(sb);

    sb.fake = happy_guest();
    auto again = sb.run(sb.start_args({"--quiet"}));
    CHECK(again.code == exit_code::ok);
    CHECK(sb.fakes().size() == 1);
    CHECK(sb.status().value("state", "") == "ready");
    CHECK(sb.run({"stop"}).code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

// A snapshot table the fake shares between its processes, holding a ready state saved by an
// earlier run (no stackemu record: start boots cold; stop refreshes it).
void seed_ready_state(sandbox& sb) {
    const auto table = sb.dir / "fake-snapshots.json";
    std::ofstream(table) << json{{"snapshots", json::array({json{{"tag", "stackemu-ready"},
                                                                 {"vm_state_size", 925696},
                                                                 {"date_sec", 1700000000},
                                                                 {"vm_clock_nsec", 5000000000}}})}}
                                .dump();
    sb.fake["state_file"] = table.string();
}

}  // namespace

// ---- The controller killed ----

TEST_CASE("fault matrix: start killed while QEMU is launching", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["hold_launch_until"] = sb.release_file().string();
    auto start = sb.spawn(sb.start_args());
    REQUIRE(wait_for_text(sb.qemu_log(), "holding the launch"));
    check_status_during(sb, "start");
    sb.kill_command(start);
    std::ofstream(sb.release_file()) << "go\n";
    REQUIRE(wait_for_text(sb.qemu_log(), "started: "));  // the daemon runs, CPUs stopped (-S)
    check_recovery(sb, interrupted_command("stop", true));
}

TEST_CASE("fault matrix: start killed while cont is pending", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["never_answer"] = "cont";
    auto start = sb.spawn(sb.start_args());
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("cont")));
    check_status_during(sb, "start");
    sb.kill_command(start);
    check_recovery(sb, interrupted_command("stop", true));
}

TEST_CASE("fault matrix: start killed while it waits for the guest", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake = endless_boot();
    auto start = sb.spawn(sb.start_args());
    REQUIRE(wait_for_text(start.err, "guest booting"));
    check_status_during(sb, "start");
    sb.kill_command(start);
    check_recovery(sb, interrupted_command());
}

TEST_CASE("fault matrix: stop killed while the guest is asked to shut down",
          "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.start_ready();
    auto stop = sb.spawn({"stop", "--stop-timeout", "600"});
    REQUIRE(wait_for_text(stop.err, "asked the guest agent to shut the guest down"));
    check_status_during(sb, "stop");
    sb.kill_command(stop);
    check_recovery(sb, interrupted_command());
}

TEST_CASE("fault matrix: stop killed while quit is pending", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.fake["never_answer"] = "quit";
    sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto stop = sb.spawn({"stop", "--stop-timeout", "1"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("quit"), from));
    check_status_during(sb, "stop");
    sb.kill_command(stop);
    check_recovery(sb, interrupted_command());
}

TEST_CASE("fault matrix: reset killed while the guest is asked to shut down",
          "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.start_ready();
    auto reset = sb.spawn({"reset", "--stop-timeout", "600"});
    REQUIRE(wait_for_text(reset.err, "asked the guest agent to shut the guest down"));
    check_status_during(sb, "reset");
    sb.kill_command(reset);
    REQUIRE(fs::exists(sb.vm_dir() / "disk.qcow2"));  // the overlay goes only after QEMU
    check_recovery(sb, interrupted_command("reset"));
    // The recovering reset finished the job: the overlay went with its VM.
}

TEST_CASE("fault matrix: snapshot save killed while QEMU's job runs", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["job_never_concludes"] = "snapshot-save";
    sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto save = sb.spawn({"snapshot", "save", "mid", "--timeout", "600"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-save"), from));
    check_status_during(sb, "snapshot");
    sb.kill_command(save);
    // The job outlives its controller in QEMU: the next snapshot command says so, and the
    // record holds no snapshot that QEMU does not list.
    auto next = sb.run({"snapshot", "save", "after", "--json"});
    CHECK(next.code == snap_exit::busy);
    CHECK(contains(next.err, "still running"));
    auto listed = sb.run({"snapshot", "list", "--json"});
    CHECK(listed.code == snap_exit::ok);
    CHECK_FALSE(recorded_snapshots(sb).contains("mid"));
    check_recovery(sb, still_ready());
}

TEST_CASE("fault matrix: snapshot load killed while QEMU's job runs", "[fault][kill-controller]") {
    sandbox sb;
    sb.fake["job_never_concludes"] = "snapshot-load";
    sb.start_ready();
    REQUIRE(sb.run({"snapshot", "save", "clean"}).code == snap_exit::ok);
    const auto from = sb.qemu_log_size();
    auto load = sb.spawn({"snapshot", "load", "clean", "--timeout", "600"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-load"), from));
    check_status_during(sb, "snapshot");
    sb.kill_command(load);
    CHECK(recorded_snapshots(sb) == std::set<std::string>{"clean"});
    check_recovery(sb, still_ready());
}

TEST_CASE("fault matrix: stop killed while it saves the ready state", "[fault][kill-controller]") {
    sandbox sb;
    seed_ready_state(sb);
    sb.fake["job_never_concludes"] = "snapshot-save";
    sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto stop = sb.spawn({"stop"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-save"), from));
    check_status_during(sb, "stop");
    sb.kill_command(stop);
    // The save never finished: the next start must not resume a state older than the disk.
    const auto mark = json::parse(slurp(sb.vm_dir() / "ready-state.json"), nullptr, false);
    CHECK_FALSE((mark.is_object() && mark.value("current", false)));
    check_recovery(sb, still_ready());
}

// ---- QEMU killed ----

TEST_CASE("fault matrix: QEMU killed while it launches", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["hold_launch_until"] = sb.release_file().string();
    auto start = sb.spawn(sb.start_args());
    const auto at = wait_for_text(sb.qemu_log(), "holding the launch");
    REQUIRE(at);
    const pid_t daemon = fake_pid_at(slurp(sb.qemu_log()), *at);
    REQUIRE(::kill(daemon, SIGKILL) == 0);
    auto r = sb.finish(start);
    // The report quotes QEMU's log (a real QEMU killed here leaves it empty, and the report
    // says QEMU exited without saying why).
    CHECK(contains(r.err, "QEMU said"));
    check_after_qemu_kill(sb, r, exit_code::failed);
}

TEST_CASE("fault matrix: QEMU killed while cont is pending", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["never_answer"] = "cont";
    auto start = sb.spawn(sb.start_args());
    const auto at = wait_for_text(sb.qemu_log(), command_mark("cont"));
    REQUIRE(at);
    REQUIRE(::kill(fake_pid_at(slurp(sb.qemu_log()), *at), SIGKILL) == 0);
    auto r = sb.finish(start);
    CHECK(contains(r.err, "QEMU"));
    CHECK(contains(r.err, "without a SHUTDOWN event"));
    check_after_qemu_kill(sb, r, exit_code::failed);
}

TEST_CASE("fault matrix: QEMU killed while the guest boots", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake = endless_boot();
    auto start = sb.spawn(sb.start_args({"--console"}));
    REQUIRE(wait_for_text(start.err, "guest: booting slowly"));  // read by the controller
    const auto state = json::parse(slurp(sb.vm_dir() / "state.json"));
    REQUIRE(::kill(state["pid"].get<pid_t>(), SIGKILL) == 0);
    auto r = sb.finish(start);
    CHECK(contains(r.err, "without a SHUTDOWN event"));
    CHECK(contains(r.err, "booting slowly"));  // the console's last lines
    check_after_qemu_kill(sb, r, exit_code::failed);
}

TEST_CASE("fault matrix: QEMU killed while the guest is asked to shut down", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    const pid_t qemu = sb.start_ready();
    auto stop = sb.spawn({"stop", "--stop-timeout", "600"});
    REQUIRE(wait_for_text(stop.err, "asked the guest agent to shut the guest down"));
    REQUIRE(::kill(qemu, SIGKILL) == 0);
    auto r = sb.finish(stop);
    CHECK(contains(r.err + r.out, "crashed"));
    check_after_qemu_kill(sb, r, exit_code::stopped_forcibly);
}

TEST_CASE("fault matrix: QEMU killed while quit is pending", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.fake["never_answer"] = "quit";
    const pid_t qemu = sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto stop = sb.spawn({"stop", "--stop-timeout", "1"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("quit"), from));
    REQUIRE(::kill(qemu, SIGKILL) == 0);
    auto r = sb.finish(stop);
    CHECK(contains(r.err + r.out, "crashed"));
    check_after_qemu_kill(sb, r, exit_code::stopped_forcibly);
}

TEST_CASE("fault matrix: QEMU killed while stop saves the ready state", "[fault][kill-qemu]") {
    sandbox sb;
    seed_ready_state(sb);
    sb.fake["job_never_concludes"] = "snapshot-save";
    const pid_t qemu = sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto stop = sb.spawn({"stop"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-save"), from));
    REQUIRE(::kill(qemu, SIGKILL) == 0);
    auto r = sb.finish(stop);
    CHECK(contains(r.err + r.out, "crashed"));
    check_after_qemu_kill(sb, r, exit_code::stopped_forcibly);
}

TEST_CASE("fault matrix: QEMU killed during a snapshot save job", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["job_never_concludes"] = "snapshot-save";
    const pid_t qemu = sb.start_ready();
    const auto from = sb.qemu_log_size();
    auto save = sb.spawn({"snapshot", "save", "mid", "--timeout", "600"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-save"), from));
    REQUIRE(::kill(qemu, SIGKILL) == 0);
    auto r = sb.finish(save);
    CHECK(contains(r.err, "QEMU exited"));
    CHECK_FALSE(recorded_snapshots(sb).contains("mid"));
    check_after_qemu_kill(sb, r, snap_exit::job_failed);
}

TEST_CASE("fault matrix: QEMU killed during a snapshot load job", "[fault][kill-qemu]") {
    sandbox sb;
    sb.fake["job_never_concludes"] = "snapshot-load";
    const pid_t qemu = sb.start_ready();
    REQUIRE(sb.run({"snapshot", "save", "clean"}).code == snap_exit::ok);
    const auto from = sb.qemu_log_size();
    auto load = sb.spawn({"snapshot", "load", "clean", "--timeout", "600"});
    REQUIRE(wait_for_text(sb.qemu_log(), command_mark("snapshot-load"), from));
    REQUIRE(::kill(qemu, SIGKILL) == 0);
    auto r = sb.finish(load);
    CHECK(contains(r.err, "QEMU exited"));
    CHECK(recorded_snapshots(sb) == std::set<std::string>{"clean"});
    check_after_qemu_kill(sb, r, snap_exit::job_failed);
}

// ---- Concurrency ----

TEST_CASE("concurrency: ten starts at once with status alongside launch one VM",
          "[fault][concurrency]") {
    sandbox sb;
    std::vector<running_command> starts;
    std::vector<running_command> statuses;
    for (int i = 0; i < 10; ++i) {
        starts.push_back(sb.spawn(sb.start_args({"--quiet"})));
        if (i % 3 == 0) statuses.push_back(sb.spawn({"status", "--json"}));
    }
    int fresh = 0, already = 0, busy = 0;
    for (const auto& c : starts) {
        auto r = sb.finish(c);
        REQUIRE(r.code != -1);  // none hangs
        if (r.code == exit_code::busy) {
            ++busy;
            CHECK(contains(r.err, "busy"));
        } else {
            REQUIRE(r.code == exit_code::ok);
            (contains(r.out, "already running") ? already : fresh) += 1;
        }
    }
    CHECK(fresh == 1);
    CHECK(fresh + already + busy == 10);
    for (const auto& c : statuses) {
        auto r = sb.finish(c, status_ceiling);
        REQUIRE(r.code != -1);
        const auto j = json::parse(r.out, nullptr, false);
        REQUIRE(j.is_object());
        // Before any start took the lock, while one holds it, after it is ready.
        const std::set<std::string> truthful{"stopped", "starting", "ready"};
        CHECK(truthful.contains(j.value("state", "")));
    }
    CHECK(sb.fakes().size() == 1);
    check_state_whole(sb);
    CHECK(sb.status().value("state", "") == "ready");
    CHECK(sb.run({"stop"}).code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
}

TEST_CASE("concurrency: stop status and snapshot during start", "[fault][concurrency]") {
    sandbox sb;
    sb.fake["hold_launch_until"] = sb.release_file().string();
    auto start = sb.spawn(sb.start_args());
    REQUIRE(wait_for_text(sb.qemu_log(), "holding the launch"));

    auto st = sb.status();
    CHECK(st.value("state", "") == "starting");
    CHECK(st.value("__exit", -1) == exit_code::not_healthy);
    auto stop = sb.run({"stop"});
    CHECK(stop.code == exit_code::busy);
    CHECK(contains(stop.err, "stackemu start"));
    auto save = sb.run({"snapshot", "save", "early"});
    CHECK(save.code == snap_exit::busy);
    check_state_whole(sb);

    std::ofstream(sb.release_file()) << "go\n";
    auto started = sb.finish(start);
    CHECK(started.code == exit_code::ok);
    CHECK(sb.fakes().size() == 1);
    CHECK(sb.status().value("state", "") == "ready");
    CHECK(sb.run({"stop"}).code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
    CHECK(recorded_snapshots(sb).empty());
}

TEST_CASE("concurrency: snapshot load and status during stop", "[fault][concurrency]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.fake["state_file"] = (sb.dir / "fake-snapshots.json").string();
    sb.start_ready();
    REQUIRE(sb.run({"snapshot", "save", "clean"}).code == snap_exit::ok);
    auto stop = sb.spawn({"stop", "--stop-timeout", "600"});
    REQUIRE(wait_for_text(stop.err, "asked the guest agent to shut the guest down"));

    auto st = sb.status();
    CHECK(st.value("state", "") == "busy");
    CHECK(st.value("__exit", -1) == exit_code::busy);
    CHECK(contains(st.value("detail", ""), "stackemu stop"));
    auto load = sb.run({"snapshot", "load", "clean", "--json"});
    CHECK(load.code == snap_exit::busy);
    CHECK(contains(load.err, "stackemu stop"));
    check_state_whole(sb);

    // The guest ignores the request; quitting QEMU by hand through the second monitor ends
    // the stop's wait (its first rung sees QEMU's SHUTDOWN and exit).
    CHECK(sb.run({"qmp", "quit"}).code == exit_code::ok);
    auto stopped = sb.finish(stop);
    CHECK(stopped.code == exit_code::stopped_forcibly);
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "stopped");

    // The snapshot and its record survived intact, and still fit the VM.
    CHECK(recorded_snapshots(sb) == std::set<std::string>{"clean"});
    sb.start_ready();
    auto listed = sb.run({"snapshot", "list", "--json"});
    REQUIRE(listed.code == snap_exit::ok);
    const auto j = json::parse(listed.out);
    REQUIRE(j["snapshots"].size() == 1);
    CHECK(j["snapshots"][0]["name"] == "clean");
    CHECK(j["snapshots"][0]["compatible"] == true);
    CHECK(sb.run({"snapshot", "load", "clean"}).code == snap_exit::ok);
    CHECK(sb.run({"stop", "--stop-timeout", "1"}).code == exit_code::stopped_forcibly);
    CHECK(sb.no_fakes_left());
}
