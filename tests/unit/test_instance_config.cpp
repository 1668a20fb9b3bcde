// An instance's configuration (issue 12): precedence and validation of every key, the host
// check, automatic ports, changes against the record, and the record file itself (round trip,
// unknown keys kept, damage named and nothing overwritten). Also the profile's recommended
// size in the manifest, and the hint that makes a saved ready state fit.
#include <sys/stat.h>
#include <unistd.h>

#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <map>
#include <set>
#include <string>

#include "lifecycle/files.hpp"
#include "lifecycle/instance_config.hpp"
#include "lifecycle/snapshot.hpp"
#include "provision/manifest.hpp"
#include "provision/profile.hpp"
#include "support/describe.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

namespace {

// A valid value of `key` per layer, different from each other where the key allows it.
std::string sample(const config_key& key, int layer) {
    switch (key.kind) {
        case config_kind::path:
            return "/layer" + std::to_string(layer) + "/x.qcow2";
        case config_kind::architecture:
            return layer % 2 ? "arm64" : "amd64";
        case config_kind::accelerator:
            return std::array{"kvm", "tcg", "hvf", "auto"}[layer % 4];
        case config_kind::boolean:
            return layer % 2 ? "true" : "false";
        case config_kind::number:
            return std::to_string(key.min + 1 + static_cast<std::uint64_t>(layer));
    }
    return {};
}

config_values layer_of(config_source source, int layer, const std::string& origin) {
    config_values out;
    for (const auto& key : config_keys()) {
        auto v = parse_config_value(key, sample(key, layer), origin);
        REQUIRE_OK(v);
        out[std::string(key.name)] = {*v, source, origin};
    }
    return out;
}

std::string error_of(const result<json>& r) {
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    return r.error().message;
}

// Settings with only the two directories set (validate() wants them absolute).
settings paths_only() {
    settings s;
    s.image_dir = "/images";
    s.run_dir = "/run";
    return s;
}

recommendation demo_profile(const fs::path&) {
    provision::resources r;
    r.ram_mib = 1024;
    r.cpus = 2;
    return {r, "profile demo"};
}

struct temp_dir {
    fs::path path;
    temp_dir() {
        path = fs::temp_directory_path() /
               ("stackemu-config-unit-" + std::to_string(::getpid()) + "-" +
                std::to_string(reinterpret_cast<std::uintptr_t>(this)));
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
};

}  // namespace

TEST_CASE("config: every key takes flag over variable over record over profile over default") {
    const auto flags = layer_of(config_source::flag, 0, "--flag");
    const auto env = layer_of(config_source::environment, 1, "EMULATOR_X");
    const auto record = layer_of(config_source::record, 2, "/run/vm/config.json");
    for (const auto& key : config_keys()) {
        INFO(key.name);
        const std::string name(key.name);
        auto only = [&](const config_values& layer) {
            return config_values{{name, layer.at(name)}};
        };
        const auto f = only(flags);
        const auto e = only(env);
        const auto r = only(record);
        const config_values none;
        auto source_of = [&](const config_values& fl, const config_values& en,
                             const std::optional<config_values>& re) {
            auto values = resolve_config(fl, en, re, architecture::amd64, "/images", demo_profile);
            return values.contains(name) ? values.at(name).source : config_source::builtin;
        };
        CHECK(source_of(f, e, r) == config_source::flag);
        CHECK(source_of(none, e, r) == config_source::environment);
        CHECK(source_of(none, none, r) == config_source::record);
        const bool recommended = key.name == "ram" || key.name == "cpus";
        CHECK(source_of(none, none, std::nullopt) ==
              (recommended ? config_source::profile : config_source::builtin));
        // The winner's value is the layer's own.
        auto values = resolve_config(f, e, r, architecture::amd64, "/images", demo_profile);
        CHECK(values.at(name).value == flags.at(name).value);
    }
}

TEST_CASE("config: the built-in defaults are upstream's and the image follows the architecture") {
    auto values = resolve_config({}, {}, std::nullopt, architecture::arm64, "/images", {});
    CHECK(values.at("ram").value == 4096);
    CHECK(values.at("cpus").value == 4);
    CHECK(values.at("dashboard_port").value == 26700);
    CHECK(values.at("inbucket_port").value == 26703);
    CHECK(values.at("ready_timeout").value == 240);
    CHECK(values.at("stop_timeout").value == 90);
    CHECK(values.at("accel").value == "auto");
    CHECK(values.at("share_writable").value == false);
    CHECK_FALSE(values.contains("share"));
    CHECK(values.at("image").value == "/images/stack-emulator-arm64.qcow2");
    // A recorded architecture picks the image for it.
    config_values record{{"arch", {json("amd64"), config_source::record, "r"}}};
    values = resolve_config({}, {}, record, architecture::arm64, "/images", {});
    CHECK(values.at("image").value == "/images/stack-emulator-amd64.qcow2");
}

TEST_CASE("config: the profile's recommendation is read for the image that will run") {
    fs::path asked;
    config_values flags{{"image", {json("/mine/guest.qcow2"), config_source::flag, "--image"}}};
    auto values = resolve_config(flags, {}, std::nullopt, architecture::amd64, "/images",
                                 [&](const fs::path& image) {
                                     asked = image;
                                     return demo_profile(image);
                                 });
    CHECK(asked == "/mine/guest.qcow2");
    CHECK(values.at("ram").value == 1024);
    CHECK(values.at("ram").origin == "profile demo");
    CHECK(values.at("cpus").value == 2);
}

TEST_CASE("config: every key is validated as its flag is") {
    for (const auto& key : config_keys()) {
        INFO(key.name);
        const std::string what = "config set " + std::string(key.name);
        CHECK_OK(parse_config_value(key, sample(key, 0), what));
        switch (key.kind) {
            case config_kind::number:
                CHECK_THAT(error_of(parse_config_value(key, std::to_string(key.min - 1), what)),
                           Catch::Contains(what) && Catch::Contains("must be between"));
                CHECK_THAT(error_of(parse_config_value(key, std::to_string(key.max + 1), what)),
                           Catch::Contains("must be between"));
                CHECK_THAT(error_of(parse_config_value(key, "lots", what)),
                           Catch::Contains("plain decimal number"));
                CHECK_THAT(error_of(parse_config_value(key, "-1", what)), Catch::Contains("'-1'"));
                break;
            case config_kind::path:
                CHECK_THAT(error_of(parse_config_value(key, "relative/dir", what)),
                           Catch::Contains(what) && Catch::Contains("absolute path"));
                CHECK_THAT(error_of(parse_config_value(key, "", what)),
                           Catch::Contains("absolute path"));
                break;
            case config_kind::architecture:
                CHECK(*parse_config_value(key, "x86_64", what) == "amd64");
                CHECK_THAT(error_of(parse_config_value(key, "sparc", what)),
                           Catch::Contains(what) && Catch::Contains("use amd64 or arm64"));
                // A flag's message reads as it always has.
                CHECK(error_of(parse_config_value(key, "sparc", "--arch")) ==
                      "unknown architecture 'sparc'; use amd64 or arm64");
                break;
            case config_kind::accelerator:
                CHECK_THAT(error_of(parse_config_value(key, "xen", what)),
                           Catch::Contains("use auto, kvm, hvf or tcg"));
                break;
            case config_kind::boolean:
                CHECK(*parse_config_value(key, "true", what) == true);
                CHECK_THAT(error_of(parse_config_value(key, "yes", what)),
                           Catch::Contains("must be true or false"));
                break;
        }
    }
}

TEST_CASE("config: an unknown key names the nearest one and lists them all") {
    auto r = find_config_key("rma");
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("'rma' is not a setting") &&
                                      Catch::Contains("did you mean 'ram'?") &&
                                      Catch::Contains("dashboard_port"));
    CHECK_THAT(find_config_key("memory").error().message, Catch::Contains("did you mean 'ram'"));
    CHECK_THAT(find_config_key("zzzzzz").error().message, !Catch::Contains("did you mean"));
    CHECK(find_config_key("cpus").value()->flag == "--cpus");
}

