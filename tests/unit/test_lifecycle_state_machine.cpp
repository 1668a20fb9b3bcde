// The VM state machine: one table row per (state, input) pair that matters, then whole runs.
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "lifecycle/state_machine.hpp"

using namespace stackemu::lifecycle;
using S = vm_state;
using json = nlohmann::json;

namespace {

// A machine in `state` as it would be after getting there through step().
vm_machine in(S state, readiness flags = {}) {
    vm_machine m;
    m.state = state;
    m.flags = flags;
    m.qemu_alive = state != S::stopped;
    if (state == S::paused) m.resume_to = S::ready;
    if (state == S::failed || state == S::crashed) m.failure = "earlier failure";
    return m;
}

vm_machine dead(S state) {
    auto m = in(state);
    m.qemu_alive = false;
    return m;
}

vm_machine after_shutdown(S state) {
    auto m = in(state);
    m.shutdown_seen = true;
    return m;
}

const readiness marker_and_agent{true, true, false};
const readiness all_but_marker{false, true, true};
const readiness all_but_agent{true, false, true};

qmp_event event(std::string name, json data = json::object()) {
    return qmp_event{std::move(name), std::move(data)};
}

std::vector<std::string> names(const std::vector<vm_action>& actions) {
    std::vector<std::string> out;
    for (const auto& a : actions)
        out.emplace_back(action_name(a));
    return out;
}

struct row {
    std::string what;
    vm_machine from;
    vm_input input;
    S to;
    std::vector<std::string> actions;
    cause why;
};

using A = std::vector<std::string>;

readiness_profile runtime_profile() {
    readiness_profile p;
    p.requires_agent = true;
    return p;
}

void check_rows(const readiness_profile& profile, const std::vector<row>& rows) {
    for (const auto& r : rows) {
        CAPTURE(r.what);
        auto t = step(profile, r.from, r.input);
        CHECK(to_string(t.next.state) == to_string(r.to));
        CHECK(names(t.actions) == r.actions);
        CHECK(to_string(t.why) == to_string(r.why));
    }
}

// Runs inputs from a stopped machine, returning every transition.
std::vector<transition> run(const readiness_profile& profile, const std::vector<vm_input>& inputs,
                            vm_machine start = {}) {
    std::vector<transition> out;
    auto m = start;
    for (const auto& input : inputs) {
        out.push_back(step(profile, m, input));
        m = out.back().next;
    }
    return out;
}

}  // namespace

TEST_CASE("launching follows the launcher and the QMP connection") {
    check_rows(
        runtime_profile(),
        {
            {"start from stopped", in(S::stopped), launch_requested{}, S::launching,
             A{"launch_qemu"}, cause::launch_requested},
            {"start again after a failure", dead(S::failed), launch_requested{}, S::launching,
             A{"launch_qemu"}, cause::launch_requested},
            {"start again after a crash", dead(S::crashed), launch_requested{}, S::launching,
             A{"launch_qemu"}, cause::launch_requested},
            {"start while the failed QEMU lives", in(S::failed), launch_requested{}, S::failed,
             A{"reject_request"}, cause::rejected},
            {"start while launching", in(S::launching), launch_requested{}, S::launching, A{},
             cause::already},
            {"start while booting", in(S::booting), launch_requested{}, S::booting, A{},
             cause::already},
            {"start while ready", in(S::ready), launch_requested{}, S::ready, A{}, cause::already},
            {"start while paused", in(S::paused), launch_requested{}, S::paused,
             A{"reject_request"}, cause::rejected},
            {"start while stopping", in(S::stopping), launch_requested{}, S::stopping,
             A{"reject_request"}, cause::rejected},
            {"launcher succeeded", in(S::launching), launcher_exited{0, ""}, S::launching, A{},
             cause::none},
            {"launcher failed", in(S::launching), launcher_exited{1, "bad option\n"}, S::failed,
             A{"report_failure"}, cause::launch_failed},
            {"QMP connected", in(S::launching), qmp_connected{}, S::booting, A{"send_cont"},
             cause::qmp_connected},
            {"QMP reconnected while ready", in(S::ready), qmp_connected{}, S::ready, A{},
             cause::none},
            {"launch deadline", in(S::launching), deadline_passed{"QEMU to start"}, S::failed,
             A{"report_failure", "stop_vm"}, cause::deadline},
            {"QEMU died while launching", in(S::launching), process_exited{1, {}}, S::failed,
             A{"report_failure"}, cause::qemu_exited},
            {"QMP EOF while launching", in(S::launching), qmp_eof{false}, S::failed,
             A{"report_failure"}, cause::qemu_exited},
        });
}

