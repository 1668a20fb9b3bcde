// Bad input, table-driven: each case is a `stackemu` command line with its environment and
// prepared files, run as the real binary against fake-qemu. Each must end with the expected
// non-zero exit code, a message that says what was wrong (and what to do), and nothing
// changed on disk: every file and directory under the sandbox (images, run directory, cache)
// keeps its type, mode, owner, size, mtime and content. The only exceptions are named per
// case: the log files of a fake VM that runs during the case (QEMU's own -D log and the
// console log it appends to), and the run directory of a start that really launches a VM
// (hostile console cases), where only the images must stay as they were.
#include <fcntl.h>
#include <linux/fs.h>
#include <pwd.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <functional>
#include <map>
#include <memory>
#include <nlohmann/json.hpp>
#include <optional>
#include <string>
#include <vector>

#include "lifecycle/exit_codes.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/settings.hpp"
#include "support/cli_harness.hpp"

namespace {

using namespace stackemu::test::cli;
using nlohmann::json;
namespace exit_code = stackemu::lifecycle::exit_code;

// ---- what "nothing changed on disk" compares ----

enum class disk_check {
    everything,      // every entry under the sandbox, the commands' output files aside
    except_vm_logs,  // the same, but a running fake VM may append to qemu.log and serial.log
    images_only,     // the command legitimately ran a VM: only the images must stay the same
};

std::uint64_t fnv1a(std::string_view bytes) {
    std::uint64_t h = 0xcbf29ce484222325ull;
    for (unsigned char c : bytes) {
        h ^= c;
        h *= 0x100000001b3ull;
    }
    return h;
}

// Path (relative to the sandbox) -> type, mode, owner, size, mtime and content hash.
std::map<std::string, std::string> disk_state(const sandbox& sb, disk_check check) {
    std::map<std::string, std::string> state;
    const fs::path root = check == disk_check::images_only ? sb.images : sb.dir;
    std::error_code ec;
    for (auto it = fs::recursive_directory_iterator(root, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
        const fs::path& p = it->path();
        const auto rel = p.lexically_relative(sb.dir).string();
        if (rel == "io" || rel.starts_with("io/")) {
            it.disable_recursion_pending();
            continue;
        }
        if (check == disk_check::except_vm_logs &&
            (p == sb.vm_dir() / "qemu.log" || p == sb.vm_dir() / "serial.log"))
            continue;
        struct stat st {};
        if (::lstat(p.c_str(), &st) != 0) {
            state[rel] = "vanished while listed";
            continue;
        }
        std::string entry =
            fmt::format("mode {:o} uid {} size {} mtime {}.{:09}", st.st_mode, st.st_uid,
                        st.st_size, st.st_mtim.tv_sec, st.st_mtim.tv_nsec);
        if (S_ISREG(st.st_mode)) entry += fmt::format(" content {:016x}", fnv1a(slurp(p)));
        state[rel] = entry;
    }
    return state;
}

std::string describe_changes(const std::map<std::string, std::string>& before,
                             const std::map<std::string, std::string>& after) {
    std::string out;
    for (const auto& [path, entry] : before) {
        auto it = after.find(path);
        if (it == after.end())
            out += "removed: " + path + "\n";
        else if (it->second != entry)
            out += "changed: " + path + " (" + entry + " -> " + it->second + ")\n";
    }
    for (const auto& [path, entry] : after)
        if (!before.contains(path)) out += "created: " + path + "\n";
    return out;
}

// ---- preparing a case ----

// Sets or clears the immutable flag (chattr +i / -i) of a directory. We run as root, and root
// passes permission bits, so chmod cannot make a directory read-only for us; a read-only bind
// mount would need a mount namespace around the command. The immutable flag is honest: the
// kernel refuses every change inside the directory, to root too (EPERM), as it does on a
// read-only mount (EROFS).
bool set_immutable(const fs::path& dir, bool on) {
    const int fd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (fd < 0) return false;
    int flags = 0;
    bool ok = ::ioctl(fd, FS_IOC_GETFLAGS, &flags) == 0;
    if (ok) {
        flags = on ? (flags | FS_IMMUTABLE_FL) : (flags & ~FS_IMMUTABLE_FL);
        ok = ::ioctl(fd, FS_IOC_SETFLAGS, &flags) == 0;
    }
    ::close(fd);
    return ok;
}

struct case_context {
    sandbox& sb;
    std::vector<std::function<void()>> undo;  // run in reverse order when the case ends
    std::vector<std::unique_ptr<held_port>> held;

    explicit case_context(sandbox& s) : sb(s) {}
    ~case_context() {
        for (auto it = undo.rbegin(); it != undo.rend(); ++it)
            (*it)();
    }
    case_context(const case_context&) = delete;
    case_context& operator=(const case_context&) = delete;

    // Starts the default instance on the sandbox's image with `behaviour`; it stays running.
    void start_vm(const json& behaviour = happy_guest()) {
        sb.fake = behaviour;
        auto r = sb.run(
            {"start", "--image", "{image}", "--accel", "tcg", "--ram", "512", "--cpus", "1", "-q"});
        INFO("start stderr: " << r.err);
        REQUIRE(r.code == exit_code::ok);
        REQUIRE(sb.fakes().size() == 1);
    }
    // Starts and stops it: the instance has its run directory and overlay.
    void start_and_stop_vm() {
        start_vm();
        auto r = sb.run({"stop", "-q"});
        INFO("stop stderr: " << r.err);
        REQUIRE(r.code == exit_code::stopped_cleanly);
    }
    void make_immutable(const fs::path& dir) {
        INFO("setting the immutable flag on "
             << dir << " failed: this test needs a file system with chattr +i (ext4, xfs, "
             << "btrfs) under /tmp and CAP_LINUX_IMMUTABLE");
        REQUIRE(set_immutable(dir, true));
        undo.push_back([dir] { set_immutable(dir, false); });
    }
    void give_to_nobody(const fs::path& path) {
        const passwd* nobody = ::getpwnam("nobody");
        REQUIRE(nobody != nullptr);
        REQUIRE(::geteuid() != nobody->pw_uid);
        REQUIRE(::chown(path.c_str(), nobody->pw_uid, nobody->pw_gid) == 0);
    }
    void hold_port(std::uint16_t port) { held.push_back(std::make_unique<held_port>(port)); }
};

// ---- one case ----

struct bad_case {
    std::string what;               // the bad input
    std::vector<std::string> args;  // after `stackemu`; {image} {run}... are expanded
    env_overrides env = {};
    std::function<void(case_context&)> prepare = {};
    int exit_code = exit_code::usage;
    std::vector<std::string> message = {};  // each must be in stderr ({...} expanded)
    disk_check check = disk_check::everything;
    std::function<void(const sandbox&, const cli_result&)> also = {};  // further checks
};

std::vector<std::string> start_with(std::vector<std::string> extra) {
    std::vector<std::string> args{"start", "--image", "{image}", "--accel", "tcg"};
    args.insert(args.end(), extra.begin(), extra.end());
    return args;
}

void run_case(const bad_case& c) {
    sandbox sb("stackemu-bad-");
    case_context ctx(sb);
    if (c.prepare) c.prepare(ctx);
    const auto fakes_before = sb.fakes();
    const auto before = disk_state(sb, c.check);
    const auto r = sb.run(c.args, c.env);
    const auto after = disk_state(sb, c.check);

    std::string command = "stackemu";
    for (const auto& a : c.args) {  // two appends: GCC 12 -O3 -Wstringop-overflow false positive
        command += ' ';
        command += sb.expand(a);
    }
    INFO(c.what << "\n"
                << command << "\nexit " << r.code << "\nstdout: " << r.out
                << "\nstderr: " << r.err);
    CHECK(r.code != -1);  // no hang
    CHECK(r.code == c.exit_code);
    CHECK_FALSE(r.err.empty());
    for (const auto& part : c.message)
        CHECK_THAT(r.err, Catch::Contains(sb.expand(part)));
    // No crash, abort or sanitizer report instead of a message.
    for (const char* crash :
         {"terminate called", "Segmentation", "Aborted", "Sanitizer", "runtime error:", "what():"})
        CHECK_FALSE(contains(r.err, crash));
    // The message is text a terminal shows as it is: no escape sequences or NUL bytes.
    CHECK(std::none_of(r.err.begin(), r.err.end(),
                       [](char ch) { return ch == '\x1b' || ch == '\0'; }));
    INFO(describe_changes(before, after));
    CHECK(before == after);
    // No QEMU launched and left behind, none stopped that ran before.
    if (c.check == disk_check::images_only)
        CHECK(sb.fakes().empty());
    else
        CHECK(sb.fakes() == fakes_before);
    if (c.also) c.also(sb, r);
}

void run_table(const std::vector<bad_case>& table) {
    for (const auto& c : table) {
        DYNAMIC_SECTION(c.what) {
            run_case(c);
        }
    }
}

// QEMU never saw a command naming a snapshot: the name was refused before any was sent.
void qemu_was_not_asked_for_a_snapshot(const sandbox& sb, const cli_result&) {
    const auto log = slurp(sb.vm_dir() / "qemu.log");
    CHECK_FALSE(contains(log, "snapshot-"));
    CHECK_FALSE(contains(log, "human-monitor-command"));
}

std::string repeat(char c, std::size_t n) {
    return std::string(n, c);
}

// ---- the tables ----

std::vector<bad_case> option_cases() {
    return {
        {.what = "--ram negative",
         .args = start_with({"--ram", "-1"}),
         .message = {"--ram must be a plain decimal number between 128 and 1048576", "'-1'"}},
        {.what = "--ram zero",
         .args = start_with({"--ram", "0"}),
         .message = {"--ram must be between 128 and 1048576 (got 0)"}},
        {.what = "--ram huge (past 64 bits)",
         .args = start_with({"--ram", "99999999999999999999"}),
         .message = {"--ram must be between 128 and 1048576"}},
        {.what = "--ram with a unit",
         .args = start_with({"--ram", "4G"}),
         .message = {"--ram must be a plain decimal number", "without sign, unit or blanks"}},
        {.what = "--cpus zero",
         .args = start_with({"--cpus", "0"}),
         .message = {"--cpus must be between 1 and 256 (got 0)"}},
        {.what = "--cpus negative",
         .args = start_with({"--cpus", "-2"}),
         .message = {"--cpus must be a plain decimal number", "'-2'"}},
        {.what = "--cpus huge",
         .args = start_with({"--cpus", "100000"}),
         .message = {"--cpus must be between 1 and 256 (got 100000)"}},
        {.what = "--cpus not a number",
         .args = start_with({"--cpus", "four"}),
         .message = {"--cpus must be a plain decimal number", "'four'"}},
        {.what = "--cpus 256 on amd64",
         .args = start_with({"--cpus", "256"}),
         .message = {"an amd64 guest takes at most 255 CPUs (got 256)"}},
        {.what = "--arch unknown",
         .args = start_with({"--arch", "sparc"}),
         .message = {"unknown architecture 'sparc'; use amd64 or arm64"}},
        {.what = "--accel unknown",
         .args = {"start", "--image", "{image}", "--accel", "xen"},
         .message = {"unknown accelerator 'xen'; use auto, kvm, hvf or tcg"}},
        {.what = "--ready-timeout zero",
         .args = start_with({"--ready-timeout", "0"}),
         .message = {"--ready-timeout must be between 1 and 86400 (got 0)"}},
        {.what = "--ready-timeout fractional",
         .args = start_with({"--ready-timeout", "1.5"}),
         .message = {"--ready-timeout must be a plain decimal number", "'1.5'"}},
        {.what = "--share-writable without --share",
         .args = start_with({"--share-writable"}),
         .message = {"--share-writable needs --share DIR"}},
        {.what = "--share of a directory that does not exist",
         .args = start_with({"--share", "{images}/no-such-dir"}),
         .exit_code = exit_code::error,
         .message = {"--share {images}/no-such-dir", "name an existing directory"}},
        {.what = "--share of a file",
         .args = start_with({"--share", "{image}"}),
         .exit_code = exit_code::error,
         .message = {"--share {image}: not a directory"}},
        {.what = "--share of the host's root",
         .args = start_with({"--share", "/"}),
         .exit_code = exit_code::error,
         .message = {"refusing to export the host's root directory to the guest"}},
        {.what = "--share of the host's root spelled another way",
         .args = start_with({"--share", "/etc/.."}),
         .exit_code = exit_code::error,
         .message = {"refusing to export the host's root directory to the guest"}},
        {.what = "--stop-timeout negative",
         .args = {"stop", "--stop-timeout", "-5"},
         .message = {"--stop-timeout must be a plain decimal number", "'-5'"}},
        {.what = "EMULATOR_REPLY_TIMEOUT zero",
         .args = start_with({}),
         .env = {{"EMULATOR_REPLY_TIMEOUT", "0"}},
         .message = {"EMULATOR_REPLY_TIMEOUT must be between 1 and 86400 (got 0)"}},
        {.what = "EMULATOR_RAM not a number",
         .args = start_with({}),
         .env = {{"EMULATOR_RAM", "lots"}},
         .message = {"EMULATOR_RAM must be a plain decimal number", "'lots'"}},
        {.what = "EMULATOR_RAM and EMULATOR_RAM_MB disagree",
         .args = start_with({}),
         .env = {{"EMULATOR_RAM", "512"}, {"EMULATOR_RAM_MB", "1024"}},
         .message = {"EMULATOR_RAM=512 and EMULATOR_RAM_MB=1024 disagree; set only one"}},
        {.what = "EMULATOR_CPUS set but empty",
         .args = start_with({}),
         .env = {{"EMULATOR_CPUS", ""}},
         .message = {"EMULATOR_CPUS is set but empty; unset it to use the default"}},
        {.what = "EMULATOR_ARCH unknown",
         .args = start_with({}),
         .env = {{"EMULATOR_ARCH", "mips"}},
         .message = {"EMULATOR_ARCH: unknown architecture 'mips'; use amd64 or arm64"}},
        {.what = "EMULATOR_ACCEL unknown",
         .args = start_with({}),
         .env = {{"EMULATOR_ACCEL", "whpx"}},
         .message = {"EMULATOR_ACCEL: unknown accelerator 'whpx'"}},
        {.what = "EMULATOR_READY_TIMEOUT over a day",
         .args = start_with({}),
         .env = {{"EMULATOR_READY_TIMEOUT", "100000"}},
         .message = {"EMULATOR_READY_TIMEOUT must be between 1 and 86400 (got 100000)"}},
        {.what = "EMULATOR_STOP_TIMEOUT not a number",
         .args = {"stop"},
         .env = {{"EMULATOR_STOP_TIMEOUT", "soon"}},
         .message = {"EMULATOR_STOP_TIMEOUT must be a plain decimal number", "'soon'"}},
        {.what = "snapshot --timeout zero",
         .args = {"snapshot", "save", "--timeout", "0", "clean"},
         .message = {"--timeout must be between 1 and 86400 (got 0)"}},
        {.what = "exec --timeout zero",
         .args = {"exec", "--timeout", "0", "--", "true"},
         .message = {"--timeout: must be a number of seconds from 0.001 to 86400 (got '0')"}},
        {.what = "qmp --timeout not a number",
         .args = {"qmp", "--timeout", "abc", "query-status"},
         .message = {"--timeout: must be a number of seconds from 0.001 to 86400 (got 'abc')"}},
    };
}

std::vector<bad_case> port_and_name_cases() {
    return {
        {.what = "port 0",
         .args = start_with({}),
         .env = {{"EMULATOR_BACKEND_PORT", "0"}},
         .message = {"EMULATOR_BACKEND_PORT must be between 1 and 65535 (got 0)"}},
        {.what = "port 65536",
         .args = start_with({}),
         .env = {{"EMULATOR_BACKEND_PORT", "65536"}},
         .message = {"EMULATOR_BACKEND_PORT must be between 1 and 65535 (got 65536)"}},
        {.what = "port not a number",
         .args = start_with({}),
         .env = {{"EMULATOR_MINIO_PORT", "abc"}},
         .message = {"EMULATOR_MINIO_PORT must be a plain decimal number", "'abc'"}},
        {.what = "port negative",
         .args = start_with({}),
         .env = {{"EMULATOR_INBUCKET_PORT", "-80"}},
         .message = {"EMULATOR_INBUCKET_PORT must be a plain decimal number", "'-80'"}},
        {.what = "the same port for two forwards",
         .args = start_with({}),
         .env = {{"EMULATOR_MINIO_PORT", "{port.dashboard}"}},
         .message = {"the dashboard port (EMULATOR_DASHBOARD_PORT) and the MinIO port "
                     "(EMULATOR_MINIO_PORT) are both {port.dashboard}; give each service its "
                     "own port"}},
        {.what = "a port already bound on 127.0.0.1",
         .args = start_with({}),
         .prepare = [](case_context& ctx) { ctx.hold_port(ctx.sb.ports.backend); },
         .exit_code = exit_code::error,
         .message = {"host port {port.backend} (the backend forward) is already in use on "
                     "127.0.0.1: stop what uses it, or choose another port with "
                     "EMULATOR_BACKEND_PORT"}},
        {.what = "--name with a slash",
         .args = start_with({"--name", "a/b"}),
         .message = {"--name 'a/b' is not a valid instance name; use 1 to 32 letters"}},
        {.what = "--name ..",
         .args = start_with({"--name", ".."}),
         .message = {"--name '..' is not a valid instance name", "starting with a letter"}},
        {.what = "--name starting with a dot",
         .args = {"status", "--name", ".hidden"},
         .message = {"--name '.hidden' is not a valid instance name"}},
        {.what = "--name too long",
         .args = start_with({"--name", repeat('n', 33)}),
         .message = {"is not a valid instance name; use 1 to 32 letters"}},
        {.what = "EMULATOR_NAME with a space",
         .args = {"status"},
         .env = {{"EMULATOR_NAME", "my vm"}},
         .message = {"EMULATOR_NAME 'my vm' is not a valid instance name"}},
        {.what = "EMULATOR_RUN_DIR relative",
         .args = {"status"},
         .env = {{"EMULATOR_RUN_DIR", "run"}},
         .message = {"EMULATOR_RUN_DIR='run' must be an absolute path or start with ~/"}},
        {.what = "EMULATOR_RUN_DIR with a %",
         .args = start_with({}),
         .env = {{"EMULATOR_RUN_DIR", "{dir}/100%"}},
         .message = {"contains '%', which QEMU's log option cannot take; choose an "
                     "EMULATOR_RUN_DIR without it"}},
        {.what = "EMULATOR_IMAGE_DIR of ~user",
         .args = start_with({}),
         .env = {{"EMULATOR_IMAGE_DIR", "~bob/images"}},
         .message = {"~user is not supported; write the full path"}},
        {.what = "socket paths over 108 bytes and the fallback too",
         .args = start_with({}),
         .env = {{"EMULATOR_RUN_DIR", "{dir}/" + repeat('r', 120)},
                 {"XDG_RUNTIME_DIR", "{dir}/" + repeat('x', 120)}},
         .message = {"would exceed the 107-byte limit of a Unix socket path",
                     "use a shorter EMULATOR_RUN_DIR or XDG_RUNTIME_DIR"}},
        {.what = "qmp --socket path over 108 bytes",
         .args = {"qmp", "--socket", "{dir}/" + repeat('s', 120) + "/monitor.sock", "query-status"},
         .exit_code = exit_code::error,
         .message = {"over the 107-byte limit of a Unix socket address"}},
    };
}

// An x86 bzImage as far as its header goes: "HdrS" at 0x202.
std::string fake_bzimage() {
    std::string bytes(1024, '\0');
    bytes.replace(0x202, 4, "HdrS");
    return bytes;
}

std::vector<bad_case> image_cases() {
    auto garbage = [](const fs::path& p) {
        std::string bytes;
        std::uint32_t x = 12345;
        for (int i = 0; i < 100000; ++i) {
            x = x * 1103515245u + 12345u;
            bytes += static_cast<char>(x >> 24);
        }
        bytes[0] = '\x7f';  // not "QFI\xfb", whatever the generator gives
        write_text(p, bytes);
    };
    return {
        {.what = "--image that does not exist",
         .args = {"start", "--image", "{images}/nothere.qcow2", "--accel", "tcg"},
         .exit_code = exit_code::error,
         .message = {"no image at {images}/nothere.qcow2", "stackemu build-image", "--image"}},
        {.what = "no image built for the architecture",
         .args = {"start", "--accel", "tcg"},
         .exit_code = exit_code::error,
         .message = {"no image at {images}/stack-emulator-amd64.qcow2",
                     "build one with `stackemu build-image`"}},
        {.what = "a qcow2 without its manifest",
         .args = {"start", "--image", "{images}/lonely.qcow2", "--accel", "tcg"},
         .prepare = [](case_context& ctx) { sandbox::make_qcow2(ctx.sb.images / "lonely.qcow2"); },
         .exit_code = exit_code::error,
         .message = {"has no manifest {images}/lonely.json beside it"}},
        {.what = "a qcow2 full of garbage",
         .args = {"start", "--image", "{images}/garbage.qcow2", "--accel", "tcg"},
         .prepare = [garbage](case_context& ctx) { ctx.sb.add_image("garbage", garbage); },
         .exit_code = exit_code::error,
         .message = {"the image {images}/garbage.qcow2 is not a qcow2 disk",
                     "build it again (`stackemu build-image`) or download it again"}},
        {.what = "a zero-byte image",
         .args = {"start", "--image", "{images}/empty.qcow2", "--accel", "tcg"},
         .prepare =
             [](case_context& ctx) {
                 ctx.sb.add_image("empty", [](const fs::path& p) { write_text(p, ""); });
             },
         .exit_code = exit_code::error,
         .message = {"the image {images}/empty.qcow2 is empty (0 bytes)"}},
        {.what = "a text file as the image",
         .args = {"start", "--image", "{images}/notes.qcow2", "--accel", "tcg"},
         .prepare =
             [](case_context& ctx) {
                 ctx.sb.add_image(
                     "notes", [](const fs::path& p) { write_text(p, "TODO: build the image\n"); });
             },
         .exit_code = exit_code::error,
         .message = {"is not a qcow2 disk but a text file (it begins \"TODO: build the image\")"}},
        {.what = "a truncated qcow2",
         .args = {"start", "--image", "{images}/cut.qcow2", "--accel", "tcg"},
         .prepare =
             [](case_context& ctx) {
                 const auto whole = slurp(ctx.sb.image());
                 ctx.sb.add_image("cut", [&whole](const fs::path& p) {
                     write_text(p, std::string_view(whole).substr(0, 1000));
                 });
             },
         .exit_code = exit_code::error,
         .message = {"the image {images}/cut.qcow2 is damaged or truncated (qemu-img check:"}},
        {.what = "a qcow2 cut inside its header",
         .args = {"start", "--image", "{images}/stub.qcow2", "--accel", "tcg"},
         .prepare =
             [](case_context& ctx) {
                 const auto whole = slurp(ctx.sb.image());
                 ctx.sb.add_image("stub", [&whole](const fs::path& p) {
                     write_text(p, std::string_view(whole).substr(0, 40));
                 });
             },
         .exit_code = exit_code::error,
         .message = {"the image {images}/stub.qcow2 is truncated: 40 bytes"}},
        {.what = "a manifest of the wrong architecture",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 auto m = manifest_for("base.qcow2");
                 m["arch"] = "arm64";
                 write_text(ctx.sb.images / "base.json", m.dump());
             },
         .exit_code = exit_code::error,
         .message = {"the image {image} is for arm64, but EMULATOR_ARCH/--arch is amd64",
                     "pick the image for amd64 or set the architecture to arm64"}},
        {.what = "a manifest of an unknown architecture",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 auto m = manifest_for("base.qcow2");
                 m["arch"] = "sparc";
                 write_text(ctx.sb.images / "base.json", m.dump());
             },
         .exit_code = exit_code::error,
         .message = {"manifest field \"arch\": must be amd64 or arm64"}},
        {.what = "a manifest with a misspelled key",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 auto m = manifest_for("base.qcow2");
                 m["boot"].erase("cmdline");
                 m["boot"]["append"] = "console=ttyS0";
                 write_text(ctx.sb.images / "base.json", m.dump());
             },
         .exit_code = exit_code::error,
         .message = {"manifest field \"boot.append\" is not a known key: did you mean "
                     "\"boot.cmdline\"?"}},
        {.what = "a manifest whose kernel is for another architecture",
         .args = start_with({}),
         .env = {{"EMULATOR_ARCH", "arm64"}},
         .prepare =
             [](case_context& ctx) {
                 write_text(ctx.sb.images / "vmlinuz", fake_bzimage());
                 auto m = manifest_for("base.qcow2");
                 m["arch"] = "arm64";
                 write_text(ctx.sb.images / "base.json", m.dump());
             },
         .exit_code = exit_code::error,
         .message = {"says \"arch\": \"arm64\", but its kernel {images}/vmlinuz is an amd64 "
                     "kernel"}},
        {.what = "a manifest that is not JSON",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 write_text(ctx.sb.images / "base.json", "{\"format\": 1, \"arch\": ");
             },
         .exit_code = exit_code::error,
         .message = {"{images}/base.json", "rebuild the image"}},
        {.what = "a manifest without its profile",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 auto m = manifest_for("base.qcow2");
                 m.erase("profile");
                 write_text(ctx.sb.images / "base.json", m.dump());
             },
         .exit_code = exit_code::error,
         .message = {"{images}/base.json", "\"profile\""}},
        {.what = "a manifest whose kernel is missing",
         .args = start_with({}),
         .prepare = [](case_context& ctx) { fs::remove(ctx.sb.images / "vmlinuz"); },
         .exit_code = exit_code::error,
         .message = {"{images}/base.json names {images}/vmlinuz, which is missing"}},
        {.what = "an overlay whose base vanished",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 ctx.start_and_stop_vm();
                 REQUIRE(fs::exists(ctx.sb.vm_dir() / "disk.qcow2"));
                 fs::remove(ctx.sb.image());
             },
         .exit_code = exit_code::error,
         .message = {"{images}/base.json names {image}, which is missing: rebuild the image"}},
    };
}

