// Round-trip latency and pipelined throughput of query-status against a real QEMU, next to a
// plain blocking write/read loop sending the shortest possible command on the same monitor in
// the same run, also after --age commands (100,000) on one connection. Prints JSON.
#include <fmt/format.h>
#include <spawn.h>
#include <sys/socket.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <unistd.h>

#include <algorithm>
#include <asio.hpp>
#include <chrono>
#include <cstdio>
#include <cstdlib>
#include <filesystem>
#include <nlohmann/json.hpp>
#include <string>
#include <vector>

#include "qmp/client.hpp"
#include "qmp/commands.hpp"

namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;
using namespace stackemu;
using nlohmann::json;

extern char** environ;

namespace {

double micros(clock_type::duration d) {
    return std::chrono::duration<double, std::micro>(d).count();
}

struct summary {
    double p50 = 0, p99 = 0, mean = 0, rate = 0;
};

summary summarise(std::vector<double> samples, double total_seconds) {
    std::sort(samples.begin(), samples.end());
    summary s;
    auto at = [&](double q) {
        return samples[std::min(samples.size() - 1, std::size_t(q * samples.size()))];
    };
    s.p50 = at(0.50);
    s.p99 = at(0.99);
    double sum = 0;
    for (double v : samples)
        sum += v;
    s.mean = sum / samples.size();
    s.rate = samples.size() / total_seconds;
    return s;
}

json to_json(const summary& s) {
    return {{"p50_us", s.p50}, {"p99_us", s.p99}, {"mean_us", s.mean}, {"rate_per_s", s.rate}};
}

// The shortest command QEMU accepts: no id, no whitespace, no newline (QEMU 7.2 reads monitor
// input a byte at a time, ~14 us a byte, so the baseline must not carry a byte it could drop).
constexpr std::string_view shortest_query_status = R"({"execute":"query-status"})";

// The baseline: one blocking socket, write a command, read until the reply's CRLF.
struct blocking_monitor {
    int fd = -1;
    std::string pending;

    explicit blocking_monitor(const std::string& path) {
        fd = ::socket(AF_UNIX, SOCK_STREAM, 0);
        sockaddr_un addr{};
        addr.sun_family = AF_UNIX;
        std::snprintf(addr.sun_path, sizeof(addr.sun_path), "%s", path.c_str());
        if (::connect(fd, reinterpret_cast<sockaddr*>(&addr), sizeof(addr)) != 0) std::exit(3);
        read_message();  // greeting
        roundtrip("{\"execute\":\"qmp_capabilities\"}\n");
    }
    ~blocking_monitor() { ::close(fd); }

