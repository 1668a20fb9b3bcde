// EMULATOR_* settings: upstream's defaults, strict numbers, ranges and clear errors.
#include <catch2/catch.hpp>
#include <map>
#include <string>
#include <utility>
#include <vector>

#include "lifecycle/settings.hpp"
#include "support/describe.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;

namespace {

using env_map = std::map<std::string, std::string, std::less<>>;

env_lookup env_of(env_map vars) {
    return [vars = std::move(vars)](std::string_view name) -> std::optional<std::string> {
        auto it = vars.find(name);
        if (it == vars.end()) return std::nullopt;
        return it->second;
    };
}

host_facts amd64_host(unsigned cores = 2) {
    return host_facts{architecture::amd64, cores};
}

result<settings> parse(env_map vars, host_facts host = amd64_host()) {
    if (!vars.contains("HOME")) vars["HOME"] = "/home/dev";
    return from_environment(env_of(std::move(vars)), host);
}

std::string error_text(const result<settings>& r) {
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    return r.error().message;
}

}  // namespace

TEST_CASE("settings default to upstream's values") {
    auto s = parse({}, amd64_host(6));
    REQUIRE_OK(s);
    CHECK(s->image_dir == "/home/dev/.stack/emulator/images");
    CHECK(s->run_dir == "/home/dev/.stack/emulator/run");
    CHECK(s->ram_mib == 4096);
    CHECK(s->cpus == 4);
    CHECK(s->guest_arch == architecture::amd64);
    CHECK(s->ready_timeout == std::chrono::seconds(240));
    CHECK(s->ports.dashboard == 26700);
    CHECK(s->ports.backend == 26701);
    CHECK(s->ports.minio == 26702);
    CHECK(s->ports.inbucket == 26703);
    CHECK(s->stop_timeout == std::chrono::seconds(90));
    CHECK(s->accel == accel_mode::automatic);
    CHECK(s->name.empty());
    CHECK(s->qemu.empty());
    CHECK(s->provision_timeout == std::chrono::seconds(3200));
    CHECK(s->disk_size_bytes == 12ull << 30);
    CHECK(s->build_ram_mib == 4096);
    CHECK(s->build_cpus == 6);
}

TEST_CASE("every variable is read") {
    auto s = parse({{"EMULATOR_IMAGE_DIR", "/srv/images"},
                    {"EMULATOR_RUN_DIR", "/srv/run"},
                    {"EMULATOR_RAM", "2048"},
                    {"EMULATOR_CPUS", "2"},
                    {"EMULATOR_ARCH", "arm64"},
                    {"EMULATOR_READY_TIMEOUT", "600"},
                    {"EMULATOR_DASHBOARD_PORT", "8100"},
                    {"EMULATOR_BACKEND_PORT", "8102"},
                    {"EMULATOR_MINIO_PORT", "9000"},
                    {"EMULATOR_INBUCKET_PORT", "9001"},
                    {"EMULATOR_STOP_TIMEOUT", "30"},
                    {"EMULATOR_ACCEL", "tcg"},
                    {"EMULATOR_NAME", "ci-1"},
                    {"EMULATOR_QEMU", "/opt/fake-qemu"},
                    {"EMULATOR_PROVISION_TIMEOUT", "6000"},
                    {"EMULATOR_DISK_SIZE", "20G"},
                    {"EMULATOR_BUILD_RAM", "8192"},
                    {"EMULATOR_BUILD_CPUS", "3"}});
    REQUIRE_OK(s);
    CHECK(s->image_dir == "/srv/images");
    CHECK(s->run_dir == "/srv/run");
    CHECK(s->ram_mib == 2048);
    CHECK(s->cpus == 2);
    CHECK(s->guest_arch == architecture::arm64);
    CHECK(s->ready_timeout == std::chrono::seconds(600));
    CHECK(s->ports.dashboard == 8100);
    CHECK(s->ports.backend == 8102);
    CHECK(s->ports.minio == 9000);
    CHECK(s->ports.inbucket == 9001);
    CHECK(s->stop_timeout == std::chrono::seconds(30));
    CHECK(s->accel == accel_mode::tcg);
    CHECK(s->name == "ci-1");
    CHECK(s->qemu == "/opt/fake-qemu");
    CHECK(s->provision_timeout == std::chrono::seconds(6000));
    CHECK(s->disk_size_bytes == 20ull << 30);
    CHECK(s->build_ram_mib == 8192);
    CHECK(s->build_cpus == 3);
}