std::vector<bad_case> run_dir_cases() {
    return {
        {.what = "run directory immutable (read-only even to root)",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 fs::create_directory(ctx.sb.run_dir);
                 fs::permissions(ctx.sb.run_dir, fs::perms::owner_all);
                 ctx.make_immutable(ctx.sb.run_dir);
             },
         .exit_code = exit_code::error,
         .message = {"cannot write to {run}", "read-only or immutable",
                     "choose another directory"}},
        {.what = "vm directory of a used instance made immutable",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 ctx.start_and_stop_vm();
                 ctx.make_immutable(ctx.sb.vm_dir());
             },
         .exit_code = exit_code::error,
         .message = {"cannot write to {run}/vm", "read-only or immutable"}},
        {.what = "run directory below a regular file",
         .args = start_with({}),
         .env = {{"EMULATOR_RUN_DIR", "{dir}/a-file/run"}},
         .prepare = [](case_context& ctx) { write_text(ctx.sb.dir / "a-file", "a file\n"); },
         .exit_code = exit_code::error,
         .message = {"Not a directory", "a part of that path is a file, not a directory"}},
        {.what = "run directory owned by another user: start",
         .args = start_with({}),
         .prepare =
             [](case_context& ctx) {
                 fs::create_directory(ctx.sb.run_dir);
                 ctx.give_to_nobody(ctx.sb.run_dir);
             },
         .message = {"{run} belongs to nobody, not to you", "change its owner"}},
        {.what = "run directory owned by another user: status",
         .args = {"status"},
         .prepare =
             [](case_context& ctx) {
                 ctx.start_and_stop_vm();
                 ctx.give_to_nobody(ctx.sb.run_dir);
             },
         .message = {"{run} belongs to nobody, not to you"}},
        {.what = "vm directory owned by another user: snapshot list",
         .args = {"snapshot", "list"},
         .prepare =
             [](case_context& ctx) {
                 ctx.start_and_stop_vm();
                 ctx.give_to_nobody(ctx.sb.vm_dir());
             },
         .message = {"{run}/vm belongs to nobody, not to you"}},
        {.what = "run directory owned by another user: qmp on its monitor",
         .args = {"qmp", "query-status"},
         .prepare =
             [](case_context& ctx) {
                 fs::create_directory(ctx.sb.run_dir);
                 ctx.give_to_nobody(ctx.sb.run_dir);
             },
         .message = {"{run} belongs to nobody, not to you"}},
        {.what = "pause on an instance never started",
         .args = {"pause"},
         .exit_code = exit_code::error,
         .message = {"the emulator is not running: `stackemu start` first"}},
    };
}

