// The process-level building blocks of src/lifecycle against real processes: launching the
// fake QEMU daemonized, finding it again through its QMP socket, signalling it through a
// pidfd, the instance lock across processes, and the private files.
#include <fcntl.h>
#include <signal.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio.hpp>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>
#include <vector>

#include "lifecycle/files.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/vm_process.hpp"
#include "qmp/client.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// A short directory under /tmp (socket paths must fit sun_path), removed at the end.
struct temp_dir {
    fs::path path;
    temp_dir() {
        static int counter = 0;
        path = fs::path("/tmp") /
               ("stackemu-pr-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
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

fs::perms perms_of(const std::string& path) {
    return fs::status(path).permissions() & fs::perms::all;
}

constexpr auto owner_rw = fs::perms::owner_read | fs::perms::owner_write;

std::vector<std::string> fake_argv(const std::string& qmp_path) {
    return {STACKEMU_FAKE_QEMU_EXE, "-qmp", "unix:" + qmp_path + ",server=on,wait=off", "-S",
            "-daemonize"};
}

launch_options with_behaviour(std::string behaviour) {
    launch_options o;
    o.env.push_back({"STACKEMU_FAKE_QEMU", std::move(behaviour)});
    o.timeout = 30s;
    return o;
}

qmp::client_options patient() {
    qmp::client_options o;
    o.connect_timeout = 10000ms;
    o.greeting_timeout = 10000ms;
    o.command_timeout = 10000ms;
    return o;
}

// Kills a daemon that a failed test left running (a test that passes has ended it).
struct daemon_guard {
    pid_t pid = -1;
    ~daemon_guard() {
        if (pid > 0) ::kill(pid, SIGKILL);
    }
};

// The pid behind the QMP socket at `qmp_path`, as the controller learns it.
asio::awaitable<std::optional<pid_t>> qmp_peer(std::string qmp_path) {
    qmp::endpoint ep = qmp::unix_endpoint{qmp_path};
    auto c = co_await qmp::client::connect(ep, patient());
    if (!c) co_return std::nullopt;
    co_return c->peer_pid();
}

// A child process that takes the lock on `path` for `operation` and holds it until killed.
struct lock_holder_child {
    pid_t pid = -1;
    lock_holder_child(const std::string& path, const std::string& operation) {
        int ready[2];
        REQUIRE(::pipe2(ready, O_CLOEXEC) == 0);
        int hold[2];
        REQUIRE(::pipe2(hold, O_CLOEXEC) == 0);
        pid = ::fork();
        REQUIRE(pid >= 0);
        if (pid == 0) {
            ::close(ready[0]);
            ::close(hold[1]);
            auto lock = try_acquire(path, operation);
            const char byte = lock ? 'A' : 'E';
            if (::write(ready[1], &byte, 1) != 1) ::_exit(2);
            char ignored = 0;
            while (::read(hold[0], &ignored, 1) < 0 && errno == EINTR) {
            }
            ::_exit(0);
        }
        ::close(ready[1]);
        ::close(hold[0]);
        hold_fd_ = hold[1];
        char byte = 0;
        const auto n = ::read(ready[0], &byte, 1);
        ::close(ready[0]);
        REQUIRE(n == 1);
        REQUIRE(byte == 'A');
    }
    void kill() {
        if (pid > 0) {
            ::kill(pid, SIGKILL);
            ::waitpid(pid, nullptr, 0);
            pid = -1;
        }
    }
    ~lock_holder_child() {
        kill();
        if (hold_fd_ >= 0) ::close(hold_fd_);
    }

  private:
    int hold_fd_ = -1;
};

}  // namespace

// ---- launch_daemonized ------------------------------------------------------------------------

TEST_CASE("launch_daemonized returns once fake-qemu -daemonize serves QMP and SIGTERM ends it") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string log = dir / "qemu-stderr.log";
    auto launched = launch_daemonized(fake_argv(qmp_path), log, with_behaviour("{}"));
    REQUIRE_OK(launched);
    CHECK(launched->launcher_pid > 0);
    CHECK(launched->stderr_text.empty());
    CHECK(is_socket(qmp_path));
    CHECK(perms_of(log) == owner_rw);

    asio::io_context ctx;
    const auto peer = test::run(ctx, qmp_peer(qmp_path), 60s);
    REQUIRE(peer.has_value());
    daemon_guard guard{*peer};
    CHECK(*peer != launched->launcher_pid);

    auto verified = verify_peer(*peer, STACKEMU_FAKE_QEMU_EXE);
    REQUIRE_OK(verified);
    CHECK(verified->pid() == *peer);
    CHECK(verified->exe() == fs::canonical(STACKEMU_FAKE_QEMU_EXE));
    CHECK_FALSE(verified->exited());

    // The fake is not what a default QEMU name or qemu-system-* means.
    auto by_name = verify_peer(*peer, "qemu-system-x86_64");
    REQUIRE_FALSE(by_name.has_value());
    CHECK(by_name.error().code == errc::wrong_state);
    auto any_qemu = verify_peer(*peer, "");
    REQUIRE_FALSE(any_qemu.has_value());
    CHECK(any_qemu.error().code == errc::wrong_state);

    REQUIRE_OK(verified->signal(SIGTERM));
    const bool gone = test::run(
        ctx,
        [](const verified_process* p) -> asio::awaitable<bool> {
            const bool exited = co_await p->wait_exit(20000ms);
            co_return exited;
        }(&*verified),
        60s);
    CHECK(gone);
    CHECK(verified->exited());
    CHECK(test::drains(ctx));
}

TEST_CASE("launch_daemonized explains a startup error with the port's setting") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    const std::string log = dir / "qemu-stderr.log";
    auto argv = fake_argv(qmp_path);
    argv.insert(argv.end(), {"-netdev", "user,id=n0,hostfwd=tcp:127.0.0.1:26701-:8102", "-device",
                             "virtio-net-pci,netdev=n0"});
    auto options = with_behaviour(R"({"startup_error": true})");
    options.context.forwards = {{26700, "EMULATOR_DASHBOARD_PORT"},
                                {26701, "EMULATOR_BACKEND_PORT"}};
    auto launched = launch_daemonized(argv, log, options);
    REQUIRE_FALSE(launched.has_value());
    CHECK(launched.error().code == errc::process_failed);
    const std::string qemu_line =
        "qemu-system-x86_64: -netdev user,id=n0,hostfwd=tcp:127.0.0.1:26701-:8102: Could not set "
        "up host forwarding rule 'tcp:127.0.0.1:26701-:8102'";
    CHECK(launched.error().message ==
          "QEMU did not start (fake-qemu exited with status 1): host port 26701 is already in use "
          "(by another process or a second emulator): set EMULATOR_BACKEND_PORT to a free port, "
          "or stop the other one\nQEMU said: " +
              qemu_line);
    // The log keeps what QEMU said, privately.
    CHECK(slurp(log) == qemu_line + "\n");
    CHECK(perms_of(log) == owner_rw);
}