TEST_CASE("config: the variables are read with their names, EMULATOR_RAM_MB too") {
    std::map<std::string, std::string, std::less<>> vars{
        {"EMULATOR_RAM_MB", "2048"}, {"EMULATOR_BACKEND_PORT", "30001"}, {"EMULATOR_ACCEL", "tcg"}};
    auto env = [&](std::string_view name) -> std::optional<std::string> {
        auto it = vars.find(name);
        return it == vars.end() ? std::nullopt : std::optional<std::string>(it->second);
    };
    auto layer = environment_layer(env);
    REQUIRE(layer);
    CHECK(layer->at("ram").value == 2048);
    CHECK(layer->at("ram").origin == "EMULATOR_RAM_MB");
    CHECK(layer->at("backend_port").value == 30001);
    CHECK(layer->at("accel").source == config_source::environment);
    CHECK_FALSE(layer->contains("cpus"));
    vars["EMULATOR_STOP_TIMEOUT"] = "0";
    auto bad = environment_layer(env);
    REQUIRE_FALSE(bad);
    CHECK_THAT(bad.error().message, Catch::Contains("EMULATOR_STOP_TIMEOUT must be between 1"));
}

TEST_CASE("config: sizes the user gives must fit the host, with the host's figures") {
    const host_facts small{architecture::amd64, 2, 8192};
    config_values values{{"ram", {json(16384), config_source::flag, "--ram"}},
                         {"cpus", {json(2), config_source::flag, "--cpus"}}};
    auto r = check_sizes_fit_host(values, small);
    REQUIRE_FALSE(r);
    CHECK_THAT(r.error().message, Catch::Contains("--ram 16384 MiB is more than this host's "
                                                  "memory (8192 MiB, 8.0 GiB)"));
    values["ram"] = {json(8192), config_source::flag, "--ram"};
    CHECK_OK(check_sizes_fit_host(values, small));
    values["cpus"] = {json(3), config_source::environment, "EMULATOR_CPUS"};
    CHECK_THAT(check_sizes_fit_host(values, small).error().message,
               Catch::Contains("EMULATOR_CPUS 3 is more vCPUs than this host has CPUs (2)"));
    // Defaults, profiles and the record are not the user's input now.
    for (auto source : {config_source::builtin, config_source::profile, config_source::record}) {
        config_values quiet{{"ram", {json(65536), source, ""}}, {"cpus", {json(64), source, ""}}};
        CHECK_OK(check_sizes_fit_host(quiet, small));
    }
    // Unknown host memory is not checked.
    CHECK_OK(check_sizes_fit_host({{"ram", {json(65536), config_source::flag, "--ram"}}},
                                  host_facts{architecture::amd64, 2, 0}));
}

