// The fake machine: run state, guest behaviour on a guest clock, events, snapshot jobs.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <cstdint>
#include <deque>
#include <functional>
#include <map>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "options.hpp"
#include "qemu_json.hpp"
#include "snapshot_table.hpp"

namespace stackemu::fake {

// {"timestamp": {"seconds", "microseconds"}, "event": name, "data": data} stamped now.
value make_event(std::string_view name, std::optional<value> data = std::nullopt);

// QEMU's RunState values the fake can reach.
enum class run_state { prelaunch, running, paused, shutdown, guest_panicked, restore_vm };
std::string_view to_string(run_state s);

// How the fake ended. `signal` is set when it died by a signal (crash_signal: abort);
// `abrupt` when sockets were dropped without flushing (a crash rather than an exit).
struct exit_status {
    int code = 0;
    int signal = 0;
    bool abrupt = false;
};

struct job {
    std::string id;
    std::string type;  // snapshot-save, snapshot-load, snapshot-delete
    std::string status;
    int current_progress = 0;
    int total_progress = 0;
    std::optional<std::string> error;
};

// Single-threaded: every method runs on the executor given at construction. Events are
// delivered synchronously to subscribers, so a command's events precede its reply, as in
// QEMU 7.2 (transcripts/qemu-7.2-session.txt).
class vm {
  public:
    // `raw`, when not empty, is sent instead of `message` as it is (hostile bursts).
    using event_sink = std::function<void(const value& message, std::string_view raw)>;
    using line_sink = std::function<void(std::string_view line)>;

    vm(asio::any_io_executor executor, options opts);
    vm(const vm&) = delete;
    vm& operator=(const vm&) = delete;

    // Powers on: running, or prelaunch with start_paused (-S). The console script starts
    // when the CPUs first run.
    void start();

    const options& config() const { return options_; }
    // The "fault" option for a connection opening now on `channel`: given to the first one
    // opened while the fault is armed, nullopt for every other.
    std::optional<wire_fault> claim_fault(wire_fault::channel channel);
    run_state state() const { return state_; }
    bool running() const { return state_ == run_state::running; }
    bool guest_ready() const { return guest_ready_; }
    // The guest has booted (the console's ready step, or at once without one) and is still
    // up: its agent runs (and answers while the CPUs run).
    bool guest_up() const { return guest_up_ && !exited_; }
    // hang_qmp, or hang_qmp_after_ms has passed: QMP commands are not answered.
    bool qmp_hung() const { return options_.hang_qmp || qmp_hung_; }
    bool exited() const { return exited_; }
    // Guest running time in nanoseconds (QEMU's virtual clock).
    std::int64_t guest_clock_ns() const;

    std::size_t subscribe_events(event_sink sink);
    void unsubscribe_events(std::size_t id);
    std::size_t subscribe_console(line_sink sink);
    void unsubscribe_console(std::size_t id);
    // Called after any change of run state, readiness or exit.
    std::size_t subscribe_changes(std::function<void()> sink);
    void unsubscribe_changes(std::size_t id);
    void on_exit(std::function<void(exit_status)> sink);

    // Builds {"timestamp":..,"event":..,"data":..} and delivers it.
    void emit(std::string_view name, std::optional<value> data = std::nullopt);
    void emit_burst(const event_burst& burst);

    // QMP commands, with QEMU's events and errors.
    void stop();
    result<void> cont();
    void system_powerdown();
    void system_reset();
    void quit();
    // SIGTERM/SIGINT/SIGHUP: SHUTDOWN host-signal, then exit 0.
    void host_signal();
    // Exit at once without flushing anything (crash_after_ms, the "crash" console action).
    void crash(bool by_abort);
    // guest-shutdown through the agent, acted on after powerdown_delay unless cooperative_guest
    // is false: powerdown powers the guest off (SHUTDOWN guest-shutdown), reboot reboots it,
    // halt stops it without QEMU hearing of it.
    void agent_shutdown(std::string_view mode);

    result<void> snapshot_job(const std::string& type, const std::string& job_id,
                              const std::string& tag, const std::optional<std::string>& vmstate,
                              const std::vector<std::string>& devices);
    value query_jobs() const;
    result<void> job_dismiss(const std::string& id);
    result<void> job_cancel(const std::string& id);

    // HMP savevm/loadvm/delvm/info snapshots: text replies as QEMU's monitor prints them.
    std::string hmp_savevm(std::optional<std::string> tag);
    std::string hmp_loadvm(const std::string& tag);
    std::string hmp_delvm(const std::string& tag);
    std::string hmp_info_snapshots() const;
    // The snapshots every block node holds (query-named-block-nodes' image.snapshots).
    std::vector<snapshot> snapshots() const { return snapshots_.list(); }

  private:
    bool fault_claimed_ = false;
    using action = std::function<void()>;

    void set_state(run_state s);
    void vm_stop(run_state s);
    void vm_start();
    void boot();
    void guest_off();
    void schedule(std::chrono::nanoseconds after, action a);
    void notify_changes();
    void request_exit(exit_status status, bool now = false);
    asio::awaitable<void> guest_driver();

    void guest_shutdown(std::string_view reason);
    void guest_panic(const std::optional<value>& info);
    void guest_reboot();
    void run_console_step(const console_step& step);
    void run_console_action(const console_step& step);
    void guest_booted();

    std::optional<std::string> check_devices(const std::vector<std::string>& devices) const;
    job* find_job(const std::string& id);

    asio::any_io_executor executor_;
    options options_;
    snapshot_table snapshots_;
    run_state state_ = run_state::prelaunch;
    bool guest_ready_ = false;
    bool guest_up_ = false;  // booted and not off: what the agent needs
    bool qmp_hung_ = false;
    std::optional<asio::steady_timer> hang_timer_;
    std::optional<asio::steady_timer> linger_timer_;
    bool exited_ = false;
    bool started_ = false;

    // Guest clock: advances only while running.
    std::int64_t guest_ns_ = 0;
    std::chrono::steady_clock::time_point resumed_at_{};

    // Guest actions by guest time; an action of an older generation (before a reset,
    // shutdown or panic) is dropped.
    std::multimap<std::int64_t, std::pair<std::uint64_t, action>> actions_;
    std::uint64_t generation_ = 0;
    asio::steady_timer wake_;

    std::deque<job> jobs_;  // newest first, as query-jobs lists them

    std::size_t next_id_ = 0;
    std::map<std::size_t, event_sink> event_sinks_;
    std::map<std::size_t, line_sink> console_sinks_;
    std::map<std::size_t, std::function<void()>> change_sinks_;
    std::vector<std::function<void(exit_status)>> exit_sinks_;
};

}  // namespace stackemu::fake
