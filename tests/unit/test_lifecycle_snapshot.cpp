// Snapshot names, the compatibility fingerprint and its records: pure logic only.
#include <catch2/catch.hpp>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "lifecycle/qemu_argv.hpp"
#include "lifecycle/snapshot.hpp"
#include "qmp/commands.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using nlohmann::json;

namespace {

struct name_case {
    std::string name;
    bool valid;
    std::string says;  // part of the message when invalid
};

vm_spec test_spec(std::uint32_t ram_mib = 512, std::uint32_t cpus = 1) {
    vm_spec spec;
    spec.qemu_binary = "qemu-system-x86_64";
    spec.accel = accelerator::tcg;
    spec.cpus = cpus;
    spec.ram_mib = ram_mib;
    spec.name = "default";
    spec.overlay = "/run/vm/disk.qcow2";
    spec.boot = kernel_boot{"/img/vmlinux", "/img/initrd.img", "console=ttyS0"};
    spec.forwards = {{26700, 8101}};
    spec.files = vm_files{"/run/vm/qmp.sock",   "/run/vm/monitor.sock", "/run/vm/serial.sock",
                          "/run/vm/serial.log", "/run/vm/qga.sock",     "/run/vm/qemu.log"};
    return spec;
}

vm_fingerprint print_of(const vm_spec& spec, std::string build = "build-1") {
    return fingerprint_from_argv(build_qemu_argv(spec), "7.2.22", "tcg", build);
}

qmp::snapshot_info info_named(std::string name, std::uint64_t vm_state = 90000000) {
    qmp::snapshot_info s;
    s.id = "1";
    s.name = std::move(name);
    s.vm_state_size = vm_state;
    s.date_sec = 1795948221;
    s.date_nsec = 834821000;
    s.vm_clock_sec = 5;
    s.vm_clock_nsec = 16111063;
    return s;
}

}  // namespace

TEST_CASE("snapshot names: the validation table") {
    const std::vector<name_case> cases = {
        {"clean", true, ""},
        {"a", true, ""},
        {"v1.2_rc-3", true, ""},
        {"2025-01-01", true, ""},
        {"Before.Migration_2", true, ""},
        {std::string(64, 'x'), true, ""},
        {"", false, "cannot be empty"},
        {std::string(65, 'x'), false, "65 bytes long: at most 64"},
        {"a b", false, "a space"},
        {"a\nb", false, "a newline"},
        {"a\tb", false, "a tab"},
        {"clean;quit", false, "';'"},
        {"a|b", false, "'|'"},
        {"a#b", false, "'#'"},
        {"a,b", false, "','"},
        {"a\"b", false, "'\"'"},
        {"a'b", false, "'''"},
        {"a/b", false, "'/'"},
        {"a\\b", false, "'\\'"},
        {"a$(reboot)", false, "'$'"},
        {std::string("a\0b", 3), false, "the control character \\x00"},
        {"x\x7f", false, "the control character \\x7f"},
        {"caf\xc3\xa9", false, "the non-ASCII byte \\xc3"},
        {"\xe2\x9c\x93ok", false, "the non-ASCII byte \\xe2"},
        {"-rf", false, "must start with a letter or digit"},
        {".hidden", false, "must start with a letter or digit"},
        {"_x", false, "must start with a letter or digit"},
        {"123", false, "all digits"},
        {"0", false, "all digits"},
    };
    REQUIRE(cases.size() >= 15);
    for (const auto& c : cases) {
        INFO("name: " << c.name << " (" << c.name.size() << " bytes)");
        auto r = check_snapshot_name(c.name);
        CHECK(r.has_value() == c.valid);
        if (!c.valid && !r) {
            CHECK(r.error().code == errc::invalid_argument);
            INFO("message: " << r.error().message);
            CHECK(r.error().message.find(c.says) != std::string::npos);
            // The message never echoes a raw control character.
            CHECK(r.error().message.find('\n') == std::string::npos);
            CHECK(r.error().message.find('\0') == std::string::npos);
        }
    }
}

TEST_CASE("snapshot names: the HMP line is built only from a valid name") {
    auto line = detail::hmp_snapshot_line("savevm", "clean-1");
    REQUIRE(line);
    CHECK(*line == "savevm clean-1");
    CHECK(detail::hmp_snapshot_line("loadvm", "x.y")->compare("loadvm x.y") == 0);
    CHECK_FALSE(detail::hmp_snapshot_line("savevm", "a\nquit"));
    CHECK_FALSE(detail::hmp_snapshot_line("savevm", "a; quit"));
    CHECK_FALSE(detail::hmp_snapshot_line("savevm", ""));
    CHECK_FALSE(detail::hmp_snapshot_line("quit", "clean"));
}

