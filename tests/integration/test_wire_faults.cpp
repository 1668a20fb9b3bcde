// Issue 6's "fail at step N" matrix on the wire, against the real `stackemu` binary and
// fake-qemu: every command sequence the controller runs (start; the stop ladder on the monitor
// and on the agent; snapshot save and load; exec on the agent) gets, at each of its steps, each
// of four faults: the connection cut, the reply delayed past the deadline, garbage for a reply,
// a reply with an id never sent. The fake's "fault" option counts the steps of one connection
// (a QMP session: greeting, then the reply to each command; the agent channel: each request),
// and logs them, so each sequence is first run fault-free to learn how many steps it has.
//
// Every case must end in a typed outcome (a documented exit code and a message; for stop, a
// later rung ending the VM) within a ceiling that only guards against hangs, and leave nothing
// behind: no stale lock, a truthful status, no fake QEMU once the instance is stopped.
// EMULATOR_REPLY_TIMEOUT=1 keeps the delayed replies to a second each.
#include <fmt/format.h>

#include <catch2/catch.hpp>
#include <cstddef>
#include <filesystem>
#include <fstream>
#include <functional>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <string_view>
#include <vector>

#include "fault_sandbox.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/guest_exec.hpp"
#include "lifecycle/snapshot.hpp"

using namespace std::chrono_literals;
using namespace stackemu::test::fault;
namespace exec_exit = stackemu::lifecycle::exec_exit;

namespace {

// One command sequence of the controller, and the channel its steps are counted on.
struct sequence {
    std::string name;
    std::string channel;  // "qmp" or "agent"
    // Brings the instance to where the command runs (a ready VM, a snapshot to load).
    std::function<void(sandbox&)> prepare;
    std::vector<std::string> command;
    // The exit codes the command may end with (0 included where the controller can finish
    // the job despite the fault, e.g. a reply it does not need).
    std::set<int> outcomes;
    // Changes to the fake guest (e.g. one that ignores the shutdown request).
    json guest = json::object();
};

const std::vector<std::string> start_command = {"start", "--quiet"};

std::vector<sequence> sequences() {
    auto ready = [](sandbox& sb) { sb.start_ready(); };
    auto ready_with_snapshot = [](sandbox& sb) {
        sb.start_ready();
        REQUIRE(sb.run({"snapshot", "save", "clean"}).code == snap_exit::ok);
    };
    return {
        {"start",
         "qmp",
         nullptr,
         start_command,
         {exit_code::ok, exit_code::error, exit_code::failed}},
        {"stop",
         "qmp",
         ready,
         {"stop", "--stop-timeout", "1"},
         {exit_code::stopped_cleanly, exit_code::stopped_forcibly}},
        {"stop",
         "agent",
         ready,
         {"stop", "--stop-timeout", "1"},
         {exit_code::stopped_cleanly, exit_code::stopped_forcibly}},
        // The guest ignores the shutdown request: the ladder goes on to `quit`.
        {"stop to quit",
         "qmp",
         ready,
         {"stop", "--stop-timeout", "1"},
         {exit_code::stopped_forcibly},
         json{{"cooperative_guest", false}}},
        {"snapshot save",
         "qmp",
         ready,
         {"snapshot", "save", "fresh", "--timeout", "1"},
         // busy: a greeting delayed past EMULATOR_REPLY_TIMEOUT is a busy monitor (issue 16.1)
         {snap_exit::ok, snap_exit::error, snap_exit::job_failed, snap_exit::busy}},
        {"snapshot load",
         "qmp",
         ready_with_snapshot,
         {"snapshot", "load", "clean", "--timeout", "1"},
         {snap_exit::ok, snap_exit::error, snap_exit::job_failed, snap_exit::busy}},
        // 124: a reply that never came, so the command may run on in the guest (documented
        // as --timeout's code: "the command was killed, or may run on").
        {"exec",
         "agent",
         ready,
         {"exec", "--", "/bin/true"},
         {0, exec_exit::timeout, exec_exit::failed}},
    };
}

const sequence& named(const std::string& name, const std::string& channel) {
    static const auto all = sequences();
    for (const auto& s : all)
        if (s.name == name && s.channel == channel) return s;
    FAIL("no sequence " << name << " on " << channel);
    throw;
}

std::vector<std::string> full_command(const sandbox& sb, const sequence& seq) {
    if (seq.name == "start") return sb.start_args({"--quiet"});
    return seq.command;
}

// The fault for one case; `at` beyond the last step only logs the steps. Faults of sequences
// other than start wait for the arming file, so that the VM starts cleanly first.
json fault_option(const sandbox& sb, const sequence& seq, std::size_t at, std::string_view kind) {
    json f = {{"channel", seq.channel}, {"at", at}, {"kind", kind}, {"delay_ms", 600000}};
    if (seq.name != "start") f["armed_by"] = (sb.dir / "arm-fault").string();
    return f;
}

// The steps the fake logged for the faulted connection: "fault: qmp step 3: query-status".
std::vector<std::string> logged_steps(const sandbox& sb, const std::string& channel) {
    std::vector<std::string> steps;
    const auto log = slurp(sb.qemu_log());
    const auto mark = fmt::format("fault: {} step ", channel);
    for (std::size_t at = log.find(mark); at != std::string::npos; at = log.find(mark, at + 1)) {
        const auto end = log.find('\n', at);
        steps.push_back(log.substr(at + mark.size(), end - at - mark.size()));
    }
    return steps;
}

// Runs the sequence on a fresh instance with `fault` (prepared, then armed); returns the
// command's result.
cli_result run_once(sandbox& sb, const sequence& seq, const json& fault) {
    sb.fake["fault"] = fault;
    sb.fake.update(seq.guest);
    sb.extra_env = {"EMULATOR_REPLY_TIMEOUT=1"};
    if (seq.prepare) seq.prepare(sb);
    std::ofstream(sb.dir / "arm-fault") << "armed\n";
    return sb.run(full_command(sb, seq));
}

// What every case must leave: a typed outcome with a message, a free lock, a whole
// state.json, a truthful status, and, once the instance is stopped, no fake QEMU.
void check_aftermath(sandbox& sb, const sequence& seq, const cli_result& r) {
    REQUIRE(r.code != -1);  // no hang
    CHECK(seq.outcomes.contains(r.code));
    if (r.code != 0 && !(seq.name.starts_with("stop") && r.code == exit_code::stopped_forcibly))
        CHECK_FALSE(r.err.empty());  // a failure says what went wrong
    CHECK_FALSE(contains(r.err, "internal error"));
    check_state_whole(sb);
    check_lock_free(sb);

    const auto alive = sb.fakes();
    CHECK(alive.size() <= 1);
    auto st = sb.status();
    INFO("status: " << st.dump());
    CHECK(st.value("__exit", -1) != exit_code::busy);
    const std::string state = st.value("state", "");
    if (alive.empty()) {
        CHECK((state == "stopped" || state == "failed" || state == "crashed"));
    } else {
        // A monitor still wedged in the delayed reply is busy (the pid is the launched one).
        CHECK((state == "ready" || state == "unhealthy" || state == "paused" ||
               state == "monitor-busy"));
        if (st.contains("pid")) CHECK(st.value("pid", -1) == alive.front());
    }
    if (seq.name.starts_with("stop")) CHECK(alive.empty());  // a later rung ended the VM

    // The instance is not left busy: stop ends whatever runs, and nothing is left behind.
    auto stopped = sb.run({"stop", "--stop-timeout", "1"});
    CHECK(stopped.code != exit_code::busy);
    CHECK((stopped.code == exit_code::stopped_cleanly ||
           stopped.code == exit_code::stopped_forcibly || stopped.code == exit_code::ok));
    CHECK(sb.no_fakes_left());
    check_lock_free(sb);
    CHECK(sb.status().value("state", "") != "busy");
}

// Learns the sequence's steps fault-free, then runs every step with every kind of fault.
void run_matrix(const std::string& name, const std::string& channel) {
    const auto& seq = named(name, channel);
    std::vector<std::string> steps;
    {
        sandbox sb;
        auto r = run_once(sb, seq, fault_option(sb, seq, 1000, "cut"));
        INFO("fault-free run: " << r.err);
        REQUIRE(seq.outcomes.contains(r.code));
        steps = logged_steps(sb, channel);
        REQUIRE_FALSE(steps.empty());
        CHECK(sb.run({"stop", "--stop-timeout", "1"}).code != exit_code::busy);
        CHECK(sb.no_fakes_left());
    }
    for (const std::string_view kind : {"cut", "delay", "garbage", "wrong_id"}) {
        for (std::size_t at = 1; at <= steps.size(); ++at) {
            INFO(name << " on " << channel << ", " << kind << " at step " << steps[at - 1] << " of "
                      << steps.size());
            sandbox sb;
            auto r = run_once(sb, seq, fault_option(sb, seq, at, kind));
            // The fault struck where it was aimed.
            CHECK(contains(slurp(sb.qemu_log()), fmt::format("fault: {} step {}: ", channel, at)));
            check_aftermath(sb, seq, r);
        }
    }
}

}  // namespace