// Snapshot names are refused before QEMU sees them; a VM runs, and its log proves it.
std::vector<bad_case> snapshot_name_cases() {
    struct bad_name {
        std::string name;
        std::string why;
        std::string instead;  // what the message says to do
    };
    const bad_name names[] = {
        {"a b", "contains a space", "use only letters, digits"},
        {"a\nb", "contains a newline", "use only letters, digits"},
        {"x;quit", "contains ';'", "use only letters, digits"},
        {"ok\ninfo status", "contains a newline", "use only"},  // HMP's command separator
        {"a|b", "contains '|'", "use only letters, digits"},
        {"a\"b", "contains '\"'", "use only letters, digits"},
        {"it's", "contains '''", "use only letters, digits"},
        {"", "a snapshot name cannot be empty", "use 1 to 64 of letters"},
        {"..", "must start with a letter or digit", "\"..\""},
        {"../etc", "contains '/'", "use only letters, digits"},
        {repeat('s', 65), "is 65 bytes long", "at most 64"},
        {"123", "is all digits, which QEMU reads as a snapshot ID", "add a letter"},
    };
    const char* verbs[] = {"save", "load", "delete"};
    std::vector<bad_case> cases;
    std::size_t i = 0;
    for (const auto& n : names) {
        std::string shown = n.name;
        std::replace(shown.begin(), shown.end(), '\n', '~');
        const char* verb = verbs[i++ % 3];
        cases.push_back({.what = fmt::format("snapshot {} name \"{}\"", verb, shown),
                         .args = {"snapshot", verb, n.name},
                         .prepare = [](case_context& ctx) { ctx.start_vm(); },
                         .message = {n.why, n.instead},
                         .check = disk_check::except_vm_logs,
                         .also = qemu_was_not_asked_for_a_snapshot});
    }
    return cases;
}

