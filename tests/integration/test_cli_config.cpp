// Instances that remember how they were made (issue 12), against the fake QEMU: the record
// written by the first start, later starts without flags, a changed variable reported and
// recorded (and refused while the VM runs), fast start after a start without size flags, two
// named instances with automatic ports, and `config show/set/reset`.
#include <fmt/format.h>
#include <sys/stat.h>

#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <set>
#include <string>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "support/cli_harness.hpp"

namespace {

using namespace stackemu::test::cli;
using nlohmann::json;
namespace exit_code = stackemu::lifecycle::exit_code;

// No EMULATOR_*_PORT: the ports come from the record, or are picked.
const env_overrides no_port_variables = {{"EMULATOR_DASHBOARD_PORT", std::nullopt},
                                         {"EMULATOR_BACKEND_PORT", std::nullopt},
                                         {"EMULATOR_MINIO_PORT", std::nullopt},
                                         {"EMULATOR_INBUCKET_PORT", std::nullopt}};

env_overrides plus(env_overrides base, const env_overrides& more) {
    base.insert(base.end(), more.begin(), more.end());
    return base;
}

fs::path vm_dir_of(const sandbox& sb, const std::string& name = "") {
    return name.empty() ? sb.vm_dir() : sb.run_dir / "instances" / name / "vm";
}

json read_json(const fs::path& p) {
    auto j = json::parse(slurp(p), nullptr, false);
    INFO(p << ": " << slurp(p));
    REQUIRE(j.is_object());
    return j;
}

json recorded(const sandbox& sb, const std::string& name = "") {
    return read_json(vm_dir_of(sb, name) / "config.json")["settings"];
}

// The argument after `flag` in the argv the last launch recorded in state.json.
std::string launched_arg(const sandbox& sb, const std::string& flag, const std::string& name = "") {
    const auto argv = read_json(vm_dir_of(sb, name) / "state.json")["argv"];
    for (std::size_t i = 0; i + 1 < argv.size(); ++i)
        if (argv[i] == flag) return argv[i + 1].get<std::string>();
    return {};
}

json run_json(sandbox& sb, const std::vector<std::string>& args, const env_overrides& env = {},
              int expected = exit_code::ok) {
    auto r = sb.run(args, env);
    INFO("stackemu " << args.front() << " -> " << r.code << "\nstdout: " << r.out
                     << "\nstderr: " << r.err);
    REQUIRE(r.code == expected);
    auto j = json::parse(r.out, nullptr, false);
    REQUIRE_FALSE(j.is_discarded());
    return j;
}

void stop(sandbox& sb, const std::string& name = "") {
    std::vector<std::string> args{"stop", "-q"};
    if (!name.empty()) args.insert(args.end(), {"--name", name});
    auto r = sb.run(args);
    INFO(r.err);
    REQUIRE(r.code == exit_code::stopped_cleanly);
}

std::set<int> ports_of(const json& j) {
    std::set<int> out;
    for (const auto& [name, port] : j["ports"].items())
        out.insert(port.get<int>());
    return out;
}

}  // namespace

TEST_CASE("stackemu config: create, stop, start without flags keeps size and ports",
          "[cli][config]") {
    sandbox sb;
    auto first = run_json(sb, {"start", "--image", "{image}", "--accel", "tcg", "--ram", "512",
                               "--cpus", "1", "--json", "-q"});
    CHECK(first["ram_mib"] == 512);
    CHECK(first["ports"]["dashboard"] == sb.ports.dashboard);
    const auto file = sb.vm_dir() / "config.json";
    struct stat st {};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    auto settings = recorded(sb);
    CHECK(settings["ram"] == 512);
    CHECK(settings["cpus"] == 1);
    CHECK(settings["accel"] == "tcg");
    CHECK(settings["image"] == sb.image().string());
    CHECK(settings["backend_port"] == sb.ports.backend);
    const auto record_text = slurp(file);
    stop(sb);

    // No flag and no port variable: everything comes from the record.
    auto again = run_json(sb, {"start", "--json", "-q"}, no_port_variables);
    CHECK(again["ready"] == true);
    CHECK(again["ram_mib"] == 512);
    CHECK(again["cpus"] == 1);
    CHECK(again["ports"]["backend"] == sb.ports.backend);
    CHECK(again["config_changes"].empty());
    CHECK(launched_arg(sb, "-m") == "512");
    CHECK(launched_arg(sb, "-smp") == "1");
    CHECK_THAT(launched_arg(sb, "-netdev"),
               Catch::Contains(fmt::format("hostfwd=tcp:127.0.0.1:{}-:8001", sb.ports.backend)));
    CHECK(slurp(file) == record_text);  // nothing changed, nothing rewritten

    auto status = run_json(sb, {"status", "--json"}, no_port_variables);
    CHECK(status["ram_mib"] == 512);
    CHECK(status["cpus"] == 1);
    CHECK(status["ports"]["minio"] == sb.ports.minio);
    auto list = run_json(sb, {"list", "--json"}, no_port_variables);
    REQUIRE(list.size() == 1);
    CHECK(list[0]["ram_mib"] == 512);
    CHECK(list[0]["ports"]["inbucket"] == sb.ports.inbucket);
    stop(sb);
}