TEST_CASE("booting becomes ready only when every condition holds") {
    check_rows(
        runtime_profile(),
        {
            {"ready marker, agent missing", in(S::booting), console_line{"STACK_EMULATOR_READY"},
             S::booting, A{}, cause::readiness},
            {"ready marker completes", in(S::booting, all_but_marker),
             console_line{"STACK_EMULATOR_READY\r"}, S::ready, A{"report_ready"}, cause::ready},
            {"marker inside a longer line", in(S::booting, all_but_marker),
             console_line{"echo STACK_EMULATOR_READY"}, S::booting, A{}, cause::none},
            {"agent completes", in(S::booting, all_but_agent), agent_answered{}, S::ready,
             A{"report_ready"}, cause::ready},
            {"probes complete", in(S::booting, marker_and_agent), all_probes_healthy{}, S::ready,
             A{"report_ready"}, cause::ready},
            {"probes healthy alone", in(S::booting), all_probes_healthy{}, S::booting, A{},
             cause::readiness},
            {"a failed probe while booting", in(S::booting, all_but_marker),
             probe_result{"backend", false, "503"}, S::booting, A{}, cause::none},
            {"a good probe changes nothing", in(S::booting), probe_result{"backend", true, ""},
             S::booting, A{}, cause::none},
            {"boot deadline", in(S::booting), deadline_passed{"services"}, S::failed,
             A{"report_failure", "stop_vm"}, cause::deadline},
            {"ready marker before QMP", in(S::launching), console_line{"STACK_EMULATOR_READY"},
             S::launching, A{}, cause::none},
            {"probes before QMP", in(S::launching), all_probes_healthy{}, S::launching, A{},
             cause::none},
        });
}

TEST_CASE("failures before ready end in failed with the cause") {
    check_rows(
        runtime_profile(),
        {
            {"failure marker while booting", in(S::booting),
             console_line{"STACK_CLOUD_INIT_FAILED"}, S::failed, A{"report_failure", "stop_vm"},
             cause::failure_marker},
            {"failure marker with escapes", in(S::booting),
             console_line{"\x1b[31mSTACK_CLOUD_INIT_FAILED\x1b[0m\r"}, S::failed,
             A{"report_failure", "stop_vm"}, cause::failure_marker},
            {"failure marker quoted in a longer line", in(S::booting),
             console_line{"grep STACK_CLOUD_INIT_FAILED /var/log"}, S::booting, A{}, cause::none},
            {"failure marker while launching", in(S::launching),
             console_line{"STACK_CLOUD_INIT_FAILED"}, S::failed, A{"report_failure", "stop_vm"},
             cause::failure_marker},
            {"failure marker while ready", in(S::ready), console_line{"STACK_CLOUD_INIT_FAILED"},
             S::failed, A{"report_failure", "stop_vm"}, cause::failure_marker},
            {"failure marker while stopping", in(S::stopping),
             console_line{"STACK_CLOUD_INIT_FAILED"}, S::stopping, A{"record_event"}, cause::none},
            {"panic while booting", in(S::booting), event("GUEST_PANICKED"), S::failed,
             A{"report_failure", "stop_vm"}, cause::guest_panicked},
            {"panic while launching", in(S::launching), event("GUEST_PANICKED"), S::failed,
             A{"report_failure", "stop_vm"}, cause::guest_panicked},
            {"QEMU exit while booting", in(S::booting), process_exited{{}, 9}, S::failed,
             A{"report_failure"}, cause::qemu_exited},
            {"QMP EOF while booting", in(S::booting), qmp_eof{false}, S::failed,
             A{"report_failure"}, cause::qemu_exited},
        });
}

