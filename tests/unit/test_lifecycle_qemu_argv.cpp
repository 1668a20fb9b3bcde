// The QEMU argv, compared argument by argument. Each list below was started with QEMU 7.2
// (accel=tcg): the sockets appeared, query-status answered, quit ended it.
#include <algorithm>
#include <catch2/catch.hpp>
#include <set>
#include <string>
#include <vector>

#include "lifecycle/qemu_argv.hpp"
#include "support/describe.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;

namespace {

using argv_t = std::vector<std::string>;

vm_files files_in(const std::string& dir) {
    return vm_files{dir + "/qmp.sock",   dir + "/monitor.sock", dir + "/serial.sock",
                    dir + "/serial.log", dir + "/qga.sock",     dir + "/qemu.log"};
}

vm_spec amd64_spec() {
    vm_spec spec;
    spec.qemu_binary = "qemu-system-x86_64";
    spec.guest_arch = architecture::amd64;
    spec.host_arch = architecture::amd64;
    spec.accel = accelerator::tcg;
    spec.cpus = 4;
    spec.ram_mib = 4096;
    spec.name = "default";
    spec.overlay = "/run/vm/disk.qcow2";
    spec.boot = firmware_boot{};
    spec.forwards = {{26700, 8101}, {26701, 8102}, {26702, 9000}, {26703, 9001}};
    spec.files = files_in("/run/vm");
    return spec;
}

vm_spec arm64_spec() {
    auto spec = amd64_spec();
    spec.qemu_binary = "qemu-system-aarch64";
    spec.guest_arch = architecture::arm64;
    spec.boot = firmware_boot{"/usr/share/AAVMF/AAVMF_CODE.fd"};
    return spec;
}

// The devices and channels every VM has, after the disk and ISOs.
argv_t common_tail(bool arm64, const std::string& dir, const std::string& netdev) {
    return {"-netdev",
            netdev,
            "-device",
            "virtio-net-pci,netdev=net0",
            "-device",
            "virtio-balloon-pci",
            "-chardev",
            "socket,id=qga0,path=" + dir + "/qga.sock,server=on,wait=off",
            "-device",
            "virtio-serial-pci",
            "-device",
            "virtserialport,chardev=qga0,name=org.qemu.guest_agent.0",
            "-device",
            arm64 ? "pvpanic-pci" : "pvpanic",
            "-chardev",
            "socket,id=serial0,path=" + dir + "/serial.sock,server=on,wait=off,logfile=" + dir +
                "/serial.log,logappend=on",
            "-serial",
            "chardev:serial0",
            "-chardev",
            "socket,id=qmp0,path=" + dir + "/qmp.sock,server=on,wait=off",
            "-mon",
            "chardev=qmp0,mode=control",
            "-chardev",
            "socket,id=qmp1,path=" + dir + "/monitor.sock,server=on,wait=off",
            "-mon",
            "chardev=qmp1,mode=control",
            "-D",
            dir + "/qemu.log",
            "-d",
            "guest_errors",
            "-S",
            "-daemonize"};
}

const std::string four_forwards =
    "user,id=net0,hostfwd=tcp:127.0.0.1:26700-:8101,hostfwd=tcp:127.0.0.1:26701-:8102,"
    "hostfwd=tcp:127.0.0.1:26702-:9000,hostfwd=tcp:127.0.0.1:26703-:9001";

argv_t disk(const std::string& overlay) {
    return {"-blockdev", "driver=file,filename=" + overlay + ",node-name=disk0-file,discard=unmap",
            "-blockdev", "driver=qcow2,file=disk0-file,node-name=disk0,discard=unmap",
            "-device",   "virtio-blk-pci,drive=disk0,bootindex=1"};
}

// The argument after the first occurrence of `option`.
std::string value_after(const argv_t& argv, const std::string& option) {
    auto it = std::find(argv.begin(), argv.end(), option);
    REQUIRE(it != argv.end());
    REQUIRE(it + 1 != argv.end());
    return *(it + 1);
}

argv_t concat(std::initializer_list<argv_t> parts) {
    argv_t out;
    for (const auto& part : parts)
        out.insert(out.end(), part.begin(), part.end());
    return out;
}

}  // namespace

TEST_CASE("an amd64 guest boots the disk through the machine's firmware") {
    const argv_t expected = concat({
        {"qemu-system-x86_64", "-name", "guest=default,process=stackemu-default", "-no-user-config",
         "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "4",
         "-m", "4096"},
        disk("/run/vm/disk.qcow2"),
        common_tail(false, "/run/vm", four_forwards),
    });
    CHECK(build_qemu_argv(amd64_spec()) == expected);
}