std::vector<bad_case> qmp_and_console_cases() {
    json huge = happy_guest();
    huge["huge_reply"] = {{"command", "query-qmp-schema"}, {"bytes", 100u << 20}};
    // A console a hostile guest could print: escapes that repaint the terminal, a NUL, a
    // 300 KB line, and the marker only inside longer lines, never on a line of its own.
    json hostile = {
        {"console",
         json::array({console_step(10, "\x1b[2J\x1b[31mred\x1b[0m \x1b]0;owned\x07 title"),
                      console_step(10, std::string("nul\0inside", 10)),
                      console_step(10, repeat('A', 300000)),
                      console_step(10, "echo STACK_EMULATOR_READY > /dev/console"),
                      console_step(10, "STACK_EMULATOR_READY_NOT"),
                      console_step(10, "\rback\bspace\x7f")})}};
    json lookalike = {{"console", json::array({console_step(10, "# STACK_EMULATOR_READY"),
                                               json{{"after_ms", 0}, {"action", "ready"}}})}};
    auto no_terminal_codes = [](const sandbox&, const cli_result& r) {
        CHECK(contains(r.err, "red"));  // the line is shown, without its escapes
        std::size_t longest = 0;
        std::size_t line = 0;
        for (char ch : r.err) {
            line = ch == '\n' ? 0 : line + 1;
            longest = std::max(longest, line);
        }
        CHECK(longest < 1000);  // the 300 KB line is cut in the report
        CHECK(contains(r.err, "more bytes]"));
    };
    return {
        {.what = "an unknown QMP command",
         .args = {"qmp", "no-such-command"},
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"QEMU refused no-such-command", "CommandNotFound"},
         .check = disk_check::except_vm_logs},
        // A long --timeout: a sanitizer build of the fake takes about 30 s to produce the reply.
        {.what = "a 100 MB QMP reply",
         .args = {"qmp", "--timeout", "300", "query-qmp-schema"},
         .prepare = [huge](case_context& ctx) { ctx.start_vm(huge); },
         .exit_code = exit_code::error,
         .message = {"the reply to query-qmp-schema was larger than 64 MiB",
                     "the connection was dropped"},
         .check = disk_check::except_vm_logs},
        {.what = "a QMP command name with a semicolon",
         .args = {"qmp", "query-status;quit"},
         .message = {"'query-status;quit' is not a QMP command name"}},
        {.what = "QMP arguments that are not an object",
         .args = {"qmp", "query-status", "[1, 2]"},
         .message = {"the arguments of query-status must be one JSON object"}},
        {.what = "qmp with no emulator running",
         .args = {"qmp", "query-status"},
         .exit_code = exit_code::error,
         .message = {"is the emulator running?"}},
        {.what = "hostile console output and no ready marker",
         .args = start_with({"--ready-timeout", "3"}),
         .prepare = [hostile](case_context& ctx) { ctx.sb.fake = hostile; },
         .exit_code = exit_code::failed,
         .message = {"timed out waiting for ready within 3 s",
                     "still missing: the console line STACK_EMULATOR_READY"},
         .check = disk_check::images_only,
         .also = no_terminal_codes},
        {.what = "the ready marker only inside a longer line",
         .args = start_with({"--ready-timeout", "2"}),
         .prepare = [lookalike](case_context& ctx) { ctx.sb.fake = lookalike; },
         .exit_code = exit_code::failed,
         .message = {"still missing: the console line STACK_EMULATOR_READY",
                     "# STACK_EMULATOR_READY"},
         .check = disk_check::images_only},
    };
}

