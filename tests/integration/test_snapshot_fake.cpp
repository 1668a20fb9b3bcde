// Named snapshots against the fake QEMU: the job helpers over a socketpair (events before the
// reply, a job that never concludes, a disconnect mid-job), then `stackemu snapshot` as users
// run it, with fake-qemu as EMULATOR_QEMU and the real qemu-img on the overlay.
#include <fcntl.h>
#include <netinet/in.h>
#include <signal.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <array>
#include <catch2/catch.hpp>
#include <cerrno>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "fake-qemu/options.hpp"
#include "fake-qemu/server.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/snapshot.hpp"
#include "qmp/client.hpp"
#include "qmp/commands.hpp"
#include "support/describe.hpp"
#include "support/process.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

extern char** environ;

using namespace stackemu;
using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
namespace snap_exit = stackemu::lifecycle::snapshot_exit;

// ---- The job helpers against the in-process fake ----

namespace {

qmp::client_options generous() {
    qmp::client_options o;
    o.greeting_timeout = 10000ms;
    o.command_timeout = 10000ms;
    return o;
}

fake::options configured(std::string_view text) {
    auto o = fake::parse_options(json::parse(text));
    REQUIRE_OK(o);
    return *o;
}

struct rig {
    asio::io_context ctx;
    fake::server server;

    explicit rig(fake::options o = {}) : server(ctx.get_executor(), std::move(o)) {}

    qmp::stream_socket plug() {
        auto [mine, theirs] = test::socket_pair(ctx);
        server.serve_qmp(std::move(theirs), false);
        server.start();
        return std::move(mine);
    }
    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 60s);
    }
    bool wind_down() {
        server.host_signal();
        return test::drains(ctx);
    }
};

}  // namespace