TEST_CASE("launch_daemonized reports a program that is not on PATH as spawn_failed") {
    temp_dir dir;
    auto launched = launch_daemonized({"stackemu-no-such-program"}, dir / "err.log");
    REQUIRE_FALSE(launched.has_value());
    CHECK(launched.error().code == errc::spawn_failed);
    CHECK(launched.error().message ==
          "cannot run stackemu-no-such-program: it is not on PATH; install QEMU or set "
          "EMULATOR_QEMU to its full path");
}

TEST_CASE("launch_daemonized discards stdout and keeps stderr of a name found on PATH") {
    temp_dir dir;
    const std::string log = dir / "err.log";
    auto launched = launch_daemonized({"sh", "-c", "echo out; echo err >&2; exit 3"}, log);
    REQUIRE_FALSE(launched.has_value());
    CHECK(launched.error().code == errc::process_failed);
    CHECK(launched.error().message ==
          "QEMU did not start (sh exited with status 3): QEMU said:\nerr");
    CHECK(slurp(log) == "err\n");
}

TEST_CASE("launch_daemonized truncates an old log and makes it private") {
    temp_dir dir;
    const std::string log = dir / "err.log";
    {
        std::ofstream old(log);
        old << "an earlier run's text\n";
    }
    fs::permissions(log, fs::perms::owner_all | fs::perms::group_read | fs::perms::others_read);
    auto launched = launch_daemonized({"sh", "-c", "echo warning >&2"}, log);
    REQUIRE_OK(launched);
    CHECK(launched->stderr_text == "warning\n");
    CHECK(slurp(log) == "warning\n");
    CHECK(perms_of(log) == owner_rw);
}