TEST_CASE("an amd64 guest boots a kernel directly") {
    auto spec = amd64_spec();
    spec.accel = accelerator::kvm;
    spec.cpus = 2;
    spec.ram_mib = 512;
    spec.boot = kernel_boot{"/boot/vmlinuz", "/boot/initrd.img",
                            "console=ttyS0 root=/dev/vda rw quiet,splash"};
    spec.forwards = {{18080, 80}};
    const argv_t expected = concat({
        {"qemu-system-x86_64",
         "-name",
         "guest=default,process=stackemu-default",
         "-no-user-config",
         "-nodefaults",
         "-display",
         "none",
         "-machine",
         "q35,accel=kvm",
         "-cpu",
         "max",
         "-smp",
         "2",
         "-m",
         "512",
         "-kernel",
         "/boot/vmlinuz",
         "-initrd",
         "/boot/initrd.img",
         "-append",
         "console=ttyS0 root=/dev/vda rw quiet,splash"},
        disk("/run/vm/disk.qcow2"),
        common_tail(false, "/run/vm", "user,id=net0,hostfwd=tcp:127.0.0.1:18080-:80"),
    });
    CHECK(build_qemu_argv(spec) == expected);
}

TEST_CASE("an amd64 guest with read-only ISOs gets one virtio disk per ISO") {
    auto spec = amd64_spec();
    spec.isos = {{"/img/seed.iso", iso_purpose::seed}, {"/img/bundle.iso", iso_purpose::bundle}};
    spec.forwards = {};
    const argv_t expected = concat({
        {"qemu-system-x86_64", "-name", "guest=default,process=stackemu-default", "-no-user-config",
         "-nodefaults", "-display", "none", "-machine", "q35,accel=tcg", "-cpu", "max", "-smp", "4",
         "-m", "4096"},
        disk("/run/vm/disk.qcow2"),
        {"-blockdev", "driver=file,filename=/img/seed.iso,node-name=iso0-file,read-only=on",
         "-blockdev", "driver=raw,file=iso0-file,node-name=iso0,read-only=on", "-device",
         "virtio-blk-pci,drive=iso0,serial=seed", "-blockdev",
         "driver=file,filename=/img/bundle.iso,node-name=iso1-file,read-only=on", "-blockdev",
         "driver=raw,file=iso1-file,node-name=iso1,read-only=on", "-device",
         "virtio-blk-pci,drive=iso1,serial=bundle"},
        common_tail(false, "/run/vm", "user,id=net0"),
    });
    CHECK(build_qemu_argv(spec) == expected);
}

TEST_CASE("a host share is one directory over virtio-9p read-only unless asked") {
    auto spec = amd64_spec();
    spec.forwards = {};
    const argv_t head = {"qemu-system-x86_64",
                         "-name",
                         "guest=default,process=stackemu-default",
                         "-no-user-config",
                         "-nodefaults",
                         "-display",
                         "none",
                         "-machine",
                         "q35,accel=tcg",
                         "-cpu",
                         "max",
                         "-smp",
                         "4",
                         "-m",
                         "4096"};
    spec.share = host_share{"/home/dev/my,project", false};
    CHECK(build_qemu_argv(spec) ==
          concat({head,
                  disk("/run/vm/disk.qcow2"),
                  {"-fsdev",
                   "local,id=fsdev-hostshare,path=/home/dev/my,,project,security_model=mapped-"
                   "xattr,readonly=on",
                   "-device", "virtio-9p-pci,fsdev=fsdev-hostshare,mount_tag=hostshare"},
                  common_tail(false, "/run/vm", "user,id=net0")}));
    spec.share->writable = true;
    CHECK(
        build_qemu_argv(spec) ==
        concat({head,
                disk("/run/vm/disk.qcow2"),
                {"-fsdev",
                 "local,id=fsdev-hostshare,path=/home/dev/my,,project,security_model=mapped-xattr",
                 "-device", "virtio-9p-pci,fsdev=fsdev-hostshare,mount_tag=hostshare"},
                common_tail(false, "/run/vm", "user,id=net0")}));
    // Without --share nothing of the host is exported.
    spec.share.reset();
    for (const auto& arg : build_qemu_argv(spec)) {
        CHECK(arg != "-fsdev");
        CHECK(arg != "-virtfs");
    }
}

TEST_CASE("an arm64 guest on an arm64 host uses the max CPU and UEFI through -bios") {
    auto spec = arm64_spec();
    spec.host_arch = architecture::arm64;
    spec.accel = accelerator::kvm;
    const argv_t expected = concat({
        {"qemu-system-aarch64", "-name", "guest=default,process=stackemu-default",
         "-no-user-config", "-nodefaults", "-display", "none", "-machine", "virt,accel=kvm", "-cpu",
         "max", "-smp", "4", "-m", "4096", "-bios", "/usr/share/AAVMF/AAVMF_CODE.fd"},
        disk("/run/vm/disk.qcow2"),
        common_tail(true, "/run/vm", four_forwards),
    });
    CHECK(build_qemu_argv(spec) == expected);
}

