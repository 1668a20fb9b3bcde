// The fault matrix of issue 6 against the real `stackemu` binary and fake-qemu: the controller
// killed (SIGKILL) at each phase of start, stop, reset, snapshot save and load, and of stop's
// saving of the ready state; QEMU killed at each phase of start, stop and the snapshot jobs;
// concurrent commands on one instance. Each phase is reached deterministically: the fake holds
// the command that phase waits on (a held launch, a swallowed command, a job that never
// concludes, a guest that ignores the shutdown request) and the test waits, by inotify, for
// the mark that shows the controller got there (a line in QEMU's -D log, stackemu's progress
// on stderr, state.json). No sleeps; ceilings only against hangs.
#include <fmt/format.h>
#include <signal.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <set>
#include <string>

#include "fault_sandbox.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/snapshot.hpp"

using namespace std::chrono_literals;
using namespace stackemu::test::fault;

namespace {

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

// A profile directory for build-image whose provisioning the fake's console script plays out.
fs::path write_provisioning_profile(const fs::path& dir, std::string_view name) {
    fs::create_directories(dir);
    std::ofstream(dir / "profile.json") << fmt::format(R"({{
        "name": "{}", "forwards": [], "probes": [], "agent": true,
        "ready_marker": "STACK_EMULATOR_READY", "failure_markers": ["STACK_CLOUD_INIT_FAILED"],
        "provision": {{"done_marker": "STACK_CLOUD_INIT_DONE",
                      "failed_marker": "STACK_CLOUD_INIT_FAILED",
                      "progress_prefix": "STACK_PROGRESS "}}}})",
                                                       name);
    std::ofstream(dir / "user-data") << "#cloud-config\n{}\n";
    std::ofstream(dir / "meta-data") << fmt::format("instance-id: {}\n", name);
    return dir;
}

// build-image killed while the guest provisions: its VM runs on under the instance
// build-<profile>; the next build refuses with the command that ends it; once it is stopped a
// build succeeds, and files a killed build left half-written are removed (never published).
TEST_CASE("fault matrix: build-image killed while it provisions", "[fault][kill-controller]") {
    sandbox sb;
    const fs::path profile = write_provisioning_profile(sb.dir / "profile", "killtest");
    const fs::path out_dir = sb.dir / "out";
    const fs::path image = out_dir / "killtest.qcow2";
    const std::vector<std::string> build{
        "build-image", "--profile",    profile.string(), "--base", (sb.dir / "base.qcow2").string(),
        "--output",    image.string(), "--accel",        "tcg"};
    const fs::path build_vm = sb.dir / "run" / "instances" / "build-killtest" / "vm";

    // Provisioning that never ends; the build is killed in the middle of it.
    sb.fake = json{{"console", json::array({console_step(20, "STACK_PROGRESS installing")})}};
    auto first = sb.spawn(build);
    REQUIRE(wait_for_text(build_vm / "serial.log", "STACK_PROGRESS installing"));
    sb.kill_command(first);
    REQUIRE(sb.fakes().size() == 1);  // the provisioning VM runs on, reachable by name

    // The next build says what holds it, changes nothing, and the VM stops by its name.
    auto refused = sb.run(build);
    CHECK(refused.code == exit_code::busy);
    CHECK_THAT(refused.err, Catch::Contains("stackemu stop --name build-killtest"));
    CHECK_FALSE(fs::exists(image));
    auto stopped = sb.run({"stop", "--name", "build-killtest", "--stop-timeout", "3"});
    CHECK((stopped.code == exit_code::ok || stopped.code == exit_code::stopped_forcibly));
    CHECK(sb.no_fakes_left());

    // What a build killed while publishing would leave: removed when its pid is gone; a file
    // of a build still running (this process stands in for it) stays.
    fs::create_directories(out_dir);
    const fs::path abandoned = out_dir / "killtest.qcow2.partial-4194302";
    const fs::path in_progress = out_dir / fmt::format("other.qcow2.partial-{}", ::getpid());
    std::ofstream(abandoned) << "half an image";
    std::ofstream(in_progress) << "another build's image";

    sb.fake = json{{"console", json::array({console_step(20, "STACK_PROGRESS installing"),
                                            console_step(20, "STACK_CLOUD_INIT_DONE"),
                                            json{{"after_ms", 20}, {"action", "poweroff"}}})}};
    auto built = sb.run(build);
    CHECK(built.code == exit_code::ok);
    CHECK(fs::exists(image));
    CHECK(fs::exists(out_dir / "killtest.json"));
    CHECK_FALSE(fs::exists(abandoned));
    CHECK(fs::exists(in_progress));
    CHECK_THAT(built.err, Catch::Contains("left by a build that was killed"));
    CHECK(sb.no_fakes_left());
}

