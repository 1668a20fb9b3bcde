// The accelerator probe's cache against real files: a verdict holds for the QEMU binary that
// posix_spawnp runs (after the PATH lookup) and is taken again for an upgraded or another one.
// The "QEMU" is a script that counts its runs and prints a kernel banner; /dev/kvm is a file.
#include <unistd.h>

#include <asio.hpp>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <filesystem>
#include <fstream>
#include <optional>
#include <sstream>
#include <string>

#include "lifecycle/accel_probe.hpp"
#include "support/describe.hpp"
#include "support/run.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;
using namespace std::chrono_literals;
namespace fs = std::filesystem;

namespace {

// PATH for this test only: the probe spawns through posix_spawnp, which reads it.
class path_override {
  public:
    explicit path_override(const std::string& value) {
        if (const char* old = std::getenv("PATH")) old_ = old;
        ::setenv("PATH", value.c_str(), 1);
    }
    ~path_override() {
        if (old_)
            ::setenv("PATH", old_->c_str(), 1);
        else
            ::unsetenv("PATH");
    }
    path_override(const path_override&) = delete;
    path_override& operator=(const path_override&) = delete;

  private:
    std::optional<std::string> old_;
};

struct probe_sandbox {
    fs::path dir;
    probe_sandbox() {
        static int counter = 0;
        dir = fs::path("/tmp") /
              ("stackemu-accel-" + std::to_string(::getpid()) + "-" + std::to_string(++counter));
        fs::remove_all(dir);
        fs::create_directories(dir / "a");
        fs::create_directories(dir / "b");
        std::ofstream(dir / "kvm") << "";
        std::ofstream(dir / "vmlinuz") << "not a kernel\n";
        std::ofstream(dir / "probes.log") << "";
    }
    ~probe_sandbox() {
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    probe_sandbox(const probe_sandbox&) = delete;
    probe_sandbox& operator=(const probe_sandbox&) = delete;

    // A QEMU stand-in at `path` that logs its run and prints what a booting kernel prints; it
    // is written next to `path` and renamed over it, as a package upgrade does (a new inode).
    fs::path install_qemu(const fs::path& path) const {
        const fs::path next = path.string() + ".new";
        {
            std::ofstream out(next);
            out << "#!/bin/sh\necho \"$0\" >> " << (dir / "probes.log").string()
                << "\necho 'Linux version 6.1.0-probe'\n";
        }
        fs::permissions(next, fs::perms::owner_all);
        fs::rename(next, path);
        return path;
    }

    int probes() const {
        std::ifstream in(dir / "probes.log");
        int n = 0;
        for (std::string line; std::getline(in, line);)
            ++n;
        return n;
    }

    accel_choice choose(const std::string& qemu) const {
        accel_probe_inputs in;
        in.qemu_binary = qemu;
        in.kernel = dir / "vmlinuz";
        in.cache_file = dir / "cache" / "accel-verdicts.json";
        in.kvm_device = dir / "kvm";
        in.banner_timeout = 60s;  // a ceiling: the stand-in prints its banner at once
        asio::io_context ctx;
        auto chosen = test::run(ctx, choose_accelerator(in));
        REQUIRE_OK(chosen);
        return *chosen;
    }
};

}  // namespace

TEST_CASE("the accelerator probe runs once for a QEMU found on PATH and reuses its verdict") {
    probe_sandbox box;
    box.install_qemu(box.dir / "a" / "qemu-system-x86_64");
    path_override path((box.dir / "a").string() + ":/usr/bin:/bin");

    const auto first = box.choose("qemu-system-x86_64");
    CHECK(first.accel == accelerator::kvm);
    CHECK(first.reason == "kvm: a Linux kernel printed its banner under KVM");
    CHECK_FALSE(first.from_cache);
    const auto second = box.choose("qemu-system-x86_64");
    CHECK(second.accel == accelerator::kvm);
    CHECK(second.reason == "kvm: verified earlier (a Linux kernel printed its banner under KVM)");
    CHECK(second.from_cache);
    CHECK(box.probes() == 1);
}

TEST_CASE("an upgraded QEMU on PATH is probed again") {
    probe_sandbox box;
    const auto qemu = box.install_qemu(box.dir / "a" / "qemu-system-x86_64");
    path_override path((box.dir / "a").string() + ":/usr/bin:/bin");
    CHECK_FALSE(box.choose("qemu-system-x86_64").from_cache);

    // The same bytes under a new inode with another mtime: what an upgrade leaves behind.
    box.install_qemu(qemu);
    fs::last_write_time(qemu, fs::last_write_time(qemu) - 1h);
    CHECK_FALSE(box.choose("qemu-system-x86_64").from_cache);
    CHECK(box.probes() == 2);
    CHECK(box.choose("qemu-system-x86_64").from_cache);
    CHECK(box.probes() == 2);
}

TEST_CASE("a QEMU name that PATH resolves to another binary is probed again") {
    probe_sandbox box;
    box.install_qemu(box.dir / "a" / "qemu-system-x86_64");
    box.install_qemu(box.dir / "b" / "qemu-system-x86_64");
    {
        path_override path((box.dir / "a").string() + ":/usr/bin:/bin");
        CHECK_FALSE(box.choose("qemu-system-x86_64").from_cache);
    }
    path_override path((box.dir / "b").string() + ":/usr/bin:/bin");
    CHECK_FALSE(box.choose("qemu-system-x86_64").from_cache);
    std::ifstream log(box.dir / "probes.log");
    std::stringstream runs;
    runs << log.rdbuf();
    CHECK(runs.str() == (box.dir / "a" / "qemu-system-x86_64").string() + "\n" +
                            (box.dir / "b" / "qemu-system-x86_64").string() + "\n");
}

TEST_CASE("another EMULATOR_QEMU path is probed again") {
    probe_sandbox box;
    const auto a = box.install_qemu(box.dir / "a" / "qemu-system-x86_64");
    const auto b = box.install_qemu(box.dir / "b" / "qemu-system-x86_64");
    CHECK_FALSE(box.choose(a.string()).from_cache);
    CHECK(box.choose(a.string()).from_cache);
    CHECK_FALSE(box.choose(b.string()).from_cache);
    CHECK(box.probes() == 2);
}