TEST_CASE("the build CPU default is capped at the CPU limit") {
    auto s = parse({}, amd64_host(1000));
    REQUIRE_OK(s);
    CHECK(s->build_cpus == 256);
}

TEST_CASE("paths expand a leading tilde from HOME and drop a trailing slash") {
    auto s = parse({{"EMULATOR_RUN_DIR", "~/runs/"}, {"EMULATOR_IMAGE_DIR", "/a/./b/../images/"}});
    REQUIRE_OK(s);
    CHECK(s->run_dir == "/home/dev/runs");
    CHECK(s->image_dir == "/a/images");
}

TEST_CASE("relative paths and tilde-user paths are rejected with the variable named") {
    auto relative = error_text(parse({{"EMULATOR_RUN_DIR", "run"}}));
    CHECK(relative.find("EMULATOR_RUN_DIR='run' must be an absolute path") != std::string::npos);
    auto other_user = error_text(parse({{"EMULATOR_IMAGE_DIR", "~bob/images"}}));
    CHECK(other_user.find("~user is not supported") != std::string::npos);
}

TEST_CASE("without HOME the default directories cannot be found") {
    auto r = from_environment(env_of({}), amd64_host());
    auto text = error_text(r);
    CHECK(text.find("HOME") != std::string::npos);
    CHECK(text.find("EMULATOR_IMAGE_DIR") != std::string::npos);

    auto explicit_dirs = from_environment(
        env_of({{"EMULATOR_IMAGE_DIR", "/i"}, {"EMULATOR_RUN_DIR", "/r"}}), amd64_host());
    REQUIRE_OK(explicit_dirs);
}

TEST_CASE("RAM is read from EMULATOR_RAM or EMULATOR_RAM_MB") {
    CHECK(parse({{"EMULATOR_RAM", "2048"}})->ram_mib == 2048);
    CHECK(parse({{"EMULATOR_RAM_MB", "3072"}})->ram_mib == 3072);
    CHECK(parse({{"EMULATOR_RAM", "1024"}, {"EMULATOR_RAM_MB", "1024"}})->ram_mib == 1024);
}

TEST_CASE("EMULATOR_RAM and EMULATOR_RAM_MB that disagree are an error naming both") {
    auto text = error_text(parse({{"EMULATOR_RAM", "2048"}, {"EMULATOR_RAM_MB", "4096"}}));
    CHECK(text ==
          "EMULATOR_RAM=2048 and EMULATOR_RAM_MB=4096 disagree; set only one of them (both mean "
          "guest RAM in MiB)");
}

TEST_CASE("numbers must be plain decimal") {
    for (std::string bad : {"4G", "-1", "1e3", "+4", " 4", "4 ", "0x10", "4.0", "four"}) {
        CAPTURE(bad);
        CHECK(error_text(parse({{"EMULATOR_CPUS", bad}})) ==
              "EMULATOR_CPUS must be a plain decimal number between 1 and 256: digits only, "
              "without sign, unit or blanks (got '" +
                  bad + "')");
    }
}

TEST_CASE("numbers that overflow are out of range") {
    CHECK(error_text(parse({{"EMULATOR_RAM", "99999999999999999999999"}})) ==
          "EMULATOR_RAM must be between 128 and 1048576 (got 99999999999999999999999)");
}

TEST_CASE("a variable set to the empty string is an error that says how to get the default") {
    for (std::string var : {"EMULATOR_RAM", "EMULATOR_CPUS", "EMULATOR_ARCH", "EMULATOR_RUN_DIR",
                            "EMULATOR_MINIO_PORT", "EMULATOR_DISK_SIZE", "EMULATOR_ACCEL"}) {
        CAPTURE(var);
        CHECK(error_text(parse({{var, ""}})) ==
              var + " is set but empty; unset it to use the default");
    }
}

