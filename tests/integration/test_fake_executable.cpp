// The fake-qemu executable as stackemu launches QEMU: argv, -daemonize, -pidfile, sockets, exit.
#include <fcntl.h>
#include <signal.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <filesystem>
#include <fstream>
#include <functional>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "support/describe.hpp"
#include "support/process.hpp"
#include "support/run.hpp"

extern char** environ;

using namespace stackemu;
using namespace stackemu::qmp;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// Generous: nothing here should take more than a fraction of a second.
constexpr auto process_ceiling = 30s;

// A short directory under /tmp (socket paths must fit sun_path), removed at the end.
struct temp_dir {
    fs::path path;
    temp_dir() {
        static int counter = 0;
        path = fs::path("/tmp") /
               ("stackemu-fq-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ignored;
        fs::remove_all(path, ignored);
    }
    std::string operator/(std::string_view name) const { return (path / name).string(); }
};

std::string slurp(const std::string& path) {
    std::ifstream in(path);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool is_socket(const std::string& path) {
    struct stat st {};
    return ::lstat(path.c_str(), &st) == 0 && S_ISSOCK(st.st_mode);
}

// The socket at `path` is listening: the file appears at bind(), a moment before listen(), and
// a test connection would take the one slot of the monitor's backlog. /proc/net/unix marks a
// listening socket with __SO_ACCEPTCON in its flags.
bool is_listening(const std::string& path) {
    constexpr unsigned long accepting = 0x10000;
    std::ifstream table("/proc/net/unix");
    std::string line;
    std::getline(table, line);  // header
    while (std::getline(table, line)) {
        std::istringstream fields(line);
        // Num RefCount Protocol Flags Type St Inode Path
        std::array<std::string, 8> column;
        for (auto& c : column)
            fields >> c;
        if (column[7] == path && (std::stoul(column[3], nullptr, 16) & accepting)) return true;
    }
    return false;
}

// Starts fake-qemu with `args` (no shell), STACKEMU_FAKE_QEMU=`behaviour`, and its stdout and
// stderr in files. Returns the launcher's pid.
pid_t spawn_fake(const std::vector<std::string>& args, const std::string& behaviour,
                 const std::string& out_path, const std::string& err_path) {
    std::vector<std::string> env_text;
    for (char** e = environ; *e; ++e)
        if (!std::string_view(*e).starts_with("STACKEMU_FAKE_QEMU=")) env_text.emplace_back(*e);
    if (!behaviour.empty()) env_text.push_back("STACKEMU_FAKE_QEMU=" + behaviour);

    std::vector<std::string> argv_text{STACKEMU_FAKE_QEMU_EXE};
    argv_text.insert(argv_text.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& a : argv_text)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    std::vector<char*> envp;
    for (auto& e : env_text)
        envp.push_back(e.data());
    envp.push_back(nullptr);

    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0644);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    return pid;
}

// Waits for our child `pid` to end; its exit code, 128+signal, or nullopt at the ceiling (then
// the child is killed).
std::optional<int> wait_child(pid_t pid) {
    return stackemu::test::wait_child(pid, process_ceiling);
}

using stackemu::test::process_gone;

bool wait_gone(pid_t pid) {
    return stackemu::test::wait_gone(pid, process_ceiling);
}

// Kills the daemon named by a pidfile if a test fails before it quit.
struct daemon_guard {
    pid_t pid = -1;
    ~daemon_guard() {
        if (pid > 0 && !process_gone(pid)) ::kill(pid, SIGKILL);
    }
};

// Kills and reaps a child that a failed test left running.
struct child_guard {
    pid_t pid = -1;
    ~child_guard() {
        if (pid > 0 && ::waitpid(pid, nullptr, WNOHANG) == 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
        }
    }
};

client_options patient() {
    client_options o;
    o.connect_timeout = 10000ms;
    o.greeting_timeout = 10000ms;
    o.command_timeout = 10000ms;
    return o;
}

}  // namespace

