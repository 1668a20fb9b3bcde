// `image init`'s pure parts: the kernel's architecture from its header, the manifest from flags,
// and the nearest known key for a misspelling.
#include <catch2/catch.hpp>
#include <string>

#include "provision/image_init.hpp"
#include "provision/kernel_arch.hpp"
#include "provision/known_keys.hpp"

using namespace stackemu;
using namespace stackemu::provision;

namespace {

std::string with_bytes(std::size_t size, std::size_t at, std::string_view bytes) {
    std::string out(size, '\0');
    out.replace(at, bytes.size(), bytes);
    return out;
}

std::string elf(unsigned machine) {
    std::string out = with_bytes(64, 0,
                                 "\x7f"
                                 "ELF");
    out[18] = static_cast<char>(machine & 0xff);
    out[19] = static_cast<char>(machine >> 8);
    return out;
}

std::string pe(unsigned machine) {
    std::string out = with_bytes(512, 0, "MZ");
    out[0x3c] = static_cast<char>(0x80);
    out.replace(0x80, 4, std::string("PE\0\0", 4));
    out[0x84] = static_cast<char>(machine & 0xff);
    out[0x85] = static_cast<char>(machine >> 8);
    return out;
}

image_init_spec kernel_spec() {
    image_init_spec s;
    s.manifest_path = "/images/mine.json";
    s.disk = "/images/mine.qcow2";
    s.kernel = "/k/vmlinuz";
    s.initrd = "/k/initrd.img";
    s.arch = "amd64";
    s.identity = "files";
    s.ready_marker = "GUEST_READY";
    return s;
}

}  // namespace

TEST_CASE("a kernel's architecture is read from its header") {
    CHECK(detect_kernel_arch(elf(62)) == "amd64");
    CHECK(detect_kernel_arch(elf(183)) == "arm64");
    CHECK(detect_kernel_arch(elf(40)) == std::nullopt);  // 32-bit ARM: neither
    CHECK(detect_kernel_arch(with_bytes(1024, 0x202, "HdrS")) == "amd64");
    CHECK(detect_kernel_arch(with_bytes(128, 0x38, "ARM\x64")) == "arm64");
    CHECK(detect_kernel_arch(pe(0x8664)) == "amd64");
    CHECK(detect_kernel_arch(pe(0xaa64)) == "arm64");
    CHECK(detect_kernel_arch("\x1f\x8b\x08 gzip") == std::nullopt);
    CHECK(detect_kernel_arch("") == std::nullopt);
    CHECK(detect_kernel_arch("MZ") == std::nullopt);  // cut before its PE header
}

TEST_CASE("image init gives a kernel-boot manifest with a serial console by default") {
    auto spec = kernel_spec();
    spec.forwards = {"web:8080:18080", "api:9000"};
    spec.probes = {"web:/health"};
    spec.ready_marker = "GUEST_READY";
    auto m = manifest_for_init(spec);
    REQUIRE(m);
    REQUIRE(m->kernel_boot);
    CHECK(m->kernel_boot->cmdline == "console=ttyS0");
    CHECK(m->disk == "/images/mine.qcow2");
    CHECK(m->prof.name == "mine");
    REQUIRE(m->prof.forwards.size() == 2);
    CHECK(m->prof.forwards[0].host_default == 18080);
    CHECK_FALSE(m->prof.forwards[1].host_default);
    CHECK(m->prof.probes.at(0).path == "/health");
    CHECK(m->prof.match == marker_match::prefix);
    CHECK(m->build_id.size() == 16);
    spec.arch = "arm64";
    CHECK(manifest_for_init(spec)->kernel_boot->cmdline == "console=ttyAMA0");
}

TEST_CASE("image init gives the same build id for the same files and another for others") {
    auto a = manifest_for_init(kernel_spec());
    auto spec = kernel_spec();
    spec.identity = "other files";
    auto b = manifest_for_init(spec);
    REQUIRE(a);
    REQUIRE(b);
    CHECK(a->build_id == manifest_for_init(kernel_spec())->build_id);
    CHECK(a->build_id != b->build_id);
}

TEST_CASE("image init refuses bad flags naming them") {
    auto error_of = [](image_init_spec s) {
        auto m = manifest_for_init(s);
        REQUIRE_FALSE(m);
        return m.error().message;
    };
    auto s = kernel_spec();
    s.forwards = {"web"};
    CHECK_THAT(error_of(s), Catch::Contains("--forward web: expected NAME:GUEST_PORT"));
    s.forwards = {"web:0"};
    CHECK_THAT(error_of(s), Catch::Contains("--forward web:0"));
    s.forwards = {"web:80:99999"};
    CHECK_THAT(error_of(s), Catch::Contains("--forward web:80:99999"));
    s = kernel_spec();
    s.probes = {"health"};
    CHECK_THAT(error_of(s), Catch::Contains("--probe health: expected FORWARD:/path"));
    s.forwards = {"web:80"};
    s.probes = {"api:/x"};
    CHECK_THAT(error_of(s), Catch::Contains("names forward api, which the profile lacks"));
    s = kernel_spec();
    s.initrd.reset();
    CHECK_THAT(error_of(s), Catch::Contains("--kernel and --initrd go together"));
    s = kernel_spec();
    s.kernel.reset();
    s.initrd.reset();
    s.cmdline = "quiet";
    CHECK_THAT(error_of(s), Catch::Contains("--cmdline needs --kernel and --initrd"));
    s = kernel_spec();
    s.ready_marker += "\nsecond line";
    CHECK_THAT(error_of(s), Catch::Contains("ready_marker"));
}

TEST_CASE("image init warns about a command line without a console and a guest without agent") {
    auto s = kernel_spec();
    s.cmdline = "quiet root=/dev/vda";
    s.ready_marker.clear();
    const auto warnings = image_init_warnings(s);
    REQUIRE(warnings.size() == 3);
    CHECK_THAT(warnings[0], Catch::Contains("no console="));
    CHECK_THAT(warnings[1], Catch::Contains("ready as soon as its CPUs run"));
    CHECK_THAT(warnings[2], Catch::Contains("ACPI power button"));
    auto quiet = kernel_spec();  // the default command line has its console
    quiet.agent = true;
    CHECK(image_init_warnings(quiet).empty());
}

TEST_CASE("the nearest known key is a likely misspelling or a known synonym, else none") {
    const std::vector<std::string_view> boot = {"mode", "kernel", "initrd", "cmdline"};
    CHECK(nearest_key("append", boot) == "cmdline");
    CHECK(nearest_key("kernal", boot) == "kernel");
    CHECK(nearest_key("initramfs", boot).empty());
    CHECK(nearest_key("zzz", boot).empty());
    const std::vector<std::string_view> profile = {"ready_marker", "failure_markers", "agent"};
    CHECK(nearest_key("ready_markr", profile) == "ready_marker");
    CHECK(nearest_key("failure_marker", profile) == "failure_markers");
}