TEST_CASE("after ready a death without SHUTDOWN is a crash") {
    check_rows(runtime_profile(),
               {
                   {"panic while ready", in(S::ready), event("GUEST_PANICKED"), S::crashed,
                    A{"report_failure", "stop_vm"}, cause::guest_panicked},
                   {"panic while paused", in(S::paused), event("GUEST_PANICKED"), S::crashed,
                    A{"report_failure", "stop_vm"}, cause::guest_panicked},
                   {"QMP EOF while ready", in(S::ready), qmp_eof{false}, S::crashed,
                    A{"report_failure"}, cause::qemu_exited},
                   {"process exit while ready", in(S::ready), process_exited{{}, 11}, S::crashed,
                    A{"report_failure"}, cause::qemu_exited},
                   {"process exit while paused", in(S::paused), process_exited{0, {}}, S::crashed,
                    A{"report_failure"}, cause::qemu_exited},
                   {"deadline while ready is stale", in(S::ready), deadline_passed{"services"},
                    S::ready, A{}, cause::none},
               });
}

TEST_CASE("SHUTDOWN while running means the VM is stopping") {
    const json by_guest = {{"guest", true}, {"reason", "guest-shutdown"}};
    const json by_signal = {{"guest", false}, {"reason", "host-signal"}};
    check_rows(runtime_profile(),
               {
                   {"guest power-off while ready", in(S::ready), event("SHUTDOWN", by_guest),
                    S::stopping, A{"record_event"}, cause::guest_shutdown},
                   {"guest power-off while booting", in(S::booting), event("SHUTDOWN", by_guest),
                    S::stopping, A{"record_event"}, cause::guest_shutdown},
                   {"guest power-off while paused", in(S::paused), event("SHUTDOWN", by_guest),
                    S::stopping, A{"record_event"}, cause::guest_shutdown},
                   {"SIGTERM to QEMU while ready", in(S::ready), event("SHUTDOWN", by_signal),
                    S::stopping, A{"record_event"}, cause::host_shutdown},
                   {"SHUTDOWN while stopping", in(S::stopping), event("SHUTDOWN", by_guest),
                    S::stopping, A{}, cause::none},
                   {"SHUTDOWN after a failure", in(S::failed), event("SHUTDOWN", by_guest),
                    S::failed, A{}, cause::none},
                   {"SHUTDOWN without data", in(S::ready), event("SHUTDOWN", json()), S::stopping,
                    A{"record_event"}, cause::host_shutdown},
               });
}

TEST_CASE("stopping ends when QEMU is gone") {
    check_rows(
        runtime_profile(),
        {
            {"exit after SHUTDOWN", after_shutdown(S::stopping), process_exited{0, {}}, S::stopped,
             A{"report_stopped"}, cause::stopped},
            {"EOF after SHUTDOWN", after_shutdown(S::stopping), qmp_eof{false}, S::stopped,
             A{"report_stopped"}, cause::stopped},
            {"EOF after our quit", in(S::stopping), qmp_eof{true}, S::stopped, A{"report_stopped"},
             cause::stopped},
            {"killed on a later rung", in(S::stopping), process_exited{{}, 9}, S::stopped,
             A{"report_stopped"}, cause::stopped},
            {"stop deadlines belong to the ladder", in(S::stopping), deadline_passed{"power-down"},
             S::stopping, A{}, cause::none},
            {"failed QEMU finally gone", in(S::failed), process_exited{0, {}}, S::failed, A{},
             cause::stopped},
            {"crashed QEMU EOF", in(S::crashed), qmp_eof{false}, S::crashed, A{}, cause::stopped},
            {"late exit once stopped", in(S::stopped), process_exited{0, {}}, S::stopped, A{},
             cause::none},
        });
}