TEST_CASE("an empty EMULATOR_NAME or EMULATOR_QEMU means the default") {
    auto s = parse({{"EMULATOR_NAME", ""}, {"EMULATOR_QEMU", ""}});
    REQUIRE_OK(s);
    CHECK(s->name.empty());
    CHECK(s->qemu.empty());
}

TEST_CASE("numeric settings are checked against their limits") {
    struct limit {
        std::string var;
        std::string lowest_bad;
        std::string lowest_ok;
        std::string highest_ok;
        std::string highest_bad;
    };
    const std::vector<limit> limits = {
        {"EMULATOR_RAM", "127", "128", "1048576", "1048577"},
        {"EMULATOR_RAM_MB", "127", "128", "1048576", "1048577"},
        {"EMULATOR_CPUS", "0", "1", "255", "257"},
        {"EMULATOR_BUILD_RAM", "127", "128", "1048576", "1048577"},
        {"EMULATOR_BUILD_CPUS", "0", "1", "256", "257"},
        {"EMULATOR_DASHBOARD_PORT", "0", "1", "65535", "65536"},
        {"EMULATOR_INBUCKET_PORT", "0", "1", "65535", "65536"},
        {"EMULATOR_READY_TIMEOUT", "0", "1", "86400", "86401"},
        {"EMULATOR_STOP_TIMEOUT", "0", "1", "86400", "86401"},
        {"EMULATOR_PROVISION_TIMEOUT", "0", "1", "86400", "86401"},
        {"EMULATOR_REPLY_TIMEOUT", "0", "1", "86400", "86401"},
    };
    for (const auto& l : limits) {
        CAPTURE(l.var);
        CHECK_FALSE(parse({{l.var, l.lowest_bad}}).has_value());
        CHECK_OK(parse({{l.var, l.lowest_ok}}));
        CHECK_OK(parse({{l.var, l.highest_ok}}));
        auto text = error_text(parse({{l.var, l.highest_bad}}));
        CHECK(text.find(l.var) == 0);
    }
}

TEST_CASE("an amd64 guest takes at most 255 CPUs and an arm64 guest 256") {
    CHECK(error_text(parse({{"EMULATOR_CPUS", "256"}})) ==
          "an amd64 guest takes at most 255 CPUs (got 256); set EMULATOR_CPUS to 255 or fewer");
    auto arm = parse({{"EMULATOR_CPUS", "256"}, {"EMULATOR_ARCH", "arm64"}});
    REQUIRE_OK(arm);
    CHECK(arm->cpus == 256);
}

TEST_CASE("two services on one port are an error naming both variables") {
    auto text = error_text(parse({{"EMULATOR_BACKEND_PORT", "26702"}}));
    CHECK(text ==
          "the backend port (EMULATOR_BACKEND_PORT) and the MinIO port (EMULATOR_MINIO_PORT) are "
          "both 26702; give each service its own port");
}

TEST_CASE("the guest architecture defaults to the host's") {
    auto arm_host = parse({}, host_facts{architecture::arm64, 4});
    REQUIRE_OK(arm_host);
    CHECK(arm_host->guest_arch == architecture::arm64);

    auto unknown_host = parse({}, host_facts{std::nullopt, 4});
    CHECK(error_text(unknown_host).find("set EMULATOR_ARCH=amd64 or arm64") != std::string::npos);
    auto chosen = parse({{"EMULATOR_ARCH", "amd64"}}, host_facts{std::nullopt, 4});
    REQUIRE_OK(chosen);
    CHECK(chosen->guest_arch == architecture::amd64);
}

TEST_CASE("architectures are amd64 and arm64 under either name") {
    CHECK(parse({{"EMULATOR_ARCH", "x86_64"}})->guest_arch == architecture::amd64);
    CHECK(parse({{"EMULATOR_ARCH", "aarch64"}})->guest_arch == architecture::arm64);
    CHECK(error_text(parse({{"EMULATOR_ARCH", "riscv64"}})) ==
          "EMULATOR_ARCH: unknown architecture 'riscv64'; use amd64 or arm64");
}