std::vector<bad_case> image_init_cases() {
    auto init_with = [](std::vector<std::string> extra) {
        std::vector<std::string> args{
            "image",  "init", "--kernel", "{images}/vmlinuz", "--initrd", "{images}/initrd.img",
            "--arch", "amd64"};
        args.insert(args.end(), extra.begin(), extra.end());
        return args;
    };
    return {
        {.what = "image init without a place for the manifest",
         .args = init_with({}),
         .exit_code = exit_code::error,
         .message = {"say where the manifest goes: --output IMAGE.json"}},
        {.what = "image init over an existing manifest",
         .args = init_with({"--output", "{images}/base.json"}),
         .exit_code = exit_code::error,
         .message = {"{images}/base.json exists: --force replaces it"}},
        {.what = "image init with a kernel that does not exist",
         .args = {"image", "init", "--kernel", "{images}/nokernel", "--initrd",
                  "{images}/initrd.img", "--output", "{images}/mine.json"},
         .exit_code = exit_code::error,
         .message = {"--kernel {images}/nokernel: no such file"}},
        {.what = "image init with a kernel but no initrd",
         .args = {"image", "init", "--kernel", "{images}/vmlinuz", "--arch", "amd64", "--output",
                  "{images}/mine.json"},
         .exit_code = exit_code::error,
         .message = {"--kernel and --initrd go together"}},
        {.what = "image init with an --arch the kernel contradicts",
         .args = {"image", "init", "--kernel", "{images}/bz", "--initrd", "{images}/initrd.img",
                  "--arch", "arm64", "--output", "{images}/mine.json"},
         .prepare = [](case_context& ctx) { write_text(ctx.sb.images / "bz", fake_bzimage()); },
         .exit_code = exit_code::error,
         .message = {"--arch arm64, but {images}/bz is an amd64 kernel"}},
        {.what = "image init with a kernel whose arch cannot be read, and no --arch",
         .args = {"image", "init", "--kernel", "{images}/vmlinuz", "--initrd",
                  "{images}/initrd.img", "--output", "{images}/mine.json"},
         .exit_code = exit_code::error,
         .message = {"cannot tell the architecture of {images}/vmlinuz", "pass --arch"}},
        {.what = "image init with a forward that is no NAME:PORT",
         .args = init_with({"--output", "{images}/mine.json", "--forward", "web:http"}),
         .exit_code = exit_code::error,
         .message = {"--forward web:http: expected NAME:GUEST_PORT"}},
        {.what = "image init with a probe on a forward it does not have",
         .args = init_with(
             {"--output", "{images}/mine.json", "--forward", "web:8080", "--probe", "api:/health"}),
         .exit_code = exit_code::error,
         .message = {"probe api names forward api, which the profile lacks"}},
        {.what = "image init with a disk that is not a qcow2",
         .args = init_with({"--disk", "{images}/initrd.img"}),
         .exit_code = exit_code::error,
         .message = {"{images}/initrd.img is not a qcow2 disk"}},
    };
}

