// `stackemu exec` and `stackemu cp` against the fake guest agent: output and exit codes, stdin,
// timeouts, --stream, copies both ways with their checksums, and the failures that must leave
// the destination alone.
#include <sys/socket.h>
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <random>
#include <set>

#include "common/base64.hpp"
#include "fake-qemu/agent.hpp"
#include "lifecycle/guest_exec.hpp"
#include "lifecycle/instance_lock.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"
#include "support/scripted_peer.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using namespace std::chrono_literals;
namespace qga = stackemu::qmp::qga;
namespace fs = std::filesystem;

namespace {

qga::client_options fast_client() {
    qga::client_options o;
    o.sync_timeout = 2000ms;
    o.command_timeout = 2000ms;
    o.no_reply_grace = 100ms;
    return o;
}

agent_options fast() {
    agent_options o;
    o.connect_timeout = 2000ms;
    o.sync_timeout = 2000ms;
    o.command_timeout = 2000ms;
    o.first_poll = 5ms;
    o.max_poll = 40ms;
    o.kill_budget = 300ms;
    return o;
}

// The io_context outlives the agent, whose destructor closes its socket.
struct channel {
    asio::io_context ctx;
    fake::agent agent;

    explicit channel(fake::agent_options options = {}) : agent(std::move(options)) {}

    qga::client open() {
        auto [mine, theirs] = test::socket_pair(ctx);
        asio::co_spawn(ctx, agent.serve(std::move(theirs)), [](std::exception_ptr e) {
            if (e) std::rethrow_exception(e);
        });
        return qga::client::attach(std::move(mine), fast_client());
    }

    template <typename T>
    T run(asio::awaitable<T> task) {
        return test::run(ctx, std::move(task), 30s);
    }
};

// The guest utilities cp uses, acting on the fake agent's files.
struct guest_tools {
    fake::agent& agent;
    std::set<std::string> dirs;
    bool sha256sum = true;
    bool lying_sha256sum = false;
    std::vector<std::vector<std::string>> chmods;

    explicit guest_tools(fake::agent& a) : agent(a) {}

    void install() {
        using args_t = const std::vector<std::string>&;
        agent.add_program("test", [this](args_t args, const std::string&) {
            const bool dir = args.size() == 2 && args[0] == "-d" && dirs.contains(args[1]);
            return fake::program_result{dir ? 0 : 1, std::nullopt, {}, {}};
        });
        if (sha256sum)
            agent.add_program("sha256sum", [this](args_t args, const std::string&) {
                auto bytes = args.size() == 1 ? agent.file(args[0]) : std::nullopt;
                if (!bytes)
                    return fake::program_result{
                        1, std::nullopt, {}, "sha256sum: no such file or directory\n"};
                const std::string sum = sha256_hex(lying_sha256sum ? "something else" : *bytes);
                return fake::program_result{0, std::nullopt, sum + "  " + args[0] + "\n", {}};
            });
        agent.add_program("chmod", [this](args_t args, const std::string&) {
            chmods.push_back(args);
            return fake::program_result{};
        });
        agent.add_program("mv", [this](args_t args, const std::string&) {
            if (args.size() != 4 || args[0] != "-f" || args[1] != "-T")
                return fake::program_result{1, std::nullopt, {}, "mv: unexpected arguments\n"};
            auto bytes = agent.file(args[2]);
            if (!bytes) return fake::program_result{1, std::nullopt, {}, "mv: no such file\n"};
            agent.set_file(args[3], *bytes);
            agent.remove_file(args[2]);
            return fake::program_result{};
        });
        agent.add_program("rm", [this](args_t args, const std::string&) {
            for (std::size_t i = 1; i < args.size(); ++i)
                agent.remove_file(args[i]);
            return fake::program_result{};
        });
    }