TEST_CASE("launch_daemonized gives the child umask 0077 no stray descriptors and clean signals") {
    temp_dir dir;
    const std::string log = dir / "err.log";
    // An inheritable descriptor, an ignored and a blocked signal: none may reach the child.
    int leaky[2];
    REQUIRE(::pipe(leaky) == 0);
    struct sigaction ignore {};
    ignore.sa_handler = SIG_IGN;
    struct sigaction old_usr1 {};
    ::sigaction(SIGUSR1, &ignore, &old_usr1);
    sigset_t block;
    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigset_t old_mask;
    ::sigprocmask(SIG_BLOCK, &block, &old_mask);

    const std::string script = "umask >&2; [ -e /proc/$$/fd/" + std::to_string(leaky[0]) +
                               " ] && echo leaked >&2; exec cat /proc/self/status >&2";
    auto launched = launch_daemonized({"/bin/sh", "-c", script}, log);

    ::sigprocmask(SIG_SETMASK, &old_mask, nullptr);
    ::sigaction(SIGUSR1, &old_usr1, nullptr);
    ::close(leaky[0]);
    ::close(leaky[1]);

    REQUIRE_OK(launched);
    const auto& text = launched->stderr_text;
    INFO(text);
    CHECK(text.starts_with("0077\n"));
    CHECK(text.find("leaked") == std::string::npos);
    CHECK(text.find("\nSigBlk:\t0000000000000000\n") != std::string::npos);
    // glibc's posix_spawn leaves its two internal signals (32 and 33, which sigfillset cannot
    // name) ignored in every child; every other signal is at its default.
    const auto ign_at = text.find("\nSigIgn:\t");
    REQUIRE(ign_at != std::string::npos);
    const auto ignored = std::stoull(text.substr(ign_at + 9, 16), nullptr, 16);
    constexpr unsigned long long glibc_internal = (1ull << 31) | (1ull << 32);
    CHECK((ignored & ~glibc_internal) == 0);
}

TEST_CASE("launch_daemonized kills a launcher that does not finish in time") {
    temp_dir dir;
    launch_options options;
    options.timeout = 200ms;
    auto launched = launch_daemonized({"sleep", "30"}, dir / "err.log", options);
    REQUIRE_FALSE(launched.has_value());
    CHECK(launched.error().code == errc::timeout);
    CHECK(launched.error().message.starts_with("sleep did not finish starting within 200 ms"));
}

// ---- verify_peer, signal, wait_exit ---------------------------------------------------------

TEST_CASE("verify_peer refuses a process that runs another program") {
    auto fake = verify_peer(::getpid(), STACKEMU_FAKE_QEMU_EXE);
    REQUIRE_FALSE(fake.has_value());
    CHECK(fake.error().code == errc::wrong_state);
    const auto self = fs::canonical("/proc/self/exe").string();
    CHECK(fake.error().message == "process " + std::to_string(::getpid()) +
                                      " behind the QMP socket runs " + self + ", not " +
                                      STACKEMU_FAKE_QEMU_EXE + ": it is not this instance's QEMU");
    auto any_qemu = verify_peer(::getpid(), "");
    REQUIRE_FALSE(any_qemu.has_value());
    CHECK(any_qemu.error().code == errc::wrong_state);
    // Our own binary, named by path, is accepted: the check is the exe, not a name pattern.
    CHECK_OK(verify_peer(::getpid(), self));
}

TEST_CASE("identity_of records the pid's start time and the executable's device and inode") {
    auto me = identity_of(::getpid());
    REQUIRE(me.has_value());
    struct stat exe {};
    REQUIRE(::stat("/proc/self/exe", &exe) == 0);
    CHECK(me->pid == ::getpid());
    CHECK(me->exe_dev == static_cast<std::uint64_t>(exe.st_dev));
    CHECK(me->exe_ino == static_cast<std::uint64_t>(exe.st_ino));
    CHECK(me->start_time > 0);
}

TEST_CASE("verify_peer with a launch record refuses the same executable in another process") {
    auto me = identity_of(::getpid());
    REQUIRE(me.has_value());
    CHECK_OK(verify_peer(::getpid(), "", *me));
    auto other = *me;
    other.pid = ::getppid();
    auto refused = verify_peer(::getpid(), "", other);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == errc::wrong_state);
    CHECK_THAT(refused.error().message, Catch::Contains("is not the QEMU this instance launched"));
    auto copied = *me;
    copied.exe_ino += 1;  // the same pid and name, another file
    refused = verify_peer(::getpid(), "", copied);
    REQUIRE_FALSE(refused.has_value());
    CHECK_THAT(refused.error().message,
               Catch::Contains("not the QEMU executable this instance launched"));
}

TEST_CASE("open_launched finds a live launch and calls a recycled pid gone") {
    auto me = identity_of(::getpid());
    REQUIRE(me.has_value());
    auto held = open_launched(*me);
    REQUIRE(held.has_value());
    CHECK(held->pid() == ::getpid());
    CHECK_FALSE(held->exited());
    auto recycled = *me;
    recycled.start_time -= 1;  // the pid now names a later process
    auto gone = open_launched(recycled);
    REQUIRE_FALSE(gone.has_value());
    CHECK(gone.error().code == errc::not_found);
}

