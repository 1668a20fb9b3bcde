// explain_launcher_failure() against what QEMU 7.2.22 (Debian 1:7.2+dfsg-7+deb12u18) really
// printed when started with -daemonize and each fault below (captured on this host).
#include <catch2/catch.hpp>
#include <string>
#include <vector>

#include "lifecycle/process.hpp"

using namespace stackemu::lifecycle;

namespace {

launch_context upstream_ports() {
    launch_context c;
    c.forwards = {{26700, "EMULATOR_DASHBOARD_PORT"},
                  {26701, "EMULATOR_BACKEND_PORT"},
                  {26702, "EMULATOR_MINIO_PORT"},
                  {26703, "EMULATOR_INBUCKET_PORT"}};
    return c;
}

struct sample {
    std::string what;         // the fault
    std::string stderr_text;  // QEMU's stderr, exactly
    std::string expected;     // the explanation's first line
    std::string quoted;       // the QEMU line(s) it quotes after "QEMU said: "
};

const std::string long_socket =
    "/tmp/qm/"
    "aaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaaa"
    "aaaaaaaaaaaaaaaaaaaa/qmp.sock";

std::vector<sample> real_messages() {
    std::vector<sample> s;
    auto add = [&](std::string what, std::string text, std::string expected) {
        std::string quoted = text;
        while (!quoted.empty() && quoted.back() == '\n')
            quoted.pop_back();
        s.push_back({std::move(what), std::move(text), std::move(expected), std::move(quoted)});
    };
    add("a host port in use",
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:26701-:8102: Could not set "
        "up host forwarding rule 'tcp:127.0.0.1:26701-:8102'\n",
        "host port 26701 is already in use (by another process or a second emulator): set "
        "EMULATOR_BACKEND_PORT to a free port, or stop the other one");
    add("a privileged host port as an ordinary user",
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:80-:22: Could not set up "
        "host forwarding rule 'tcp:127.0.0.1:80-:22'\n",
        "host port 80 cannot be bound: ports below 1024 need privileges (or it is already in "
        "use): choose a port above 1023");
    add("a host port out of range",
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:99999-:22: Invalid host "
        "forwarding rule 'tcp:127.0.0.1:99999-:22' (Bad host port)\n",
        "the port forwarding rule 'tcp:127.0.0.1:99999-:22' is invalid (Bad host port): check the "
        "EMULATOR_*_PORT settings (ports are 1-65535)");
    add("a missing disk image (-blockdev)",
        "qemu-system-x86_64: -blockdev "
        "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/tmp/qm/nope.qcow2: Could "
        "not open '/tmp/qm/nope.qcow2': No such file or directory\n",
        "the disk or image file /tmp/qm/nope.qcow2 does not exist: check EMULATOR_IMAGE_DIR and "
        "that the image was built");
    add("a missing ISO (-drive)",
        "qemu-system-x86_64: -drive "
        "file=/tmp/qm/x.iso,if=none,id=cd0,format=raw,readonly=on,media=cdrom: Could not open "
        "'/tmp/qm/x.iso': No such file or directory\n",
        "the disk or image file /tmp/qm/x.iso does not exist: check EMULATOR_IMAGE_DIR and that "
        "the image was built");
    add("an unreadable disk image",
        "qemu-system-x86_64: -blockdev "
        "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/tmp/qm/ro.qcow2: Could not "
        "open '/tmp/qm/ro.qcow2': Permission denied\n",
        "no permission to open /tmp/qm/ro.qcow2: check its owner and mode (ls -l "
        "/tmp/qm/ro.qcow2)");
    add("the overlay's base image is gone",
        "qemu-system-x86_64: -blockdev "
        "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/tmp/qm/ov2.qcow2: Could not "
        "open backing file: Could not open '/tmp/qm/gone.qcow2': No such file or directory\n",
        "the base image /tmp/qm/gone.qcow2 under this VM's overlay cannot be opened (No such file "
        "or directory): build or restore the base image (EMULATOR_IMAGE_DIR), or reset the "
        "instance to make a new overlay");
    add("the disk is in use by another QEMU",
        "qemu-system-x86_64: -blockdev "
        "driver=qcow2,node-name=disk0,file.driver=file,file.filename=/tmp/qm/ov.qcow2: Failed to "
        "get \"write\" lock\nIs another process using the image [/tmp/qm/ov.qcow2]?\n",
        "the disk image /tmp/qm/ov.qcow2 is in use by another QEMU (a second emulator on the same "
        "run directory or image?): stop that one first");
    add("missing x86 firmware", "qemu: could not load PC BIOS '/tmp/qm/nofw.fd'\n",
        "the firmware /tmp/qm/nofw.fd is missing or unreadable: install the UEFI firmware (ovmf, "
        "qemu-efi-aarch64) or point the firmware setting at an existing file");
    add("missing arm64 firmware",
        "qemu-system-aarch64: Could not find ROM image '/tmp/qm/QEMU_EFI.fd'\n",
        "the firmware /tmp/qm/QEMU_EFI.fd is missing or unreadable: install the UEFI firmware "
        "(ovmf, qemu-efi-aarch64) or point the firmware setting at an existing file");
    add("a missing -kernel file (x86)",
        "qemu: could not open kernel file '/tmp/qm/vmlinuz': No such file or directory\n",
        "the kernel /tmp/qm/vmlinuz could not be loaded (missing, unreadable or not a kernel): "
        "check the kernel path");
    add("an empty -kernel file (x86)",
        "qemu: could not load kernel '/tmp/qm/k': No such file or directory\n",
        "the kernel /tmp/qm/k could not be loaded (missing, unreadable or not a kernel): check "
        "the kernel path");
    add("a missing -kernel file (arm64)",
        "qemu-system-aarch64: could not load kernel '/tmp/qm/Image'\n",
        "the kernel /tmp/qm/Image could not be loaded (missing, unreadable or not a kernel): "
        "check the kernel path");
    add("a missing -initrd file (x86, GLib's curly quotes)",
        "qemu: error reading initrd /tmp/qm/initrd.img: Failed to open file "
        "\xe2\x80\x9c/tmp/qm/initrd.img\xe2\x80\x9d: open() failed: No such file or directory\n",
        "the initrd /tmp/qm/initrd.img could not be loaded (missing or unreadable): check the "
        "initrd path");
    add("a missing -initrd file (arm64)",
        "qemu-system-aarch64: could not load initrd '/tmp/qm/nope'\n",
        "the initrd /tmp/qm/nope could not be loaded (missing or unreadable): check the initrd "
        "path");
    add("a QMP socket path over sun_path",
        "qemu-system-x86_64: -qmp unix:" + long_socket + ",server=on,wait=off: UNIX socket path '" +
            long_socket + "' is too long\nPath must be less than 108 bytes\n",
        "the socket path " + long_socket +
            " is 127 bytes, over the 107 that Unix sockets allow: use a shorter EMULATOR_RUN_DIR");
    add("the socket's directory is missing",
        "qemu-system-x86_64: -qmp unix:/tmp/qm/nodir/qmp.sock,server=on,wait=off: Failed to bind "
        "socket to /tmp/qm/nodir/qmp.sock: No such file or directory\n",
        "cannot create the socket /tmp/qm/nodir/qmp.sock: its directory does not exist");
    add("the socket's directory is not writable",
        "qemu-system-x86_64: -qmp unix:/tmp/qm/rodir/q.sock,server=on,wait=off: Failed to bind "
        "socket to /tmp/qm/rodir/q.sock: Permission denied\n",
        "cannot create the socket /tmp/qm/rodir/q.sock: no permission to write to its directory");
    add("the serial log's directory is missing",
        "qemu-system-x86_64: -chardev file,id=s0,path=/tmp/qm/nodir/serial.log: Could not open "
        "'/tmp/qm/nodir/serial.log': No such file or directory\n",
        "/tmp/qm/nodir/serial.log cannot be created or opened: its directory does not exist");
    add("the -D log's directory is missing",
        "qemu-system-x86_64: Error opening logfile /tmp/qm/nodir/qemu.log: No such file or "
        "directory\n",
        "cannot create QEMU's log /tmp/qm/nodir/qemu.log (No such file or directory): its "
        "directory must exist and be writable");
    add("an unknown option", "qemu-system-x86_64: -frobnicate: invalid option\n",
        "this QEMU does not know the option -frobnicate: it is not the QEMU stackemu expects (a "
        "system emulator, 7.2 or newer); set EMULATOR_QEMU to one");
    add("no /dev/kvm",
        "Could not access KVM kernel module: No such file or directory\n"
        "qemu-system-x86_64: -accel kvm: failed to initialize kvm: No such file or directory\n",
        "KVM is not available (/dev/kvm does not exist): load the kvm module (modprobe kvm_intel "
        "or kvm_amd), or set EMULATOR_ACCEL=tcg to run without it (slower)");
    add("no permission on /dev/kvm (-accel kvm)",
        "Could not access KVM kernel module: Permission denied\n"
        "qemu-system-x86_64: -accel kvm: failed to initialize kvm: Permission denied\n",
        "no permission to use /dev/kvm: add your user to the kvm group and log in again, or set "
        "EMULATOR_ACCEL=tcg to run without KVM (slower)");
    add("KVM for a foreign architecture",
        "qemu-system-aarch64: -accel kvm: invalid accelerator kvm\n",
        "this QEMU binary cannot use KVM (is the guest architecture different from the host's?): "
        "set EMULATOR_ACCEL=tcg, or EMULATOR_ARCH to the host's architecture");
    add("too much guest memory",
        "qemu-system-x86_64: cannot set up guest memory 'pc.ram': Cannot allocate memory\n",
        "the host cannot give the guest its memory (Cannot allocate memory): lower EMULATOR_RAM "
        "or free memory on the host");
    add("an unknown machine type",
        "qemu-system-x86_64: unsupported machine type\nUse -machine help to list supported "
        "machines\n",
        "this QEMU binary does not support the machine type: it does not fit the guest "
        "architecture; check EMULATOR_QEMU and EMULATOR_ARCH");
    add("an unknown CPU model", "qemu-system-x86_64: unable to find CPU model 'foo'\n",
        "this QEMU binary does not know the CPU model 'foo': check EMULATOR_QEMU and "
        "EMULATOR_ARCH");
    return s;
}

std::string first_line(const std::string& text) {
    return text.substr(0, text.find('\n'));
}

}  // namespace

