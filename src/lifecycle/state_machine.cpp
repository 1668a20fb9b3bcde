// The VM state machine's rules, one handler per input.
#include "lifecycle/state_machine.hpp"

#include <fmt/format.h>
#include <fmt/ranges.h>

#include "lifecycle/console_scanner.hpp"

namespace stackemu::lifecycle {

namespace {

// Small builders, so that each rule below reads as one line.
struct stepper {
    const readiness_profile& profile;
    transition t;

    transition same(cause why = cause::none) {
        t.why = why;
        return std::move(t);
    }
    transition go(vm_state next, cause why) {
        t.next.state = next;
        t.why = why;
        return std::move(t);
    }
    stepper& act(vm_action a) {
        t.actions.push_back(std::move(a));
        return *this;
    }

    // A failed start or a crash: report it, and never leave QEMU running (defect 5).
    transition end_with_failure(vm_state next, cause why, std::string reason) {
        t.next.failure = reason;
        act(report_failure{why, std::move(reason)});
        if (t.next.qemu_alive) act(stop_vm{stop_mode::immediate, t.next.state == vm_state::paused});
        return go(next, why);
    }

    // booting → ready once every condition holds; otherwise record the progress.
    transition check_ready(cause progress) {
        if (t.next.state != vm_state::booting) return same(progress);
        if (!missing_conditions(profile, t.next.flags).empty()) return same(progress);
        act(report_ready{});
        return go(vm_state::ready, cause::ready);
    }