TEST_CASE("accelerators are auto kvm hvf and tcg") {
    CHECK(parse({{"EMULATOR_ACCEL", "auto"}})->accel == accel_mode::automatic);
    CHECK(parse({{"EMULATOR_ACCEL", "kvm"}})->accel == accel_mode::kvm);
    CHECK(parse({{"EMULATOR_ACCEL", "hvf"}})->accel == accel_mode::hvf);
    CHECK(error_text(parse({{"EMULATOR_ACCEL", "whpx"}})) ==
          "EMULATOR_ACCEL: unknown accelerator 'whpx'; use auto, kvm, hvf or tcg");
}

TEST_CASE("instance names are short and safe as directory names") {
    for (const auto& good :
         std::vector<std::string>{"a", "ci-1", "Dev_2.test", std::string(32, 'x')}) {
        CAPTURE(good);
        CHECK_OK(parse({{"EMULATOR_NAME", good}}));
    }
    for (const auto& bad : std::vector<std::string>{"-a", ".", "..", "_x", "a/b", "a b", "a,b",
                                                    std::string(33, 'x')}) {
        CAPTURE(bad);
        auto text = error_text(parse({{"EMULATOR_NAME", bad}}));
        CHECK(text.find("EMULATOR_NAME '" + bad + "' is not a valid instance name") == 0);
    }
}

TEST_CASE("the build disk size takes qemu-img's binary units") {
    CHECK(parse({{"EMULATOR_DISK_SIZE", "1T"}})->disk_size_bytes == 1ull << 40);
    CHECK(parse({{"EMULATOR_DISK_SIZE", "2048m"}})->disk_size_bytes == 2048ull << 20);
    CHECK(parse({{"EMULATOR_DISK_SIZE", "1073741824"}})->disk_size_bytes == 1ull << 30);
    for (std::string bad : {"12GB", "G", "1.5G", "-1G", " 1G"}) {
        CAPTURE(bad);
        auto text = error_text(parse({{"EMULATOR_DISK_SIZE", bad}}));
        CHECK(text.find("EMULATOR_DISK_SIZE must be a size like 12G, 512M or 1T") == 0);
    }
    for (std::string bad : {"512M", "17T", "99999999999999999999G", "1048575K"}) {
        CAPTURE(bad);
        CHECK(error_text(parse({{"EMULATOR_DISK_SIZE", bad}})) ==
              "EMULATOR_DISK_SIZE must be between 1G and 16T (got " + bad + ")");
    }
}

TEST_CASE("validate checks settings changed after parsing") {
    auto s = parse({});
    REQUIRE_OK(s);
    CHECK_OK(validate(*s));

    auto cpus = *s;
    cpus.cpus = 0;
    REQUIRE_FALSE(validate(cpus).has_value());
    CHECK(validate(cpus).error().message ==
          "guest CPUs (EMULATOR_CPUS) must be between 1 and 256 (got 0)");

    auto ports = *s;
    ports.ports.inbucket = ports.ports.dashboard;
    REQUIRE_FALSE(validate(ports).has_value());
    CHECK(validate(ports).error().message.find("are both 26700") != std::string::npos);

    auto timeout = *s;
    timeout.stop_timeout = std::chrono::seconds(0);
    CHECK_FALSE(validate(timeout).has_value());

    auto name = *s;
    name.name = "../etc";
    CHECK_FALSE(validate(name).has_value());

    auto dir = *s;
    dir.run_dir = "relative";
    CHECK_FALSE(validate(dir).has_value());
}

TEST_CASE("parse_decimal names the source given by the caller") {
    auto r = parse_decimal("8G", "--ram", 128, 1048576);
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().message ==
          "--ram must be a plain decimal number between 128 and 1048576: digits only, without "
          "sign, unit or blanks (got '8G')");
    CHECK(parse_decimal("64", "--ram", 128, 1048576).error().message ==
          "--ram must be between 128 and 1048576 (got 64)");
    CHECK(parse_decimal("0042", "--cpus", 1, 256).value() == 42);
}