    std::vector<std::string> leftovers() const {
        std::vector<std::string> out;
        for (const auto& name : agent.file_names())
            if (name.find(".stackemu-") != std::string::npos) out.push_back(name);
        return out;
    }
};

struct temp_dir {
    fs::path path;
    temp_dir() {
        static int counter = 0;
        path = fs::temp_directory_path() /
               ("stackemu-gexec-" + std::to_string(::getpid()) + "-" + std::to_string(counter++));
        fs::remove_all(path);
        fs::create_directories(path);
    }
    ~temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    std::vector<std::string> names() const {
        std::vector<std::string> out;
        for (const auto& e : fs::directory_iterator(path))
            out.push_back(e.path().filename().string());
        std::ranges::sort(out);
        return out;
    }
};

std::string random_bytes(std::size_t n) {
    std::mt19937 gen(12345);
    std::string out(n, '\0');
    for (auto& c : out)
        c = static_cast<char>(gen() & 0xff);
    return out;
}

void write_host_file(const fs::path& p, std::string_view bytes) {
    std::ofstream f(p, std::ios::binary);
    f.write(bytes.data(), static_cast<std::streamsize>(bytes.size()));
}

std::string read_host_file(const fs::path& p) {
    std::ifstream f(p, std::ios::binary);
    return std::string(std::istreambuf_iterator<char>(f), {});
}

std::size_t count(const std::vector<std::string>& names, std::string_view name) {
    return static_cast<std::size_t>(std::ranges::count(names, name));
}

bool contains(std::string_view text, std::string_view part) {
    return text.find(part) != std::string_view::npos;
}

}  // namespace

// ---- exec ----

TEST_CASE("exec passes the command's stdout and stderr on and returns its exit code") {
    channel t;
    auto c = t.open();
    std::string out, err;
    guest_command cmd;
    cmd.argv = {"/bin/sh", "-c", "echo out; echo oops >&2; exit 3"};
    cmd.on_stdout = [&](std::string_view b) { out += b; };
    cmd.on_stderr = [&](std::string_view b) { err += b; };
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_OK(r);
    CHECK(r->exit_code == std::optional<int>(3));
    CHECK(r->status() == 3);
    CHECK(r->pid == 4242);
    CHECK(out == "out\n");
    CHECK(err == "oops\n");
    c.close();
    REQUIRE(test::drains(t.ctx));
    const auto& sent = t.agent.received();
    REQUIRE(sent.size() >= 3);
    CHECK(sent[1]["execute"] == "guest-exec");
    CHECK(sent[1]["arguments"]["path"] == "/bin/sh");
    CHECK(sent[1]["arguments"]["capture-output"] == true);
    CHECK_FALSE(sent[1]["arguments"].contains("input-data"));
}

TEST_CASE("a command killed by a signal gives 128 plus the signal") {
    channel t;
    auto c = t.open();
    guest_command cmd;
    cmd.argv = {"/bin/sh", "-c", "kill -9 $$"};
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_OK(r);
    CHECK(r->signal == std::optional<int>(9));
    CHECK_FALSE(r->exit_code.has_value());
    CHECK(r->status() == 137);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("stdin given to exec reaches the command byte for byte") {
    channel t;
    auto c = t.open();
    const std::string input("line\n\0bin\xff", 10);
    std::string out;
    guest_command cmd;
    cmd.argv = {"/bin/cat"};
    cmd.input = input;
    cmd.on_stdout = [&](std::string_view b) { out += b; };
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_OK(r);
    CHECK(r->status() == 0);
    CHECK(out == input);
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received().at(1)["arguments"]["input-data"] == base64_encode(input));
}

TEST_CASE("exec of a program the guest lacks is not_found and names it") {
    channel t;
    auto c = t.open();
    guest_command cmd;
    cmd.argv = {"no-such-tool", "--flag"};
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::not_found);
    CHECK(contains(r.error().message, "the guest has no program `no-such-tool`"));
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("exec without a command is refused before anything is sent") {
    channel t;
    auto c = t.open();
    guest_command cmd;
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::invalid_argument);
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(t.agent.received().empty());
}

TEST_CASE("a command that never ends times out and the error says it may still run") {
    fake::agent_options forever;
    forever.exec_duration = 600s;
    channel t(forever);
    auto c = t.open();
    guest_command cmd;
    cmd.argv = {"/bin/true"};
    cmd.timeout = 200ms;
    const auto t0 = std::chrono::steady_clock::now();
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    const auto took = std::chrono::steady_clock::now() - t0;
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::timeout);
    CHECK(contains(r.error().message, "`/bin/true` did not finish within 0.2 s"));
    // The fake guest has no kill: stackemu says what that means.
    CHECK(contains(r.error().message, "it may still run in the guest as pid 4242"));
    CHECK(took < 10s);
    c.close();
    REQUIRE(test::drains(t.ctx));
    const auto names = t.agent.received_names();
    CHECK(count(names, "guest-exec") == 2);  // the command, then the guest's kill
}