    // QEMU is gone. After a SHUTDOWN or our stop that is a stop; otherwise the start failed
    // (before ready) or the VM crashed (after).
    transition qemu_gone(std::string how, bool quit_sent) {
        const bool was_alive = t.next.qemu_alive;
        t.next.qemu_alive = false;
        switch (t.next.state) {
            case vm_state::stopping:
                act(report_stopped{t.next.shutdown_seen});
                return go(vm_state::stopped, cause::stopped);
            case vm_state::launching:
            case vm_state::booting:
            case vm_state::ready:
            case vm_state::paused: {
                if (quit_sent) {
                    act(report_stopped{t.next.shutdown_seen});
                    return go(vm_state::stopped, cause::stopped);
                }
                const auto next =
                    t.next.state == vm_state::launching || t.next.state == vm_state::booting
                        ? vm_state::failed
                        : vm_state::crashed;
                return end_with_failure(next, cause::qemu_exited,
                                        fmt::format("{} without a SHUTDOWN event", how));
            }
            case vm_state::stopped:
            case vm_state::failed:
            case vm_state::crashed:
                break;
        }
        return same(was_alive ? cause::stopped : cause::none);
    }
};

bool is_up(vm_state s) {
    return s == vm_state::launching || s == vm_state::booting || s == vm_state::ready ||
           s == vm_state::paused;
}

std::string exit_description(const process_exited& e) {
    if (e.signal) return fmt::format("QEMU was killed by signal {}", *e.signal);
    if (e.code) return fmt::format("QEMU exited with status {}", *e.code);
    return "QEMU exited";
}

std::string first_line_trimmed(std::string_view text) {
    while (!text.empty() && (text.back() == '\n' || text.back() == '\r' || text.back() == ' ')) {
        text.remove_suffix(1);
    }
    return std::string(text);
}

transition on(stepper s, const launch_requested&) {
    auto& m = s.t.next;
    switch (m.state) {
        case vm_state::failed:
        case vm_state::crashed:
            if (m.qemu_alive) {
                s.act(reject_request{"the previous QEMU has not exited yet; stop it first"});
                return s.same(cause::rejected);
            }
            [[fallthrough]];
        case vm_state::stopped:
            m.flags = {};
            m.shutdown_seen = false;
            m.failure.reset();
            m.qemu_alive = true;
            m.resume_to = vm_state::booting;
            s.act(launch_qemu{});
            return s.go(vm_state::launching, cause::launch_requested);
        case vm_state::launching:
        case vm_state::booting:
        case vm_state::ready:
            return s.same(cause::already);
        case vm_state::paused:
            s.act(reject_request{"the VM is paused; resume it instead of starting it"});
            return s.same(cause::rejected);
        case vm_state::stopping:
            s.act(reject_request{"the VM is stopping; start it again once it has stopped"});
            return s.same(cause::rejected);
    }
    return s.same();
}

transition on(stepper s, const launcher_exited& e) {
    if (s.t.next.state != vm_state::launching || e.code == 0) return s.same();
    s.t.next.qemu_alive = false;
    auto detail = first_line_trimmed(e.stderr_text);
    return s.end_with_failure(
        vm_state::failed, cause::launch_failed,
        detail.empty() ? fmt::format("QEMU failed to start (status {})", e.code)
                       : fmt::format("QEMU failed to start (status {}): {}", e.code, detail));
}

transition on(stepper s, const qmp_connected&) {
    if (s.t.next.state != vm_state::launching) return s.same();
    s.act(send_cont{});
    s.t.next.state = vm_state::booting;
    return s.check_ready(cause::qmp_connected);
}

transition on(stepper s, const qmp_eof& e) {
    return s.qemu_gone("QEMU closed its QMP connection", e.quit_sent);
}

transition on(stepper s, const process_exited& e) {
    return s.qemu_gone(exit_description(e), false);
}

transition on_shutdown(stepper s, const nlohmann::json& data) {
    auto& m = s.t.next;
    m.shutdown_seen = true;
    if (!is_up(m.state)) return s.same();
    const bool by_guest = data.is_object() && data.value("guest", false);
    const auto reason =
        data.is_object() ? data.value("reason", std::string("unknown")) : std::string("unknown");
    s.act(record_event{fmt::format("SHUTDOWN ({}) while {}", reason, to_string(m.state))});
    return s.go(vm_state::stopping, by_guest ? cause::guest_shutdown : cause::host_shutdown);
}

transition on(stepper s, const qmp_event& e) {
    auto& m = s.t.next;
    if (e.name == "SHUTDOWN") return on_shutdown(std::move(s), e.data);
    if (e.name == "GUEST_PANICKED") {
        if (m.state == vm_state::launching || m.state == vm_state::booting) {
            return s.end_with_failure(vm_state::failed, cause::guest_panicked,
                                      "the guest kernel panicked while booting");
        }
        if (m.state == vm_state::ready || m.state == vm_state::paused) {
            return s.end_with_failure(vm_state::crashed, cause::guest_panicked,
                                      "the guest kernel panicked");
        }
        return s.same();
    }
    if (e.name == "STOP") {
        if (m.state != vm_state::booting && m.state != vm_state::ready) return s.same();
        m.resume_to = m.state;
        return s.go(vm_state::paused, cause::paused);
    }
    if (e.name == "RESUME") {
        if (m.state != vm_state::paused) return s.same();
        return s.go(m.resume_to, cause::resumed);
    }
    if (e.name == "RESET") {
        // A reboot invalidates what the previous boot showed.
        if (m.state == vm_state::booting || m.state == vm_state::ready) {
            m.flags = {};
            s.act(record_event{fmt::format("guest reset while {}", to_string(m.state))});
            return s.go(vm_state::booting, cause::guest_reset);
        }
        if (m.state == vm_state::paused) {
            m.flags = {};
            m.resume_to = vm_state::booting;
            return s.same(cause::guest_reset);
        }
        return s.same();
    }
    return s.same();
}

transition on(stepper s, const console_line& line) {
    auto& m = s.t.next;
    // The kernel's panic line is as good as GUEST_PANICKED for a guest without pvpanic; with
    // panic=N it reboots, and each boot would panic again, so the first line decides.
    if (is_kernel_panic_line(line.text)) {
        if (m.state == vm_state::launching || m.state == vm_state::booting)
            return s.end_with_failure(
                vm_state::failed, cause::guest_panicked,
                fmt::format("the guest kernel panicked while booting: {}", line.text));
        if (m.state == vm_state::ready || m.state == vm_state::paused)
            return s.end_with_failure(vm_state::crashed, cause::guest_panicked,
                                      fmt::format("the guest kernel panicked: {}", line.text));
        return s.same();
    }
    for (const auto& marker : s.profile.failure_markers) {
        if (!is_marker_line(line.text, marker, s.profile.match)) continue;
        if (m.state == vm_state::launching || m.state == vm_state::booting ||
            m.state == vm_state::ready) {
            return s.end_with_failure(vm_state::failed, cause::failure_marker,
                                      fmt::format("the guest reported {}", marker));
        }
        s.act(record_event{fmt::format("{} printed while {}", marker, to_string(m.state))});
        return s.same();
    }
    if (m.state == vm_state::booting && !m.flags.marker_seen &&
        is_marker_line(line.text, s.profile.ready_marker, s.profile.match)) {
        m.flags.marker_seen = true;
        return s.check_ready(cause::readiness);
    }
    return s.same();
}

transition on(stepper s, const probe_result& p) {
    auto& m = s.t.next;
    if (p.ok || (m.state != vm_state::booting && m.state != vm_state::ready)) return s.same();
    const bool was_healthy = m.flags.probes_healthy;
    m.flags.probes_healthy = false;
    if (m.state == vm_state::ready && was_healthy) {
        s.act(record_event{p.detail.empty()
                               ? fmt::format("probe {} unhealthy", p.name)
                               : fmt::format("probe {} unhealthy: {}", p.name, p.detail)});
        return s.same(cause::probe_unhealthy);
    }
    return s.same();
}

transition on(stepper s, const agent_answered&) {
    auto& m = s.t.next;
    if (m.state != vm_state::booting || m.flags.agent_answered) return s.same();
    m.flags.agent_answered = true;
    return s.check_ready(cause::readiness);
}

transition on(stepper s, const all_probes_healthy&) {
    auto& m = s.t.next;
    if (m.flags.probes_healthy) return s.same();
    if (m.state == vm_state::ready) {
        m.flags.probes_healthy = true;
        s.act(record_event{"every probe healthy again"});
        return s.same(cause::probes_healthy);
    }
    if (m.state != vm_state::booting) return s.same();
    m.flags.probes_healthy = true;
    return s.check_ready(cause::readiness);
}

transition on(stepper s, const deadline_passed& d) {
    auto& m = s.t.next;
    if (m.state != vm_state::launching && m.state != vm_state::booting) return s.same();
    std::string reason = fmt::format("timed out waiting for {}", d.what);
    if (m.state == vm_state::launching) {
        reason += "; QEMU never accepted the controller's QMP connection";
    } else if (auto missing = missing_conditions(s.profile, m.flags); !missing.empty()) {
        reason += fmt::format("; still missing: {}", fmt::join(missing, ", "));
    }
    return s.end_with_failure(vm_state::failed, cause::deadline, std::move(reason));
}

transition on(stepper s, const stop_requested&) {
    auto& m = s.t.next;
    switch (m.state) {
        case vm_state::stopped:
        case vm_state::stopping:
            return s.same(cause::already);
        case vm_state::launching:
        case vm_state::booting:
        case vm_state::ready:
        case vm_state::paused:
            s.act(stop_vm{stop_mode::graceful, m.state == vm_state::paused});
            return s.go(vm_state::stopping, cause::stop_requested);
        case vm_state::failed:
        case vm_state::crashed:
            if (!m.qemu_alive) return s.go(vm_state::stopped, cause::already);
            s.act(stop_vm{stop_mode::immediate, false});
            return s.go(vm_state::stopping, cause::stop_requested);
    }
    return s.same();
}

transition on(stepper s, const pause_requested&) {
    auto& m = s.t.next;
    if (m.state == vm_state::paused) return s.same(cause::already);
    if (m.state == vm_state::booting || m.state == vm_state::ready) {
        s.act(pause_vm{});
        return s.same();
    }
    s.act(reject_request{fmt::format("cannot pause a VM that is {}", to_string(m.state))});
    return s.same(cause::rejected);
}

transition on(stepper s, const resume_requested&) {
    auto& m = s.t.next;
    if (m.state == vm_state::booting || m.state == vm_state::ready) return s.same(cause::already);
    if (m.state == vm_state::paused) {
        s.act(resume_vm{});
        return s.same();
    }
    s.act(reject_request{fmt::format("cannot resume a VM that is {}", to_string(m.state))});
    return s.same(cause::rejected);
}

// The QMP reply and the STOP/RESUME event race; whichever comes first moves the state.
transition on(stepper s, const pause_result& r) {
    auto& m = s.t.next;
    if (!r.ok) {
        s.act(reject_request{fmt::format("pause failed: {}", r.reason)});
        return s.same(cause::rejected);
    }
    if (m.state != vm_state::booting && m.state != vm_state::ready) return s.same();
    m.resume_to = m.state;
    return s.go(vm_state::paused, cause::paused);
}

transition on(stepper s, const resume_result& r) {
    auto& m = s.t.next;
    if (!r.ok) {
        s.act(reject_request{fmt::format("resume failed: {}", r.reason)});
        return s.same(cause::rejected);
    }
    if (m.state != vm_state::paused) return s.same();
    return s.go(m.resume_to, cause::resumed);
}

}  // namespace

std::string_view to_string(vm_state s) {
    switch (s) {
        case vm_state::stopped:
            return "stopped";
        case vm_state::launching:
            return "launching";
        case vm_state::booting:
            return "booting";
        case vm_state::ready:
            return "ready";
        case vm_state::paused:
            return "paused";
        case vm_state::stopping:
            return "stopping";
        case vm_state::failed:
            return "failed";
        case vm_state::crashed:
            return "crashed";
    }
    return "unknown";
}

std::string_view to_string(cause c) {
    switch (c) {
        case cause::none:
            return "none";
        case cause::launch_requested:
            return "launch_requested";
        case cause::launch_failed:
            return "launch_failed";
        case cause::monitor_failed:
            return "monitor_failed";
        case cause::qmp_connected:
            return "qmp_connected";
        case cause::failure_marker:
            return "failure_marker";
        case cause::guest_panicked:
            return "guest_panicked";
        case cause::qemu_exited:
            return "qemu_exited";
        case cause::deadline:
            return "deadline";
        case cause::readiness:
            return "readiness";
        case cause::ready:
            return "ready";
        case cause::probe_unhealthy:
            return "probe_unhealthy";
        case cause::probes_healthy:
            return "probes_healthy";
        case cause::guest_reset:
            return "guest_reset";
        case cause::paused:
            return "paused";
        case cause::resumed:
            return "resumed";
        case cause::guest_shutdown:
            return "guest_shutdown";
        case cause::host_shutdown:
            return "host_shutdown";
        case cause::stop_requested:
            return "stop_requested";
        case cause::stopped:
            return "stopped";
        case cause::already:
            return "already";
        case cause::rejected:
            return "rejected";
    }
    return "unknown";
}

std::string_view action_name(const vm_action& a) {
    struct namer {
        std::string_view operator()(const launch_qemu&) const { return "launch_qemu"; }
        std::string_view operator()(const send_cont&) const { return "send_cont"; }
        std::string_view operator()(const stop_vm&) const { return "stop_vm"; }
        std::string_view operator()(const pause_vm&) const { return "pause_vm"; }
        std::string_view operator()(const resume_vm&) const { return "resume_vm"; }
        std::string_view operator()(const report_failure&) const { return "report_failure"; }
        std::string_view operator()(const report_ready&) const { return "report_ready"; }
        std::string_view operator()(const report_stopped&) const { return "report_stopped"; }
        std::string_view operator()(const record_event&) const { return "record_event"; }
        std::string_view operator()(const reject_request&) const { return "reject_request"; }
    };
    return std::visit(namer{}, a);
}

std::vector<std::string> missing_conditions(const readiness_profile& profile,
                                            const readiness& flags) {
    std::vector<std::string> missing;
    if (!profile.ready_marker.empty() && !flags.marker_seen) {
        missing.push_back(fmt::format("the console line {}", profile.ready_marker));
    }
    if (profile.requires_agent && !flags.agent_answered) missing.push_back("the guest agent");
    if (profile.requires_probes && !flags.probes_healthy) missing.push_back("healthy probes");
    return missing;
}

transition step(const readiness_profile& profile, const vm_machine& current, const vm_input& in) {
    return std::visit(
        [&](const auto& input) {
            return on(stepper{profile, transition{current, {}, cause::none}}, input);
        },
        in);
}

}  // namespace stackemu::lifecycle