TEST_CASE("fingerprint: read from the argv start builds") {
    const auto f = print_of(test_spec());
    CHECK(f.qemu_version == "7.2.22");
    CHECK(f.machine == "q35");
    CHECK(f.accel == "tcg");
    CHECK(f.cpu == "max");
    CHECK(f.ram_mib == "512");
    CHECK(f.cpus == "1");
    CHECK(f.build_id == "build-1");
    REQUIRE_FALSE(f.devices.empty());
    CHECK(f.devices.front() == "virtio-blk-pci,drive=disk0,bootindex=1");
    CHECK(std::find(f.devices.begin(), f.devices.end(), "pvpanic") != f.devices.end());
    // Paths, ports and the kernel command line are no part of it.
    auto other = test_spec();
    other.forwards = {{30000, 8101}};
    other.files.qmp_socket = "/elsewhere/qmp.sock";
    other.overlay = "/elsewhere/disk.qcow2";
    std::get<kernel_boot>(other.boot).cmdline = "console=ttyS0 stackemu.mode=fail";
    CHECK(print_of(other) == f);
}

TEST_CASE("fingerprint: the accelerator comes from -machine when not given") {
    const std::vector<std::string> argv = {"qemu", "-machine", "virt,accel=kvm,gic-version=3",
                                           "-cpu", "host",     "-m",
                                           "2048", "-smp",     "4"};
    const auto f = fingerprint_from_argv(argv, "8.0.0", "", "b");
    CHECK(f.machine == "virt,gic-version=3");
    CHECK(f.accel == "kvm");
    CHECK(f.cpu == "host");
    CHECK(f.devices.empty());
}

TEST_CASE("fingerprint: differences name the field and both values") {
    const auto saved = print_of(test_spec(512, 1));
    CHECK(compare_fingerprints(saved, saved).empty());

    const auto bigger = print_of(test_spec(640, 1));
    auto d = compare_fingerprints(saved, bigger);
    REQUIRE(d.size() == 1);
    CHECK(d[0].field == "RAM (MiB)");
    CHECK(d[0].snapshot == "512");
    CHECK(d[0].current == "640");
    CHECK(describe_differences(d) == "RAM (MiB): snapshot 512, this VM 640");

    auto other = print_of(test_spec(640, 2), "build-2");
    other.qemu_version = "8.2.0";
    d = compare_fingerprints(saved, other);
    REQUIRE(d.size() == 4);
    CHECK(d[0].field == "QEMU version");
    CHECK(d[1].field == "RAM (MiB)");
    CHECK(d[2].field == "vCPUs");
    CHECK(d[3].field == "base image build");
    CHECK(describe_differences(d) ==
          "QEMU version: snapshot 7.2.22, this VM 8.2.0; RAM (MiB): snapshot 512, this VM 640; "
          "vCPUs: snapshot 1, this VM 2; base image build: snapshot build-1, this VM build-2");

    // A disk-only snapshot only cares about the base build.
    CHECK(compare_fingerprints(saved, bigger, true).empty());
    CHECK(compare_fingerprints(saved, other, true).size() == 1);
}

TEST_CASE("fingerprint: device differences list what is only on one side") {
    auto saved = print_of(test_spec());
    auto current = saved;
    current.devices.push_back("virtio-rng-pci");
    std::erase(current.devices, std::string("virtio-balloon-pci"));
    auto d = compare_fingerprints(saved, current);
    REQUIRE(d.size() == 1);
    CHECK(d[0].field == "devices");
    CHECK(d[0].summary ==
          "devices: only in the snapshot: virtio-balloon-pci; only in this VM: virtio-rng-pci");

    auto reordered = saved;
    std::swap(reordered.devices[0], reordered.devices[1]);
    d = compare_fingerprints(saved, reordered);
    REQUIRE(d.size() == 1);
    CHECK(d[0].summary == "devices: the same devices in another order");
}

TEST_CASE("fingerprint: JSON round trip and bad input") {
    const auto f = print_of(test_spec());
    auto back = fingerprint_from_json(to_json(f));
    REQUIRE(back);
    CHECK(*back == f);
    CHECK_FALSE(fingerprint_from_json(json::array()));
    CHECK_FALSE(fingerprint_from_json(json{{"devices", "virtio"}}));
    CHECK_FALSE(fingerprint_from_json(json{{"devices", json::array({1})}}));
    auto partial = fingerprint_from_json(json{{"build_id", "b"}, {"ram_mib", 512}});
    REQUIRE(partial);
    CHECK(partial->build_id == "b");
    CHECK(partial->ram_mib.empty());  // not a string: read as absent
}

TEST_CASE("snapshot records: round trip and matching by name and date") {
    snapshot_record live;
    live.name = "clean";
    live.date_sec = 1795948221;
    live.date_nsec = 834821000;
    live.vm_state = true;
    live.method = "qmp-job";
    live.saved_at = "2026-11-29T10:30:21Z";
    live.fingerprint = print_of(test_spec());
    snapshot_record disk;
    disk.name = "disk";
    disk.method = "qemu-img";
    const auto records = records_from_json(records_to_json({live, disk}));
    REQUIRE(records.size() == 2);
    CHECK(records[0].name == "clean");
    CHECK(records[0].vm_state);
    CHECK(records[0].fingerprint == live.fingerprint);
    CHECK_FALSE(records[1].fingerprint);

    auto found = find_record(records, info_named("clean"));
    REQUIRE(found);
    CHECK(found->method == "qmp-job");
    // Same name, another date: a snapshot of a later overlay, not the one recorded.
    auto later = info_named("clean");
    later.date_sec += 1;
    CHECK_FALSE(find_record(records, later));
    CHECK_FALSE(find_record(records, info_named("other")));

    CHECK(records_from_json(json::parse("[1,2]")).empty());
    CHECK(records_from_json(json{{"snapshots", json::array({json{{"name", 5}}, json("x")})}})
              .empty());
}