TEST_CASE("stop requests start the ladder or are already done") {
    check_rows(runtime_profile(),
               {
                   {"stop when stopped", in(S::stopped), stop_requested{}, S::stopped, A{},
                    cause::already},
                   {"stop while stopping", in(S::stopping), stop_requested{}, S::stopping, A{},
                    cause::already},
                   {"stop while launching", in(S::launching), stop_requested{}, S::stopping,
                    A{"stop_vm"}, cause::stop_requested},
                   {"stop while booting", in(S::booting), stop_requested{}, S::stopping,
                    A{"stop_vm"}, cause::stop_requested},
                   {"stop while ready", in(S::ready), stop_requested{}, S::stopping, A{"stop_vm"},
                    cause::stop_requested},
                   {"stop while paused", in(S::paused), stop_requested{}, S::stopping, A{"stop_vm"},
                    cause::stop_requested},
                   {"stop a failed VM whose QEMU lives", in(S::failed), stop_requested{},
                    S::stopping, A{"stop_vm"}, cause::stop_requested},
                   {"stop a failed VM whose QEMU is gone", dead(S::failed), stop_requested{},
                    S::stopped, A{}, cause::already},
                   {"stop a crashed VM whose QEMU is gone", dead(S::crashed), stop_requested{},
                    S::stopped, A{}, cause::already},
               });
}

TEST_CASE("STOP and RESUME pause and resume the VM") {
    auto paused_while_booting = in(S::paused);
    paused_while_booting.resume_to = S::booting;
    check_rows(
        runtime_profile(),
        {
            {"STOP while ready", in(S::ready), event("STOP"), S::paused, A{}, cause::paused},
            {"STOP while booting", in(S::booting), event("STOP"), S::paused, A{}, cause::paused},
            {"STOP while stopping", in(S::stopping), event("STOP"), S::stopping, A{}, cause::none},
            {"RESUME back to ready", in(S::paused), event("RESUME"), S::ready, A{}, cause::resumed},
            {"RESUME back to booting", paused_while_booting, event("RESUME"), S::booting, A{},
             cause::resumed},
            {"RESUME after our cont", in(S::booting), event("RESUME"), S::booting, A{},
             cause::none},
            {"pause request while ready", in(S::ready), pause_requested{}, S::ready, A{"pause_vm"},
             cause::none},
            {"pause request while paused", in(S::paused), pause_requested{}, S::paused, A{},
             cause::already},
            {"pause request while stopped", in(S::stopped), pause_requested{}, S::stopped,
             A{"reject_request"}, cause::rejected},
            {"pause reply before STOP", in(S::ready), pause_result{true, ""}, S::paused, A{},
             cause::paused},
            {"pause reply after STOP", in(S::paused), pause_result{true, ""}, S::paused, A{},
             cause::none},
            {"pause refused", in(S::ready), pause_result{false, "migration running"}, S::ready,
             A{"reject_request"}, cause::rejected},
            {"resume request while paused", in(S::paused), resume_requested{}, S::paused,
             A{"resume_vm"}, cause::none},
            {"resume request while ready", in(S::ready), resume_requested{}, S::ready, A{},
             cause::already},
            {"resume request while failed", in(S::failed), resume_requested{}, S::failed,
             A{"reject_request"}, cause::rejected},
            {"resume reply", in(S::paused), resume_result{true, ""}, S::ready, A{}, cause::resumed},
            {"resume refused", in(S::paused), resume_result{false, "no"}, S::paused,
             A{"reject_request"}, cause::rejected},
            {"probes ignored while paused", in(S::paused, {true, true, true}),
             probe_result{"backend", false, "timeout"}, S::paused, A{}, cause::none},
        });
}