TEST_CASE("config: applied values are validated as a whole") {
    auto values = resolve_config({}, {}, std::nullopt, architecture::amd64, "/images", {});
    auto s = paths_only();
    REQUIRE_OK(apply_config(values, s));
    CHECK(s.ram_mib == 4096);
    values["backend_port"] = {json(26700), config_source::record, "r"};
    auto clash = apply_config(values, s);
    REQUIRE_FALSE(clash);
    CHECK_THAT(clash.error().message, Catch::Contains("are both 26700"));
    values = resolve_config({}, {}, std::nullopt, architecture::amd64, "/images", {});
    values["cpus"] = {json(256), config_source::flag, "--cpus"};
    CHECK_THAT(apply_config(values, s).error().message,
               Catch::Contains("an amd64 guest takes at most 255 CPUs"));
    values["cpus"] = {json(3), config_source::flag, "--cpus"};
    values["ready_timeout"] = {json(30), config_source::flag, "--ready-timeout"};
    values["share"] = {json("/srv/project"), config_source::record, "r"};
    values["share_writable"] = {json(true), config_source::record, "r"};
    REQUIRE_OK(apply_config(values, s));
    CHECK(s.cpus == 3);
    CHECK(s.ready_timeout == std::chrono::seconds(30));
    auto share = configured_share(values);
    REQUIRE(share);
    CHECK(share->dir == "/srv/project");
    CHECK(share->writable);
}

TEST_CASE("config: a named instance moves only taken default ports, from 26704 up") {
    auto values = resolve_config({}, {}, std::nullopt, architecture::amd64, "/images", {});
    std::set<std::uint16_t> taken{26700, 26701, 26702, 26704};
    pick_free_ports(values, [&](std::uint16_t p) { return taken.contains(p); });
    CHECK(values.at("dashboard_port").value == 26705);
    CHECK(values.at("dashboard_port").source == config_source::automatic);
    CHECK(values.at("dashboard_port").origin == "26700 was taken");
    CHECK(values.at("backend_port").value == 26706);
    CHECK(values.at("minio_port").value == 26707);
    CHECK(values.at("inbucket_port").value == 26703);  // free: kept
    CHECK(values.at("inbucket_port").source == config_source::builtin);
    // Ports given explicitly stay, taken or not: the port check then names the clash.
    config_values env{{"dashboard_port", {json(26700), config_source::environment, "E"}}};
    values = resolve_config({}, env, std::nullopt, architecture::amd64, "/images", {});
    pick_free_ports(values, [&](std::uint16_t p) { return taken.contains(p); });
    CHECK(values.at("dashboard_port").value == 26700);
    auto s = paths_only();
    CHECK_OK(apply_config(values, s));
}

