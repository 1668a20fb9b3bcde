// `status`: what runs, asked of QEMU itself. Takes no lock and changes nothing. "One service
// sick" is `unhealthy`, never "not running" (defect 4).
#include <fmt/format.h>

#include <asio.hpp>

#include "lifecycle/controller.hpp"
#include "lifecycle/controller_detail.hpp"
#include "lifecycle/exit_codes.hpp"
#include "lifecycle/http_probe.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "lifecycle/vm_process.hpp"
#include "qmp/commands.hpp"

namespace stackemu::lifecycle {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;

asio::awaitable<status_outcome> status(instance inst, bool run_probes) {
    const auto& paths = inst.paths;
    status_outcome out;
    out.saved = detail::read_state(paths);
    const std::string saved_state = out.saved.value("state", "");

    auto holder_lookup = holder(paths.lock.string());
    const std::optional<lock_holder> lock_owner = holder_lookup ? *holder_lookup : std::nullopt;
    std::error_code ec;
    const bool socket_there = fs::exists(paths.qmp_socket, ec);
    if (lock_owner && lock_owner->operation != "start") {
        // stop, reset or a snapshot owns the controller socket right now.
        out.state = "busy";
        out.exit_code = exit_code::busy;
        out.pid = lock_owner->pid;
        out.detail = fmt::format("stackemu {} (pid {}) is working on this instance",
                                 lock_owner->operation, lock_owner->pid);
        co_return out;
    }
    if (lock_owner) {
        out.state = "starting";
        out.exit_code = exit_code::not_healthy;
        out.detail =
            fmt::format("stackemu start (pid {}) is starting this instance", lock_owner->pid);
        co_return out;
    }
    if (!socket_there) {
        if (saved_state == "failed") {
            out.state = "failed";
            out.exit_code = exit_code::failed;
            out.detail = out.saved.value("failure", "");
        } else if (saved_state == "crashed") {
            out.state = "crashed";
            out.exit_code = exit_code::failed;
            out.detail = "QEMU exited without a clean shutdown";
        } else {
            out.state = "stopped";
            out.exit_code = exit_code::stopped;
            if (saved_state == "ready" || saved_state == "booting")
                out.detail = "the guest shut itself down (QEMU exited cleanly)";
        }
        co_return out;
    }

    // QEMU runs, but its monitor is taken by another client, slow, or wedged: that is what
    // status says (16.1), not "unhealthy", and never "crashed" while the process lives (16.2).
    auto monitor_busy = [&](const std::string& why) {
        out.state = "monitor-busy";
        out.exit_code = exit_code::not_healthy;
        out.detail = fmt::format(
            "monitor busy/slow: QEMU{} runs, but its monitor did not answer within "
            "EMULATOR_REPLY_TIMEOUT ({}); another client may hold it, or QEMU is wedged "
            "(`stackemu stop` still ends it)",
            out.pid ? fmt::format(" (pid {})", *out.pid) : std::string(), why);
    };
    auto gone = [&] {
        out.state = "crashed";
        out.exit_code = exit_code::failed;
        out.detail = "QEMU is gone but left its sockets behind (killed or crashed)";
    };
    auto vm = co_await detail::connect_vm_settled(paths, detail::qemu_binary_for(inst.config));
    if (!vm) {
        if (vm.error().code == errc::wrong_state) {
            out.state = "foreign";
            out.exit_code = exit_code::error;
            out.detail = vm.error().what();
            co_return out;
        }
        if (const auto launched = detail::launched_identity(out.saved)) {
            auto proc = open_launched(*launched);
            if (!proc) {
                gone();
                co_return out;
            }
            out.pid = proc->pid();
            monitor_busy(vm.error().what());
            co_return out;
        }
        if (vm.error().code == errc::connect_failed)
            gone();
        else
            monitor_busy(vm.error().what());
        co_return out;
    }
    out.pid = vm->process->pid();
    auto st = co_await qmp::query_status(*vm->qmp);
    vm->qmp->close();
    if (!st && st.error().code == errc::timeout) {
        monitor_busy(st.error().what());
        co_return out;
    }
    if (!st) {
        out.state = "unhealthy";
        out.exit_code = exit_code::not_healthy;
        out.detail = "query-status failed: " + st.error().what();
        co_return out;
    }
    out.qemu_status = st->status;
    if (st->status == "paused") {
        out.state = "paused";
        out.exit_code = exit_code::paused;
        co_return out;
    }
    if (st->status == "guest-panicked" || st->status == "internal-error") {
        out.state = "crashed";
        out.exit_code = exit_code::failed;
        out.detail = "QEMU reports " + st->status;
        co_return out;
    }
    // Lock-free with a start or stop still recorded: that command was interrupted.
    const std::string interrupted = detail::interrupted_command_note(out.saved);
    if (!st->running) {
        out.state = "unhealthy";
        out.exit_code = exit_code::not_healthy;
        out.detail = "QEMU reports " + st->status;
        if (!interrupted.empty()) out.detail += "; " + interrupted;
        co_return out;
    }
    if (saved_state == "failed") {
        // --keep-on-failure left the VM of a failed start running.
        out.state = "failed";
        out.exit_code = exit_code::failed;
        out.detail = out.saved.value("failure", "");
        co_return out;
    }
    bool healthy = saved_state == "ready";
    if (run_probes && out.saved.contains("probes") && out.saved["probes"].is_array()) {
        auto ex = co_await asio::this_coro::executor;
        http_prober prober(ex);
        for (const auto& url_json : out.saved["probes"]) {
            const std::string url = url_json.get<std::string>();
            probe_status p{url, url, false, ""};
            auto answer = co_await prober.get(url, 2000ms);
            if (answer) {
                p.ok = answer->status >= 200 && answer->status < 400;
                p.detail = fmt::format("HTTP {}", answer->status);
            } else {
                p.detail = answer.error().what();
            }
            healthy = healthy && p.ok;
            out.probes.push_back(std::move(p));
        }
    }
    if (healthy) {
        out.state = "ready";
        out.exit_code = exit_code::ok;
    } else {
        out.state = "unhealthy";
        out.exit_code = exit_code::not_healthy;
        if (saved_state != "ready")
            out.detail = interrupted.empty() ? "running, but the start did not reach ready"
                                             : "running, but " + interrupted;
    }
    co_return out;
}

}  // namespace stackemu::lifecycle
