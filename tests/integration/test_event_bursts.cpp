// Event floods and broken events through the CLI against the fake (issues 16.3, 16.4, 17.1):
// a panic inside a burst still fails `start` at once, a malformed message is named as the
// cause, and events.jsonl keeps every event of a burst. Part of the fault matrix's
// misbehaving-QEMU cases ([hostile-qemu], with test_fault_matrix.cpp).
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "lifecycle/exit_codes.hpp"
#include "support/cli_harness.hpp"

namespace {

using namespace stackemu::test::cli;
namespace exit_code = stackemu::lifecycle::exit_code;

const std::vector<std::string> start_args{"start", "--image", "{image}", "--accel", "tcg",
                                          "--ram", "512",     "--cpus",  "1"};

// A console step that sends `burst` right after its own action, in the same write.
json with_burst(json step, json burst) {
    step["burst"] = std::move(burst);
    return step;
}

std::vector<json> log_lines(const fs::path& file) {
    std::vector<json> out;
    std::istringstream lines(slurp(file));
    for (std::string line; std::getline(lines, line);)
        out.push_back(json::parse(line));
    return out;
}

}  // namespace

TEST_CASE(
    "misbehaving QEMU: start fails at once with the panic when a thousand events follow "
    "it in one write",
    "[cli][fault][hostile-qemu]") {
    sandbox sb;
    sb.fake = {
        {"coalesce", true},
        {"panic_action", "pause"},
        {"console", json::array({console_step(20, "booting"),
                                 with_burst({{"after_ms", 10}, {"action", "panic"}},
                                            {{"event", "BLOCK_IO_ERROR"}, {"count", 1000}})})}};
    // The ready timeout is far beyond the command's ceiling: a lost panic shows as a hang.
    auto started = sb.run(start_args, {{"EMULATOR_READY_TIMEOUT", "3600"}});
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "the guest kernel panicked while booting"));
    CHECK_FALSE(contains(started.err, "EMULATOR_READY_TIMEOUT"));
}

TEST_CASE(
    "misbehaving QEMU: start names a malformed message from QEMU as the cause of its "
    "failure",
    "[cli][fault][hostile-qemu]") {
    sandbox sb;
    sb.fake = {{"console", json::array({console_step(20, "booting"),
                                        with_burst(console_step(10, "still booting"),
                                                   {{"count", 1}, {"invalid_utf8", true}})})}};
    auto started = sb.run(start_args, {{"EMULATOR_READY_TIMEOUT", "3600"}});
    INFO(started.err);
    CHECK(started.code == exit_code::failed);
    CHECK(contains(started.err, "malformed message from QEMU at byte offset "));
    CHECK(contains(started.err, ": ff fe 30 22 7d 7d (not UTF-8)"));
    CHECK_FALSE(contains(started.err, "without a SHUTDOWN event"));
}

TEST_CASE("misbehaving QEMU: events.jsonl keeps every one of 3000 events sent during boot",
          "[cli][fault][hostile-qemu]") {
    sandbox sb;
    auto steps = happy_guest()["console"];
    steps[0] = with_burst(steps[0], {{"event", "BLOCK_IO_ERROR"}, {"count", 3000}});
    sb.fake = {{"coalesce", true}, {"console", steps}};
    auto started = sb.run(start_args);
    INFO(started.err);
    REQUIRE(started.code == exit_code::ok);
    std::int64_t next = 0;
    bool dropped = false;
    for (const auto& record : log_lines(sb.vm_dir() / "events.jsonl")) {
        dropped = dropped || record.value("record", "") == "events dropped";
        if (record.value("event", "") != "BLOCK_IO_ERROR") continue;
        CHECK(record["data"]["n"] == next);
        ++next;
    }
    CHECK(next == 3000);
    CHECK_FALSE(dropped);
    auto stopped = sb.run({"stop"});
    CHECK(stopped.code == exit_code::stopped_cleanly);
}