TEST_CASE("fake-qemu -daemonize: sockets and pidfile exist when the launcher exits 0") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string mon_path = dir / "mon.sock";
    const std::string serial_path = dir / "serial.sock";
    const std::string pidfile = dir / "qemu.pid";
    const std::vector<std::string> args{
        // Options the fake does not act on, with and without an argument: ignored.
        "-machine", "q35", "-accel", "tcg", "-m", "256", "-smp", "2", "-nodefaults",
        "-no-user-config", "-display", "none", "-rtc", "base=utc",
        // What stackemu passes.
        "-qmp", "unix:" + qmp_path + ",server=on,wait=off",                        //
        "-chardev", "socket,id=mon0,path=" + mon_path + ",server=on,wait=off",     //
        "-mon", "chardev=mon0,mode=control",                                       //
        "-chardev", "socket,id=ser0,path=" + serial_path + ",server=on,wait=off",  //
        "-serial", "chardev:ser0",                                                 //
        "-name", "hostile-vm", "-S", "-daemonize", "-pidfile", pidfile};
    const pid_t launcher = spawn_fake(args, "", dir / "out", dir / "err");
    const auto launched = wait_child(launcher);
    INFO("stderr: " << slurp(dir / "err"));
    REQUIRE(launched == std::optional<int>(0));

    // Everything is in place when the launcher returns, as with QEMU's -daemonize.
    CHECK(is_socket(qmp_path));
    CHECK(is_socket(mon_path));
    CHECK(is_socket(serial_path));
    REQUIRE(fs::exists(pidfile));
    const auto pid_text = slurp(pidfile);
    REQUIRE(pid_text.ends_with("\n"));
    const pid_t daemon = std::stoi(pid_text);
    daemon_guard guard{daemon};
    CHECK(daemon != launcher);
    CHECK_FALSE(process_gone(daemon));
    CHECK((fs::status(pidfile).permissions() & fs::perms::all) ==
          (fs::perms::owner_read | fs::perms::owner_write));
    CHECK(slurp(dir / "out").empty());
    CHECK(slurp(dir / "err").empty());

    asio::io_context ctx;
    test::run(
        ctx,
        [](std::string qmp, std::string mon, std::string serial,
           pid_t expected) -> asio::awaitable<void> {
            // The -mon monitor: a second QMP monitor, served independently.
            endpoint mon_ep = unix_endpoint{mon};
            auto second = co_await client::connect(mon_ep, patient());
            REQUIRE_OK(second);
            auto second_status = co_await query_status(*second);
            REQUIRE_OK(second_status);
            CHECK(second_status->status == "prelaunch");

            // The serial chardev accepts a connection.
            endpoint serial_ep = unix_endpoint{serial};
            auto console = co_await open_stream(serial_ep, 10000ms);
            REQUIRE_OK(console);

            endpoint ep = unix_endpoint{qmp};
            auto c = co_await client::connect(ep, patient());
            REQUIRE_OK(c);
            CHECK(c->peer_pid() == std::optional<pid_t>(expected));
            CHECK(c->version() == qemu_version{7, 2, 22, {}});
            auto name = co_await query_name(*c);
            REQUIRE_OK(name);
            CHECK(*name == std::optional<std::string>("hostile-vm"));
            auto status = co_await query_status(*c);
            REQUIRE_OK(status);
            CHECK_FALSE(status->running);
            CHECK(status->status == "prelaunch");

            auto sub = c->subscribe();
            auto quitted = co_await quit(*c);
            REQUIRE_OK(quitted);
            auto shutdown = co_await sub.next(10000ms);
            REQUIRE_OK(shutdown);
            CHECK(shutdown->name == "SHUTDOWN");
            CHECK(shutdown->data == json::parse(R"({"guest":false,"reason":"host-qmp-quit"})"));
            auto eof = co_await sub.next(10000ms);
            REQUIRE_FALSE(eof.has_value());
            CHECK(eof.error().code == errc::disconnected_after_quit);
            // The other monitor is closed too.
            auto late = co_await query_status(*second);
            REQUIRE_FALSE(late.has_value());
            CHECK(late.error().code == errc::disconnected);
        }(qmp_path, mon_path, serial_path, daemon),
        60s);

    REQUIRE(wait_gone(daemon));
    // QEMU removes its socket files and its pidfile on a clean exit.
    CHECK_FALSE(fs::exists(qmp_path));
    CHECK_FALSE(fs::exists(mon_path));
    CHECK_FALSE(fs::exists(serial_path));
    CHECK_FALSE(fs::exists(pidfile));
}

TEST_CASE("fake-qemu without -S starts running and without -name has no name") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string pidfile = dir / "qemu.pid";
    const std::vector<std::string> args{"-qmp", "unix:" + qmp_path + ",server=on,wait=off",
                                        "-daemonize", "-pidfile", pidfile};
    const pid_t launcher = spawn_fake(args, "", dir / "out", dir / "err");
    REQUIRE(wait_child(launcher) == std::optional<int>(0));
    const pid_t daemon = std::stoi(slurp(pidfile));
    daemon_guard guard{daemon};

    asio::io_context ctx;
    test::run(
        ctx,
        [](std::string qmp) -> asio::awaitable<void> {
            endpoint ep = unix_endpoint{qmp};
            auto c = co_await client::connect(ep, patient());
            REQUIRE_OK(c);
            auto name = co_await query_name(*c);
            REQUIRE_OK(name);
            CHECK_FALSE(name->has_value());
            auto status = co_await query_status(*c);
            REQUIRE_OK(status);
            CHECK(status->status == "running");
            auto quitted = co_await quit(*c);
            REQUIRE_OK(quitted);
        }(qmp_path),
        60s);
    REQUIRE(wait_gone(daemon));
    CHECK_FALSE(fs::exists(qmp_path));
    CHECK_FALSE(fs::exists(pidfile));
}

