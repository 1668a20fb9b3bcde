// The fake machine's behaviour, modelled on QEMU 7.2 (runstate.c, savevm.c, job.c).
#include "vm.hpp"

#include <fmt/format.h>

#include <asio/experimental/as_tuple.hpp>
#include <cmath>
#include <csignal>
#include <ctime>
#include <filesystem>

namespace stackemu::fake {

namespace {

using namespace std::chrono_literals;

// SeaBIOS resets the machine once more right after a system_reset (seen on 7.2: RESET
// guest-reset about 40 ms after the host's RESET).
constexpr auto firmware_reset_delay = 40ms;
// What the fake says the saved device state weighs (the transcripts show 904 KiB).
constexpr std::uint64_t fake_vm_state_size = 925696;

error qemu_error(std::string desc) {
    return make_qemu_error("GenericError", std::move(desc));
}

// id_wellformed(): a letter, then letters, digits, '-', '.', '_'.
bool id_wellformed(const std::string& id) {
    if (id.empty() || !std::isalpha(static_cast<unsigned char>(id[0]))) return false;
    for (char c : id)
        if (!std::isalnum(static_cast<unsigned char>(c)) && c != '-' && c != '.' && c != '_')
            return false;
    return true;
}

// util/cutils.c size_to_str(): "904 KiB", "765 B".
std::string size_to_str(std::uint64_t val) {
    static const char* suffixes[] = {"", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei"};
    int exponent = 0;
    std::frexp(static_cast<double>(val) / (1000.0 / 1024.0), &exponent);
    const int i = (exponent - 1) / 10;
    const auto div = static_cast<double>(1ull << (i * 10));
    char buffer[64];
    std::snprintf(buffer, sizeof buffer, "%0.3g %sB", static_cast<double>(val) / div, suffixes[i]);
    return buffer;
}

// "2026-11-28 17:47:05" for info snapshots, or "vm-20261128174705" for an unnamed savevm.
std::string local_time(std::int64_t seconds, bool tag_form) {
    std::time_t t = static_cast<std::time_t>(seconds);
    std::tm tm{};
    localtime_r(&t, &tm);
    char buffer[64];
    if (tag_form)
        std::strftime(buffer, sizeof buffer, "vm-%Y%m%d%H%M%S", &tm);
    else
        std::strftime(buffer, sizeof buffer, "%Y-%m-%d %H:%M:%S", &tm);
    return buffer;
}

std::int64_t wall_seconds() {
    return std::chrono::duration_cast<std::chrono::seconds>(
               std::chrono::system_clock::now().time_since_epoch())
        .count();
}

value shutdown_data(bool guest, std::string_view reason) {
    value data = value::object();
    data["guest"] = guest;
    data["reason"] = reason;
    return data;
}

}  // namespace

std::string_view to_string(run_state s) {
    switch (s) {
        case run_state::prelaunch:
            return "prelaunch";
        case run_state::running:
            return "running";
        case run_state::paused:
            return "paused";
        case run_state::shutdown:
            return "shutdown";
        case run_state::guest_panicked:
            return "guest-panicked";
        case run_state::restore_vm:
            return "restore-vm";
    }
    return "running";
}

vm::vm(asio::any_io_executor executor, options opts)
    : executor_(std::move(executor)),
      options_(std::move(opts)),
      snapshots_(options_.state_file),
      wake_(executor_) {
}

void vm::start() {
    if (started_) return;
    started_ = true;
    boot();
    if (!options_.start_paused) set_state(run_state::running);
    asio::co_spawn(executor_, guest_driver(), asio::detached);
}

std::int64_t vm::guest_clock_ns() const {
    if (!running()) return guest_ns_;
    return guest_ns_ + std::chrono::duration_cast<std::chrono::nanoseconds>(
                           std::chrono::steady_clock::now() - resumed_at_)
                           .count();
}

std::size_t vm::subscribe_events(event_sink sink) {
    event_sinks_.emplace(++next_id_, std::move(sink));
    return next_id_;
}
void vm::unsubscribe_events(std::size_t id) {
    event_sinks_.erase(id);
}
std::size_t vm::subscribe_console(line_sink sink) {
    console_sinks_.emplace(++next_id_, std::move(sink));
    return next_id_;
}
void vm::unsubscribe_console(std::size_t id) {
    console_sinks_.erase(id);
}
std::size_t vm::subscribe_changes(std::function<void()> sink) {
    change_sinks_.emplace(++next_id_, std::move(sink));
    return next_id_;
}
void vm::unsubscribe_changes(std::size_t id) {
    change_sinks_.erase(id);
}
void vm::on_exit(std::function<void(exit_status)> sink) {
    exit_sinks_.push_back(std::move(sink));
}

void vm::notify_changes() {
    wake_.cancel();  // the guest driver recomputes its next deadline
    auto sinks = change_sinks_;
    for (auto& [_, sink] : sinks)
        sink();
}

value make_event(std::string_view name, std::optional<value> data) {
    const auto now = std::chrono::system_clock::now().time_since_epoch();
    const auto micros = std::chrono::duration_cast<std::chrono::microseconds>(now).count();
    value timestamp = value::object();
    timestamp["seconds"] = micros / 1000000;
    timestamp["microseconds"] = micros % 1000000;
    value message = value::object();
    message["event"] = name;
    message["timestamp"] = std::move(timestamp);
    if (data) message["data"] = std::move(*data);
    return message;
}

void vm::emit(std::string_view name, std::optional<value> data) {
    if (exited_) return;
    const value message = make_event(name, std::move(data));
    auto sinks = event_sinks_;
    for (auto& [_, sink] : sinks)
        sink(message, {});
}

void vm::emit_burst(const event_burst& burst) {
    for (std::size_t i = 0; i < burst.count && !exited_; ++i) {
        if (!burst.invalid_utf8) {
            value data = value::object();
            data["n"] = static_cast<std::int64_t>(i);
            emit(burst.event, std::move(data));
            continue;
        }
        // 0xff and 0xfe never occur in UTF-8.
        const std::string raw = R"({"event":")" + burst.event + R"(","data":{"device":"disk)" +
                                std::string("\xff\xfe") + std::to_string(i) + "\"}}\r\n";
        auto sinks = event_sinks_;
        for (auto& [_, sink] : sinks)
            sink(value(), raw);
    }
}

void vm::set_state(run_state s) {
    if (s == state_) return;
    if (state_ == run_state::running) {
        guest_ns_ = guest_clock_ns();
    }
    if (s == run_state::running) resumed_at_ = std::chrono::steady_clock::now();
    state_ = s;
    notify_changes();
}

// runstate.c do_vm_stop(): STOP only when the CPUs were running.
void vm::vm_stop(run_state s) {
    if (!running()) return;
    set_state(s);
    emit("STOP");
}

void vm::vm_start() {
    if (running()) return;
    set_state(run_state::running);
    emit("RESUME");
}

void vm::boot() {
    ++generation_;
    if (guest_ready_ || guest_up_) {
        guest_ready_ = false;
        guest_up_ = false;
        notify_changes();
    }
    std::chrono::nanoseconds at{0};
    bool ready_step = false;
    for (const auto& step : options_.console) {
        at += step.after;
        ready_step = ready_step || step.what == console_step::kind::ready;
        schedule(at, [this, step] { run_console_step(step); });
    }
    // A guest without a ready step counts as booted at once.
    if (!ready_step) guest_booted();
}

void vm::guest_booted() {
    if (!guest_up_) {
        guest_up_ = true;
        notify_changes();
    }
    if (!options_.hang_qmp_after || hang_timer_ || qmp_hung_) return;
    hang_timer_.emplace(executor_, *options_.hang_qmp_after);
    hang_timer_->async_wait([this](std::error_code ec) {
        if (ec) return;
        qmp_hung_ = true;
        notify_changes();
    });
}

void vm::guest_off() {
    ++generation_;
    if (guest_ready_ || guest_up_) {
        guest_ready_ = false;
        guest_up_ = false;
        notify_changes();
    }
}

void vm::schedule(std::chrono::nanoseconds after, action a) {
    actions_.emplace(guest_clock_ns() + after.count(), std::make_pair(generation_, std::move(a)));
    wake_.cancel();
}

asio::awaitable<void> vm::guest_driver() {
    auto token = asio::experimental::as_tuple(asio::use_awaitable);
    while (!exited_) {
        if (running() && !actions_.empty()) {
            const auto due = actions_.begin()->first;
            const auto now = guest_clock_ns();
            if (due <= now) {
                auto [generation, fn] = std::move(actions_.begin()->second);
                actions_.erase(actions_.begin());
                if (generation == generation_) fn();
                continue;
            }
            wake_.expires_after(std::chrono::nanoseconds(due - now));
        } else {
            wake_.expires_at(asio::steady_timer::time_point::max());
        }
        co_await wake_.async_wait(token);
    }
}

void vm::request_exit(exit_status status, bool now) {
    if (exited_) return;
    auto finish = [this, status] {
        if (exited_) return;
        exited_ = true;
        guest_ready_ = false;
        guest_up_ = false;
        wake_.cancel();
        if (hang_timer_) hang_timer_->cancel();
        if (linger_timer_) linger_timer_->cancel();
        for (auto& sink : exit_sinks_)
            sink(status);
        auto sinks = change_sinks_;
        for (auto& [_, sink] : sinks)
            sink();
    };
    if (now) {
        finish();
    } else {
        // Posted, so that the reply the current command is about to queue still goes out.
        asio::post(executor_, finish);
    }
}

void vm::stop() {
    vm_stop(run_state::paused);
}

result<void> vm::cont() {
    if (state_ == run_state::shutdown)
        return fail(qemu_error("Resetting the Virtual Machine is required"));
    vm_start();
    return {};
}

void vm::system_powerdown() {
    emit("POWERDOWN");
    if (!options_.cooperative_guest || state_ == run_state::shutdown) return;
    // The guest acts on the button after powerdown_delay of its own running time.
    schedule(options_.powerdown_delay, [this] { guest_shutdown("guest-shutdown"); });
}

void vm::system_reset() {
    if (options_.no_reboot) {
        // -no-reboot turns every reset request into a shutdown (qemu_system_reset_request()).
        emit("SHUTDOWN", shutdown_data(false, "host-qmp-system-reset"));
        if (options_.no_shutdown) {
            vm_stop(run_state::shutdown);
            guest_off();
        } else {
            request_exit({0});
        }
        return;
    }
    emit("RESET", shutdown_data(false, "host-qmp-system-reset"));
    if (!running()) set_state(run_state::prelaunch);
    boot();
    if (!options_.firmware_reset) return;
    schedule(firmware_reset_delay, [this] { emit("RESET", shutdown_data(true, "guest-reset")); });
}

void vm::quit() {
    if (options_.ignore_quit) return;
    if (options_.quit_without_reply) {
        // Gone before the reply or SHUTDOWN is flushed: the sockets close unflushed.
        request_exit(exit_status{0, 0, true}, true);
        return;
    }
    emit("SHUTDOWN", shutdown_data(false, "host-qmp-quit"));
    // Jobs still present are finalised on the way out, newest first (seen on 7.2).
    for (const auto& j : jobs_) {
        value data = value::object();
        data["id"] = j.id;
        data["status"] = "null";
        emit("JOB_STATUS_CHANGE", std::move(data));
    }
    jobs_.clear();
    request_exit({0});
}

void vm::host_signal() {
    emit("SHUTDOWN", shutdown_data(false, "host-signal"));
    request_exit({0});
}

void vm::crash(bool by_abort) {
    request_exit(exit_status{by_abort ? 0 : 1, by_abort ? SIGABRT : 0, true}, true);
}

void vm::agent_shutdown(std::string_view mode) {
    if (!options_.cooperative_guest || state_ == run_state::shutdown || exited_) return;
    // qemu-ga runs shutdown(8): the guest takes its time, as with the power button.
    if (mode == "reboot") {
        schedule(options_.powerdown_delay, [this] { guest_reboot(); });
    } else if (mode == "halt") {
        // Halted, not powered off: QEMU hears nothing and keeps running a dead guest.
        schedule(options_.powerdown_delay, [this] { guest_off(); });
    } else {
        schedule(options_.powerdown_delay, [this] { guest_shutdown("guest-shutdown"); });
    }
}

void vm::guest_shutdown(std::string_view reason) {
    emit("SHUTDOWN", shutdown_data(true, reason));
    guest_off();
    if (options_.no_shutdown) {
        vm_stop(run_state::shutdown);
    } else if (options_.linger_after_shutdown) {
        // linger_after_shutdown_ms: the guest is down, the process takes its time to exit.
        vm_stop(run_state::shutdown);
        linger_timer_.emplace(executor_, *options_.linger_after_shutdown);
        linger_timer_->async_wait([this](std::error_code ec) {
            if (!ec) request_exit({0});
        });
    } else {
        request_exit({0});
    }
}

void vm::guest_panic(const std::optional<value>& info) {
    guest_off();                                   // a panicked kernel does nothing more
    if (!options_.pvpanic.value_or(true)) return;  // without pvpanic QEMU never hears of it
    auto data = [&](std::string_view what) {
        value d = value::object();
        d["action"] = what;
        if (info) d["info"] = *info;
        return d;
    };
    const auto& policy = options_.panic_action;
    if (policy == "pause" || (policy == "shutdown" && options_.no_shutdown)) {
        emit("GUEST_PANICKED", data("pause"));
        vm_stop(run_state::guest_panicked);
    } else if (policy == "shutdown" || policy == "exit-failure") {
        // 7.2 sends no STOP here: the shutdown request wins over the pending stop.
        emit("GUEST_PANICKED", data("poweroff"));
        emit("SHUTDOWN", shutdown_data(true, "guest-panic"));
        request_exit({policy == "exit-failure" ? 1 : 0});
    } else {
        emit("GUEST_PANICKED", data("run"));
    }
}

void vm::guest_reboot() {
    if (options_.no_reboot) {
        guest_shutdown("guest-reset");
        return;
    }
    emit("RESET", shutdown_data(true, "guest-reset"));
    boot();
}

void vm::run_console_step(const console_step& step) {
    run_console_action(step);
    if (step.burst) emit_burst(*step.burst);
}

void vm::run_console_action(const console_step& step) {
    switch (step.what) {
        case console_step::kind::line: {
            auto sinks = console_sinks_;
            for (auto& [_, sink] : sinks)
                sink(step.line);
            break;
        }
        case console_step::kind::ready:
            guest_ready_ = true;
            notify_changes();
            guest_booted();
            break;
        case console_step::kind::panic:
            guest_panic(step.info);
            break;
        case console_step::kind::crash:
            crash(false);
            break;
        case console_step::kind::poweroff:
            guest_shutdown("guest-shutdown");
            break;
        case console_step::kind::reboot:
            guest_reboot();
            break;
    }
}

// block/snapshot.c bdrv_all_get_snapshot_devices(): an explicit list must name known nodes.
std::optional<std::string> vm::check_devices(const std::vector<std::string>& devices) const {
    if (devices.empty()) return "At least one device is required for snapshot";
    for (const auto& d : devices)
        if (std::ranges::find(options_.block_nodes, d) == options_.block_nodes.end())
            return fmt::format("No block device node '{}'", d);
    return std::nullopt;
}

job* vm::find_job(const std::string& id) {
    for (auto& j : jobs_)
        if (j.id == id) return &j;
    return nullptr;
}

result<void> vm::snapshot_job(const std::string& type, const std::string& job_id,
                              const std::string& tag, const std::optional<std::string>& vmstate,
                              const std::vector<std::string>& devices) {
    if (!id_wellformed(job_id)) return fail(qemu_error(fmt::format("Invalid job ID '{}'", job_id)));
    if (find_job(job_id))
        return fail(qemu_error(fmt::format("Job ID '{}' already in use", job_id)));
    jobs_.push_front(job{job_id, type, "created", 0, 0, std::nullopt});
    auto transition = [this, job_id](std::string_view status) {
        if (auto* j = find_job(job_id)) j->status = status;
        value data = value::object();
        data["id"] = job_id;
        data["status"] = status;
        emit("JOB_STATUS_CHANGE", std::move(data));
    };
    transition("created");
    transition("running");
    if (options_.job_never_concludes &&
        (options_.never_concluding_job.empty() || options_.never_concluding_job == type)) {
        find_job(job_id)->total_progress = 1;
        return {};
    }

    // The job's bottom half runs before the monitor sends the reply (7.2 transcripts).
    std::optional<std::string> failure;
    const bool was_running = running();
    auto check_vmstate = [&]() -> std::optional<std::string> {
        if (vmstate &&
            std::ranges::find(options_.block_nodes, *vmstate) == options_.block_nodes.end())
            return fmt::format("vmstate block device '{}' does not exist", *vmstate);
        return std::nullopt;
    };
    if (type == "snapshot-save") {
        failure = check_devices(devices);
        if (!failure && snapshots_.find(tag))
            failure = fmt::format("Snapshot '{}' already exists in one or more devices", tag);
        if (!failure) failure = check_vmstate();
        if (!failure) {
            vm_stop(run_state::paused);
            if (options_.job_error) {
                failure = *options_.job_error;
            } else {
                snapshots_.put(snapshot{tag, fake_vm_state_size, wall_seconds(), guest_clock_ns()});
            }
            if (was_running) vm_start();
        }
    } else if (type == "snapshot-load") {
        // snapshot_load_job_bh() stops the VM before anything can fail, and restarts it
        // only on success: a failed load leaves it stopped in restore-vm.
        vm_stop(run_state::restore_vm);
        failure = check_devices(devices);
        std::optional<snapshot> found;
        if (!failure) {
            found = snapshots_.find(tag);
            if (!found)
                failure = fmt::format("Snapshot '{}' does not exist in one or more devices", tag);
        }
        if (!failure) failure = check_vmstate();
        if (!failure && options_.job_error) failure = *options_.job_error;
        if (!failure) {
            guest_ns_ = found->vm_clock_nsec;
            if (was_running) vm_start();
        }
    } else {
        failure = check_devices(devices);
        if (!failure && options_.job_error) failure = *options_.job_error;
        if (!failure) snapshots_.remove(tag);
    }

    auto* j = find_job(job_id);
    j->current_progress = j->total_progress = 1;
    j->error = failure;
    // The reply goes out between "running" and what follows; post the rest after it.
    asio::post(executor_, [this, transition, failure] {
        if (failure) {
            transition("aborting");
        } else {
            transition("waiting");
            transition("pending");
        }
        transition("concluded");
    });
    return {};
}

value vm::query_jobs() const {
    value list = value::array();
    for (const auto& j : jobs_) {
        value info = value::object();  // JobInfo's QAPI field order
        info["id"] = j.id;
        info["type"] = j.type;
        info["status"] = j.status;
        info["current-progress"] = j.current_progress;
        info["total-progress"] = j.total_progress;
        if (j.error) info["error"] = *j.error;
        list.push_back(std::move(info));
    }
    return list;
}

result<void> vm::job_dismiss(const std::string& id) {
    auto* j = find_job(id);
    if (!j) return fail(qemu_error("Job not found"));
    if (j->status != "concluded")
        return fail(qemu_error(fmt::format(
            "Job '{}' in state '{}' cannot accept command verb 'dismiss'", id, j->status)));
    value data = value::object();
    data["id"] = id;
    data["status"] = "null";
    std::erase_if(jobs_, [&](const job& x) { return x.id == id; });
    emit("JOB_STATUS_CHANGE", std::move(data));
    return {};
}

result<void> vm::job_cancel(const std::string& id) {
    auto* j = find_job(id);
    if (!j) return fail(qemu_error("Job not found"));
    if (j->status != "running" && j->status != "created")
        return fail(qemu_error(fmt::format(
            "Job '{}' in state '{}' cannot accept command verb 'cancel'", id, j->status)));
    j->error = "Operation canceled";  // strerror(ECANCELED)
    asio::post(executor_, [this, id] {
        for (const char* status : {"aborting", "concluded"}) {
            if (auto* x = find_job(id)) x->status = status;
            value data = value::object();
            data["id"] = id;
            data["status"] = status;
            emit("JOB_STATUS_CHANGE", std::move(data));
        }
    });
    return {};
}

std::string vm::hmp_savevm(std::optional<std::string> tag) {
    if (!tag) tag = local_time(wall_seconds(), true);
    const bool was_running = running();
    vm_stop(run_state::paused);
    std::string result;
    if (options_.job_error) {
        result = fmt::format("Error: {}\r\n", *options_.job_error);
    } else {
        snapshots_.put(snapshot{*tag, fake_vm_state_size, wall_seconds(), guest_clock_ns()});
    }
    if (was_running) vm_start();
    return result;
}

std::string vm::hmp_loadvm(const std::string& tag) {
    const bool was_running = running();
    vm_stop(run_state::restore_vm);
    auto found = snapshots_.find(tag);
    if (!found)
        return fmt::format("Error: Snapshot '{}' does not exist in one or more devices\r\n", tag);
    if (options_.job_error) return fmt::format("Error: {}\r\n", *options_.job_error);
    guest_ns_ = found->vm_clock_nsec;
    if (was_running) vm_start();
    return "";
}

std::string vm::hmp_delvm(const std::string& tag) {
    snapshots_.remove(tag);  // a missing tag is no error on 7.2
    return "";
}

std::string vm::hmp_info_snapshots() const {
    const auto list = snapshots_.list();
    if (list.empty()) return "There is no snapshot available.\r\n";
    // block/qapi.c bdrv_snapshot_dump().
    std::string out = "List of snapshots present on all disks:\r\n";
    out += fmt::format("{:<10}{:<17}{:>8}{:>20}{:>13}{:>11}\r\n", "ID", "TAG", "VM SIZE", "DATE",
                       "VM CLOCK", "ICOUNT");
    for (const auto& s : list) {
        const std::int64_t secs = s.vm_clock_nsec / 1000000000;
        const auto clock = fmt::format("{:02}:{:02}:{:02}.{:03}", secs / 3600, (secs / 60) % 60,
                                       secs % 60, (s.vm_clock_nsec / 1000000) % 1000);
        out += fmt::format("{:<9} {:<16} {:>8}{:>20}{:>13}{:>11}\r\n", "--", s.tag,
                           size_to_str(s.vm_state_size), local_time(s.date_sec, false), clock, "");
    }
    return out;
}

std::optional<wire_fault> vm::claim_fault(wire_fault::channel channel) {
    const auto& f = options_.fault;
    if (!f || f->where != channel || fault_claimed_) return std::nullopt;
    std::error_code ec;
    if (f->armed_by && !std::filesystem::exists(*f->armed_by, ec)) return std::nullopt;
    fault_claimed_ = true;
    return f;
}

}  // namespace stackemu::fake