TEST_CASE("wire faults: fake-qemu refuses malformed fault options", "[fault][wire]") {
    sandbox sb;
    for (const json& bad : {json{{"channel", "qmp"}, {"at", 0}, {"kind", "cut"}},
                            json{{"channel", "qmp"}, {"at", 1}, {"kind", "explode"}},
                            json{{"channel", "serial"}, {"at", 1}, {"kind", "cut"}},
                            json{{"channel", "qmp"}, {"kind", "cut"}},
                            json{{"channel", "qmp"}, {"at", 1}, {"kind", "cut"}, {"when", 2}}}) {
        INFO(bad.dump());
        sb.fake["fault"] = bad;
        auto r = sb.run(sb.start_args({"--quiet"}));
        CHECK(r.code != exit_code::ok);
        CHECK(contains(r.err, "fake-qemu options"));
        CHECK(sb.no_fakes_left());
        check_lock_free(sb);
    }
}

#define WIRE_FAULT_CASES(NAME, CHANNEL)                                              \
    TEST_CASE("wire faults: " NAME " on " CHANNEL " at every step with every fault", \
              "[fault][wire]") {                                                     \
        run_matrix(NAME, CHANNEL);                                                   \
    }

WIRE_FAULT_CASES("start", "qmp")
WIRE_FAULT_CASES("stop", "qmp")
WIRE_FAULT_CASES("stop", "agent")
WIRE_FAULT_CASES("stop to quit", "qmp")
WIRE_FAULT_CASES("snapshot save", "qmp")
WIRE_FAULT_CASES("snapshot load", "qmp")
WIRE_FAULT_CASES("exec", "agent")