    std::string read_message() {
        for (;;) {
            if (auto end = pending.find("\r\n"); end != std::string::npos) {
                std::string msg = pending.substr(0, end);
                pending.erase(0, end + 2);
                return msg;
            }
            char buf[4096];
            ssize_t n = ::read(fd, buf, sizeof(buf));
            if (n <= 0) std::exit(4);
            pending.append(buf, std::size_t(n));
        }
    }
    void roundtrip(std::string_view command) {
        if (::write(fd, command.data(), command.size()) != ssize_t(command.size())) std::exit(5);
        read_message();
    }
};

[[noreturn]] void die(const error& e) {
    std::fprintf(stderr, "qmp_rtt: %s\n", e.what().c_str());
    std::exit(1);
}

// Errors end the program from inside: GCC 12 mishandles exceptions leaving coroutines.
// Sequential round trips, after `age` untimed ones on the same connection. `longest` is the
// longest command the client wrote while it was timed.
asio::awaitable<std::vector<double>> client_sequential(std::string path, int n, int age,
                                                       std::size_t& longest) {
    // GCC 12 destroys braced temporaries inside a co_await expression twice: name them first.
    const qmp::endpoint ep = qmp::unix_endpoint{path};
    bool timed = false;
    qmp::client_options options;
    options.trace = [&](bool outgoing, std::string_view text) {
        if (outgoing && timed) longest = std::max(longest, text.size());
    };
    auto c = co_await qmp::client::connect(ep, options);
    if (!c) die(c.error());
    for (int i = 0; i < age; ++i)
        if (auto st = co_await qmp::query_status(*c); !st) die(st.error());
    timed = true;
    std::vector<double> samples;
    samples.reserve(n);
    for (int i = 0; i < n; ++i) {
        auto t0 = clock_type::now();
        auto st = co_await qmp::query_status(*c);
        if (!st) die(st.error());
        samples.push_back(micros(clock_type::now() - t0));
    }
    co_return samples;
}

asio::awaitable<double> client_pipelined(std::string path, int n, bool oob) {
    // GCC 12 destroys braced temporaries inside a co_await expression twice: name them first.
    const qmp::endpoint ep = qmp::unix_endpoint{path};
    qmp::client_options options;
    options.request_oob = oob;
    auto c = co_await qmp::client::connect(ep, options);
    if (!c) die(c.error());
    auto ex = co_await asio::this_coro::executor;
    asio::steady_timer all_done(ex, clock_type::time_point::max());
    int done = 0, failed = 0;
    // Eight workers, each issuing commands back to back: eight in flight at all times.
    auto worker = [&](int count) -> asio::awaitable<void> {
        for (int i = 0; i < count; ++i)
            if (!co_await qmp::query_status(*c)) ++failed;
        if (++done == 8) all_done.cancel();
    };
    auto t0 = clock_type::now();
    for (int w = 0; w < 8; ++w)
        asio::co_spawn(ex, worker(n / 8), asio::detached);
    asio::error_code ec;
    co_await all_done.async_wait(asio::redirect_error(asio::use_awaitable, ec));
    if (failed) die(make_error(errc::internal, "pipelined commands failed"));
    co_return std::chrono::duration<double>(clock_type::now() - t0).count();
}

// One coroutine, so the client (and its reader) is gone when run() returns.
asio::awaitable<std::string> version_then_quit(std::string path) {
    const qmp::endpoint ep = qmp::unix_endpoint{path};
    auto c = co_await qmp::client::connect(ep);
    if (!c) die(c.error());
    std::string version = c->version().to_string();
    auto quit = co_await qmp::quit(*c);
    if (!quit) die(quit.error());
    co_return version;
}

template <typename T>
T run(asio::io_context& ctx, asio::awaitable<T> task) {
    auto fut = asio::co_spawn(ctx, std::move(task), asio::use_future);
    ctx.restart();
    ctx.run();
    return fut.get();
}

}  // namespace