TEST_CASE("snapshot job: events before the reply and the whole status sequence", "[snapshot]") {
    rig t;
    auto sock = t.plug();
    t.run([](qmp::stream_socket s) -> asio::awaitable<void> {
        auto c = co_await qmp::client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        auto watch = c->subscribe();
        qmp::snapshot_target target{"clean", "disk0", {"disk0"}};
        auto saved = co_await qmp::snapshot_save(*c, target, 10000ms);
        REQUIRE_OK(saved);
        std::vector<std::string> seen;
        while (auto ev = watch.try_next()) {
            if (ev->name == "JOB_STATUS_CHANGE")
                seen.push_back(ev->data.value("status", ""));
            else
                seen.push_back(ev->name);
        }
        // created, running, STOP and RESUME come before snapshot-save's reply (QEMU 7.2).
        const std::vector<std::string> expected{"created", "running", "STOP",      "RESUME",
                                                "waiting", "pending", "concluded", "null"};
        CHECK(seen == expected);
        auto listed = co_await qmp::query_snapshots(*c, "disk0");
        REQUIRE_OK(listed);
        REQUIRE(listed->size() == 1);
        CHECK(listed->front().name == "clean");
        CHECK(listed->front().vm_state_size > 0);
        auto missing = co_await qmp::query_snapshots(*c, "disk9");
        REQUIRE_FALSE(missing.has_value());
        CHECK(missing.error().code == errc::not_found);
        auto jobs = co_await qmp::query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

TEST_CASE("snapshot job: one that never concludes is cancelled and dismissed at the deadline",
          "[snapshot]") {
    rig t(configured(R"({"job_never_concludes": true})"));
    auto sock = t.plug();
    t.run([](qmp::stream_socket s) -> asio::awaitable<void> {
        auto c = co_await qmp::client::attach(std::move(s), generous());
        REQUIRE_OK(c);
        qmp::snapshot_target target{"clean", "disk0", {"disk0"}};
        const auto t0 = std::chrono::steady_clock::now();
        auto loaded = co_await qmp::snapshot_load(*c, target, 300ms);
        const auto took = std::chrono::steady_clock::now() - t0;
        REQUIRE_FALSE(loaded.has_value());
        CHECK(loaded.error().code == errc::timeout);
        INFO(loaded.error().what());
        CHECK(loaded.error().message.find("did not conclude within 300 ms; it was cancelled") !=
              std::string::npos);
        CHECK(took < 5s);
        CHECK(c->is_open());
        auto jobs = co_await qmp::query_jobs(*c);
        REQUIRE_OK(jobs);
        CHECK(jobs->empty());  // nothing left behind for the next command
    }(std::move(sock)));
    REQUIRE(t.wind_down());
}

namespace {

// Closes the connection after `messages` messages of the fake (the greeting is 1, the
// negotiation reply 2; snapshot-save then sends created 3, running 4, STOP 5, RESUME 6, its
// reply 7, waiting 8...) and runs a save.
error save_cut_after(std::size_t messages) {
    json j = {{"close_after_messages", messages}};
    rig t(configured(j.dump()));
    auto sock = t.plug();
    auto e = t.run([](qmp::stream_socket s) -> asio::awaitable<error> {
        auto c = co_await qmp::client::attach(std::move(s), generous());
        if (!c) co_return c.error();
        qmp::snapshot_target target{"clean", "disk0", {"disk0"}};
        auto saved = co_await qmp::snapshot_save(*c, target, 10000ms);
        if (saved) co_return make_error(errc::internal, "the save succeeded");
        co_return saved.error();
    }(std::move(sock)));
    CHECK(t.wind_down());
    return e;
}

}  // namespace

TEST_CASE("snapshot job: a disconnect mid-job is a typed error", "[snapshot]") {
    SECTION("before the reply") {
        auto e = save_cut_after(5);
        CHECK(to_string(e.code) == to_string(errc::disconnected));
    }
    SECTION("after the reply, before concluded: the outcome is unknown") {
        auto e = save_cut_after(7);
        CHECK(to_string(e.code) == to_string(errc::disconnected));
        INFO(e.what());
        CHECK(e.message.find("before the snapshot-save job") != std::string::npos);
        CHECK(e.message.find("outcome is unknown") != std::string::npos);
    }
}

// ---- stackemu snapshot with the fake executable ----

namespace {

constexpr auto command_ceiling = 120s;

std::string slurp(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

std::array<std::uint16_t, 4> free_ports() {
    std::array<int, 4> fds{};
    std::array<std::uint16_t, 4> ports{};
    for (std::size_t i = 0; i < fds.size(); ++i) {
        fds[i] = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fds[i] >= 0);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fds[i], reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(fds[i], reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        ports[i] = ntohs(addr.sin_port);
    }
    for (int fd : fds)
        ::close(fd);
    return ports;
}

using stackemu::test::process_gone;

struct cli_result {
    int code = -1;
    std::string out;
    std::string err;
    json j;  // stdout parsed, when it is JSON
};

// A sandbox per test: a base image with its manifest, a run directory, the fake's settings.
// The destructor kills any fake-qemu left behind and removes everything.
struct sandbox {
    fs::path dir;
    std::array<std::uint16_t, 4> ports = free_ports();
    json fake = json::object();  // STACKEMU_FAKE_QEMU of the commands run
    int spawned = 0;

    sandbox() {
        static int counter = 0;
        dir = fs::path("/tmp") /
              ("stackemu-snap-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(dir);
        fs::create_directories(dir / "cache");
        std::ofstream(dir / "vmlinuz") << "not a kernel\n";
        std::ofstream(dir / "initrd.img") << "not an initrd\n";
        REQUIRE(
            std::system(("qemu-img create -q -f qcow2 '" + (dir / "base.qcow2").string() + "' 64M")
                            .c_str()) == 0);
        const json manifest = {
            {"format", 1},
            {"arch", "amd64"},
            {"disk", "base.qcow2"},
            {"boot",
             {{"mode", "kernel"},
              {"kernel", "vmlinuz"},
              {"initrd", "initrd.img"},
              {"cmdline", "console=ttyS0"}}},
            {"profile",
             {{"name", "snap-test"},
              {"forwards", json::array({{{"name", "dashboard"}, {"guest", 8000}},
                                        {{"name", "backend"}, {"guest", 8001}},
                                        {{"name", "minio"}, {"guest", 9000}},
                                        {{"name", "inbucket"}, {"guest", 9001}}})},
              {"probes", json::array()},
              {"ready_marker", "STACK_EMULATOR_READY"},
              {"failure_markers", json::array()},
              {"agent", false}}},
            {"build_id", "snap-test-1"}};
        std::ofstream(dir / "base.json") << manifest.dump(2) << "\n";
        fake["agent"] = false;
        fake["console"] = json::array({json{{"after_ms", 10}, {"line", "STACK_EMULATOR_READY"}},
                                       json{{"after_ms", 0}, {"action", "ready"}}});
    }

    ~sandbox() {
        for (pid_t pid : fakes()) {
            ::kill(pid, SIGKILL);
            stackemu::test::wait_gone(pid, std::chrono::seconds(30));
        }
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    sandbox(const sandbox&) = delete;
    sandbox& operator=(const sandbox&) = delete;

    fs::path vm_dir() const { return dir / "run" / "vm"; }

    std::vector<pid_t> fakes() const {
        std::vector<pid_t> pids;
        std::error_code ec;
        for (const auto& entry : fs::directory_iterator("/proc", ec)) {
            const auto name = entry.path().filename().string();
            if (name.empty() || name.find_first_not_of("0123456789") != std::string::npos) continue;
            const auto cmdline = slurp(entry.path() / "cmdline");
            const auto argv0 = std::string_view(cmdline).substr(0, cmdline.find('\0'));
            if (argv0 != STACKEMU_FAKE_QEMU_EXE || !contains(cmdline, dir.string() + "/")) continue;
            const pid_t pid = std::stoi(name);
            if (!process_gone(pid)) pids.push_back(pid);
        }
        return pids;
    }

    cli_result run(const std::vector<std::string>& args) {
        const int n = ++spawned;
        const auto out = dir / ("cli-" + std::to_string(n) + ".out");
        const auto err = dir / ("cli-" + std::to_string(n) + ".err");
        std::vector<std::string> env_text;
        for (char** e = environ; *e; ++e) {
            const std::string_view v(*e);
            if (v.starts_with("EMULATOR_") || v.starts_with("STACKEMU_FAKE_QEMU=") ||
                v.starts_with("XDG_CACHE_HOME="))
                continue;
            env_text.emplace_back(v);
        }
        env_text.push_back("EMULATOR_RUN_DIR=" + (dir / "run").string());
        env_text.push_back("EMULATOR_IMAGE_DIR=" + dir.string());
        env_text.push_back(std::string("EMULATOR_QEMU=") + STACKEMU_FAKE_QEMU_EXE);
        env_text.push_back("EMULATOR_DASHBOARD_PORT=" + std::to_string(ports[0]));
        env_text.push_back("EMULATOR_BACKEND_PORT=" + std::to_string(ports[1]));
        env_text.push_back("EMULATOR_MINIO_PORT=" + std::to_string(ports[2]));
        env_text.push_back("EMULATOR_INBUCKET_PORT=" + std::to_string(ports[3]));
        env_text.push_back("STACKEMU_FAKE_QEMU=" + fake.dump());
        env_text.push_back("XDG_CACHE_HOME=" + (dir / "cache").string());

        std::vector<std::string> argv_text{STACKEMU_CLI_EXE};
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
        posix_spawn_file_actions_addopen(&actions, 1, out.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        posix_spawn_file_actions_addopen(&actions, 2, err.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                         0644);
        pid_t pid = -1;
        const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
        posix_spawn_file_actions_destroy(&actions);
        REQUIRE(rc == 0);

        cli_result r;
        r.code = stackemu::test::wait_child(pid, command_ceiling).value_or(-1);
        r.out = slurp(out);
        r.err = slurp(err);
        r.j = json::parse(r.out, nullptr, false);
        std::string command = "stackemu";
        for (const auto& a : args)
            command += " " + a;
        UNSCOPED_INFO(command << " -> " << r.code << "\nstdout: " << r.out
                              << "\nstderr: " << r.err);
        CHECK(r.code != -1);  // did not hang
        return r;
    }

    void start(const std::string& ram_mib = "512") {
        auto r = run({"start", "--image", (dir / "base.qcow2").string(), "--accel", "tcg", "--ram",
                      ram_mib, "--cpus", "1", "--ready-timeout", "60", "--quiet"});
        REQUIRE(r.code == 0);
    }
    void stop() {
        auto r = run({"stop"});
        REQUIRE((r.code == 0 || r.code == 4));
        for (pid_t pid : fakes())
            stackemu::test::wait_gone(pid, std::chrono::seconds(30));
        REQUIRE(fakes().empty());
    }
};

// The snapshots `list --json` shows, by name.
json listed(sandbox& sb) {
    auto r = sb.run({"snapshot", "list", "--json"});
    REQUIRE(r.code == 0);
    REQUIRE(r.j.is_object());
    json by_name = json::object();
    for (const auto& s : r.j["snapshots"])
        by_name[s["name"].get<std::string>()] = s;
    return by_name;
}

}  // namespace

TEST_CASE("stackemu snapshot: live save list load delete with --json and exit codes",
          "[snapshot][cli]") {
    sandbox sb;
    sb.start();

    auto saved = sb.run({"snapshot", "save", "clean", "--json"});
    REQUIRE(saved.code == snap_exit::ok);
    CHECK(saved.j["ok"] == true);
    CHECK(saved.j["running"] == true);
    CHECK(saved.j["method"] == "qmp-job");
    CHECK(saved.j["vm_state"] == true);
    CHECK(saved.j["qemu_status"] == "running");
    CHECK(fs::exists(sb.vm_dir() / "snapshots.json"));

    auto l = listed(sb);
    REQUIRE(l.contains("clean"));
    CHECK(l["clean"]["vm_state"] == true);
    CHECK(l["clean"]["vm_state_size"].get<std::uint64_t>() > 0);
    CHECK(l["clean"]["compatible"] == true);
    CHECK(l["clean"]["method"] == "qmp-job");
    CHECK(l["clean"]["fingerprint"]["ram_mib"] == "512");
    CHECK(l["clean"]["fingerprint"]["qemu_version"] == "7.2.22");

    auto again = sb.run({"snapshot", "save", "clean", "--json"});
    CHECK(again.code == snap_exit::exists);
    CHECK(again.j["ok"] == false);
    CHECK(again.j["error"]["code"] == "already_exists");
    CHECK(contains(again.err, "--replace"));
    auto replaced = sb.run({"snapshot", "save", "clean", "--replace", "--json"});
    CHECK(replaced.code == snap_exit::ok);
    CHECK(replaced.j["replaced"] == true);

    auto loaded = sb.run({"snapshot", "load", "clean", "--json"});
    CHECK(loaded.code == snap_exit::ok);
    CHECK(loaded.j["qemu_status"] == "running");
    auto human = sb.run({"snapshot", "load", "clean"});
    CHECK(human.code == snap_exit::ok);
    CHECK(contains(human.out, "loaded snapshot \"clean\" into the running VM"));

    auto missing = sb.run({"snapshot", "load", "nope", "--json"});
    CHECK(missing.code == snap_exit::not_found);
    CHECK(missing.j["error"]["code"] == "not_found");
    CHECK(contains(missing.err, "snapshot list"));

    for (const char* bad : {"a;b", "a b", "123", "a\nquit", "x.-/"}) {
        auto r = sb.run({"snapshot", "save", bad, "--json"});
        CHECK(r.code == snap_exit::usage);
        REQUIRE(r.j.is_object());
        CHECK(r.j["error"]["code"] == "invalid_argument");
    }
    // After `--` a leading dash reaches the name check (before it, CLI11 reads an option).
    auto dashed = sb.run({"snapshot", "save", "--json", "--", "-x"});
    CHECK(dashed.code == snap_exit::usage);
    CHECK(contains(dashed.err, "must start with a letter or digit"));
    auto too_long = sb.run({"snapshot", "save", std::string(65, 'a')});
    CHECK(too_long.code == snap_exit::usage);

    // A paused VM is snapshotted and loaded as it is, and stays paused.
    REQUIRE(sb.run({"pause"}).code == 0);
    auto paused_save = sb.run({"snapshot", "save", "paused", "--json"});
    CHECK(paused_save.code == snap_exit::ok);
    CHECK(paused_save.j["qemu_status"] == "paused");
    auto paused_load = sb.run({"snapshot", "load", "paused", "--json"});
    CHECK(paused_load.code == snap_exit::ok);
    CHECK(paused_load.j["qemu_status"] == "paused");
    CHECK(contains(paused_load.j.value("note", ""), "stays paused"));
    REQUIRE(sb.run({"resume"}).code == 0);
    CHECK(sb.run({"snapshot", "delete", "paused"}).code == snap_exit::ok);

    auto deleted = sb.run({"snapshot", "delete", "clean", "--json"});
    CHECK(deleted.code == snap_exit::ok);
    auto deleted_again = sb.run({"snapshot", "delete", "clean"});
    CHECK(deleted_again.code == snap_exit::not_found);
    CHECK(listed(sb).empty());
    auto plain = sb.run({"snapshot", "list"});
    CHECK(plain.code == 0);
    CHECK(contains(plain.out, "no snapshots (running)"));
    CHECK(json::parse(slurp(sb.vm_dir() / "snapshots.json"))["snapshots"].empty());

    auto events = slurp(sb.vm_dir() / "events.jsonl");
    CHECK(contains(events, "snapshot saved"));
    CHECK(contains(events, "snapshot loaded"));
    CHECK(contains(events, "snapshot deleted"));
    sb.stop();
}

TEST_CASE("stackemu snapshot: a failing job is surfaced with QEMU's text", "[snapshot][cli]") {
    sandbox sb;
    sb.fake["job_error"] = "Device 'disk0' is writable but does not support snapshots";
    sb.start();
    auto r = sb.run({"snapshot", "save", "clean", "--json"});
    CHECK(r.code == snap_exit::job_failed);
    CHECK(r.j["error"]["code"] == "job_failed");
    CHECK(contains(r.err, "snapshot-save failed"));
    CHECK(contains(r.err, "Device 'disk0' is writable but does not support snapshots"));
    // The VM runs on: a failed save restarts the CPUs.
    auto st = sb.run({"status", "--json"});
    CHECK(st.j["qemu_status"] == "running");
    sb.stop();
}

TEST_CASE("stackemu snapshot: a failed live load leaves the VM paused and says so",
          "[snapshot][cli]") {
    sandbox sb;
    // A snapshot the fake already holds (no stackemu record, hence --force).
    const auto table = sb.dir / "fake-snapshots.json";
    std::ofstream(table) << json{{"snapshots", json::array({json{{"tag", "old"},
                                                                 {"vm_state_size", 925696},
                                                                 {"date_sec", 1700000000},
                                                                 {"vm_clock_nsec", 5000000000}}})}}
                                .dump();
    sb.fake["state_file"] = table.string();
    sb.fake["job_error"] = "Unknown savevm section or instance 'virtio-rng' 0";
    sb.start();

    auto refused = sb.run({"snapshot", "load", "old"});
    CHECK(refused.code == snap_exit::incompatible);
    CHECK(contains(refused.err, "no fingerprint"));
    CHECK(contains(refused.err, "--force"));

    auto r = sb.run({"snapshot", "load", "old", "--force", "--json"});
    CHECK(r.code == snap_exit::job_failed);
    CHECK(contains(r.err, "left the VM stopped (status restore-vm)"));
    CHECK(contains(r.err, "Unknown savevm section"));
    CHECK(contains(r.err, "stackemu stop"));
    auto st = sb.run({"status", "--json"});
    CHECK(st.code != lifecycle::exit_code::ok);
    CHECK(st.j["qemu_status"] == "restore-vm");
    sb.stop();
}

TEST_CASE("stackemu snapshot: a job that never concludes ends at --timeout", "[snapshot][cli]") {
    sandbox sb;
    sb.fake["job_never_concludes"] = true;
    sb.start();
    const auto t0 = std::chrono::steady_clock::now();
    auto r = sb.run({"snapshot", "save", "clean", "--timeout", "1", "--json"});
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
    CHECK(r.code == snap_exit::job_failed);
    CHECK(contains(r.err, "did not conclude within 1000 ms; it was cancelled"));
    // Nothing is left that blocks the next command.
    auto l = sb.run({"snapshot", "list", "--json"});
    CHECK(l.code == 0);
    sb.stop();
}

TEST_CASE("stackemu snapshot: a disk-only snapshot is refused by a running VM", "[snapshot][cli]") {
    sandbox sb;
    const auto table = sb.dir / "fake-snapshots.json";
    std::ofstream(table) << json{{"snapshots", json::array({json{{"tag", "disk"},
                                                                 {"vm_state_size", 0},
                                                                 {"date_sec", 1700000000},
                                                                 {"vm_clock_nsec", 0}}})}}
                                .dump();
    sb.fake["state_file"] = table.string();
    sb.start();
    auto r = sb.run({"snapshot", "load", "disk", "--force"});
    CHECK(r.code == snap_exit::incompatible);
    CHECK(contains(r.err, "disk-only"));
    CHECK(contains(r.err, "stackemu stop"));
    sb.stop();
}

TEST_CASE("stackemu snapshot: a snapshot from another configuration is refused at once",
          "[snapshot][cli]") {
    sandbox sb;
    sb.fake["state_file"] = (sb.dir / "fake-snapshots.json").string();  // survives the restart
    sb.start();
    REQUIRE(sb.run({"snapshot", "save", "clean"}).code == 0);
    sb.stop();
    sb.start("640");

    const auto t0 = std::chrono::steady_clock::now();
    auto r = sb.run({"snapshot", "load", "clean", "--json"});
    CHECK(std::chrono::steady_clock::now() - t0 < 20s);
    CHECK(r.code == snap_exit::incompatible);
    CHECK(r.j["error"]["code"] == "incompatible");
    CHECK(contains(r.err, "RAM (MiB): snapshot 512, this VM 640"));
    auto l = listed(sb);
    REQUIRE(l.contains("clean"));
    CHECK(l["clean"]["compatible"] == false);
    REQUIRE(l["clean"]["differences"].size() == 1);
    CHECK(l["clean"]["differences"][0]["field"] == "RAM (MiB)");
    // The fake does not check device state itself: --force goes through.
    CHECK(sb.run({"snapshot", "load", "clean", "--force"}).code == 0);
    sb.stop();
}

TEST_CASE("stackemu snapshot: offline save list load delete on the overlay", "[snapshot][cli]") {
    sandbox sb;
    auto none = sb.run({"snapshot", "save", "early"});
    CHECK(none.code == snap_exit::error);
    CHECK(contains(none.err, "no overlay disk yet"));
    auto empty = sb.run({"snapshot", "list", "--json"});
    CHECK(empty.code == 0);
    CHECK(empty.j["snapshots"].empty());

    sb.start();
    sb.stop();
    auto saved = sb.run({"snapshot", "save", "offline-1", "--json"});
    REQUIRE(saved.code == snap_exit::ok);
    CHECK(saved.j["running"] == false);
    CHECK(saved.j["method"] == "qemu-img");
    CHECK(saved.j["vm_state"] == false);
    auto l = listed(sb);
    REQUIRE(l.contains("offline-1"));
    CHECK(l["offline-1"]["vm_state"] == false);
    CHECK(l["offline-1"]["compatible"] == true);
    CHECK(l["offline-1"]["fingerprint"]["build_id"] == "snap-test-1");
    auto human = sb.run({"snapshot", "list"});
    CHECK(contains(human.out, "disk-only"));

    CHECK(sb.run({"snapshot", "save", "offline-1"}).code == snap_exit::exists);
    auto loaded = sb.run({"snapshot", "load", "offline-1", "--json"});
    CHECK(loaded.code == snap_exit::ok);
    CHECK(loaded.j["method"] == "qemu-img");
    CHECK(sb.run({"snapshot", "load", "nope"}).code == snap_exit::not_found);
    CHECK(sb.run({"snapshot", "delete", "offline-1"}).code == snap_exit::ok);
    CHECK(sb.run({"snapshot", "delete", "offline-1"}).code == snap_exit::not_found);
    CHECK(listed(sb).empty());
}

TEST_CASE("stackemu snapshot: busy while another command holds the instance", "[snapshot][cli]") {
    sandbox sb;
    sb.start();
    sb.stop();
    const auto lock_path = sb.vm_dir() / "lock";
    const int fd = ::open(lock_path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    struct flock fl {};
    fl.l_type = F_WRLCK;
    fl.l_whence = SEEK_SET;
    REQUIRE(::fcntl(fd, F_OFD_SETLK, &fl) == 0);
    auto r = sb.run({"snapshot", "save", "x1", "--json"});
    CHECK(r.code == snap_exit::busy);
    CHECK(r.j["error"]["code"] == "busy");
    CHECK(sb.run({"snapshot", "list"}).code == snap_exit::busy);
    ::close(fd);
    CHECK(sb.run({"snapshot", "save", "x1"}).code == snap_exit::ok);
}

TEST_CASE("stackemu snapshot: QEMU before 6.0 goes through HMP savevm", "[snapshot][cli]") {
    sandbox sb;
    sb.fake["version"] = "5.2.0";
    sb.start();
    auto saved = sb.run({"snapshot", "save", "old-qemu", "--json"});
    REQUIRE(saved.code == snap_exit::ok);
    CHECK(saved.j["method"] == "hmp");
    auto l = listed(sb);
    REQUIRE(l.contains("old-qemu"));
    CHECK(l["old-qemu"]["compatible"] == true);
    CHECK(l["old-qemu"]["fingerprint"]["qemu_version"] == "5.2.0");
    CHECK(sb.run({"snapshot", "load", "old-qemu"}).code == snap_exit::ok);
    CHECK(sb.run({"snapshot", "load", "gone"}).code == snap_exit::not_found);
    CHECK(sb.run({"snapshot", "delete", "old-qemu"}).code == snap_exit::ok);
    CHECK(listed(sb).empty());
    sb.stop();
}

TEST_CASE("stackemu snapshot: HMP's error text is checked", "[snapshot][cli]") {
    sandbox sb;
    sb.fake["version"] = "5.2.0";
    sb.fake["job_error"] = "Device 'disk0' does not support VM state snapshots";
    sb.start();
    auto r = sb.run({"snapshot", "save", "x1", "--json"});
    CHECK(r.code == snap_exit::job_failed);
    CHECK(contains(r.err, "savevm failed"));
    CHECK(contains(r.err, "does not support VM state snapshots"));
    sb.stop();
}