TEST_CASE("health changes while ready are recorded without leaving ready") {
    const readiness healthy{true, true, true};
    check_rows(runtime_profile(),
               {
                   {"a probe fails", in(S::ready, healthy), probe_result{"minio", false, "503"},
                    S::ready, A{"record_event"}, cause::probe_unhealthy},
                   {"another probe fails", in(S::ready, marker_and_agent),
                    probe_result{"backend", false, "503"}, S::ready, A{}, cause::none},
                   {"healthy again", in(S::ready, marker_and_agent), all_probes_healthy{}, S::ready,
                    A{"record_event"}, cause::probes_healthy},
                   {"still healthy", in(S::ready, healthy), all_probes_healthy{}, S::ready, A{},
                    cause::none},
                   {"guest reboot while ready", in(S::ready, healthy), event("RESET"), S::booting,
                    A{"record_event"}, cause::guest_reset},
               });
}

TEST_CASE("a probe failure while ready clears the health flag") {
    auto t = step(runtime_profile(), in(S::ready, {true, true, true}),
                  probe_result{"minio", false, "connection refused"});
    CHECK_FALSE(t.next.flags.probes_healthy);
    REQUIRE(t.actions.size() == 1);
    CHECK(t.actions[0] == vm_action{record_event{"probe minio unhealthy: connection refused"}});
}

TEST_CASE("a guest reset while booting forgets the marker it saw") {
    auto t = step(runtime_profile(), in(S::booting, {true, false, false}), event("RESET"));
    CHECK(t.next.state == S::booting);
    CHECK(t.next.flags == readiness{});
}

TEST_CASE("failure reports say what happened") {
    auto launch = step(runtime_profile(), in(S::launching),
                       launcher_exited{1, "qemu-system-x86_64: -m 99999999: bad size\n"});
    REQUIRE(launch.actions.size() == 1);
    CHECK(launch.actions[0] ==
          vm_action{report_failure{cause::launch_failed,
                                   "QEMU failed to start (status 1): qemu-system-x86_64: -m "
                                   "99999999: bad size"}});
    CHECK(launch.next.failure ==
          "QEMU failed to start (status 1): qemu-system-x86_64: -m "
          "99999999: bad size");
    CHECK_FALSE(launch.next.qemu_alive);

    auto silent = step(runtime_profile(), in(S::launching), launcher_exited{1, ""});
    CHECK(silent.next.failure == "QEMU failed to start (status 1)");

    auto marker = step(runtime_profile(), in(S::booting), console_line{"STACK_CLOUD_INIT_FAILED"});
    CHECK(marker.actions ==
          std::vector<vm_action>{
              report_failure{cause::failure_marker, "the guest reported STACK_CLOUD_INIT_FAILED"},
              stop_vm{stop_mode::immediate, false}});

    auto deadline = step(runtime_profile(), in(S::booting, {true, false, false}),
                         deadline_passed{"services to become healthy within 240 s"});
    CHECK(deadline.next.failure ==
          "timed out waiting for services to become healthy within 240 s; still missing: the "
          "guest agent, healthy probes");

    auto never_connected =
        step(runtime_profile(), in(S::launching), deadline_passed{"the QMP socket"});
    CHECK(never_connected.next.failure ==
          "timed out waiting for the QMP socket; QEMU never accepted the controller's QMP "
          "connection");

    auto killed = step(runtime_profile(), in(S::ready), process_exited{{}, 9});
    CHECK(killed.next.failure == "QEMU was killed by signal 9 without a SHUTDOWN event");
    auto exited = step(runtime_profile(), in(S::booting), process_exited{1, {}});
    CHECK(exited.next.failure == "QEMU exited with status 1 without a SHUTDOWN event");
    auto eof = step(runtime_profile(), in(S::ready), qmp_eof{false});
    CHECK(eof.next.failure == "QEMU closed its QMP connection without a SHUTDOWN event");
}