TEST_CASE("wait_exit times out while the fake ignores SIGTERM and SIGKILL ends it") {
    temp_dir dir;
    const std::string qmp_path = dir / "qmp.sock";
    auto launched = launch_daemonized(fake_argv(qmp_path), dir / "err.log",
                                      with_behaviour(R"({"ignore_sigterm": true})"));
    REQUIRE_OK(launched);
    asio::io_context ctx;
    const auto peer = test::run(ctx, qmp_peer(qmp_path), 60s);
    REQUIRE(peer.has_value());
    daemon_guard guard{*peer};
    auto verified = verify_peer(*peer, STACKEMU_FAKE_QEMU_EXE);
    REQUIRE_OK(verified);

    auto wait = [](const verified_process* p,
                   std::chrono::milliseconds t) -> asio::awaitable<bool> {
        const bool exited = co_await p->wait_exit(t);
        co_return exited;
    };
    REQUIRE_OK(verified->signal(SIGTERM));
    CHECK_FALSE(test::run(ctx, wait(&*verified, 300ms), 60s));
    CHECK_FALSE(verified->exited());
    REQUIRE_OK(verified->signal(SIGKILL));
    CHECK(test::run(ctx, wait(&*verified, 20000ms), 60s));
    // Once it has exited (reaped or a zombie), nothing can verify it again.
    auto again = verify_peer(*peer, STACKEMU_FAKE_QEMU_EXE);
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == errc::not_found);
    CHECK(test::drains(ctx));
}

// ---- instance_lock --------------------------------------------------------------------------

TEST_CASE("try_acquire in a second process fails with busy naming the holder") {
    temp_dir dir;
    const std::string path = dir / "lock";
    lock_holder_child child(path, "start");

    auto second = try_acquire(path, "stop");
    REQUIRE_FALSE(second.has_value());
    CHECK(second.error().code == errc::busy);
    CHECK(second.error().message.starts_with("this instance is busy: stackemu start (pid " +
                                             std::to_string(child.pid) + ") holds " + path +
                                             " since "));
    auto who = holder(path);
    REQUIRE_OK(who);
    REQUIRE(who->has_value());
    CHECK((*who)->pid == child.pid);
    CHECK((*who)->operation == "start");
    CHECK((*who)->started_at.size() == std::string("2025-11-29T09:55:00Z").size());
    CHECK(perms_of(path) == owner_rw);

    // The kernel drops the lock with the holder: nothing is stale.
    child.kill();
    auto after = holder(path);
    REQUIRE_OK(after);
    CHECK_FALSE(after->has_value());
    auto third = try_acquire(path, "stop");
    REQUIRE_OK(third);
    CHECK(slurp(path).starts_with(std::to_string(::getpid()) + " stop "));
}

TEST_CASE("acquire_wait takes the lock when its holder dies") {
    temp_dir dir;
    const std::string path = dir / "lock";
    lock_holder_child child(path, "start");
    asio::io_context ctx;
    asio::steady_timer killer(ctx, 100ms);
    killer.async_wait([&child](const asio::error_code& ec) {
        if (!ec) ::kill(child.pid, SIGKILL);
    });
    const auto started = std::chrono::steady_clock::now();
    auto lock = test::run(ctx, acquire_wait(path, "stop", 20000ms), 60s);
    const auto waited = std::chrono::steady_clock::now() - started;
    REQUIRE_OK(lock);
    CHECK(lock->held());
    CHECK(lock->operation() == "stop");
    INFO("waited " << std::chrono::duration_cast<std::chrono::milliseconds>(waited).count()
                   << " ms");
    auto who = holder(path);
    REQUIRE_OK(who);
    REQUIRE(who->has_value());
    CHECK((*who)->pid == ::getpid());
    CHECK((*who)->operation == "stop");
    CHECK(test::drains(ctx));
}

TEST_CASE("acquire_wait gives up with busy while the holder keeps the lock") {
    temp_dir dir;
    const std::string path = dir / "lock";
    lock_holder_child child(path, "start");
    asio::io_context ctx;
    auto lock = test::run(ctx, acquire_wait(path, "stop", 200ms), 60s);
    REQUIRE_FALSE(lock.has_value());
    CHECK(lock.error().code == errc::busy);
    CHECK(lock.error().message.find("stackemu start (pid " + std::to_string(child.pid) + ")") !=
          std::string::npos);
    CHECK(lock.error().message.ends_with("(waited 200 ms)"));
    CHECK(test::drains(ctx));
}