TEST_CASE("stream mode delivers output while the command still runs and removes its files") {
    fake::agent_options slow;
    slow.exec_duration = 400ms;
    channel t(slow);
    guest_tools tools(t.agent);
    tools.install();
    // The guest's /bin/sh as --stream uses it: it redirects into the files named by $1 and $2.
    std::vector<std::string> shell_args;
    t.agent.add_program("/bin/sh", [&](const std::vector<std::string>& args, const std::string&) {
        shell_args = args;
        if (args.size() >= 6) {
            t.agent.set_file(args[3], "early\n");
            t.agent.set_file(args[4], "warning\n");
        }
        return fake::program_result{5, std::nullopt, {}, {}};
    });
    auto c = t.open();
    std::string out, err;
    std::size_t polls_at_first_output = 0;
    guest_command cmd;
    cmd.argv = {"my tool", "$(rm -rf /)", "; echo"};
    cmd.stream = true;
    cmd.on_stdout = [&](std::string_view b) {
        if (out.empty())
            polls_at_first_output = count(t.agent.received_names(), "guest-exec-status");
        out += b;
    };
    cmd.on_stderr = [&](std::string_view b) { err += b; };
    auto r = t.run(run_guest_command(c, std::move(cmd), fast()));
    REQUIRE_OK(r);
    CHECK(r->status() == 5);
    CHECK(out == "early\n");
    CHECK(err == "warning\n");
    c.close();
    REQUIRE(test::drains(t.ctx));
    // Output came at the first poll; the exit was only seen polls later.
    CHECK(polls_at_first_output >= 1);
    CHECK(polls_at_first_output < count(t.agent.received_names(), "guest-exec-status"));
    // The shell's script is fixed; the command's words are only ever its positional arguments.
    REQUIRE(shell_args.size() == 8);
    CHECK(shell_args[0] == "-c");
    CHECK(shell_args[1] == "o=$1; e=$2; shift 2; exec \"$@\" >\"$o\" 2>\"$e\"");
    CHECK(std::vector<std::string>(shell_args.begin() + 5, shell_args.end()) ==
          std::vector<std::string>{"my tool", "$(rm -rf /)", "; echo"});
    CHECK(tools.leftovers().empty());
    CHECK(t.agent.file_names().empty());
}

TEST_CASE("a mute agent is a clear error and a paused VM says so") {
    channel t;
    t.agent.set_silent(true);
    auto c = t.open();
    auto mute = t.run(check_agent(c, 200ms));
    REQUIRE_FALSE(mute.has_value());
    CHECK(mute.error().code == errc::agent_unavailable);
    CHECK(mute.error().message ==
          "the guest agent does not answer (is qemu-guest-agent running in the guest?)");
    auto paused = t.run(check_agent(c, 200ms, true));
    REQUIRE_FALSE(paused.has_value());
    CHECK(paused.error().message ==
          "the guest agent does not answer: the VM is paused (`stackemu resume` first)");
    c.close();
    REQUIRE(test::drains(t.ctx));
}

// ---- cp ----

TEST_CASE("cp into the guest writes the bytes in chunks checked by the guest's sha256sum") {
    channel t;
    guest_tools tools(t.agent);
    tools.install();
    temp_dir host;
    const std::string bytes = random_bytes(200 * 1024 + 7);
    write_host_file(host.path / "blob", bytes);
    fs::permissions(host.path / "blob",
                    fs::perms::owner_read | fs::perms::owner_write | fs::perms::group_read);
    auto c = t.open();
    auto r = t.run(copy_to_guest(c, (host.path / "blob").string(), "/data/blob", fast()));
    REQUIRE_OK(r);
    CHECK(r->bytes == bytes.size());
    CHECK(r->sha256 == sha256_hex(bytes));
    CHECK(r->verified_by == "sha256sum in the guest");
    CHECK(r->destination == "guest:/data/blob");
    CHECK(t.agent.file("/data/blob") == bytes);
    CHECK(tools.leftovers().empty());
    REQUIRE(tools.chmods.size() == 1);
    CHECK(tools.chmods[0][0] == "640");
    c.close();
    REQUIRE(test::drains(t.ctx));
    // 200 KiB in 48 KiB chunks.
    CHECK(count(t.agent.received_names(), "guest-file-write") == 5);
}