TEST_CASE("fake-qemu startup_error: the launcher exits 1 with QEMU's host forwarding message") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string pidfile = dir / "qemu.pid";
    const std::vector<std::string> args{"-qmp",       "unix:" + qmp_path + ",server=on,wait=off",
                                        "-netdev",    "user,id=n0,hostfwd=tcp:127.0.0.1:26701-:22",
                                        "-device",    "virtio-net-pci,netdev=n0",
                                        "-name",      "broken",
                                        "-daemonize", "-pidfile",
                                        pidfile};
    const pid_t launcher = spawn_fake(args, R"({"startup_error": true})", dir / "out", dir / "err");
    CHECK(wait_child(launcher) == std::optional<int>(1));
    // Real QEMU 7.2 prints exactly this when the host port is taken.
    CHECK(slurp(dir / "err") ==
          "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:26701-:22: Could not set "
          "up host forwarding rule 'tcp:127.0.0.1:26701-:22'\n");
    CHECK(slurp(dir / "out").empty());
    CHECK_FALSE(fs::exists(pidfile));
}

TEST_CASE("fake-qemu with a host port already taken fails as QEMU does") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string pidfile = dir / "qemu.pid";
    asio::io_context ctx;
    asio::ip::tcp::acceptor taken(ctx,
                                  asio::ip::tcp::endpoint(asio::ip::make_address("127.0.0.1"), 0));
    const auto port = std::to_string(taken.local_endpoint().port());
    const std::string rule = "tcp:127.0.0.1:" + port + "-:22";
    const std::vector<std::string> args{"-qmp",       "unix:" + qmp_path + ",server=on,wait=off",
                                        "-netdev",    "user,id=n0,hostfwd=" + rule,
                                        "-daemonize", "-pidfile",
                                        pidfile};
    const pid_t launcher = spawn_fake(args, "", dir / "out", dir / "err");
    CHECK(wait_child(launcher) == std::optional<int>(1));
    CHECK(slurp(dir / "err") == "qemu-system-x86_64: -netdev user,id=n0,hostfwd=" + rule +
                                    ": Could not set up host forwarding rule '" + rule + "'\n");
    // QEMU 7.2 removes its pidfile on an error exit but leaves the sockets it already made.
    CHECK_FALSE(fs::exists(pidfile));
    CHECK(is_socket(qmp_path));
}

TEST_CASE("fake-qemu startup_error: a given message goes to stderr as it is") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::vector<std::string> args{"-qmp", "unix:" + qmp_path + ",server=on,wait=off",
                                        "-daemonize"};
    const std::string message =
        "qemu-system-x86_64: -blockdev node-name=disk0: Could not open 'x.qcow2': No such file "
        "or directory";
    const nlohmann::json behaviour = {{"startup_error", message}};
    const pid_t launcher = spawn_fake(args, behaviour.dump(), dir / "out", dir / "err");
    CHECK(wait_child(launcher) == std::optional<int>(1));
    CHECK(slurp(dir / "err") == message + "\n");
}

TEST_CASE("fake-qemu startup_error: without forwards a generic QEMU-like message") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::vector<std::string> args{"-qmp", "unix:" + qmp_path + ",server=on,wait=off",
                                        "-daemonize"};
    const pid_t launcher = spawn_fake(args, R"({"startup_error": true})", dir / "out", dir / "err");
    CHECK(wait_child(launcher) == std::optional<int>(1));
    const auto err = slurp(dir / "err");
    CHECK(err.starts_with("qemu-system-x86_64: "));
    CHECK(err.ends_with("\n"));
    CHECK(std::ranges::count(err, '\n') == 1);
}

TEST_CASE("fake-qemu in the foreground: quit ends the process with status 0") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string pidfile = dir / "qemu.pid";
    const std::vector<std::string> args{"-qmp", "unix:" + qmp_path + ",server=on,wait=off", "-S",
                                        "-pidfile", pidfile};
    const pid_t fake = spawn_fake(args, "", dir / "out", dir / "err");
    child_guard guard{fake};
    // Without -daemonize nothing says when the socket is ready: poll until it listens (a
    // sanitizer build takes long enough between bind() and listen() to be caught there).
    const auto deadline = std::chrono::steady_clock::now() + process_ceiling;
    while (!is_listening(qmp_path) && std::chrono::steady_clock::now() < deadline)
        std::this_thread::sleep_for(5ms);
    REQUIRE(is_listening(qmp_path));

    asio::io_context ctx;
    test::run(
        ctx,
        [](std::string qmp, pid_t expected) -> asio::awaitable<void> {
            endpoint ep = unix_endpoint{qmp};
            auto c = co_await client::connect(ep, patient());
            REQUIRE_OK(c);
            CHECK(c->peer_pid() == std::optional<pid_t>(expected));
            auto quitted = co_await quit(*c);
            REQUIRE_OK(quitted);
        }(qmp_path, fake),
        60s);
    CHECK(wait_child(fake) == std::optional<int>(0));
    CHECK_FALSE(fs::exists(qmp_path));
    CHECK_FALSE(fs::exists(pidfile));
}