TEST_CASE("config: changes against the record are described and refused while running") {
    config_values record{{"ram", {json(1024), config_source::record, "r"}},
                         {"cpus", {json(2), config_source::record, "r"}},
                         {"ready_timeout", {json(240), config_source::record, "r"}}};
    config_values env{{"ram", {json(4096), config_source::environment, "EMULATOR_RAM"}}};
    config_values flags{{"cpus", {json(2), config_source::flag, "--cpus"}},
                        {"ready_timeout", {json(60), config_source::flag, "--ready-timeout"}}};
    auto values = resolve_config(flags, env, record, architecture::amd64, "/images", {});
    auto changes = changes_from_record(values, record);
    REQUIRE(changes.size() == 2);  // the same --cpus is no change
    CHECK(describe(changes[0]) == "RAM 1024 → 4096 MiB (from EMULATOR_RAM)");
    CHECK(describe(changes[1]) == "ready timeout 240 → 60 s (from --ready-timeout)");
    const auto refusal = running_refusal(changes, " --name b");
    CHECK_THAT(refusal, Catch::Contains("RAM 1024 → 4096 MiB (from EMULATOR_RAM)") &&
                            Catch::Contains("`stackemu stop --name b`") &&
                            Catch::Contains("`stackemu start --name b`") &&
                            !Catch::Contains("ready timeout"));
    // A timeout steers the command, not the VM: no refusal.
    CHECK(running_refusal({changes[1]}, "").empty());
    // A share added to an instance recorded without one is a change.
    config_values share{{"share", {json("/srv/p"), config_source::flag, "--share"}}};
    values = resolve_config(share, {}, record, architecture::amd64, "/images", {});
    changes = changes_from_record(values, record);
    REQUIRE(changes.size() == 1);
    CHECK(describe(changes[0]) == "shared directory none → /srv/p (from --share)");
    CHECK_THAT(running_refusal(changes, ""), Catch::Contains("`stackemu start --share /srv/p`"));
}

TEST_CASE("config record: round trip, unknown keys kept, values checked like flags") {
    const fs::path file = "/run/vm/config.json";
    auto values =
        resolve_config({}, {}, std::nullopt, architecture::amd64, "/images", demo_profile);
    json document = {{"format", 1},
                     {"created_by", "a newer stackemu"},
                     {"settings", {{"future_key", {{"x", 1}}}, {"ram", 512}}}};
    auto written = updated_document(document, values);
    auto parsed = parse_record(written.dump(2), file);
    REQUIRE_OK(parsed);
    for (const auto& [name, v] : values) {
        INFO(name);
        REQUIRE(parsed->values.contains(name));
        CHECK(parsed->values.at(name).value == v.value);
        CHECK(parsed->values.at(name).source == config_source::record);
    }
    CHECK(parsed->values.at("ram").value == 1024);  // rewritten
    CHECK(parsed->document["created_by"] == "a newer stackemu");
    CHECK(parsed->document["settings"]["future_key"] == json{{"x", 1}});
    // A reset removes the key and nothing else.
    const std::string removed[] = {"ram"};
    auto reset = updated_document(parsed->document, {}, removed);
    CHECK_FALSE(reset["settings"].contains("ram"));
    CHECK(reset["settings"].contains("future_key"));
    CHECK(reset["settings"]["cpus"] == 2);
}

TEST_CASE("config record: a damaged one is an error naming the file and what to do") {
    const fs::path file = "/run/instances/b/vm/config.json";
    auto says = [&](std::string_view text, std::string_view what) {
        auto r = parse_record(text, file);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == errc::invalid_argument);
        CHECK_THAT(r.error().message,
                   Catch::Contains(file.string()) && Catch::Contains(std::string(what)));
        return r.error().message;
    };
    CHECK_THAT(says("{\"settings\": {\"ram\": 10", "not a JSON object"),
               Catch::Contains("move it away") && Catch::Contains("nothing was changed"));
    says("[1, 2]", "not a JSON object");
    says("{\"format\": 1}", "no \"settings\" object");
    says("{\"settings\": {\"ram\": \"lots\"}}", "\"ram\" must be a plain decimal number");
    says("{\"settings\": {\"ram\": 64}}", "\"ram\" must be between 128 and 1048576");
    says("{\"settings\": {\"cpus\": -1}}", "\"cpus\" is -1");
    says("{\"settings\": {\"image\": \"relative.qcow2\"}}", "must be an absolute path");
    says("{\"settings\": {\"share_writable\": \"maybe\"}}", "must be true or false");
    says("{\"format\": \"one\", \"settings\": {}}", "\"format\" is \"one\"");
    says("{\"format\": 7, \"settings\": {}}", "written by a newer stackemu");
}