TEST_CASE("stopping reports whether the guest shut down cleanly") {
    auto clean = step(runtime_profile(), after_shutdown(S::stopping), process_exited{0, {}});
    CHECK(clean.actions == std::vector<vm_action>{report_stopped{true}});
    auto forced = step(runtime_profile(), in(S::stopping), process_exited{{}, 9});
    CHECK(forced.actions == std::vector<vm_action>{report_stopped{false}});
}

TEST_CASE("a stop while paused tells the ladder the CPUs are stopped") {
    auto t = step(runtime_profile(), in(S::paused), stop_requested{});
    CHECK(t.actions == std::vector<vm_action>{stop_vm{stop_mode::graceful, true}});
    auto ready = step(runtime_profile(), in(S::ready), stop_requested{});
    CHECK(ready.actions == std::vector<vm_action>{stop_vm{stop_mode::graceful, false}});
}

TEST_CASE("unknown QMP events change nothing in any state") {
    for (auto s : {S::stopped, S::launching, S::booting, S::ready, S::paused, S::stopping,
                   S::failed, S::crashed}) {
        CAPTURE(to_string(s));
        auto t = step(runtime_profile(), in(s), event("BALLOON_CHANGE", {{"actual", 1}}));
        CHECK(t.next == in(s));
        CHECK(t.actions.empty());
        CHECK(t.why == cause::none);
    }
}

TEST_CASE("a custom failure marker list is honoured") {
    readiness_profile build;
    build.ready_marker = "STACK_CLOUD_INIT_DONE";
    build.failure_markers = {"STACK_CLOUD_INIT_FAILED", "PROVISION_ABORTED"};
    build.requires_probes = false;
    auto t = step(build, in(S::booting), console_line{"PROVISION_ABORTED"});
    CHECK(t.next.state == S::failed);
    CHECK(t.next.failure == "the guest reported PROVISION_ABORTED");
    auto done = step(build, in(S::booting), console_line{"STACK_CLOUD_INIT_DONE"});
    CHECK(done.next.state == S::ready);
}

TEST_CASE("a kernel panic line on the console fails a boot without pvpanic") {
    auto t = step(runtime_profile(), in(S::booting),
                  console_line{"[    1.9] Kernel panic - not syncing: Attempted to kill init!"});
    CHECK(t.next.state == S::failed);
    CHECK(t.why == cause::guest_panicked);
    REQUIRE(t.next.failure);
    CHECK(t.next.failure->starts_with("the guest kernel panicked while booting: "));
    auto later = step(runtime_profile(), in(S::ready),
                      console_line{"Kernel panic - not syncing: Fatal exception"});
    CHECK(later.next.state == S::crashed);
    CHECK(later.why == cause::guest_panicked);
}

TEST_CASE("a ready marker followed by more text is seen unless the profile asks for exact") {
    readiness_profile p;
    p.ready_marker = "GUEST_READY";
    p.requires_probes = false;
    auto t = step(p, in(S::booting), console_line{"GUEST_READY uptime=1.8"});
    CHECK(t.next.state == S::ready);
    p.match = stackemu::provision::marker_match::exact;
    auto exact = step(p, in(S::booting), console_line{"GUEST_READY uptime=1.8"});
    CHECK(exact.next.state == S::booting);
}

TEST_CASE("a profile with no conditions is ready once the CPUs run") {
    readiness_profile none;
    none.ready_marker = "";
    none.requires_probes = false;
    auto t = step(none, in(S::launching), qmp_connected{});
    CHECK(t.next.state == S::ready);
    CHECK(t.actions == std::vector<vm_action>{send_cont{}, report_ready{}});
    CHECK(t.why == cause::ready);
}