TEST_CASE(
    "stackemu config: a changed variable is refused while running, then reported and "
    "recorded",
    "[cli][config]") {
    sandbox sb;
    REQUIRE(sb.run({"start", "--image", "{image}", "--accel", "tcg", "--ram", "512", "--cpus", "1",
                    "-q"})
                .code == exit_code::ok);
    const auto file = sb.vm_dir() / "config.json";
    const auto before = slurp(file);

    auto refused = sb.run({"start", "-q"}, {{"EMULATOR_RAM", "640"}});
    INFO(refused.err);
    CHECK(refused.code == exit_code::error);
    CHECK_THAT(refused.err, Catch::Contains("RAM 512 → 640 MiB (from EMULATOR_RAM)") &&
                                Catch::Contains("`stackemu stop`"));
    CHECK(slurp(file) == before);
    CHECK(sb.fakes().size() == 1);
    // The same settings on the running instance are no change: "already running".
    CHECK(sb.run({"start", "-q"}).code == exit_code::ok);
    stop(sb);

    auto changed = sb.run({"start", "--json"}, {{"EMULATOR_RAM", "640"}});
    INFO(changed.err);
    REQUIRE(changed.code == exit_code::ok);
    CHECK_THAT(changed.err, Catch::Contains("RAM 512 → 640 MiB (from EMULATOR_RAM)"));
    auto j = json::parse(changed.out);
    CHECK(j["config_changes"] == json::array({"RAM 512 → 640 MiB (from EMULATOR_RAM)"}));
    CHECK(j["ram_mib"] == 640);
    CHECK(recorded(sb)["ram"] == 640);
    CHECK(launched_arg(sb, "-m") == "640");
    stop(sb);

    // Recorded: the next plain start keeps it.
    auto plain = run_json(sb, {"start", "--json", "-q"});
    CHECK(plain["ram_mib"] == 640);
    CHECK(plain["config_changes"].empty());
    stop(sb);
}

TEST_CASE("stackemu config: fast start after a start without size flags, like scripts/run",
          "[cli][config]") {
    sandbox sb;
    sb.fake["state_file"] = (sb.dir / "fake-snapshots.json").string();  // survives the restart
    // The built image the default start takes, with its profile's recommended size.
    sb.add_image("stack-emulator-amd64", sandbox::make_qcow2, [](json& m) {
        m["profile"]["resources"] = {{"ram_mib", 512}, {"cpus", 1}};
    });
    const env_overrides tcg = {{"EMULATOR_ACCEL", "tcg"}};
    auto first = run_json(sb, {"start", "--json", "-q"}, tcg);
    CHECK(first["warm"] == false);
    CHECK(first["ram_mib"] == 512);
    CHECK(first["cpus"] == 1);
    CHECK(launched_arg(sb, "-m") == "512");
    auto shown = run_json(sb, {"config", "show", "--json"}, tcg);
    CHECK(shown["settings"]["ram"]["source"] == "record");
    CHECK(recorded(sb)["image"] == (sb.images / "stack-emulator-amd64.qcow2").string());

    REQUIRE(sb.run({"snapshot", "save", "stackemu-ready"}, tcg).code == 0);
    stop(sb);
    // A plain start: no flag, no variable.
    auto warm = run_json(sb, {"start", "--json", "-q"});
    INFO(warm.dump(2));
    CHECK(warm["warm"] == true);
    CHECK(warm["warm_note"] == "");
    CHECK(warm["ram_mib"] == 512);
    stop(sb);

    // A size that does not fit the saved state: cold, and the note names what would fit. The
    // record takes the flag (as asked) and nothing else: the fall-back changes nothing in it.
    auto before = recorded(sb);
    auto cold = run_json(sb, {"start", "--ram", "640", "--json", "-q"});
    CHECK(cold["warm"] == false);
    CHECK_THAT(cold["warm_note"].get<std::string>(),
               Catch::Contains("RAM (MiB): snapshot 512, this VM 640") &&
                   Catch::Contains("`stackemu start --ram 512`") &&
                   Catch::Contains("`stackemu config set ram 512`"));
    before["ram"] = 640;
    CHECK(recorded(sb) == before);
    stop(sb);
}