// The human report of a failed provisioning (the e2e tier checks the JSON one on a real guest):
// the cause, the guest's last lines, where the logs are, and that nothing was written.
TEST_CASE("build-image: a failure marker is reported with the guest's lines, nothing written",
          "[fault]") {
    sandbox sb;
    const fs::path profile = write_provisioning_profile(sb.dir / "profile", "failtest");
    const fs::path image = sb.dir / "out" / "failtest.qcow2";
    sb.fake = json{{"console", json::array({console_step(20, "STACK_PROGRESS installing"),
                                            console_step(20, "apt-get: no such package"),
                                            console_step(20, "STACK_CLOUD_INIT_FAILED")})}};
    const auto r =
        sb.run({"build-image", "--profile", profile.string(), "--base",
                (sb.dir / "base.qcow2").string(), "--output", image.string(), "--accel", "tcg"});
    INFO(r.err);
    CHECK(r.code == exit_code::failed);
    CHECK_THAT(r.err, Catch::Contains("stackemu build-image: failed:"));
    CHECK_THAT(r.err, Catch::Contains("STACK_CLOUD_INIT_FAILED"));
    CHECK_THAT(r.err, Catch::Contains("console lines ---"));
    CHECK_THAT(r.err, Catch::Contains("apt-get: no such package"));
    CHECK_THAT(r.err, Catch::Contains("no image was written"));
    CHECK_FALSE(fs::exists(image));
    CHECK_FALSE(fs::exists(sb.dir / "out" / "failtest.json"));
    CHECK(sb.no_fakes_left());
}

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
    // After stackemu sent quit, an exit without reply or SHUTDOWN is what quit does when QEMU
    // closes before flushing them (issue 16.5): stopped by quit, not a crash.
    CHECK(r.code == exit_code::stopped_forcibly);
    CHECK_FALSE(contains(r.err + r.out, "crashed"));
    check_state_whole(sb);
    check_lock_free(sb);
    CHECK(sb.no_fakes_left());
    auto st = sb.status();
    CHECK(st.value("state", "") == "stopped");
    CHECK(st.value("__exit", -1) == exit_code::stopped);
    check_overlay(sb);
    sb.fake = happy_guest();
    CHECK(sb.run(sb.start_args({"--quiet"})).code == exit_code::ok);
    CHECK(sb.run({"stop"}).code == exit_code::stopped_cleanly);
    CHECK(sb.no_fakes_left());
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

// ---- A misbehaving QEMU (issues 16 and 17) ----

namespace {

// The stop's JSON report.
json stop_report(const cli_result& r) {
    auto j = json::parse(r.out, nullptr, false);
    INFO("stop: " << r.out << r.err);
    REQUIRE(j.is_object());
    return j;
}

}  // namespace