TEST_CASE("an instance lock is released by release() and its file stays") {
    temp_dir dir;
    const std::string path = dir / "lock";
    auto none = holder(path);
    REQUIRE_OK(none);
    CHECK_FALSE(none->has_value());

    auto lock = try_acquire(path, "start");
    REQUIRE_OK(lock);
    // Within one process too: a second open file description conflicts with the first.
    auto again = try_acquire(path, "stop");
    REQUIRE_FALSE(again.has_value());
    CHECK(again.error().code == errc::busy);
    // Reading the holder opens and closes the file: with OFD locks that keeps our lock.
    auto who = holder(path);
    REQUIRE_OK(who);
    REQUIRE(who->has_value());
    CHECK((*who)->pid == ::getpid());
    CHECK(lock->held());

    lock->release();
    CHECK_FALSE(lock->held());
    CHECK(fs::exists(path));
    auto free_now = holder(path);
    REQUIRE_OK(free_now);
    CHECK_FALSE(free_now->has_value());
    CHECK_OK(try_acquire(path, "stop"));
}

TEST_CASE("try_acquire wants a one-word operation") {
    temp_dir dir;
    auto lock = try_acquire(dir / "lock", "two words");
    REQUIRE_FALSE(lock.has_value());
    CHECK(lock.error().code == errc::invalid_argument);
}

// ---- files ----------------------------------------------------------------------------------

TEST_CASE("write_file_atomically replaces the content and leaves no temporary file") {
    temp_dir dir;
    const std::string path = dir / "state.json";
    REQUIRE_OK(write_file_atomically(path, "first"));
    REQUIRE_OK(write_file_atomically(path, "second, longer"));
    auto text = read_file(path);
    REQUIRE_OK(text);
    CHECK(*text == "second, longer");
    CHECK(perms_of(path) == owner_rw);
    std::vector<std::string> names;
    for (const auto& e : fs::directory_iterator(dir.path))
        names.push_back(e.path().filename().string());
    CHECK(names == std::vector<std::string>{"state.json"});

    REQUIRE_OK(write_file_atomically(path, "", 0644));
    CHECK(perms_of(path) == (owner_rw | fs::perms::group_read | fs::perms::others_read));
    auto empty = read_file(path);
    REQUIRE_OK(empty);
    CHECK(empty->empty());
}

TEST_CASE("write_file_atomically into a missing directory fails and read_file of it is not_found") {
    temp_dir dir;
    auto written = write_file_atomically(dir / "no/such/file", "x");
    REQUIRE_FALSE(written.has_value());
    CHECK(written.error().code == errc::io_error);
    auto missing = read_file(dir / "nothing");
    REQUIRE_FALSE(missing.has_value());
    CHECK(missing.error().code == errc::not_found);
}

TEST_CASE("ensure_private_dir creates parents and fixes 0755 to 0700") {
    temp_dir dir;
    const std::string nested = dir / "a/b/vm";
    REQUIRE_OK(ensure_private_dir(nested));
    CHECK(fs::is_directory(nested));
    CHECK(perms_of(nested) == fs::perms::owner_all);

    const std::string open_dir = dir / "open";
    fs::create_directory(open_dir);
    fs::permissions(open_dir, fs::perms::owner_all | fs::perms::group_read | fs::perms::group_exec |
                                  fs::perms::others_read | fs::perms::others_exec);
    REQUIRE_OK(ensure_private_dir(open_dir));
    CHECK(perms_of(open_dir) == fs::perms::owner_all);
    REQUIRE_OK(ensure_private_dir(open_dir));  // idempotent
}

TEST_CASE("ensure_private_dir refuses a file and another user's directory") {
    temp_dir dir;
    const std::string file = dir / "file";
    { std::ofstream(file) << "x"; }
    auto not_dir = ensure_private_dir(file);
    REQUIRE_FALSE(not_dir.has_value());
    CHECK(not_dir.error().code == errc::already_exists);

    const std::string theirs = dir / "theirs";
    fs::create_directory(theirs);
    if (::chown(theirs.c_str(), 65534, 65534) != 0) {
        WARN("not root: cannot make a directory owned by another user here");
        return;
    }
    auto refused = ensure_private_dir(theirs);
    REQUIRE_FALSE(refused.has_value());
    CHECK(refused.error().code == errc::wrong_state);
    CHECK(refused.error().message.find(theirs + " belongs to ") == 0);
}