TEST_CASE("explain_launcher_failure turns each real QEMU 7.2 message into what to do") {
    const auto context = upstream_ports();
    for (const auto& s : real_messages()) {
        INFO(s.what);
        const auto text = explain_launcher_failure(s.stderr_text, context);
        CHECK(first_line(text) == s.expected);
        // The QEMU line the explanation is based on follows it.
        CHECK(text.find("\nQEMU said: ") != std::string::npos);
    }
}

TEST_CASE("explain_launcher_failure quotes the QEMU line after the explanation") {
    const std::string text =
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:26702-:9000: Could not set "
        "up host forwarding rule 'tcp:127.0.0.1:26702-:9000'\n";
    CHECK(explain_launcher_failure(text, upstream_ports()) ==
          "host port 26702 is already in use (by another process or a second emulator): set "
          "EMULATOR_MINIO_PORT to a free port, or stop the other one\n"
          "QEMU said: qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:26702-:9000: "
          "Could not set up host forwarding rule 'tcp:127.0.0.1:26702-:9000'");
}

TEST_CASE("explain_launcher_failure keeps QEMU's second line of a two-line message") {
    const std::string text =
        "qemu-system-x86_64: -drive file=/tmp/qm/ov.qcow2,if=virtio,format=qcow2: Failed to get "
        "\"write\" lock\nIs another process using the image [/tmp/qm/ov.qcow2]?\n";
    const auto out = explain_launcher_failure(text, {});
    CHECK(
        out.ends_with("\nQEMU said: qemu-system-x86_64: -drive "
                      "file=/tmp/qm/ov.qcow2,if=virtio,format=qcow2: Failed to get \"write\" "
                      "lock\nIs another process using the image [/tmp/qm/ov.qcow2]?"));
}

