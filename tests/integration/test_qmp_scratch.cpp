// `stackemu qmp --scratch` against the fake QEMU: the QEMU that EMULATOR_QEMU names runs, and it
// is always ended through the stop ladder, also when it ignores quit or never greets; the
// exit code says when it had to be forced.
#include <catch2/catch.hpp>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <regex>
#include <string>
#include <vector>

#include "support/cli_harness.hpp"
#include "support/process.hpp"

using namespace stackemu::test;
using namespace stackemu::test::cli;
namespace fs = std::filesystem;

namespace {

// The scratch directories (TMPDIR is the sandbox) that are still there.
std::vector<fs::path> scratch_dirs(const sandbox& box) {
    std::vector<fs::path> dirs;
    for (const auto& entry : fs::directory_iterator(box.dir))
        if (entry.path().filename().string().starts_with("stackemu-scratch-"))
            dirs.push_back(entry.path());
    return dirs;
}

const env_overrides scratch_env = {{"TMPDIR", "{dir}"}};

}  // namespace

TEST_CASE("qmp --scratch runs the QEMU that EMULATOR_QEMU names and quits it") {
    sandbox box("stackemu-scr-");
    box.fake["package"] = "the fake EMULATOR_QEMU names";
    const auto r = box.run({"qmp", "--scratch", "query-version"}, scratch_env);
    INFO(r.err);
    CHECK(r.code == 0);
    CHECK(nlohmann::json::parse(r.out) ==
          nlohmann::json{{"qemu", {{"major", 7}, {"minor", 2}, {"micro", 22}}},
                         {"package", "the fake EMULATOR_QEMU names"}});
    CHECK(r.err.empty());
    CHECK(box.fakes().empty());
    CHECK(scratch_dirs(box).empty());
}

TEST_CASE("qmp --scratch ends a QEMU that ignores quit with SIGTERM and fails") {
    sandbox box("stackemu-scr-");
    box.fake["ignore_quit"] = true;
    const auto r = box.run({"qmp", "--scratch", "query-version"}, scratch_env);
    INFO(r.err);
    CHECK(r.code == 1);
    std::smatch m;
    REQUIRE(std::regex_search(r.err, m,
                              std::regex(R"(stackemu qmp: the scratch QEMU \(pid ([0-9]+)\) did )"
                                         R"(not quit; it was ended by SIGTERM\n$)")));
    CHECK(process_gone(std::stoi(m[1].str())));
    CHECK(contains(r.err, "QEMU did not quit; sending SIGTERM\n"));
    CHECK(box.fakes().empty());
    CHECK(scratch_dirs(box).empty());
}

TEST_CASE("qmp --scratch ends a QEMU that never greets and ignores SIGTERM with SIGKILL") {
    sandbox box("stackemu-scr-");
    box.fake["hang_qmp"] = true;
    box.fake["ignore_sigterm"] = true;
    const auto r = box.run({"qmp", "--scratch", "--timeout", "1", "query-version"}, scratch_env);
    INFO(r.err);
    CHECK(r.code == 1);
    CHECK(r.out.empty());
    CHECK(contains(r.err, "; the scratch QEMU was ended by SIGKILL\n"));
    CHECK(box.fakes().empty());
    CHECK(scratch_dirs(box).empty());
}

TEST_CASE("qmp --scratch keeps the exit code of a failed command and still quits QEMU") {
    sandbox box("stackemu-scr-");
    const auto r = box.run({"qmp", "--scratch", "no-such-command"}, scratch_env);
    INFO(r.err);
    CHECK(r.code == 1);
    CHECK(contains(r.err, "no-such-command"));
    CHECK(box.fakes().empty());
    CHECK(scratch_dirs(box).empty());
}