TEST_CASE("stackemu config: two named instances side by side with automatic ports",
          "[cli][config]") {
    sandbox sb;
    const auto start_args = [](const std::string& name) {
        return std::vector<std::string>{"start", "--name", name,  "--image", "{image}", "--accel",
                                        "tcg",   "--ram",  "512", "--cpus",  "1",       "--json"};
    };
    auto a = sb.run(start_args("a"), no_port_variables);
    INFO(a.err);
    REQUIRE(a.code == exit_code::ok);
    auto b = sb.run(start_args("b"), no_port_variables);
    INFO(b.err);
    REQUIRE(b.code == exit_code::ok);
    const auto ja = json::parse(a.out);
    const auto jb = json::parse(b.out);
    const auto pa = ports_of(ja);
    const auto pb = ports_of(jb);
    CHECK(pa.size() == 4);
    CHECK(pb.size() == 4);
    for (int p : pb)
        CHECK_FALSE(pa.contains(p));
    // b found a's ports (running and recorded) taken and says what it took instead.
    CHECK_THAT(b.err, Catch::Contains("default ports taken, so b uses"));
    CHECK(recorded(sb, "b")["dashboard_port"] == jb["ports"]["dashboard"]);
    auto status = run_json(sb, {"status", "--name", "b", "--json"}, no_port_variables);
    CHECK(status["ports"] == jb["ports"]);
    auto shown = run_json(sb, {"config", "show", "--name", "b", "--json"}, no_port_variables);
    CHECK(shown["settings"]["backend_port"]["source"] == "record");
    auto list = run_json(sb, {"list", "--json"}, no_port_variables);
    REQUIRE(list.size() == 2);
    CHECK(list[1]["ports"] == jb["ports"]);

    // A port given explicitly is not moved: the clash is the error it always was.
    const auto taken = std::to_string(ja["ports"]["backend"].get<int>());
    auto clash =
        sb.run(start_args("c"), plus(no_port_variables, {{"EMULATOR_BACKEND_PORT", taken}}));
    CHECK(clash.code == exit_code::error);
    CHECK_THAT(clash.err, Catch::Contains("host port " + taken +
                                          " (the backend forward) is "
                                          "already in use") &&
                              Catch::Contains("EMULATOR_BACKEND_PORT"));
    CHECK_FALSE(fs::exists(vm_dir_of(sb, "c") / "config.json"));
    stop(sb, "a");
    stop(sb, "b");
}

TEST_CASE("stackemu config show, set and reset", "[cli][config]") {
    sandbox sb;
    auto fresh = run_json(sb, {"config", "show", "--json"});
    CHECK(fresh["recorded"] == false);
    CHECK(fresh["settings"]["ram"]["value"] == 4096);
    CHECK(fresh["settings"]["ram"]["source"] == "default");
    CHECK(fresh["settings"]["dashboard_port"]["source"] == "env");
    CHECK(fresh["settings"]["dashboard_port"]["from"] == "EMULATOR_DASHBOARD_PORT");
    CHECK(fresh["settings"]["share"]["value"] == nullptr);
    auto text = sb.run({"config", "show"}, {{"EMULATOR_RAM", "1024"}});
    REQUIRE(text.code == 0);
    CHECK_THAT(text.out, Catch::Contains("nothing recorded yet") &&
                             Catch::Contains("env (EMULATOR_RAM)") &&
                             Catch::Contains("precedence: command-line flag > EMULATOR_*"));

    // Set on an instance never started: the first start takes it.
    for (const auto& [key, value] : std::vector<std::pair<std::string, std::string>>{
             {"ram", "768"}, {"cpus", "1"}, {"accel", "tcg"}, {"image", "{image}"}}) {
        auto set = sb.run({"config", "set", key, value});
        INFO(set.err);
        CHECK(set.code == 0);
    }
    auto set = sb.run({"config", "set", "ready_timeout", "50"});
    CHECK_THAT(set.out, Catch::Contains("ready_timeout (not recorded) → 50 s") &&
                            Catch::Contains("EMULATOR_READY_TIMEOUT=60 is set and overrides it"));
    auto shown = run_json(sb, {"config", "show", "--json"});
    CHECK(shown["settings"]["ram"]["value"] == 768);
    CHECK(shown["settings"]["ram"]["source"] == "record");
    CHECK(recorded(sb)["ram"] == 768);

    auto started = run_json(sb, {"start", "--json", "-q"});
    CHECK(started["ram_mib"] == 768);
    CHECK(launched_arg(sb, "-m") == "768");
    // Running: set and reset are refused, the record stays.
    const auto before = slurp(sb.vm_dir() / "config.json");
    auto refused = sb.run({"config", "set", "ram", "1024"});
    CHECK(refused.code == exit_code::error);
    CHECK_THAT(refused.err,
               Catch::Contains("default is running") && Catch::Contains("`stackemu stop`"));
    CHECK(sb.run({"config", "reset", "cpus"}).code == exit_code::error);
    CHECK(slurp(sb.vm_dir() / "config.json") == before);
    stop(sb);

    auto reset = sb.run({"config", "reset", "ram"});
    CHECK(reset.code == 0);
    CHECK_THAT(reset.out, Catch::Contains("ram removed from the record; the next start uses 4096"));
    CHECK_FALSE(recorded(sb).contains("ram"));
    CHECK(recorded(sb)["cpus"] == 1);
    CHECK_THAT(sb.run({"config", "reset", "ram"}).out, Catch::Contains("is not recorded"));
    auto after = run_json(sb, {"start", "--json", "-q", "--ram", "512"});
    CHECK(after["ram_mib"] == 512);
    CHECK(recorded(sb)["ram"] == 512);
    stop(sb);
}
