// profile.json: the shipped profiles parse, and each kind of damage gets an error naming the field.
#include <catch2/catch.hpp>
#include <fstream>
#include <sstream>

#include "provision/profile.hpp"

using namespace stackemu;
using namespace stackemu::provision;

namespace {

const char* valid = R"({
  "name": "demo", "description": "d",
  "base_packages": ["postgresql", "redis-server", "python3-psycopg2", "postgresql"],
  "build": {"ram_mib": 1024, "cpus": 2},
  "bundle_files": ["provision.sh", "backend.py"],
  "payload": {"required": false},
  "forwards": [{"name": "backend", "guest": 26701}],
  "probes": [{"name": "backend", "forward": "backend", "path": "/health?db=1"}],
  "ready_marker": "STACK_EMULATOR_READY", "failure_markers": ["STACK_CLOUD_INIT_FAILED"],
  "agent": true,
  "provision": {"done_marker": "DONE", "failed_marker": "FAILED", "progress_prefix": "P "}
})";

std::string with(std::string text, const std::string& from, const std::string& to) {
    auto at = text.find(from);
    REQUIRE(at != std::string::npos);
    return text.replace(at, from.size(), to);
}

std::string error_of(const std::string& text) {
    auto p = parse_profile(text);
    REQUIRE_FALSE(p);
    return p.error().message;
}

}  // namespace

TEST_CASE("a valid profile file gives its runtime and build parts") {
    auto p = parse_profile(valid);
    REQUIRE(p);
    CHECK(p->runtime.name == "demo");
    CHECK(p->runtime.forwards.size() == 1);
    CHECK(p->runtime.probes.front().path == "/health?db=1");
    CHECK(p->runtime.agent);
    CHECK(p->base_packages ==
          std::vector<std::string>{"postgresql", "redis-server", "python3-psycopg2"});
    CHECK(p->build_ram_mib == 1024);
    CHECK(p->build_cpus == 2);
    CHECK(p->bundle_files == std::vector<std::string>{"provision.sh", "backend.py"});
    CHECK_FALSE(p->payload_required);
    CHECK(p->provision.done_marker == "DONE");
    CHECK(p->provision.progress_prefix == "P ");
}

TEST_CASE("profile defaults: upstream's provisioning markers and a small build VM") {
    auto p = parse_profile(R"({"name": "x"})");
    REQUIRE(p);
    CHECK(p->provision.done_marker == "STACK_CLOUD_INIT_DONE");
    CHECK(p->provision.failed_marker == "STACK_CLOUD_INIT_FAILED");
    CHECK(p->provision.progress_prefix == "STACK_PROGRESS ");
    CHECK(p->bundle_files.empty());
}

TEST_CASE("profile errors name the field") {
    CHECK_THAT(error_of("not json"), Catch::Contains("not a JSON object"));
    CHECK_THAT(error_of(with(valid, "\"demo\"", "\"Demo Profile\"")), Catch::Contains("\"name\""));
    // A package name reaches debootstrap's comma-separated --include: no commas, no options.
    CHECK_THAT(error_of(with(valid, "\"redis-server\"", "\"redis,evil\"")),
               Catch::Contains("base_packages"));
    CHECK_THAT(error_of(with(valid, "\"redis-server\"", "\"--foo\"")),
               Catch::Contains("base_packages"));
    CHECK_THAT(error_of(with(valid, "\"ram_mib\": 1024", "\"ram_mib\": 0")),
               Catch::Contains("build.ram_mib"));
    CHECK_THAT(error_of(with(valid, "\"cpus\": 2", "\"cpus\": -1")), Catch::Contains("build.cpus"));
    CHECK_THAT(error_of(with(valid, "\"backend.py\"", "\"../etc/passwd\"")),
               Catch::Contains("bundle_files"));
    CHECK_THAT(error_of(with(valid, "\"backend.py\"", "\"provision.sh\"")),
               Catch::Contains("twice"));
    CHECK_THAT(error_of(with(valid, "\"backend.py\"", "\"payload.tar\"")),
               Catch::Contains("reserved"));
    CHECK_THAT(error_of(with(valid, "\"done_marker\": \"DONE\"", "\"done_marker\": \"FAILED\"")),
               Catch::Contains("must differ"));
    CHECK_THAT(
        error_of(with(valid, "\"progress_prefix\": \"P \"", "\"progress_prefix\": \"a\\nb\"")),
        Catch::Contains("provision.progress_prefix"));
    CHECK_THAT(error_of(with(valid, "\"guest\": 26701", "\"guest\": 70000")),
               Catch::Contains("profile file field \"guest\""));
    CHECK_THAT(error_of(with(valid, "\"forward\": \"backend\"", "\"forward\": \"nope\"")),
               Catch::Contains("probes"));
}

TEST_CASE("a misspelled profile key is refused naming the nearest known key") {
    CHECK_THAT(error_of(with(valid, "\"description\"", "\"descripton\"")),
               Catch::Contains("profile file field \"descripton\" is not a known key: did you "
                               "mean \"description\"?"));
    CHECK_THAT(error_of(with(valid, "\"cpus\": 2", "\"vcpus\": 2")),
               Catch::Contains("\"build.vcpus\" is not a known key: did you mean \"build.cpus\"?"));
    CHECK_THAT(error_of(with(valid, "\"done_marker\"", "\"done\"")),
               Catch::Contains("\"provision.done\" is not a known key"));
    CHECK_THAT(error_of(with(valid, "\"required\"", "\"optional\"")),
               Catch::Contains("\"payload.optional\" is not a known key"));
}

TEST_CASE("the shipped profiles load from the source tree") {
    const auto search = default_profile_search_path({});
    for (const char* name : {"demo", "stack"}) {
        INFO(name);
        auto p = load_profile(name, search);
        REQUIRE(p);
        CHECK(p->file.runtime.name == name);
        CHECK_FALSE(p->user_data.empty());
        CHECK(p->bundle_paths.size() == p->file.bundle_files.size());
        CHECK(p->file.runtime.agent);
    }
}

TEST_CASE("an unknown profile name lists where it looked") {
    auto p = load_profile("no-such-profile", {"/nowhere/a", "/nowhere/b"});
    REQUIRE_FALSE(p);
    CHECK(p.error().code == errc::not_found);
    CHECK_THAT(p.error().message, Catch::Contains("/nowhere/a/no-such-profile"));
    CHECK_THAT(p.error().message, Catch::Contains("STACKEMU_PROFILE_PATH"));
    auto bad = load_profile("Bad Name", {});
    REQUIRE_FALSE(bad);
    CHECK(bad.error().code == errc::invalid_argument);
}
