// accel_probe_key(): which QEMU binary and which host kernel a cached KVM verdict holds for.
#include <catch2/catch.hpp>
#include <functional>
#include <string>

#include "lifecycle/accel_probe.hpp"

using namespace stackemu::lifecycle;

namespace {

qemu_binary_identity debian_qemu() {
    return {"/usr/bin/qemu-system-x86_64", 2049, 1234567, 19263624, 1700000000123456789};
}

probe_host_identity bookworm_host() {
    return {"6.1.0-28-amd64", "#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)",
            "AMD EPYC 7B13"};
}

}  // namespace

TEST_CASE("the accelerator probe key names the QEMU binary's file and the host kernel") {
    CHECK(accel_probe_key(debian_qemu(), bookworm_host()) ==
          R"k({"cpu":"AMD EPYC 7B13",)k"
          R"k("kernel":{"release":"6.1.0-28-amd64",)k"
          R"k("version":"#1 SMP PREEMPT_DYNAMIC Debian 6.1.119-1 (2024-11-22)"},)k"
          R"k("qemu":{"device":2049,"inode":1234567,"mtime_ns":1700000000123456789,)k"
          R"k("path":"/usr/bin/qemu-system-x86_64","size":19263624}})k");
}

TEST_CASE("the accelerator probe key changes with every fact about the QEMU binary and host") {
    const auto base = accel_probe_key(debian_qemu(), bookworm_host());
    const std::function<void(qemu_binary_identity&, probe_host_identity&)> changes[] = {
        [](auto& q, auto&) { q.path = "/usr/local/bin/qemu-system-x86_64"; },
        [](auto& q, auto&) { q.device = 2050; },
        [](auto& q, auto&) { q.inode = 1234568; },
        [](auto& q, auto&) { q.size = 19263625; },
        [](auto& q, auto&) { q.mtime_ns = 1700000000123456790; },
        [](auto&, auto& h) { h.kernel_release = "6.1.0-29-amd64"; },
        [](auto&, auto& h) {
            h.kernel_version = "#1 SMP PREEMPT_DYNAMIC Debian 6.1.123-1 (2025-01-02)";
        },
        [](auto&, auto& h) { h.cpu_model = "Intel Xeon"; },
    };
    for (std::size_t i = 0; i < std::size(changes); ++i) {
        auto q = debian_qemu();
        auto h = bookworm_host();
        changes[i](q, h);
        INFO("change " << i);
        CHECK(accel_probe_key(q, h) != base);
    }
}

TEST_CASE("the accelerator probe key is the same for the same binary on the same host") {
    CHECK(accel_probe_key(debian_qemu(), bookworm_host()) ==
          accel_probe_key(debian_qemu(), bookworm_host()));
}