TEST_CASE("cp into a guest directory keeps the file's name") {
    channel t;
    guest_tools tools(t.agent);
    tools.dirs = {"/data"};
    tools.install();
    temp_dir host;
    write_host_file(host.path / "notes.txt", "hello\n");
    auto c = t.open();
    auto r = t.run(copy_to_guest(c, (host.path / "notes.txt").string(), "/data", fast()));
    REQUIRE_OK(r);
    CHECK(r->destination == "guest:/data/notes.txt");
    CHECK(t.agent.file("/data/notes.txt") == "hello\n");
    auto slash = t.run(copy_to_guest(c, (host.path / "notes.txt").string(), "/srv/", fast()));
    REQUIRE_OK(slash);
    CHECK(t.agent.file("/srv/notes.txt") == "hello\n");
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("cp into the guest with a checksum mismatch leaves the destination as it was") {
    channel t;
    guest_tools tools(t.agent);
    tools.lying_sha256sum = true;
    tools.install();
    t.agent.set_file("/data/blob", "the old contents");
    temp_dir host;
    write_host_file(host.path / "blob", random_bytes(1000));
    auto c = t.open();
    auto r = t.run(copy_to_guest(c, (host.path / "blob").string(), "/data/blob", fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::checksum_mismatch);
    CHECK(contains(r.error().message, "guest:/data/blob was left as it was"));
    CHECK(t.agent.file("/data/blob") == "the old contents");
    CHECK(tools.leftovers().empty());
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("cp into the guest reads the copy back when the guest has no sha256sum") {
    channel t;
    guest_tools tools(t.agent);
    tools.sha256sum = false;
    tools.install();
    temp_dir host;
    const std::string bytes = random_bytes(100 * 1024);
    write_host_file(host.path / "blob", bytes);
    auto c = t.open();
    auto r = t.run(copy_to_guest(c, (host.path / "blob").string(), "/data/blob", fast()));
    REQUIRE_OK(r);
    CHECK(r->verified_by == "read back");
    CHECK(t.agent.file("/data/blob") == bytes);
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("cp of a missing host file sends nothing to write") {
    channel t;
    auto c = t.open();
    temp_dir host;
    auto r = t.run(copy_to_guest(c, (host.path / "nope").string(), "/data/x", fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::not_found);
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(count(t.agent.received_names(), "guest-file-open") == 0);
}

TEST_CASE("cp out of the guest gives the same bytes checked by the guest's sha256sum") {
    channel t;
    guest_tools tools(t.agent);
    tools.install();
    const std::string bytes = random_bytes(150 * 1024 + 3);
    t.agent.set_file("/data/dump.sql", bytes);
    temp_dir host;
    auto c = t.open();
    auto r = t.run(copy_from_guest(c, "/data/dump.sql", host.path.string(), fast()));
    REQUIRE_OK(r);
    CHECK(r->bytes == bytes.size());
    CHECK(r->verified_by == "sha256sum in the guest");
    CHECK(r->source == "guest:/data/dump.sql");
    CHECK(r->destination == (host.path / "dump.sql").string());
    CHECK(read_host_file(host.path / "dump.sql") == bytes);
    CHECK(host.names() == std::vector<std::string>{"dump.sql"});
    c.close();
    REQUIRE(test::drains(t.ctx));
    CHECK(count(t.agent.received_names(), "guest-file-close") == 1);
}

TEST_CASE("cp of a missing guest file is a clear error and the host file is untouched") {
    channel t;
    guest_tools tools(t.agent);
    tools.install();
    temp_dir host;
    write_host_file(host.path / "keep", "mine");
    auto c = t.open();
    auto r = t.run(copy_from_guest(c, "/no/such/file", (host.path / "keep").string(), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::not_found);
    CHECK(r.error().message == "guest:/no/such/file does not exist");
    CHECK(read_host_file(host.path / "keep") == "mine");
    CHECK(host.names() == std::vector<std::string>{"keep"});
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("cp out of the guest with a checksum mismatch keeps the host file") {
    channel t;
    guest_tools tools(t.agent);
    tools.lying_sha256sum = true;
    tools.install();
    t.agent.set_file("/data/a", "new bytes");
    temp_dir host;
    write_host_file(host.path / "a", "old bytes");
    auto c = t.open();
    auto r = t.run(copy_from_guest(c, "/data/a", (host.path / "a").string(), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::checksum_mismatch);
    CHECK(read_host_file(host.path / "a") == "old bytes");
    CHECK(host.names() == std::vector<std::string>{"a"});
    c.close();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("cp out of a guest without sha256sum checks the size") {
    channel t;
    guest_tools tools(t.agent);
    tools.sha256sum = false;
    tools.install();
    t.agent.set_file("/data/a", "contents\n");
    temp_dir host;
    auto c = t.open();
    auto r = t.run(copy_from_guest(c, "/data/a", (host.path / "b").string(), fast()));
    REQUIRE_OK(r);
    CHECK(r->verified_by == "size");
    CHECK(read_host_file(host.path / "b") == "contents\n");
    c.close();
    REQUIRE(test::drains(t.ctx));
}

// ---- on an instance ----

namespace {

// An instance whose run directory is a temporary one; "running" means its qmp.sock exists.
struct fake_instance {
    temp_dir dir;
    instance inst;

    fake_instance() {
        settings s;
        s.run_dir = dir.path;
        auto i = open_instance(s);
        REQUIRE_OK(i);
        inst = std::move(*i);
        fs::create_directories(inst.paths.vm_dir);
    }
    void mark_running() const { write_host_file(inst.paths.qmp_socket, ""); }
};

asio::awaitable<void> serve_one(asio::local::stream_protocol::acceptor& acceptor,
                                fake::agent& agent) {
    auto peer = co_await acceptor.async_accept(asio::use_awaitable);
    qmp::stream_socket s(peer.get_executor());
    s.assign(asio::generic::stream_protocol(AF_UNIX, SOCK_STREAM), peer.release());
    co_await agent.serve(std::move(s));
}

}  // namespace

TEST_CASE("exec on a stopped instance says to start it") {
    fake_instance f;
    asio::io_context ctx;
    guest_command cmd;
    cmd.argv = {"uname"};
    auto r = test::run(ctx, guest_exec(f.inst, std::move(cmd), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::wrong_state);
    CHECK(r.error().message == "the emulator is not running: `stackemu start` first");
}

TEST_CASE("exec on an instance goes through its agent socket under the instance lock") {
    channel t;
    fake_instance f;
    f.mark_running();
    asio::local::stream_protocol::acceptor acceptor(
        t.ctx, asio::local::stream_protocol::endpoint(f.inst.paths.qga_socket.string()));
    asio::co_spawn(t.ctx, serve_one(acceptor, t.agent), asio::detached);
    std::string out;
    guest_command cmd;
    cmd.argv = {"/bin/echo", "hello"};
    cmd.on_stdout = [&](std::string_view b) { out += b; };
    auto r = t.run(guest_exec(f.inst, std::move(cmd), fast()));
    REQUIRE_OK(r);
    CHECK(out == "hello\n");
    // The lock was released: another command takes it at once.
    auto again = try_acquire(f.inst.paths.lock.string(), "test");
    CHECK_OK(again);
    t.agent.stop();
    REQUIRE(test::drains(t.ctx));
}

TEST_CASE("exec while another stackemu command holds the instance is busy") {
    fake_instance f;
    f.mark_running();
    auto held = try_acquire(f.inst.paths.lock.string(), "stop");
    REQUIRE_OK(held);
    asio::io_context ctx;
    guest_command cmd;
    cmd.argv = {"uname"};
    auto r = test::run(ctx, guest_exec(f.inst, std::move(cmd), fast()));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::busy);
    CHECK(contains(r.error().what(), "stop"));
}

TEST_CASE("cp on an instance whose agent is mute says so") {
    channel t;
    t.agent.set_silent(true);
    fake_instance f;
    f.mark_running();
    asio::local::stream_protocol::acceptor acceptor(
        t.ctx, asio::local::stream_protocol::endpoint(f.inst.paths.qga_socket.string()));
    asio::co_spawn(t.ctx, serve_one(acceptor, t.agent), asio::detached);
    write_host_file(f.dir.path / "x", "x");
    copy_spec spec{copy_direction::to_guest, (f.dir.path / "x").string(), "/data/x"};
    auto options = fast();
    options.sync_timeout = 300ms;
    auto r = t.run(guest_copy(f.inst, spec, options));
    REQUIRE_FALSE(r.has_value());
    CHECK(r.error().code == errc::agent_unavailable);
    CHECK(r.error().message ==
          "the guest agent does not answer (is qemu-guest-agent running in the guest?)");
    t.agent.stop();
    REQUIRE(test::drains(t.ctx));
}