std::vector<bad_case> command_line_cases() {
    const std::string sha(64, 'a');
    return {
        {.what = "unknown subcommand",
         .args = {"launch"},
         .message = {"unknown command 'launch'", "start, stop, status"}},
        {.what = "unknown flag", .args = start_with({"--turbo"}), .message = {"--turbo"}},
        {.what = "exec with no command",
         .args = {"exec", "--"},
         .message = {"command is required"}},
        {.what = "cp with no guest side",
         .args = {"cp", "./a", "./b"},
         .message = {"neither side is in the guest: write one of SRC and DST as "
                     "guest:/absolute/path"}},
        {.what = "cp with both sides in the guest",
         .args = {"cp", "guest:/a", "guest:/b"},
         .message = {"both sides are in the guest"}},
        {.what = "cp to a relative guest path",
         .args = {"cp", "{image}", "guest:data/x"},
         .message = {"the guest path `data/x` is not absolute: write guest:/path"}},
        {.what = "cp from an empty host path",
         .args = {"cp", "", "guest:/tmp/x"},
         .message = {"the host path is empty: name a file or directory"}},
        {.what = "cp of a host file that does not exist",
         .args = {"cp", "{dir}/missing.sql", "guest:/tmp/x"},
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"cannot read {dir}/missing.sql: No such file or directory"},
         .check = disk_check::except_vm_logs},
        {.what = "cp into a host directory that does not exist",
         .args = {"cp", "guest:/etc/hostname", "{dir}/nodir/hostname"},
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"the host directory {dir}/nodir does not exist"},
         .check = disk_check::except_vm_logs},
        {.what = "pull from an ftp URL",
         .args = {"pull", "--url", "ftp://example.com/stack.qcow2", "--sha256", sha},
         .message = {"is not an http:// or https:// URL"}},
        {.what = "pull from text that is no URL",
         .args = {"pull", "--url", "stack image please", "--sha256", sha},
         .message = {"is not an http:// or https:// URL"}},
        {.what = "pull from a URL without a host",
         .args = {"pull", "--url", "http://", "--sha256", sha},
         .message = {"\"http://\" names no host"}},
        {.what = "pull with a --sha256 that is not hex",
         .args = {"pull", "--url", "http://127.0.0.1:9/stack.qcow2", "--sha256",
                  std::string(64, 'g')},
         .message = {"is not hexadecimal (a SHA-256 is 64 digits 0-9 a-f)"}},
        {.what = "pull with a --sha256 of the wrong length",
         .args = {"pull", "--url", "http://127.0.0.1:9/stack.qcow2", "--sha256", "abc123"},
         .message = {"a SHA-256 is 64 hexadecimal digits; \"abc123\" has 6 characters"}},
        {.what = "pull without --sha256",
         .args = {"pull", "--url", "http://127.0.0.1:9/stack.qcow2"},
         .message = {"--sha256 is required"}},
    };
}