TEST_CASE("snapshot compatibility: known and unknown and disk-only") {
    const auto s = info_named("clean");
    snapshot_record rec;
    rec.name = "clean";
    rec.date_sec = s.date_sec;
    rec.date_nsec = s.date_nsec;
    rec.vm_state = true;
    rec.fingerprint = print_of(test_spec(512));

    auto fit = judge_compatibility(s, rec, print_of(test_spec(512)));
    REQUIRE(fit.compatible);
    CHECK(*fit.compatible);
    CHECK(fit.reason.empty());

    fit = judge_compatibility(s, rec, print_of(test_spec(640)));
    REQUIRE(fit.compatible);
    CHECK_FALSE(*fit.compatible);
    CHECK(fit.reason == "RAM (MiB): snapshot 512, this VM 640");

    fit = judge_compatibility(s, std::nullopt, print_of(test_spec(512)));
    CHECK_FALSE(fit.compatible);
    CHECK(fit.reason.find("no fingerprint") != std::string::npos);

    fit = judge_compatibility(s, rec, std::nullopt);
    CHECK_FALSE(fit.compatible);
    CHECK(fit.reason.find("never been started") != std::string::npos);

    // Disk-only: another RAM size is fine, another base build is not.
    const auto disk = info_named("disk", 0);
    snapshot_record disk_rec = rec;
    disk_rec.vm_state = false;
    disk_rec.fingerprint = vm_fingerprint{};
    disk_rec.fingerprint->build_id = "build-1";
    fit = judge_compatibility(disk, disk_rec, print_of(test_spec(640)));
    REQUIRE(fit.compatible);
    CHECK(*fit.compatible);
    fit = judge_compatibility(disk, disk_rec, print_of(test_spec(640), "build-2"));
    REQUIRE(fit.compatible);
    CHECK_FALSE(*fit.compatible);
}

TEST_CASE("snapshot lists: QEMU's SnapshotInfo as QMP and qemu-img print it") {
    // qemu-img info --output=json, QEMU 7.2.
    const auto listed = json::parse(R"([{"vm-clock-nsec": 16111063, "name": "a",
        "date-sec": 1795948221, "date-nsec": 834821000, "vm-clock-sec": 5, "id": "1",
        "vm-state-size": 90396667}, {"name": "b", "id": "2", "vm-state-size": 0,
        "date-sec": 1, "date-nsec": 2, "vm-clock-sec": 0, "vm-clock-nsec": 0}])");
    auto r = qmp::parse_snapshot_list(listed);
    REQUIRE(r);
    REQUIRE(r->size() == 2);
    CHECK((*r)[0].name == "a");
    CHECK((*r)[0].id == "1");
    CHECK((*r)[0].vm_state_size == 90396667);
    CHECK((*r)[0].date_sec == 1795948221);
    CHECK((*r)[0].date_nsec == 834821000);
    CHECK((*r)[0].vm_clock_sec == 5);
    CHECK((*r)[0].vm_clock_nsec == 16111063);
    CHECK((*r)[1].vm_state_size == 0);
    CHECK_FALSE(qmp::parse_snapshot_list(json::object()));
    CHECK_FALSE(qmp::parse_snapshot_list(json::parse(R"([{"id": "1"}])")));
    // A member of another type reads as absent instead of throwing.
    auto odd = qmp::parse_snapshot_list(json::parse(R"([{"name": "x", "vm-state-size": "big"}])"));
    REQUIRE(odd);
    CHECK((*odd)[0].vm_state_size == 0);
}

TEST_CASE("snapshot: QEMU's --version line and the exit codes") {
    CHECK(parse_qemu_version_output(
              "QEMU emulator version 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18+b3)\nCopyright") ==
          "7.2.22");
    CHECK(parse_qemu_version_output("QEMU emulator version 9.1.0\n") == "9.1.0");
    CHECK_FALSE(parse_qemu_version_output("qemu-img: unknown option"));

    CHECK(snapshot_exit_code(make_error(errc::invalid_argument, "")) == snapshot_exit::usage);
    CHECK(snapshot_exit_code(make_error(errc::not_found, "")) == 3);
    CHECK(snapshot_exit_code(make_error(errc::incompatible, "")) == 4);
    CHECK(snapshot_exit_code(make_error(errc::already_exists, "")) == 5);
    CHECK(snapshot_exit_code(make_error(errc::job_failed, "")) == 6);
    CHECK(snapshot_exit_code(make_error(errc::busy, "")) == 7);
    CHECK(snapshot_exit_code(make_error(errc::disconnected, "")) == 1);
    CHECK(snapshot_exit_code(make_error(errc::timeout, "")) == 1);
}