TEST_CASE("an arm64 guest under TCG on an amd64 host uses a cortex-a76") {
    auto spec = arm64_spec();
    spec.isos = {{"/img/config.iso", iso_purpose::config}};
    const argv_t expected = concat({
        {"qemu-system-aarch64", "-name", "guest=default,process=stackemu-default",
         "-no-user-config", "-nodefaults", "-display", "none", "-machine", "virt,accel=tcg", "-cpu",
         "cortex-a76", "-smp", "4", "-m", "4096", "-bios", "/usr/share/AAVMF/AAVMF_CODE.fd"},
        disk("/run/vm/disk.qcow2"),
        {"-blockdev", "driver=file,filename=/img/config.iso,node-name=iso0-file,read-only=on",
         "-blockdev", "driver=raw,file=iso0-file,node-name=iso0,read-only=on", "-device",
         "virtio-blk-pci,drive=iso0,serial=config"},
        common_tail(true, "/run/vm", four_forwards),
    });
    CHECK(build_qemu_argv(spec) == expected);
}

TEST_CASE("an arm64 guest under TCG on an arm64 host keeps the max CPU") {
    auto spec = arm64_spec();
    spec.host_arch = architecture::arm64;
    CHECK(value_after(build_qemu_argv(spec), "-cpu") == "max");
}

TEST_CASE("an arm64 guest with more than 8 CPUs gets GICv3") {
    auto spec = arm64_spec();
    spec.cpus = 8;
    CHECK(value_after(build_qemu_argv(spec), "-machine") == "virt,accel=tcg");
    spec.cpus = 9;
    CHECK(value_after(build_qemu_argv(spec), "-machine") == "virt,accel=tcg,gic-version=3");
    auto amd = amd64_spec();
    amd.cpus = 16;
    CHECK(value_after(build_qemu_argv(amd), "-machine") == "q35,accel=tcg");
}

TEST_CASE("a named instance is named and uses its own files") {
    auto spec = amd64_spec();
    spec.name = "ci-1";
    spec.overlay = "/run/instances/ci-1/vm/disk.qcow2";
    spec.files = files_in("/run/instances/ci-1/vm");
    spec.accel = accelerator::hvf;
    const argv_t expected = concat({
        {"qemu-system-x86_64", "-name", "guest=ci-1,process=stackemu-ci-1", "-no-user-config",
         "-nodefaults", "-display", "none", "-machine", "q35,accel=hvf", "-cpu", "max", "-smp", "4",
         "-m", "4096"},
        disk("/run/instances/ci-1/vm/disk.qcow2"),
        common_tail(false, "/run/instances/ci-1/vm", four_forwards),
    });
    CHECK(build_qemu_argv(spec) == expected);
}

TEST_CASE("commas in paths are doubled inside option values only") {
    auto spec = amd64_spec();
    spec.overlay = "/a,b/disk.qcow2";
    spec.files = files_in("/a,b");
    spec.isos = {{"/i,so/seed.iso", iso_purpose::seed}};
    spec.boot = kernel_boot{"/k,1", "/i,1", "x=1,2"};
    auto argv = build_qemu_argv(spec);
    const std::set<std::string> args(argv.begin(), argv.end());
    CHECK(
        args.contains("driver=file,filename=/a,,b/disk.qcow2,node-name=disk0-file,discard=unmap"));
    CHECK(args.contains("driver=file,filename=/i,,so/seed.iso,node-name=iso0-file,read-only=on"));
    CHECK(args.contains("socket,id=qmp0,path=/a,,b/qmp.sock,server=on,wait=off"));
    CHECK(args.contains(
        "socket,id=serial0,path=/a,,b/serial.sock,server=on,wait=off,logfile=/a,,b/serial.log,"
        "logappend=on"));
    // Plain arguments are taken verbatim.
    CHECK(args.contains("/k,1"));
    CHECK(args.contains("/i,1"));
    CHECK(args.contains("x=1,2"));
    CHECK(args.contains("/a,b/qemu.log"));
}

TEST_CASE("the argv never asks for a pid file") {
    auto argv = build_qemu_argv(arm64_spec());
    CHECK(std::find(argv.begin(), argv.end(), "-pidfile") == argv.end());
}