TEST_CASE("a whole start to ready and a clean stop") {
    auto steps = run(runtime_profile(), {
                                            launch_requested{},
                                            launcher_exited{0, ""},
                                            qmp_connected{},
                                            event("RESUME"),
                                            console_line{"Booting"},
                                            agent_answered{},
                                            all_probes_healthy{},
                                            console_line{"STACK_EMULATOR_READY"},
                                            stop_requested{},
                                            event("POWERDOWN"),
                                            event("SHUTDOWN", {{"guest", true}}),
                                            qmp_eof{false},
                                            process_exited{0, {}},
                                        });
    std::vector<std::string> states;
    for (const auto& t : steps)
        states.emplace_back(to_string(t.next.state));
    CHECK(states == std::vector<std::string>{"launching", "launching", "booting", "booting",
                                             "booting", "booting", "booting", "ready", "stopping",
                                             "stopping", "stopping", "stopped", "stopped"});
    CHECK(steps[11].actions == std::vector<vm_action>{report_stopped{true}});
    CHECK(steps.back().next.qemu_alive == false);
}

TEST_CASE("a guest that powers itself off during a build ends stopped") {
    readiness_profile build;
    build.ready_marker = "STACK_CLOUD_INIT_DONE";
    build.requires_probes = false;
    auto steps = run(build, {
                                launch_requested{},
                                qmp_connected{},
                                console_line{"STACK_CLOUD_INIT_DONE"},
                                event("SHUTDOWN", {{"guest", true}, {"reason", "guest-shutdown"}}),
                                process_exited{0, {}},
                            });
    CHECK(steps[2].next.state == S::ready);
    CHECK(steps[3].why == cause::guest_shutdown);
    CHECK(steps[4].next.state == S::stopped);
    CHECK(steps[4].actions == std::vector<vm_action>{report_stopped{true}});
}

TEST_CASE("a relaunch after a failure starts from clean flags") {
    auto steps = run(runtime_profile(), {
                                            launch_requested{},
                                            qmp_connected{},
                                            console_line{"STACK_EMULATOR_READY"},
                                            deadline_passed{"services"},
                                            qmp_eof{true},
                                            launch_requested{},
                                        });
    CHECK(steps[3].next.state == S::failed);
    CHECK(steps[4].next.state == S::failed);
    CHECK_FALSE(steps[4].next.qemu_alive);
    const auto& relaunch = steps[5].next;
    CHECK(relaunch.state == S::launching);
    CHECK(relaunch.flags == readiness{});
    CHECK_FALSE(relaunch.failure.has_value());
    CHECK(relaunch.qemu_alive);
}

TEST_CASE("pausing during boot returns to booting") {
    auto steps = run(runtime_profile(), {
                                            launch_requested{},
                                            qmp_connected{},
                                            pause_requested{},
                                            event("STOP"),
                                            pause_result{true, ""},
                                            resume_requested{},
                                            event("RESUME"),
                                        });
    CHECK(steps[2].actions == std::vector<vm_action>{pause_vm{}});
    CHECK(steps[3].next.state == S::paused);
    CHECK(steps[4].next.state == S::paused);
    CHECK(steps[5].actions == std::vector<vm_action>{resume_vm{}});
    CHECK(steps[6].next.state == S::booting);
}

TEST_CASE("missing conditions are listed in order") {
    auto p = runtime_profile();
    CHECK(missing_conditions(p, {}) ==
          std::vector<std::string>{"the console line STACK_EMULATOR_READY", "the guest agent",
                                   "healthy probes"});
    CHECK(missing_conditions(p, {true, true, true}).empty());
    readiness_profile no_agent;
    CHECK(missing_conditions(no_agent, {true, false, true}).empty());
}

TEST_CASE("every state and cause has a name") {
    for (auto s : {S::stopped, S::launching, S::booting, S::ready, S::paused, S::stopping,
                   S::failed, S::crashed}) {
        CHECK(to_string(s) != "unknown");
    }
    for (int c = 0; c <= static_cast<int>(cause::rejected); ++c) {
        CHECK(to_string(static_cast<cause>(c)) != "unknown");
    }
}