TEST_CASE("misbehaving QEMU: a greeting that takes 3 s still gets a clean stop",
          "[fault][hostile-qemu]") {
    sandbox sb;
    sb.fake["greeting_delay_ms"] = 3000;  // a loaded host; EMULATOR_REPLY_TIMEOUT is 30 s
    const pid_t qemu = sb.start_ready();  // status waited for the greeting too
    auto listed = sb.run({"snapshot", "list", "--json"});
    CHECK(listed.code == snap_exit::ok);
    auto stopped = sb.run({"stop", "--json"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto j = stop_report(stopped);
    CHECK(j["rung"] == "agent-shutdown");
    CHECK(j["clean"] == true);
    CHECK(stackemu::test::wait_gone(qemu, 30s));
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE(
    "misbehaving QEMU: a monitor held by another client is busy, and stop still asks the "
    "guest",
    "[fault][hostile-qemu]") {
    sandbox sb;
    const pid_t qemu = sb.start_ready();
    auto other = hold_monitor(sb.vm_dir() / "qmp.sock");
    sb.extra_env = {"EMULATOR_REPLY_TIMEOUT=1"};

    auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(st.value("state", "") == "monitor-busy");
    CHECK(st.value("__exit", -1) == exit_code::not_healthy);
    CHECK(st.value("pid", -1) == qemu);
    CHECK(contains(st.value("detail", ""), "monitor busy/slow"));

    auto listed = sb.run({"snapshot", "list"});
    CHECK(listed.code == snap_exit::busy);
    CHECK(contains(listed.err, "is busy"));

    // The guest is asked through the second monitor and the agent: a clean stop, no signal.
    auto stopped = sb.run({"stop", "--json"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto j = stop_report(stopped);
    CHECK(j["rung"] == "agent-shutdown");
    CHECK(j["clean"] == true);
    CHECK(contains(stopped.err, "second monitor"));
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE("misbehaving QEMU: a wedged QEMU with a full backlog is alive, and stop ends it",
          "[fault][hostile-qemu]") {
    sandbox sb;
    sb.fake["accept_limit"] = 1;  // start's own connection, then nobody is accepted
    REQUIRE(sb.run(sb.start_args({"--quiet"})).code == exit_code::ok);
    const auto alive = sb.fakes();
    REQUIRE(alive.size() == 1);
    auto abandoned = fill_backlog(sb.vm_dir() / "qmp.sock");
    sb.extra_env = {"EMULATOR_REPLY_TIMEOUT=1"};

    auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(st.value("state", "") == "monitor-busy");
    CHECK(st.value("__exit", -1) == exit_code::not_healthy);
    CHECK(st.value("pid", -1) == alive.front());
    CHECK(fs::exists(sb.vm_dir() / "qmp.sock"));  // not mistaken for a dead QEMU's leftovers

    auto again = sb.run(sb.start_args({"--quiet"}));
    CHECK(again.code != exit_code::ok);
    CHECK(contains(again.err, "still running"));
    CHECK(sb.fakes() == alive);

    auto stopped = sb.run({"stop", "--json"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto j = stop_report(stopped);
    CHECK(j["rung"] == "agent-shutdown");
    CHECK_FALSE(contains(stopped.out + stopped.err, "crashed"));
    CHECK(sb.no_fakes_left());
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE("misbehaving QEMU: quit ending QEMU without a reply is a stop by quit, not a crash",
          "[fault][hostile-qemu]") {
    sandbox sb;
    sb.fake["cooperative_guest"] = false;
    sb.fake["quit_without_reply"] = true;
    sb.start_ready();
    auto stopped = sb.run({"stop", "--json", "--stop-timeout", "1"});
    CHECK(stopped.code == exit_code::stopped_forcibly);
    const auto j = stop_report(stopped);
    CHECK(j["rung"] == "quit");
    CHECK_FALSE(contains(stopped.out + stopped.err, "crashed"));
    CHECK(sb.no_fakes_left());
    const auto st = sb.status();
    CHECK(st.value("state", "") == "stopped");
    CHECK(st.value("__exit", -1) == exit_code::stopped);
    const auto state = json::parse(slurp(sb.vm_dir() / "state.json"));
    CHECK(state["stop_rung"] == "quit");
}

TEST_CASE("misbehaving QEMU: a guest SHUTDOWN followed by a slow exit is a clean stop",
          "[fault][hostile-qemu]") {
    sandbox sb;
    sb.fake["linger_after_shutdown_ms"] = 15000;  // longer than any wait of the old ladder
    sb.start_ready();
    auto stopped = sb.run({"stop", "--json"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
    const auto j = stop_report(stopped);
    CHECK(j["rung"] == "agent-shutdown");
    CHECK(j["clean"] == true);
    CHECK_FALSE(contains(stopped.err, "did not shut down"));
    CHECK(sb.no_fakes_left());
    const auto state = json::parse(slurp(sb.vm_dir() / "state.json"));
    CHECK(state["stop_clean"] == true);
    CHECK(sb.status().value("state", "") == "stopped");
}

TEST_CASE(
    "misbehaving QEMU: another binary of the same name behind the socket is refused and "
    "not signalled",
    "[fault][hostile-qemu]") {
    sandbox sb;
    // The instance's QEMU is a copy of the fake; after it dies a different file (another inode)
    // of the same path and name serves the instance's sockets.
    const fs::path qemu_path = sb.dir / "bin" / "qemu-system-x86_64";
    fs::create_directories(qemu_path.parent_path());
    fs::copy_file(STACKEMU_FAKE_QEMU_EXE, qemu_path);
    sb.extra_env = {"EMULATOR_QEMU=" + qemu_path.string()};
    const pid_t launched = sb.start_ready();
    REQUIRE(::kill(launched, SIGKILL) == 0);
    REQUIRE(stackemu::test::wait_gone(launched, 30s));
    fs::remove(qemu_path);
    fs::copy_file(STACKEMU_FAKE_QEMU_EXE, qemu_path);

    auto argv =
        json::parse(slurp(sb.vm_dir() / "state.json"))["argv"].get<std::vector<std::string>>();
    argv.front() = qemu_path.string();
    stackemu::lifecycle::launch_options quiet;
    quiet.env.push_back({"STACKEMU_FAKE_QEMU", std::nullopt});
    REQUIRE(
        stackemu::lifecycle::launch_daemonized(argv, (sb.dir / "impostor.err").string(), quiet));
    ucred peer{};
    {
        // Closed at once: the monitor stays free for the commands below.
        auto [probe, err] = connect_unix(sb.vm_dir() / "qmp.sock");
        REQUIRE(err == 0);
        socklen_t len = sizeof peer;
        REQUIRE(::getsockopt(probe.fd, SOL_SOCKET, SO_PEERCRED, &peer, &len) == 0);
    }
    const pid_t impostor = peer.pid;
    REQUIRE(impostor > 0);
    REQUIRE(impostor != launched);
    struct reaper {
        pid_t pid;
        ~reaper() { ::kill(pid, SIGKILL); }
    } const cleanup{impostor};

    auto stopped = sb.run({"stop", "--json"});
    CHECK(stopped.code == exit_code::error);
    CHECK(contains(stopped.err, "not the QEMU this instance launched"));
    CHECK(contains(stopped.err, "refusing to control or signal it"));
    const auto st = sb.status();
    CHECK(st.value("state", "") == "foreign");
    CHECK(st.value("__exit", -1) == exit_code::error);
    // Nothing reached it: no quit, no shutdown request, no signal.
    CHECK_FALSE(stackemu::test::process_gone(impostor));
    CHECK_FALSE(contains(slurp(sb.qemu_log()), "exiting:"));
}