int main(int argc, char** argv) {
    int rounds = 5, per_round = 1000, age = 100000;
    std::string qemu = "qemu-system-x86_64";
    for (int i = 1; i < argc; ++i) {
        std::string a = argv[i];
        if (a == "--rounds" && i + 1 < argc)
            rounds = std::atoi(argv[++i]);
        else if (a == "--per-round" && i + 1 < argc)
            per_round = std::atoi(argv[++i]);
        else if (a == "--qemu" && i + 1 < argc)
            qemu = argv[++i];
        else if (a == "--age" && i + 1 < argc)
            age = std::atoi(argv[++i]);
        else {
            std::fprintf(stderr,
                         "usage: qmp_rtt [--rounds N] [--per-round N] [--age N] [--qemu BINARY]\n");
            return 2;
        }
    }
    auto dir = fs::temp_directory_path() / fmt::format("stackemu-rtt-{}", ::getpid());
    fs::create_directories(dir);
    const std::string sock = (dir / "qmp.sock").string();
    std::string qmp_arg = "unix:" + sock + ",server=on,wait=off";
    std::vector<std::string> args = {qemu,   "-M",   "none",  "-nodefaults", "-display",
                                     "none", "-qmp", qmp_arg, "-daemonize"};
    std::vector<char*> cargs;
    for (auto& a : args)
        cargs.push_back(a.data());
    cargs.push_back(nullptr);
    pid_t launcher = 0;
    if (posix_spawnp(&launcher, qemu.c_str(), nullptr, nullptr, cargs.data(), environ) != 0)
        return 3;
    int status = 0;
    ::waitpid(launcher, &status, 0);  // -daemonize: returns once the socket listens
    if (!WIFEXITED(status) || WEXITSTATUS(status) != 0) return 3;

    asio::io_context ctx;
    std::vector<double> blocking, sequential, aged_blocking, aged;
    std::size_t longest_command = 0, longest_aged_command = 0;
    double blocking_seconds = 0, sequential_seconds = 0, pipelined_seconds = 0,
           pipelined_oob_seconds = 0;
    std::string version;
    // Interleave the two so that drift on the machine affects both alike.
    for (int r = 0; r < rounds; ++r) {
        {
            blocking_monitor mon(sock);
            auto t0 = clock_type::now();
            for (int i = 0; i < per_round; ++i) {
                auto s0 = clock_type::now();
                mon.roundtrip(shortest_query_status);
                blocking.push_back(micros(clock_type::now() - s0));
            }
            blocking_seconds += std::chrono::duration<double>(clock_type::now() - t0).count();
        }
        {
            auto t0 = clock_type::now();
            auto samples = run(ctx, client_sequential(sock, per_round, 0, longest_command));
            sequential_seconds += std::chrono::duration<double>(clock_type::now() - t0).count();
            sequential.insert(sequential.end(), samples.begin(), samples.end());
        }
        pipelined_seconds += run(ctx, client_pipelined(sock, per_round, false));
        pipelined_oob_seconds += run(ctx, client_pipelined(sock, per_round, true));
    }
    // After `age` commands on one connection each (ids must not have grown), again next to
    // the raw loop, in one round: aging takes ~45 s per 100,000 commands.
    {
        blocking_monitor mon(sock);
        for (int i = 0; i < age; ++i)
            mon.roundtrip(shortest_query_status);
        for (int i = 0; i < per_round; ++i) {
            auto s0 = clock_type::now();
            mon.roundtrip(shortest_query_status);
            aged_blocking.push_back(micros(clock_type::now() - s0));
        }
    }
    aged = run(ctx, client_sequential(sock, per_round, age, longest_aged_command));
    version = run(ctx, version_then_quit(sock));
    fs::remove_all(dir);

    auto base = summarise(blocking, blocking_seconds);
    auto seq = summarise(sequential, sequential_seconds);
    // Rates are not compared after aging: only the p50s are.
    auto aged_base = summarise(aged_blocking, 1);
    auto aged_seq = summarise(aged, 1);
    const double total = double(rounds) * per_round;
    // With oob negotiated QEMU keeps reading while it works (it suspends the monitor only when
    // its queue is full); without it QEMU 7.2 stops reading after every command until it has
    // answered, so eight in flight cannot overlap anything. Both are reported; the target is
    // judged on the client's pipelined mode, which negotiates oob when QEMU offers it.
    const double pipelined_rate = total / pipelined_oob_seconds;
    const double pipelined_rate_without_oob = total / pipelined_seconds;
    json out = {
        {"benchmark", "qmp_rtt"},
        {"qemu", version},
        {"commands_per_mode", total},
        {"blocking_baseline", to_json(base)},
        {"client_sequential", to_json(seq)},
        {"client_pipelined_8_oob", {{"rate_per_s", pipelined_rate}}},
        {"client_pipelined_8_without_oob", {{"rate_per_s", pipelined_rate_without_oob}}},
        {"sequential_p50_ratio", seq.p50 / base.p50},
        {"commands_before_aged_run", age},
        {"aged_blocking_p50_us", aged_base.p50},
        {"aged_client_sequential_p50_us", aged_seq.p50},
        {"aged_sequential_p50_ratio", aged_seq.p50 / aged_base.p50},
        {"baseline_command_bytes", shortest_query_status.size()},
        {"client_command_bytes", longest_command},
        {"aged_client_command_bytes", longest_aged_command},
        {"pipelined_rate_ratio", pipelined_rate / base.rate},
        {"pipelined_rate_ratio_without_oob", pipelined_rate_without_oob / base.rate},
        {"targets", {{"sequential_p50_ratio_max", 1.02}, {"pipelined_rate_ratio_min", 1.0}}},
        {"met", seq.p50 / base.p50 <= 1.02 && aged_seq.p50 / aged_base.p50 <= 1.02 &&
                    pipelined_rate >= base.rate},
    };
    std::printf("%s\n", out.dump(2).c_str());
    return 0;
}
