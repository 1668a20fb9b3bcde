// Instance layout and the sun_path fallback for sockets.
#include <catch2/catch.hpp>
#include <string>

#include "lifecycle/instance_paths.hpp"
#include "support/describe.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;

namespace {

const socket_fallback user_1000{1000, std::string("/run/user/1000")};

// A run directory whose vm/monitor.sock path is exactly `length` bytes long.
std::string run_dir_for_socket_length(std::size_t length) {
    const std::string suffix = "/vm/monitor.sock";
    std::string run = "/r";
    run += std::string(length - suffix.size() - run.size(), 'x');
    REQUIRE(run.size() + suffix.size() == length);
    return run;
}

}  // namespace

TEST_CASE("the default instance lives in vm under the run directory") {
    auto p = make_instance_paths("/home/dev/.stack/emulator/run", "", user_1000);
    REQUIRE_OK(p);
    CHECK(p->name.empty());
    CHECK(p->display_name() == "default");
    CHECK(p->instance_dir == "/home/dev/.stack/emulator/run");
    CHECK(p->vm_dir == "/home/dev/.stack/emulator/run/vm");
    CHECK(p->disk == "/home/dev/.stack/emulator/run/vm/disk.qcow2");
    CHECK(p->serial_log == "/home/dev/.stack/emulator/run/vm/serial.log");
    CHECK(p->qemu_log == "/home/dev/.stack/emulator/run/vm/qemu.log");
    CHECK(p->qemu_stderr_log == "/home/dev/.stack/emulator/run/vm/qemu-stderr.log");
    CHECK(p->events == "/home/dev/.stack/emulator/run/vm/events.jsonl");
    CHECK(p->state == "/home/dev/.stack/emulator/run/vm/state.json");
    CHECK(p->lock == "/home/dev/.stack/emulator/run/vm/lock");
    CHECK_FALSE(p->sockets_relocated);
    CHECK(p->socket_dir == p->vm_dir);
    CHECK(p->qmp_socket == "/home/dev/.stack/emulator/run/vm/qmp.sock");
    CHECK(p->monitor_socket == "/home/dev/.stack/emulator/run/vm/monitor.sock");
    CHECK(p->serial_socket == "/home/dev/.stack/emulator/run/vm/serial.sock");
    CHECK(p->qga_socket == "/home/dev/.stack/emulator/run/vm/qga.sock");
}

TEST_CASE("a named instance lives under instances") {
    settings s;
    s.run_dir = "/srv/run";
    s.name = "ci-7";
    auto p = make_instance_paths(s, user_1000);
    REQUIRE_OK(p);
    CHECK(p->display_name() == "ci-7");
    CHECK(p->instance_dir == "/srv/run/instances/ci-7");
    CHECK(p->vm_dir == "/srv/run/instances/ci-7/vm");
    CHECK(p->disk == "/srv/run/instances/ci-7/vm/disk.qcow2");
    CHECK(p->qmp_socket == "/srv/run/instances/ci-7/vm/qmp.sock");
}

TEST_CASE("invalid instance names and relative run directories are rejected") {
    CHECK(make_instance_paths("/srv/run", "../x", user_1000).error().code ==
          errc::invalid_argument);
    CHECK(make_instance_paths("run", "", user_1000).error().code == errc::invalid_argument);
}

TEST_CASE("a percent sign in the run directory is rejected because QEMU's -D cannot take it") {
    auto p = make_instance_paths("/srv/100%/run", "", user_1000);
    REQUIRE_FALSE(p.has_value());
    CHECK(p.error().message ==
          "the run directory '/srv/100%/run' contains '%', which QEMU's log option cannot take; "
          "choose an EMULATOR_RUN_DIR without it");
}

TEST_CASE("sockets stay in vm while the longest fits sun_path") {
    auto p = make_instance_paths(run_dir_for_socket_length(107), "", user_1000);
    REQUIRE_OK(p);
    CHECK_FALSE(p->sockets_relocated);
    CHECK(p->monitor_socket.native().size() == 107);
}

TEST_CASE("sockets move to the runtime directory when one would not fit") {
    auto p = make_instance_paths(run_dir_for_socket_length(108), "", user_1000);
    REQUIRE_OK(p);
    CHECK(p->sockets_relocated);
    const auto dir = "/run/user/1000/stackemu-1000/" + path_hash(p->vm_dir.native());
    CHECK(p->socket_dir == dir);
    CHECK(p->qmp_socket == dir + "/qmp.sock");
    CHECK(p->monitor_socket == dir + "/monitor.sock");
    CHECK(p->serial_socket == dir + "/serial.sock");
    CHECK(p->qga_socket == dir + "/qga.sock");
    // Everything else stays with the instance.
    CHECK(p->disk == p->vm_dir / "disk.qcow2");
    CHECK(p->serial_log == p->vm_dir / "serial.log");
}

TEST_CASE("without a usable XDG_RUNTIME_DIR sockets move under tmp") {
    const auto run = run_dir_for_socket_length(200);
    for (const auto& xdg : {std::optional<std::string>{}, std::optional<std::string>{""},
                            std::optional<std::string>{"relative/dir"}}) {
        auto p = make_instance_paths(run, "", socket_fallback{42, xdg});
        REQUIRE_OK(p);
        CHECK(p->socket_dir == "/tmp/stackemu-42/" + path_hash(p->vm_dir.native()));
    }
}

TEST_CASE("different instances get different socket directories") {
    const auto run = run_dir_for_socket_length(150);
    auto a = make_instance_paths(run, "a", user_1000);
    auto b = make_instance_paths(run, "b", user_1000);
    REQUIRE_OK(a);
    REQUIRE_OK(b);
    CHECK(a->socket_dir != b->socket_dir);
}

TEST_CASE("socket paths that fit nowhere are an error that says what to shorten") {
    const socket_fallback deep{1000, "/" + std::string(100, 'd')};
    auto p = make_instance_paths(run_dir_for_socket_length(150), "", deep);
    REQUIRE_FALSE(p.has_value());
    CHECK(p.error().code == errc::invalid_argument);
    CHECK(p.error().message.find("107-byte limit") != std::string::npos);
    CHECK(p.error().message.find("use a shorter EMULATOR_RUN_DIR or XDG_RUNTIME_DIR") !=
          std::string::npos);
}

TEST_CASE("the path hash is FNV-1a 64 in 16 hex digits") {
    CHECK(path_hash("") == "cbf29ce484222325");
    CHECK(path_hash("a") == "af63dc4c8601ec8c");
    CHECK(path_hash("foobar") == "85944171f73967e8");
}