TEST_CASE("config record file: 0600, atomic, and a damaged one is left as it was") {
    temp_dir dir;
    const auto file = dir.path / "config.json";
    auto none = read_record(file);
    REQUIRE_OK(none);
    CHECK_FALSE(none->has_value());
    auto values = resolve_config({}, {}, std::nullopt, architecture::amd64, "/images", {});
    REQUIRE_OK(write_record(file, updated_document(json::object(), values)));
    struct stat st {};
    REQUIRE(::stat(file.c_str(), &st) == 0);
    CHECK((st.st_mode & 0777) == 0600);
    auto back = read_record(file);
    REQUIRE_OK(back);
    REQUIRE(back->has_value());
    CHECK((*back)->values.at("ram").value == 4096);
    // No temporary file is left beside it.
    int entries = 0;
    for ([[maybe_unused]] const auto& e : fs::directory_iterator(dir.path))
        ++entries;
    CHECK(entries == 1);

    {
        std::ofstream out(file, std::ios::trunc);
        out << "{\"settings\": {\"ram\": ";
    }
    auto damaged = read_record(file);
    REQUIRE_FALSE(damaged);
    CHECK_THAT(damaged.error().message, Catch::Contains(file.string()));
    CHECK(read_file(file.string()).value_or("") == "{\"settings\": {\"ram\": ");
}

TEST_CASE("config: the manifest carries the profile's recommended size") {
    const std::string base = R"({"format": 1, "arch": "amd64", "disk": "d.qcow2",
        "boot": {"mode": "firmware"}, "build_id": "b", "profile": {"name": "p")";
    auto m = provision::parse_manifest(base + R"(, "resources": {"ram_mib": 1024, "cpus": 2}}})",
                                       "/images");
    REQUIRE_OK(m);
    CHECK(m->prof.recommended.ram_mib == 1024u);
    CHECK(m->prof.recommended.cpus == 2u);
    auto again = provision::parse_manifest(provision::to_json_text(*m, "/images"), "/images");
    REQUIRE_OK(again);
    CHECK(again->prof.recommended == m->prof.recommended);
    // Without a recommendation the manifest says nothing about it.
    auto plain = provision::parse_manifest(base + "}}", "/images");
    REQUIRE_OK(plain);
    CHECK_FALSE(plain->prof.recommended.ram_mib);
    CHECK(provision::to_json_text(*plain, "/images").find("resources") == std::string::npos);

    auto bad = [&](const std::string& resources, const std::string& says) {
        auto r =
            provision::parse_manifest(base + ", \"resources\": " + resources + "}}", "/images");
        REQUIRE_FALSE(r);
        CHECK_THAT(r.error().message, Catch::Contains(says));
    };
    bad(R"({"ram_mib": 64})", "profile.resources.ram_mib\": must be a whole number from 128");
    bad(R"({"cpus": 0})", "profile.resources.cpus\": must be a whole number from 1 to 256");
    bad(R"({"memory": 1024})", "did you mean \"profile.resources.ram_mib\"?");
    bad(R"(1024)", "must be an object like");
    auto profile =
        provision::parse_profile(R"({"name": "demo", "resources": {"ram_mib": 4096, "cpus": 4}})");
    REQUIRE_OK(profile);
    CHECK(profile->runtime.recommended.cpus == 4u);
}

TEST_CASE("config: a saved state that does not fit names the flag and config set that would") {
    std::vector<fingerprint_difference> differences{
        {"RAM (MiB)", "1024", "4096", "RAM (MiB): snapshot 1024, this VM 4096"},
        {"vCPUs", "2", "4", "vCPUs: snapshot 2, this VM 4"}};
    const auto hint = fit_hint(differences, " --name b");
    CHECK_THAT(hint, Catch::Contains("`stackemu start --name b --ram 1024 --cpus 2`") &&
                         Catch::Contains("`stackemu config set --name b ram 1024` and "
                                         "`stackemu config set --name b cpus 2`"));
    CHECK(fit_hint({{"QEMU version", "7.2.0", "8.0.0", "x"}}, "").empty());
}
