#include "lifecycle/accel_probe.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <spawn.h>
#include <sys/stat.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <unistd.h>

#include <asio.hpp>
#include <csignal>
#include <fstream>
#include <nlohmann/json.hpp>

#include "lifecycle/vm_process.hpp"

// POSIX declares it for programs to declare; <unistd.h> has it only under _GNU_SOURCE.
extern char** environ;  // NOLINT(readability-redundant-declaration)

namespace stackemu::lifecycle {
namespace {

namespace fs = std::filesystem;
using nlohmann::json;

std::string cpu_model() {
    std::ifstream in("/proc/cpuinfo");
    std::string line;
    while (std::getline(in, line))
        if (line.rfind("model name", 0) == 0) return line.substr(line.find(':') + 2);
    return "unknown";
}

bool kvm_device_usable(const fs::path& device) {
    return ::access(device.c_str(), R_OK | W_OK) == 0;
}

struct verdict {
    bool boots = false;
    std::string detail;
};

std::optional<verdict> cached_verdict(const fs::path& file, const std::string& key) {
    std::ifstream in(file);
    if (!in) return std::nullopt;
    auto j = json::parse(in, nullptr, false);
    if (j.is_discarded() || !j.is_object() || j.value("key", "") != key) return std::nullopt;
    return verdict{j.value("kvm_boots", false), j.value("detail", "")};
}

void store_verdict(const fs::path& file, const std::string& key, const verdict& v) {
    std::error_code ec;
    fs::create_directories(file.parent_path(), ec);
    const fs::path tmp = file.string() + ".tmp" + std::to_string(::getpid());
    {
        std::ofstream out(tmp, std::ios::trunc);
        out << json{{"key", key}, {"kvm_boots", v.boots}, {"detail", v.detail}}.dump(2) << "\n";
    }
    fs::rename(tmp, file, ec);
}

// Boots `kernel` under KVM with the serial console on a pipe and waits for the banner.
asio::awaitable<verdict> boot_under_kvm(std::string qemu, std::string kernel,
                                        std::chrono::milliseconds timeout) {
    int out[2];
    if (::pipe2(out, O_CLOEXEC) != 0) co_return verdict{false, "cannot create a pipe"};
    std::vector<std::string> args = {qemu,
                                     "-machine",
                                     "q35,accel=kvm",
                                     "-cpu",
                                     "max",
                                     "-m",
                                     "256",
                                     "-smp",
                                     "1",
                                     "-nodefaults",
                                     "-no-user-config",
                                     "-display",
                                     "none",
                                     "-no-reboot",
                                     "-serial",
                                     "stdio",
                                     "-kernel",
                                     kernel,
                                     "-append",
                                     "console=ttyS0 earlyprintk=serial,ttyS0 panic=-1"};
    std::vector<char*> argv;
    argv.reserve(args.size() + 1);
    for (auto& a : args)
        argv.push_back(a.data());
    argv.push_back(nullptr);
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_adddup2(&actions, out[1], 1);
    posix_spawn_file_actions_adddup2(&actions, out[1], 2);
    pid_t child = -1;
    const int rc = ::posix_spawnp(&child, qemu.c_str(), &actions, nullptr, argv.data(), environ);
    posix_spawn_file_actions_destroy(&actions);
    ::close(out[1]);
    if (rc != 0) {
        ::close(out[0]);
        co_return verdict{false, fmt::format("cannot run {}: {}", qemu, std::strerror(rc))};
    }
    auto ex = co_await asio::this_coro::executor;
    asio::posix::stream_descriptor pipe(ex, out[0]);
    asio::steady_timer deadline(ex, timeout);
    bool timed_out = false;
    deadline.async_wait([&pipe, &timed_out](std::error_code ec) {
        if (ec) return;
        timed_out = true;
        pipe.close();
    });
    std::string seen;
    bool banner = false;
    std::array<char, 4096> buf{};
    for (;;) {
        std::error_code ec;
        std::size_t n = co_await pipe.async_read_some(
            asio::buffer(buf), asio::redirect_error(asio::use_awaitable, ec));
        if (ec) break;
        seen.append(buf.data(), n);
        if (seen.find("Linux version") != std::string::npos) {
            banner = true;
            break;
        }
        if (seen.size() > 65536) seen.erase(0, seen.size() - 4096);
    }
    deadline.cancel();
    ::kill(child, SIGKILL);
    int status = 0;
    ::waitpid(child, &status, 0);
    if (banner) co_return verdict{true, "a Linux kernel printed its banner under KVM"};
    if (!timed_out) {
        // QEMU ended before the banner: its own words say why (e.g. an MSR it cannot set).
        std::string last;
        for (std::size_t end = seen.size(); end > 0 && last.empty();) {
            auto begin = seen.rfind('\n', end - 1);
            begin = begin == std::string::npos ? 0 : begin + 1;
            last = seen.substr(begin, end - begin);
            end = begin == 0 ? 0 : begin - 1;
        }
        co_return verdict{false, "QEMU could not run a Linux kernel under KVM (" + last + ")"};
    }
    co_return verdict{false, fmt::format("a Linux kernel under KVM printed no banner within {} s "
                                         "(this host's KVM cannot boot Linux)",
                                         timeout.count() / 1000.0)};
}

}  // namespace

std::string accel_probe_key(const qemu_binary_identity& qemu, const probe_host_identity& host) {
    return json{{"qemu",
                 {{"path", qemu.path},
                  {"device", qemu.device},
                  {"inode", qemu.inode},
                  {"size", qemu.size},
                  {"mtime_ns", qemu.mtime_ns}}},
                {"kernel", {{"release", host.kernel_release}, {"version", host.kernel_version}}},
                {"cpu", host.cpu_model}}
        .dump();
}

std::optional<qemu_binary_identity> identify_qemu_binary(const std::string& qemu_binary) {
    const auto path = find_program(qemu_binary);
    struct stat st {};
    if (!path || ::stat(path->c_str(), &st) != 0) return std::nullopt;
    return qemu_binary_identity{
        path->string(), static_cast<std::uint64_t>(st.st_dev),
        static_cast<std::uint64_t>(st.st_ino), static_cast<std::uint64_t>(st.st_size),
        static_cast<std::int64_t>(st.st_mtim.tv_sec) * 1'000'000'000 + st.st_mtim.tv_nsec};
}

probe_host_identity current_probe_host() {
    struct utsname u {};
    ::uname(&u);
    return {u.release, u.version, cpu_model()};
}

std::optional<fs::path> host_kernel_for_probe() {
    std::optional<fs::path> best;
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator("/boot", ec)) {
        const auto name = entry.path().filename().string();
        if (name.rfind("vmlinuz-", 0) != 0 || ::access(entry.path().c_str(), R_OK) != 0) continue;
        if (!best || name > best->filename().string()) best = entry.path();
    }
    return best;
}

asio::awaitable<result<accel_choice>> choose_accelerator(accel_probe_inputs in) {
    const bool native = in.guest == in.host;
    switch (in.mode) {
        case accel_mode::tcg:
            co_return accel_choice{accelerator::tcg, "tcg, as EMULATOR_ACCEL/--accel asks"};
        case accel_mode::hvf:
            co_return fail(errc::invalid_argument,
                           "hvf exists only on macOS; use EMULATOR_ACCEL=kvm, tcg or auto");
        case accel_mode::kvm: {
            accelerator_support support{kvm_device_usable(in.kvm_device), false};
            auto a = resolve_accelerator(in.mode, in.guest, in.host, support);
            if (!a) co_return fail(a.error());
            co_return accel_choice{*a, "kvm, as EMULATOR_ACCEL/--accel asks"};
        }
        case accel_mode::automatic:
            break;
    }
    if (!native)
        co_return accel_choice{accelerator::tcg,
                               fmt::format("tcg: an {} guest on an {} host needs emulation",
                                           to_string(in.guest), to_string(in.host))};
    if (!kvm_device_usable(in.kvm_device))
        co_return accel_choice{accelerator::tcg, "tcg: /dev/kvm is missing or not accessible"};

    // A binary that cannot be found has no identity to cache a verdict for: the probe says why
    // it cannot run, every time.
    const auto qemu = identify_qemu_binary(in.qemu_binary);
    const std::optional<std::string> key =
        qemu ? std::optional(accel_probe_key(*qemu, current_probe_host())) : std::nullopt;
    if (auto cached = key ? cached_verdict(in.cache_file, *key) : std::nullopt) {
        if (cached->boots)
            co_return accel_choice{accelerator::kvm,
                                   "kvm: verified earlier (" + cached->detail + ")", true};
        co_return accel_choice{accelerator::tcg,
                               "tcg: /dev/kvm is there but " + cached->detail +
                                   "; verdict cached in " + in.cache_file.string(),
                               true};
    }
    if (!in.kernel)
        co_return accel_choice{accelerator::kvm,
                               "kvm: /dev/kvm is usable (not verified: no kernel to test it with)"};
    auto v = co_await boot_under_kvm(in.qemu_binary, in.kernel->string(), in.banner_timeout);
    if (key) store_verdict(in.cache_file, *key, v);
    if (v.boots) co_return accel_choice{accelerator::kvm, "kvm: " + v.detail};
    co_return accel_choice{accelerator::tcg, "tcg: /dev/kvm is there but " + v.detail};
}

}  // namespace stackemu::lifecycle