// The instance's configuration (issue 12): the record, `config set/reset`, and sizes the
// host cannot give. The record of an instance that ran stays exactly as it was.
std::vector<bad_case> config_cases() {
    const auto host = stackemu::lifecycle::host_facts::current();
    const auto too_much_ram =
        std::to_string(std::min<std::uint64_t>(host.ram_mib + 1, stackemu::lifecycle::max_ram_mib));
    const auto too_many_cpus = std::to_string(std::min(host.cores + 1, 255u));
    const auto damage_record = [](case_context& ctx) {
        ctx.start_and_stop_vm();
        write_text(ctx.sb.vm_dir() / "config.json", "{\"settings\": {\"ram\": 5");
    };
    return {
        {.what = "config set of an unknown key",
         .args = {"config", "set", "rma", "512"},
         .message = {"'rma' is not a setting of an instance: did you mean 'ram'?",
                     "(the settings: image, arch, ram, cpus"}},
        {.what = "config reset of an unknown key",
         .args = {"config", "reset", "memory"},
         .message = {"'memory' is not a setting of an instance: did you mean 'ram'?"}},
        {.what = "config set with a value that is no number",
         .args = {"config", "set", "ram", "lots"},
         .message = {"config set ram must be a plain decimal number", "'lots'"}},
        {.what = "config set with a value out of range",
         .args = {"config", "set", "backend_port", "70000"},
         .message = {"config set backend_port must be between 1 and 65535 (got 70000)"}},
        {.what = "config set of an unknown accelerator",
         .args = {"config", "set", "accel", "xen"},
         .message = {"config set accel: unknown accelerator 'xen'"}},
        {.what = "config set of an image that does not exist",
         .args = {"config", "set", "image", "{images}/none.qcow2"},
         .message = {"no image at {images}/none.qcow2"}},
        {.what = "config set of a share that is no directory",
         .args = {"config", "set", "share", "{image}"},
         .message = {"config set share {image}: not an existing directory"}},
        {.what = "config set of a port another forward has",
         .args = {"config", "set", "backend_port", "{port.dashboard}"},
         .env = {{"EMULATOR_BACKEND_PORT", std::nullopt}},
         .prepare = [](case_context& ctx) { ctx.start_and_stop_vm(); },
         .message = {"are both {port.dashboard}; give each service its own port"}},
        {.what = "config set on a running instance",
         .args = {"config", "set", "ram", "1024"},
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"default is running, so its configuration cannot change: run `stackemu "
                     "stop` first"},
         .check = disk_check::except_vm_logs},
        {.what = "config reset on a running instance",
         .args = {"config", "reset", "cpus"},
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"default is running, so its configuration cannot change"},
         .check = disk_check::except_vm_logs},
        {.what = "start changing the RAM of a running instance",
         .args = start_with({"--ram", "640", "--cpus", "1", "-q"}),
         .prepare = [](case_context& ctx) { ctx.start_vm(); },
         .exit_code = exit_code::error,
         .message = {"RAM 512 → 640 MiB (from --ram) needs a new VM: run `stackemu stop` and "
                     "then `stackemu start --ram 640`"},
         .check = disk_check::except_vm_logs},
        {.what = "a damaged instance configuration",
         .args = start_with({}),
         .prepare = damage_record,
         .message = {"the instance configuration {run}/vm/config.json is damaged (not a JSON "
                     "object)",
                     "move it away", "nothing was changed"}},
        {.what = "config show of a damaged instance configuration",
         .args = {"config", "show"},
         .prepare = damage_record,
         .message = {"{run}/vm/config.json is damaged"}},
        {.what = "--ram above the host's memory",
         .args = start_with({"--ram", too_much_ram}),
         .message = {"--ram " + too_much_ram + " MiB is more than this host's memory (" +
                     std::to_string(host.ram_mib) + " MiB"}},
        {.what = "--cpus above the host's CPUs",
         .args = start_with({"--cpus", too_many_cpus}),
         .message = {"--cpus " + too_many_cpus + " is more vCPUs than this host has CPUs (" +
                     std::to_string(host.cores) + ")"}},
        {.what = "EMULATOR_RAM above the host's memory",
         .args = start_with({}),
         .env = {{"EMULATOR_RAM", too_much_ram}},
         .message = {"EMULATOR_RAM " + too_much_ram + " MiB is more than this host's memory"}},
        {.what = "EMULATOR_CPUS above the host's CPUs",
         .args = start_with({}),
         .env = {{"EMULATOR_CPUS", too_many_cpus}},
         .message = {"EMULATOR_CPUS " + too_many_cpus + " is more vCPUs than this host has"}},
        {.what = "config set cpus above the host's CPUs",
         .args = {"config", "set", "cpus", too_many_cpus},
         .message = {"config set cpus " + too_many_cpus + " is more vCPUs than this host has"}},
    };
}

}  // namespace