TEST_CASE("files_of takes the sockets and logs from the instance layout") {
    auto paths = make_instance_paths("/srv/run", "x", socket_fallback{});
    REQUIRE_OK(paths);
    auto files = files_of(*paths);
    CHECK(files.qmp_socket == "/srv/run/instances/x/vm/qmp.sock");
    CHECK(files.monitor_socket == "/srv/run/instances/x/vm/monitor.sock");
    CHECK(files.serial_socket == "/srv/run/instances/x/vm/serial.sock");
    CHECK(files.serial_log == "/srv/run/instances/x/vm/serial.log");
    CHECK(files.qga_socket == "/srv/run/instances/x/vm/qga.sock");
    CHECK(files.qemu_log == "/srv/run/instances/x/vm/qemu.log");
}

TEST_CASE("the default QEMU binary follows the guest architecture") {
    CHECK(default_qemu_binary(architecture::amd64) == "qemu-system-x86_64");
    CHECK(default_qemu_binary(architecture::arm64) == "qemu-system-aarch64");
}

TEST_CASE("auto picks hvf then kvm for native guests and tcg otherwise") {
    using A = architecture;
    struct row {
        A guest;
        A host;
        accelerator_support support;
        accelerator expected;
    };
    const std::vector<row> rows = {
        {A::amd64, A::amd64, {true, false}, accelerator::kvm},
        {A::amd64, A::amd64, {false, false}, accelerator::tcg},
        {A::arm64, A::arm64, {false, true}, accelerator::hvf},
        {A::arm64, A::arm64, {true, true}, accelerator::hvf},
        {A::arm64, A::amd64, {true, false}, accelerator::tcg},
        {A::amd64, A::arm64, {false, true}, accelerator::tcg},
    };
    for (const auto& r : rows) {
        auto got = resolve_accelerator(accel_mode::automatic, r.guest, r.host, r.support);
        REQUIRE_OK(got);
        CHECK(*got == r.expected);
    }
}

TEST_CASE("an explicit accelerator that cannot work is an error") {
    using A = architecture;
    auto cross = resolve_accelerator(accel_mode::kvm, A::arm64, A::amd64, {true, false});
    REQUIRE_FALSE(cross.has_value());
    CHECK(cross.error().message ==
          "kvm cannot run an arm64 guest on an amd64 host; use EMULATOR_ACCEL=tcg or auto");
    auto missing = resolve_accelerator(accel_mode::hvf, A::amd64, A::amd64, {true, false});
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().message ==
          "hvf is not usable on this host; use EMULATOR_ACCEL=tcg or auto");
    CHECK(resolve_accelerator(accel_mode::kvm, A::amd64, A::amd64, {true, false}).value() ==
          accelerator::kvm);
    CHECK(resolve_accelerator(accel_mode::tcg, A::arm64, A::amd64, {}).value() == accelerator::tcg);
}

TEST_CASE("UEFI firmware is the first candidate that exists") {
    const auto& candidates = default_uefi_firmware_candidates();
    REQUIRE(candidates.size() == 5);
    CHECK(candidates[0] == "/opt/homebrew/share/qemu/edk2-aarch64-code.fd");
    CHECK(candidates[1] == "/usr/local/share/qemu/edk2-aarch64-code.fd");
    CHECK(candidates[2] == "/usr/share/qemu/edk2-aarch64-code.fd");
    CHECK(candidates[3] == "/usr/share/AAVMF/AAVMF_CODE.fd");
    CHECK(candidates[4] == "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd");

    std::set<std::filesystem::path> present = {"/usr/share/AAVMF/AAVMF_CODE.fd",
                                               "/usr/share/qemu-efi-aarch64/QEMU_EFI.fd"};
    auto exists = [&](const std::filesystem::path& p) { return present.contains(p); };
    auto found = find_uefi_firmware(candidates, exists);
    REQUIRE_OK(found);
    CHECK(*found == "/usr/share/AAVMF/AAVMF_CODE.fd");
}

TEST_CASE("missing UEFI firmware is an error listing every place looked at") {
    auto none = find_uefi_firmware(default_uefi_firmware_candidates(),
                                   [](const std::filesystem::path&) { return false; });
    REQUIRE_FALSE(none.has_value());
    CHECK(none.error().code == errc::not_found);
    for (const auto& candidate : default_uefi_firmware_candidates()) {
        CHECK(none.error().message.find(candidate.string()) != std::string::npos);
    }
    CHECK(none.error().message.find("install qemu-efi-aarch64") != std::string::npos);
}

TEST_CASE("escape_option_value doubles commas and nothing else") {
    CHECK(escape_option_value("") == "");
    CHECK(escape_option_value("/plain/path") == "/plain/path");
    CHECK(escape_option_value("a,b,,c") == "a,,b,,,,c");
}