TEST_CASE("explain_launcher_failure without a setting for the port says to choose another") {
    const std::string text =
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:40000-:22: Could not set up "
        "host forwarding rule 'tcp:127.0.0.1:40000-:22'\n";
    CHECK(first_line(explain_launcher_failure(text, upstream_ports())) ==
          "host port 40000 is already in use (by another process or a second emulator): choose "
          "another port, or stop the other one");
}

TEST_CASE("explain_launcher_failure names the RAM setting of the context") {
    launch_context build;
    build.ram_env = "EMULATOR_BUILD_RAM";
    const std::string text =
        "qemu-system-aarch64: cannot set up guest memory 'mach-virt.ram': Cannot allocate "
        "memory\n";
    CHECK(first_line(explain_launcher_failure(text, build)) ==
          "the host cannot give the guest its memory (Cannot allocate memory): lower "
          "EMULATOR_BUILD_RAM or free memory on the host");
}

TEST_CASE("explain_launcher_failure returns unknown text's last lines verbatim") {
    std::string text;
    for (int i = 1; i <= 12; ++i)
        text += "qemu-system-x86_64: something new " + std::to_string(i) + "\n";
    text += "\n";
    std::string expected = "QEMU said:";
    for (int i = 3; i <= 12; ++i)
        expected += "\nqemu-system-x86_64: something new " + std::to_string(i);
    CHECK(explain_launcher_failure(text, {}) == expected);
}

TEST_CASE("explain_launcher_failure on empty stderr says QEMU gave no reason") {
    CHECK(explain_launcher_failure("", {}) ==
          "QEMU exited without saying why (its stderr is empty)");
    CHECK(explain_launcher_failure("\n\n", {}) ==
          "QEMU exited without saying why (its stderr is empty)");
}

TEST_CASE("explain_launcher_failure finds the error after a warning") {
    const std::string text =
        "qemu-system-x86_64: warning: host doesn't support requested feature: CPUID.80000001H:ECX."
        "svm [bit 2]\n"
        "qemu-system-x86_64: -frobnicate: invalid option\n";
    CHECK(explain_launcher_failure(text, {}) ==
          "this QEMU does not know the option -frobnicate: it is not the QEMU stackemu expects (a "
          "system emulator, 7.2 or newer); set EMULATOR_QEMU to one\n"
          "QEMU said: qemu-system-x86_64: -frobnicate: invalid option");
}