TEST_CASE("bad input: options and settings with invalid values", "[bad-input]") {
    run_table(option_cases());
}

TEST_CASE("bad input: ports paths and names", "[bad-input]") {
    run_table(port_and_name_cases());
}

TEST_CASE("bad input: missing corrupt and mismatched images", "[bad-input]") {
    run_table(image_cases());
}

TEST_CASE("bad input: unusable run directories", "[bad-input]") {
    run_table(run_dir_cases());
}

TEST_CASE("bad input: snapshot names QEMU never sees", "[bad-input]") {
    run_table(snapshot_name_cases());
}

TEST_CASE("bad input: QMP and a hostile console", "[bad-input]") {
    run_table(qmp_and_console_cases());
}

TEST_CASE("bad input: image init refuses and writes nothing", "[bad-input]") {
    run_table(image_init_cases());
}

TEST_CASE("bad input: the command line of every subcommand", "[bad-input]") {
    run_table(command_line_cases());
}

TEST_CASE("bad input: the instance configuration and sizes the host cannot give", "[bad-input]") {
    run_table(config_cases());
}

TEST_CASE("bad input: the table covers at least 45 cases", "[bad-input]") {
    const std::size_t total =
        option_cases().size() + port_and_name_cases().size() + image_cases().size() +
        run_dir_cases().size() + snapshot_name_cases().size() + qmp_and_console_cases().size() +
        command_line_cases().size() + image_init_cases().size() + config_cases().size();
    INFO(total << " cases");
    CHECK(total >= 45);
}
