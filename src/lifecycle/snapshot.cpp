// `snapshot save|load|delete|list`: QMP snapshot jobs on the disk node of a running VM (HMP
// savevm only before QEMU 6.0), `qemu-img snapshot` on a stopped VM's overlay, and the
// compatibility record in vm/snapshots.json that lets a load that cannot work fail at once.
#include "lifecycle/snapshot.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <asio.hpp>
#include <cctype>
#include <filesystem>

#include "lifecycle/controller_detail.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "lifecycle/vm_process.hpp"
#include "qmp/client.hpp"

namespace stackemu::lifecycle {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

// ---- Names ----

namespace {

bool name_char(char c) {
    return std::isalnum(static_cast<unsigned char>(c)) != 0 || c == '.' || c == '_' || c == '-';
}
bool ascii_alnum(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// The name as it can be shown: printable ASCII as is, anything else as \xNN; cut at 80.
std::string shown(std::string_view name) {
    std::string out;
    for (char c : name.substr(0, 80)) {
        const auto u = static_cast<unsigned char>(c);
        if (u >= 0x20 && u < 0x7f)
            out += c;
        else
            out += fmt::format("\\x{:02x}", u);
    }
    if (name.size() > 80) out += "...";
    return out;
}

std::string describe_char(char c) {
    const auto u = static_cast<unsigned char>(c);
    if (c == ' ') return "a space";
    if (c == '\n') return "a newline";
    if (c == '\t') return "a tab";
    if (u < 0x20 || u == 0x7f) return fmt::format("the control character \\x{:02x}", u);
    if (u >= 0x80) return fmt::format("the non-ASCII byte \\x{:02x}", u);
    return fmt::format("'{}'", c);
}

constexpr std::string_view allowed_chars = "letters, digits, '.', '_' and '-'";

}  // namespace

result<void> check_snapshot_name(std::string_view name) {
    if (name.empty())
        return fail(errc::invalid_argument,
                    fmt::format("a snapshot name cannot be empty: use 1 to {} of {}",
                                max_snapshot_name, allowed_chars));
    if (name.size() > max_snapshot_name)
        return fail(errc::invalid_argument,
                    fmt::format("the snapshot name \"{}\" is {} bytes long: at most {}",
                                shown(name), name.size(), max_snapshot_name));
    for (std::size_t i = 0; i < name.size(); ++i) {
        // isalnum() follows the locale: only ASCII letters and digits count.
        if (!name_char(name[i]) || (static_cast<unsigned char>(name[i]) >= 0x80))
            return fail(errc::invalid_argument,
                        fmt::format("the snapshot name \"{}\" contains {} at position {}: use "
                                    "only {}",
                                    shown(name), describe_char(name[i]), i + 1, allowed_chars));
    }
    if (!ascii_alnum(name.front()))
        return fail(
            errc::invalid_argument,
            fmt::format("the snapshot name \"{}\" must start with a letter or digit", shown(name)));
    if (std::ranges::all_of(name, [](char c) { return c >= '0' && c <= '9'; }))
        return fail(errc::invalid_argument,
                    fmt::format("the snapshot name \"{}\" is all digits, which QEMU reads as a "
                                "snapshot ID (it could select another snapshot): add a letter, "
                                "e.g. \"v{}\"",
                                name, name));
    return {};
}

namespace detail {

result<std::string> hmp_snapshot_line(std::string_view verb, std::string_view name) {
    if (verb != "savevm" && verb != "loadvm" && verb != "delvm")
        return fail(errc::internal, fmt::format("not a snapshot monitor command: {}", verb));
    if (auto ok = check_snapshot_name(name); !ok) return fail(ok.error());
    return fmt::format("{} {}", verb, name);
}

}  // namespace detail

// ---- Fingerprint ----

vm_fingerprint fingerprint_from_argv(const std::vector<std::string>& argv,
                                     std::string_view qemu_version, std::string_view accel,
                                     std::string_view build_id) {
    vm_fingerprint f;
    f.qemu_version = qemu_version;
    f.accel = accel;
    f.build_id = build_id;
    std::string machine_accel;
    for (std::size_t i = 1; i + 1 < argv.size(); ++i) {
        const auto& opt = argv[i];
        const auto& value = argv[i + 1];
        bool takes_value = true;
        if (opt == "-machine" || opt == "-M") {
            // Drop accel=...: the accelerator is its own field.
            std::string kept;
            std::size_t start = 0;
            while (start <= value.size()) {
                auto end = value.find(',', start);
                if (end == std::string::npos) end = value.size();
                const auto part = value.substr(start, end - start);
                if (part.starts_with("accel="))
                    machine_accel = part.substr(6);
                else if (!part.empty())
                    kept += (kept.empty() ? "" : ",") + part;
                start = end + 1;
            }
            f.machine = kept;
        } else if (opt == "-accel") {
            machine_accel = value.substr(0, value.find(','));
        } else if (opt == "-cpu") {
            f.cpu = value;
        } else if (opt == "-m") {
            f.ram_mib = value;
        } else if (opt == "-smp") {
            f.cpus = value;
        } else if (opt == "-device") {
            f.devices.push_back(value);
        } else {
            takes_value = false;
        }
        if (takes_value) ++i;
    }
    if (f.accel.empty()) f.accel = machine_accel;
    return f;
}

namespace {

std::string join(const std::vector<std::string>& items, std::string_view sep) {
    std::string out;
    for (const auto& i : items)
        out += (out.empty() ? "" : std::string(sep)) + i;
    return out;
}

std::string or_unknown(const std::string& v) {
    return v.empty() ? "unknown" : v;
}

fingerprint_difference scalar_difference(std::string field, const std::string& snapshot,
                                         const std::string& current) {
    auto summary = fmt::format("{}: snapshot {}, this VM {}", field, or_unknown(snapshot),
                               or_unknown(current));
    return {std::move(field), snapshot, current, std::move(summary)};
}

fingerprint_difference device_difference(const std::vector<std::string>& snapshot,
                                         const std::vector<std::string>& current) {
    std::vector<std::string> only_snapshot;
    std::vector<std::string> only_current;
    for (const auto& d : snapshot)
        if (std::ranges::find(current, d) == current.end()) only_snapshot.push_back(d);
    for (const auto& d : current)
        if (std::ranges::find(snapshot, d) == snapshot.end()) only_current.push_back(d);
    std::string summary = "devices: ";
    if (only_snapshot.empty() && only_current.empty()) {
        summary += "the same devices in another order";
    } else {
        if (!only_snapshot.empty()) summary += "only in the snapshot: " + join(only_snapshot, " ");
        if (!only_current.empty())
            summary += std::string(only_snapshot.empty() ? "" : "; ") +
                       "only in this VM: " + join(only_current, " ");
    }
    return {"devices", join(snapshot, " "), join(current, " "), std::move(summary)};
}

}  // namespace

std::vector<fingerprint_difference> compare_fingerprints(const vm_fingerprint& snapshot,
                                                         const vm_fingerprint& current,
                                                         bool disk_only) {
    std::vector<fingerprint_difference> out;
    auto scalar = [&](const char* field, const std::string& a, const std::string& b) {
        if (a != b) out.push_back(scalar_difference(field, a, b));
    };
    if (!disk_only) {
        scalar("QEMU version", snapshot.qemu_version, current.qemu_version);
        scalar("machine type", snapshot.machine, current.machine);
        scalar("accelerator", snapshot.accel, current.accel);
        scalar("CPU model", snapshot.cpu, current.cpu);
        scalar("RAM (MiB)", snapshot.ram_mib, current.ram_mib);
        scalar("vCPUs", snapshot.cpus, current.cpus);
        if (snapshot.devices != current.devices)
            out.push_back(device_difference(snapshot.devices, current.devices));
    }
    scalar("base image build", snapshot.build_id, current.build_id);
    return out;
}

std::string describe_differences(const std::vector<fingerprint_difference>& differences) {
    std::string out;
    for (const auto& d : differences)
        out += (out.empty() ? "" : "; ") + d.summary;
    return out;
}

std::string fit_hint(const std::vector<fingerprint_difference>& differences,
                     std::string_view name_option) {
    std::string flags;
    std::string sets;
    // fingerprint field -> start's flag and the instance setting.
    constexpr std::array<std::array<std::string_view, 3>, 3> settable = {{
        {"RAM (MiB)", "--ram", "ram"},
        {"vCPUs", "--cpus", "cpus"},
        {"accelerator", "--accel", "accel"},
    }};
    for (const auto& d : differences) {
        const auto it =
            std::ranges::find_if(settable, [&](const auto& s) { return s[0] == d.field; });
        if (it == settable.end() || d.snapshot.empty()) continue;
        const auto flag = (*it)[1];
        const auto key = (*it)[2];
        flags += fmt::format(" {} {}", flag, d.snapshot);
        sets += fmt::format("{}`stackemu config set{} {} {}`", sets.empty() ? "" : " and ",
                            name_option, key, d.snapshot);
    }
    if (flags.empty()) return {};
    return fmt::format(
        "to use it, start once with `stackemu start{}{}` (the instance records "
        "it for later starts), or run {} while it is stopped",
        name_option, flags, sets);
}

json to_json(const vm_fingerprint& f) {
    return json{{"qemu_version", f.qemu_version},
                {"machine", f.machine},
                {"accel", f.accel},
                {"cpu", f.cpu},
                {"ram_mib", f.ram_mib},
                {"cpus", f.cpus},
                {"devices", f.devices},
                {"build_id", f.build_id}};
}

namespace {

std::string string_of(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}
std::int64_t int_of(const json& j, const char* key) {
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
}

}  // namespace

std::optional<vm_fingerprint> fingerprint_from_json(const json& j) {
    if (!j.is_object()) return std::nullopt;
    vm_fingerprint f;
    f.qemu_version = string_of(j, "qemu_version");
    f.machine = string_of(j, "machine");
    f.accel = string_of(j, "accel");
    f.cpu = string_of(j, "cpu");
    f.ram_mib = string_of(j, "ram_mib");
    f.cpus = string_of(j, "cpus");
    f.build_id = string_of(j, "build_id");
    if (auto d = j.find("devices"); d != j.end()) {
        if (!d->is_array()) return std::nullopt;
        for (const auto& dev : *d) {
            if (!dev.is_string()) return std::nullopt;
            f.devices.push_back(dev.get<std::string>());
        }
    }
    return f;
}

std::optional<std::string> parse_qemu_version_output(std::string_view text) {
    constexpr std::string_view marker = "version ";
    const auto at = text.find(marker);
    if (at == std::string_view::npos) return std::nullopt;
    auto rest = text.substr(at + marker.size());
    std::size_t n = 0;
    while (n < rest.size() && (std::isdigit(static_cast<unsigned char>(rest[n])) || rest[n] == '.'))
        ++n;
    if (n == 0 || !std::isdigit(static_cast<unsigned char>(rest[0]))) return std::nullopt;
    return std::string(rest.substr(0, n));
}

// ---- Records ----

json records_to_json(const std::vector<snapshot_record>& records) {
    json list = json::array();
    for (const auto& r : records)
        list.push_back({{"name", r.name},
                        {"date_sec", r.date_sec},
                        {"date_nsec", r.date_nsec},
                        {"vm_state", r.vm_state},
                        {"method", r.method},
                        {"saved_at", r.saved_at},
                        {"fingerprint", r.fingerprint ? to_json(*r.fingerprint) : json(nullptr)}});
    return json{{"format", 1}, {"snapshots", list}};
}

std::vector<snapshot_record> records_from_json(const json& j) {
    std::vector<snapshot_record> out;
    if (!j.is_object()) return out;
    auto list = j.find("snapshots");
    if (list == j.end() || !list->is_array()) return out;
    for (const auto& e : *list) {
        if (!e.is_object() || string_of(e, "name").empty()) continue;
        snapshot_record r;
        r.name = string_of(e, "name");
        r.date_sec = int_of(e, "date_sec");
        r.date_nsec = int_of(e, "date_nsec");
        r.vm_state = e.value("vm_state", json(false)).is_boolean() && e.value("vm_state", false);
        r.method = string_of(e, "method");
        r.saved_at = string_of(e, "saved_at");
        if (auto f = e.find("fingerprint"); f != e.end()) r.fingerprint = fingerprint_from_json(*f);
        out.push_back(std::move(r));
    }
    return out;
}

std::optional<snapshot_record> find_record(const std::vector<snapshot_record>& records,
                                           const qmp::snapshot_info& s) {
    for (const auto& r : records)
        if (r.name == s.name && r.date_sec == s.date_sec && r.date_nsec == s.date_nsec) return r;
    return std::nullopt;
}

compatibility judge_compatibility(const qmp::snapshot_info& s,
                                  const std::optional<snapshot_record>& record,
                                  const std::optional<vm_fingerprint>& current) {
    compatibility c;
    if (!record || !record->fingerprint) {
        c.reason =
            "no fingerprint was recorded for it (not saved by stackemu, or vm/snapshots.json "
            "was lost)";
        return c;
    }
    if (!current) {
        c.reason = "this VM's configuration is not known yet (it has never been started)";
        return c;
    }
    c.differences = compare_fingerprints(*record->fingerprint, *current, s.vm_state_size == 0);
    c.compatible = c.differences.empty();
    if (!c.differences.empty()) c.reason = describe_differences(c.differences);
    return c;
}

int snapshot_exit_code(const error& e) {
    switch (e.code) {
        case errc::invalid_argument:
            return snapshot_exit::usage;
        case errc::not_found:
            return snapshot_exit::not_found;
        case errc::incompatible:
            return snapshot_exit::incompatible;
        case errc::already_exists:
            return snapshot_exit::exists;
        case errc::job_failed:
            return snapshot_exit::job_failed;
        case errc::busy:
            return snapshot_exit::busy;
        default:
            return snapshot_exit::error;
    }
}

// ---- Operations ----

namespace {

constexpr const char* disk_node = "disk0";  // vm_spec::disk_node: the overlay's qcow2 node

fs::path records_path(const instance_paths& paths) {
    return paths.vm_dir / "snapshots.json";
}

std::vector<snapshot_record> read_records(const instance_paths& paths) {
    auto text = read_file(records_path(paths).string());
    if (!text) return {};
    return records_from_json(json::parse(*text, nullptr, false));
}

// Keeps the records of snapshots the image still has, with `changed` put in (or removed
// when it names a snapshot no longer listed). Returns a note when the file cannot be written.
std::string store_records(const instance_paths& paths,
                          const std::vector<qmp::snapshot_info>& listed,
                          std::optional<snapshot_record> changed) {
    std::vector<snapshot_record> kept;
    for (auto& r : read_records(paths)) {
        if (changed && r.name == changed->name) continue;
        const bool listed_still = std::ranges::any_of(listed, [&](const qmp::snapshot_info& s) {
            return s.name == r.name && s.date_sec == r.date_sec && s.date_nsec == r.date_nsec;
        });
        if (listed_still) kept.push_back(std::move(r));
    }
    if (changed) kept.push_back(std::move(*changed));
    const auto path = records_path(paths);
    auto written = write_file_atomically(path.string(), records_to_json(kept).dump(2) + "\n", 0600);
    if (!written)
        return fmt::format(
            "could not record the snapshot's fingerprint in {} ({}): loading it "
            "into a running VM will need --force",
            path.string(), written.error().what());
    return {};
}

const qmp::snapshot_info* find_listed(const std::vector<qmp::snapshot_info>& listed,
                                      std::string_view name) {
    for (const auto& s : listed)
        if (s.name == name) return &s;
    return nullptr;
}

std::unexpected<error> no_such_snapshot(std::string_view name, bool running) {
    return fail(errc::not_found,
                fmt::format("there is no snapshot named \"{}\" in the {}: `stackemu snapshot "
                            "list` shows the snapshots there are",
                            name, running ? "running VM's disk" : "stopped VM's overlay"));
}

std::string version_string(const qmp::qemu_version& v) {
    return fmt::format("{}.{}.{}", v.major, v.minor, v.micro);
}

// The configuration state.json describes (the running VM's, or the last one that ran).
std::optional<vm_fingerprint> state_fingerprint(const json& state,
                                                const std::string& qemu_version) {
    auto argv_it = state.find("argv");
    if (argv_it == state.end() || !argv_it->is_array()) return std::nullopt;
    std::vector<std::string> argv;
    for (const auto& a : *argv_it) {
        if (!a.is_string()) return std::nullopt;
        argv.push_back(a.get<std::string>());
    }
    return fingerprint_from_argv(argv, qemu_version, string_of(state, "accel"),
                                 string_of(state, "build_id"));
}

// The base build under the overlay (overlay.json, written by start), else state.json's.
std::string overlay_build_id(const instance_paths& paths) {
    auto text = read_file((paths.vm_dir / "overlay.json").string());
    if (text) {
        auto j = json::parse(*text, nullptr, false);
        if (j.is_object() && !string_of(j, "build_id").empty()) return string_of(j, "build_id");
    }
    return string_of(detail::read_state(paths), "build_id");
}

std::string trimmed(std::string_view text) {
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.back())))
        text.remove_suffix(1);
    while (!text.empty() && std::isspace(static_cast<unsigned char>(text.front())))
        text.remove_prefix(1);
    return std::string(text);
}

// The instance lock for a snapshot command. Its file lives in vm/, which exists once the
// instance has been started; a lock file that cannot be opened is an I/O problem, never
// "no such snapshot".
result<instance_lock> take_lock(const instance_paths& paths) {
    auto lock = try_acquire(paths.lock.string(), "snapshot");
    if (!lock && lock.error().code == errc::not_found) {
        auto e = lock.error();
        e.code = errc::io_error;
        return fail(std::move(e));
    }
    return lock;
}

bool has_vm_dir(const instance_paths& paths) {
    std::error_code ec;
    return fs::is_directory(paths.vm_dir, ec);
}

// A running VM to work on, or nullopt when no QEMU runs for the instance.
asio::awaitable<result<std::optional<detail::connected_vm>>> connect_if_running(instance inst) {
    std::error_code ec;
    if (!fs::exists(inst.paths.qmp_socket, ec)) co_return std::optional<detail::connected_vm>{};
    auto vm = co_await detail::connect_vm_settled(inst.paths, detail::qemu_binary_for(inst.config));
    if (vm) co_return std::optional<detail::connected_vm>(std::move(*vm));
    const auto code = vm.error().code;
    // A live QEMU whose monitor refuses or queues us is busy, not gone (16.2): its disk must
    // not be touched offline.
    const auto launched = detail::launched_identity(detail::read_state(inst.paths));
    const bool alive = launched && open_launched(*launched).has_value();
    // No listener, a QEMU that is going, or gone: a socket file left behind, not a VM.
    if (!alive &&
        (code == errc::connect_failed || code == errc::disconnected || code == errc::not_found))
        co_return std::optional<detail::connected_vm>{};
    // Busy is a monitor that does not answer in time or takes no more clients; one that
    // answers with garbage or a wrong id is broken, and says so with its own error.
    if (code == errc::timeout ||
        (alive && (code == errc::connect_failed || code == errc::not_found)))
        co_return fail(errc::busy,
                       fmt::format("QEMU's monitor {} is busy: it did not answer within "
                                   "EMULATOR_REPLY_TIMEOUT ({}; another client may hold the "
                                   "socket, or QEMU is hung): `stackemu status` shows the VM; "
                                   "`stackemu stop` ends it",
                                   inst.paths.qmp_socket.string(), vm.error().what()));
    if (alive) {
        auto e = vm.error();
        e.message = fmt::format(
            "QEMU's monitor {} could not be used ({}): `stackemu status` shows "
            "the VM; `stackemu stop` ends it",
            inst.paths.qmp_socket.string(), e.message);
        co_return fail(std::move(e));
    }
    co_return fail(vm.error());
}

// ---- Running VM ----

asio::awaitable<result<std::vector<qmp::snapshot_info>>> live_snapshots(qmp::client& c) {
    auto listed = co_await qmp::query_snapshots(c, disk_node);
    if (!listed && listed.error().code == errc::not_found)
        co_return fail(errc::wrong_state,
                       fmt::format("the running VM has no disk node \"{}\" to snapshot (it was "
                                   "not started by this stackemu): stop it and start it again",
                                   disk_node));
    co_return listed;
}

// Concluded snapshot jobs an earlier stackemu left (a deadline, a lost connection) are
// dismissed; one still running means QEMU is busy with it.
asio::awaitable<result<void>> clear_leftover_jobs(qmp::client& c) {
    auto jobs = co_await qmp::query_jobs(c);
    if (!jobs) {
        // QEMU before 3.0 has no query-jobs: nothing to clear there.
        if (jobs.error().code == errc::qemu_error) co_return result<void>{};
        co_return fail(jobs.error());
    }
    for (const auto& j : *jobs) {
        if (!j.id.starts_with("stackemu-")) continue;
        if (j.status == "concluded") {
            (void)co_await qmp::job_dismiss(c, j.id);
            continue;
        }
        co_return fail(errc::busy,
                       fmt::format("an earlier {} job ({}) is still {} in QEMU: wait for it to "
                                   "end (`stackemu snapshot list` then shows its result), or "
                                   "`stackemu stop` the VM",
                                   j.type.empty() ? "snapshot" : j.type, j.id, j.status));
    }
    co_return result<void>{};
}

// One snapshot operation on the running VM: a QMP job, or HMP before QEMU 6.0.
asio::awaitable<result<void>> live_operation(qmp::client& c, std::string verb, std::string name,
                                             std::chrono::milliseconds timeout) {
    if (c.version().major < 6) {
        const char* hmp_verb = verb == "save" ? "savevm" : verb == "load" ? "loadvm" : "delvm";
        auto line = detail::hmp_snapshot_line(hmp_verb, name);
        if (!line) co_return fail(line.error());
        auto reply = co_await qmp::human_monitor_command(c, *line, timeout);
        if (!reply) {
            if (reply.error().code == errc::timeout)
                co_return fail(errc::job_failed, fmt::format("{} did not answer within {} s",
                                                             hmp_verb, timeout.count() / 1000.0));
            co_return fail(reply.error());
        }
        // The monitor prints nothing on success; anything it prints is its error.
        const auto text = trimmed(*reply);
        if (!text.empty())
            co_return fail(error{errc::job_failed, fmt::format("{} failed", hmp_verb), {}, text});
        co_return result<void>{};
    }
    const qmp::snapshot_target target{name, disk_node, {disk_node}};
    result<void> done;
    if (verb == "save")
        done = co_await qmp::snapshot_save(c, target, timeout);
    else if (verb == "load")
        done = co_await qmp::snapshot_load(c, target, timeout);
    else
        done = co_await qmp::snapshot_delete(c, name, target.devices, timeout);
    if (!done && done.error().code == errc::timeout) {
        auto e = done.error();
        e.code = errc::job_failed;
        co_return fail(std::move(e));
    }
    co_return done;
}

std::string status_after(const result<qmp::vm_status>& st) {
    return st ? st->status : std::string("unknown");
}

asio::awaitable<result<snapshot_outcome>> save_live(snapshot_request req, qmp::client& c,
                                                    clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    snapshot_outcome out;
    out.name = req.name;
    out.running = true;
    out.method = c.version().major < 6 ? "hmp" : "qmp-job";
    auto before = co_await live_snapshots(c);
    if (!before) co_return fail(before.error());
    const bool exists = find_listed(*before, req.name) != nullptr;
    if (exists && !req.replace)
        co_return fail(errc::already_exists,
                       fmt::format("a snapshot named \"{}\" already exists: choose another name, "
                                   "or --replace to overwrite it",
                                   req.name));
    if (auto cleared = co_await clear_leftover_jobs(c); !cleared) co_return fail(cleared.error());

    const auto t_job = clock_type::now();
    if (exists) {
        auto deleted = co_await live_operation(c, "delete", req.name, req.timeout);
        if (!deleted) co_return fail(deleted.error());
        out.replaced = true;
    }
    auto saved = co_await live_operation(c, "save", req.name, req.timeout);
    out.job_ms = detail::ms_since(t_job);
    if (!saved) co_return fail(saved.error());

    auto after = co_await live_snapshots(c);
    if (!after) co_return fail(after.error());
    const auto* info = find_listed(*after, req.name);
    if (!info)
        co_return fail(
            errc::internal,
            fmt::format("QEMU reported the snapshot \"{}\" saved, but does not list it", req.name));
    out.vm_state = info->vm_state_size > 0;
    out.vm_state_size = info->vm_state_size;
    snapshot_record record;
    record.name = req.name;
    record.date_sec = info->date_sec;
    record.date_nsec = info->date_nsec;
    record.vm_state = out.vm_state;
    record.method = out.method;
    record.saved_at = detail::now_iso8601();
    record.fingerprint = state_fingerprint(detail::read_state(paths), version_string(c.version()));
    out.note = store_records(paths, *after, record);
    auto st = co_await qmp::query_status(c);
    out.qemu_status = status_after(st);
    detail::append_event(paths, json{{"record", "snapshot saved"},
                                     {"name", req.name},
                                     {"at", record.saved_at},
                                     {"ms", out.job_ms}});
    out.total_ms = detail::ms_since(t0);
    co_return out;
}

asio::awaitable<result<snapshot_outcome>> load_live(snapshot_request req, qmp::client& c,
                                                    clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    snapshot_outcome out;
    out.name = req.name;
    out.running = true;
    out.method = c.version().major < 6 ? "hmp" : "qmp-job";
    auto listed = co_await live_snapshots(c);
    if (!listed) co_return fail(listed.error());
    const auto* info = find_listed(*listed, req.name);
    if (!info) co_return no_such_snapshot(req.name, true);
    out.vm_state = info->vm_state_size > 0;
    out.vm_state_size = info->vm_state_size;
    if (!out.vm_state)
        co_return fail(errc::incompatible,
                       fmt::format("the snapshot \"{}\" is disk-only (taken while the VM was "
                                   "stopped): it holds no RAM state to load into a running VM. "
                                   "`stackemu stop`, `stackemu snapshot load {}`, then `stackemu "
                                   "start` boots from its disk state",
                                   req.name, req.name));
    if (!req.force) {
        const auto record = find_record(read_records(paths), *info);
        const auto current =
            state_fingerprint(detail::read_state(paths), version_string(c.version()));
        const auto fit = judge_compatibility(*info, record, current);
        if (!fit.compatible)
            co_return fail(errc::incompatible,
                           fmt::format("cannot tell whether the snapshot \"{}\" fits this VM: {}. "
                                       "--force loads it anyway (QEMU then checks the state "
                                       "itself, and a failed load leaves the VM paused)",
                                       req.name, fit.reason));
        if (!*fit.compatible)
            co_return fail(errc::incompatible,
                           fmt::format("the snapshot \"{}\" does not fit this VM: {}. Start the "
                                       "VM as it was when the snapshot was taken, or take a new "
                                       "snapshot",
                                       req.name, fit.reason));
    }
    if (auto cleared = co_await clear_leftover_jobs(c); !cleared) co_return fail(cleared.error());
    auto before = co_await qmp::query_status(c);

    const auto t_job = clock_type::now();
    auto loaded = co_await live_operation(c, "load", req.name, req.timeout);
    out.job_ms = detail::ms_since(t_job);
    auto st = co_await qmp::query_status(c);
    out.qemu_status = status_after(st);
    if (!loaded) {
        auto e = loaded.error();
        // QEMU stops the VM before it loads anything and restarts it only on success.
        if (e.code == errc::job_failed && st && !st->running) {
            e.message = fmt::format(
                "loading the snapshot \"{}\" failed, and QEMU left the VM stopped (status {}) "
                "with its state possibly partly loaded, so stackemu did not restart its CPUs. "
                "Load another snapshot (`stackemu snapshot load NAME`), or `stackemu stop "
                "--stop-timeout 1` (the guest cannot shut itself down now) and `stackemu start` "
                "for a clean boot; `stackemu resume` would run the guest as it is, at your own "
                "risk. QEMU said",
                req.name, out.qemu_status);
        }
        detail::append_event(paths, json{{"record", "snapshot load failed"},
                                         {"name", req.name},
                                         {"error", e.what()},
                                         {"qemu_status", out.qemu_status},
                                         {"at", detail::now_iso8601()}});
        co_return fail(std::move(e));
    }
    if (before && !before->running && st && !st->running)
        out.note = "the VM was paused before the load and stays paused: `stackemu resume` runs it";
    detail::append_event(paths, json{{"record", "snapshot loaded"},
                                     {"name", req.name},
                                     {"at", detail::now_iso8601()},
                                     {"ms", out.job_ms}});
    out.total_ms = detail::ms_since(t0);
    co_return out;
}

asio::awaitable<result<snapshot_outcome>> delete_live(snapshot_request req, qmp::client& c,
                                                      clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    snapshot_outcome out;
    out.name = req.name;
    out.running = true;
    out.method = c.version().major < 6 ? "hmp" : "qmp-job";
    auto listed = co_await live_snapshots(c);
    if (!listed) co_return fail(listed.error());
    const auto* info = find_listed(*listed, req.name);
    // QEMU's snapshot-delete succeeds for a missing name: look first.
    if (!info) co_return no_such_snapshot(req.name, true);
    out.vm_state = info->vm_state_size > 0;
    out.vm_state_size = info->vm_state_size;
    if (auto cleared = co_await clear_leftover_jobs(c); !cleared) co_return fail(cleared.error());
    const auto t_job = clock_type::now();
    auto deleted = co_await live_operation(c, "delete", req.name, req.timeout);
    out.job_ms = detail::ms_since(t_job);
    if (!deleted) co_return fail(deleted.error());
    auto after = co_await live_snapshots(c);
    if (after) out.note = store_records(paths, *after, std::nullopt);
    auto st = co_await qmp::query_status(c);
    out.qemu_status = status_after(st);
    detail::append_event(
        paths,
        json{{"record", "snapshot deleted"}, {"name", req.name}, {"at", detail::now_iso8601()}});
    out.total_ms = detail::ms_since(t0);
    co_return out;
}

// ---- Stopped VM: qemu-img on the overlay ----

result<void> need_overlay(const instance_paths& paths) {
    std::error_code ec;
    if (fs::exists(paths.disk, ec)) return {};
    return fail(errc::wrong_state,
                fmt::format("the instance has no overlay disk yet ({}): it has never been "
                            "started, or was reset. `stackemu start` creates it",
                            paths.disk.string()));
}

result<std::vector<qmp::snapshot_info>> image_snapshots(const fs::path& disk) {
    auto r = run_tool({"qemu-img", "info", "--output=json", disk.string()});
    if (!r) return fail(r.error());
    if (r->exit_code != 0)
        return fail(error{errc::process_failed,
                          fmt::format("qemu-img info {} failed", disk.string()),
                          {},
                          trimmed(r->err)});
    auto j = json::parse(r->out, nullptr, false);
    if (!j.is_object())
        return fail(errc::protocol_error,
                    fmt::format("qemu-img info printed no JSON object: {:.200}", r->out));
    auto snaps = j.find("snapshots");
    if (snaps == j.end()) return std::vector<qmp::snapshot_info>{};
    return qmp::parse_snapshot_list(*snaps);
}

// `qemu-img snapshot <flag> <name> <disk>`: -c create, -a apply, -d delete.
result<void> qemu_img_snapshot(std::string_view flag, const std::string& name,
                               const fs::path& disk) {
    if (auto ok = check_snapshot_name(name); !ok) return fail(ok.error());
    auto r = run_tool({"qemu-img", "snapshot", std::string(flag), name, disk.string()});
    if (!r) return fail(r.error());
    if (r->exit_code != 0)
        return fail(error{errc::job_failed,
                          fmt::format("qemu-img snapshot {} {} failed", flag, name),
                          {},
                          trimmed(r->err.empty() ? r->out : r->err)});
    return {};
}

result<snapshot_outcome> save_offline(const snapshot_request& req, clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    if (auto ok = need_overlay(paths); !ok) return fail(ok.error());
    snapshot_outcome out;
    out.name = req.name;
    out.method = "qemu-img";
    auto before = image_snapshots(paths.disk);
    if (!before) return fail(before.error());
    const bool exists = find_listed(*before, req.name) != nullptr;
    if (exists && !req.replace)
        return fail(errc::already_exists,
                    fmt::format("a snapshot named \"{}\" already exists: choose another name, or "
                                "--replace to overwrite it",
                                req.name));
    const auto t_job = clock_type::now();
    if (exists) {
        if (auto d = qemu_img_snapshot("-d", req.name, paths.disk); !d) return fail(d.error());
        out.replaced = true;
    }
    if (auto c = qemu_img_snapshot("-c", req.name, paths.disk); !c) return fail(c.error());
    out.job_ms = detail::ms_since(t_job);
    auto after = image_snapshots(paths.disk);
    if (!after) return fail(after.error());
    const auto* info = find_listed(*after, req.name);
    if (!info)
        return fail(
            errc::internal,
            fmt::format("qemu-img created the snapshot \"{}\", but does not list it", req.name));
    snapshot_record record;
    record.name = req.name;
    record.date_sec = info->date_sec;
    record.date_nsec = info->date_nsec;
    record.vm_state = false;
    record.method = out.method;
    record.saved_at = detail::now_iso8601();
    vm_fingerprint disk_only;
    disk_only.build_id = overlay_build_id(paths);
    record.fingerprint = disk_only;
    out.note = store_records(paths, *after, record);
    detail::append_event(paths, json{{"record", "snapshot saved"},
                                     {"name", req.name},
                                     {"offline", true},
                                     {"at", record.saved_at}});
    out.total_ms = detail::ms_since(t0);
    return out;
}

result<snapshot_outcome> load_offline(const snapshot_request& req, clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    if (auto ok = need_overlay(paths); !ok) return fail(ok.error());
    snapshot_outcome out;
    out.name = req.name;
    out.method = "qemu-img";
    auto listed = image_snapshots(paths.disk);
    if (!listed) return fail(listed.error());
    const auto* info = find_listed(*listed, req.name);
    if (!info) return no_such_snapshot(req.name, false);
    out.vm_state = info->vm_state_size > 0;
    out.vm_state_size = info->vm_state_size;
    const auto t_job = clock_type::now();
    set_ready_state_current(paths, false);  // the disk no longer matches the ready state
    if (auto a = qemu_img_snapshot("-a", req.name, paths.disk); !a) return fail(a.error());
    out.job_ms = detail::ms_since(t_job);
    out.note = out.vm_state
                   ? "the VM is stopped, so only the snapshot's disk state was applied: the next "
                     "start boots from it (as after a power cut); its RAM state is used only by "
                     "a load into the running VM"
                   : "the next start boots from the snapshot's disk state";
    detail::append_event(paths, json{{"record", "snapshot loaded"},
                                     {"name", req.name},
                                     {"offline", true},
                                     {"at", detail::now_iso8601()}});
    out.total_ms = detail::ms_since(t0);
    return out;
}

result<snapshot_outcome> delete_offline(const snapshot_request& req, clock_type::time_point t0) {
    const auto& paths = req.inst.paths;
    if (auto ok = need_overlay(paths); !ok) return fail(ok.error());
    snapshot_outcome out;
    out.name = req.name;
    out.method = "qemu-img";
    auto listed = image_snapshots(paths.disk);
    if (!listed) return fail(listed.error());
    const auto* info = find_listed(*listed, req.name);
    if (!info) return no_such_snapshot(req.name, false);
    out.vm_state = info->vm_state_size > 0;
    out.vm_state_size = info->vm_state_size;
    const auto t_job = clock_type::now();
    if (auto d = qemu_img_snapshot("-d", req.name, paths.disk); !d) return fail(d.error());
    out.job_ms = detail::ms_since(t_job);
    auto after = image_snapshots(paths.disk);
    if (after) out.note = store_records(paths, *after, std::nullopt);
    detail::append_event(paths, json{{"record", "snapshot deleted"},
                                     {"name", req.name},
                                     {"offline", true},
                                     {"at", detail::now_iso8601()}});
    out.total_ms = detail::ms_since(t0);
    return out;
}

enum class operation { save, load, remove };

// The controller's connection dropped mid-operation because QEMU itself is gone.
std::unexpected<error> qemu_died_during(operation op, std::string_view name) {
    const char* verb = op == operation::save ? "save" : op == operation::load ? "load" : "delete";
    const char* outcome = op == operation::save   ? "was not saved"
                          : op == operation::load ? "was not loaded"
                                                  : "may or may not be deleted";
    return fail(errc::job_failed,
                fmt::format("QEMU exited during `snapshot {} {}` (it crashed or was killed), so "
                            "the snapshot {}: `stackemu status` shows the VM, `stackemu start` "
                            "starts it again",
                            verb, name, outcome));
}

asio::awaitable<result<snapshot_outcome>> run_operation(snapshot_request req, operation op) {
    const auto t0 = clock_type::now();
    const std::string name = req.name;
    if (auto ok = check_snapshot_name(req.name); !ok) co_return fail(ok.error());
    if (req.timeout <= 0ms)
        co_return fail(errc::invalid_argument, "the snapshot timeout must be positive");
    // Never started (or removed): no VM and no overlay, and no lock file to take.
    if (!has_vm_dir(req.inst.paths)) co_return fail(need_overlay(req.inst.paths).error());
    auto lock = take_lock(req.inst.paths);
    if (!lock) co_return fail(lock.error());
    auto vm = co_await connect_if_running(req.inst);
    if (!vm) co_return fail(vm.error());
    if (*vm) {
        auto& c = *(*vm)->qmp;
        result<snapshot_outcome> r;
        if (op == operation::save)
            r = co_await save_live(std::move(req), c, t0);
        else if (op == operation::load)
            r = co_await load_live(std::move(req), c, t0);
        else
            r = co_await delete_live(std::move(req), c, t0);
        c.close();
        if (!r && r.error().code == errc::disconnected) {
            const bool gone = co_await (*vm)->process->wait_exit(2000ms);
            if (gone) co_return qemu_died_during(op, name);
        }
        co_return r;
    }
    if (op == operation::save) co_return save_offline(req, t0);
    if (op == operation::load) co_return load_offline(req, t0);
    co_return delete_offline(req, t0);
}

}  // namespace

asio::awaitable<result<snapshot_outcome>> save_snapshot(snapshot_request req) {
    co_return co_await run_operation(std::move(req), operation::save);
}
asio::awaitable<result<snapshot_outcome>> load_snapshot(snapshot_request req) {
    co_return co_await run_operation(std::move(req), operation::load);
}
asio::awaitable<result<snapshot_outcome>> delete_snapshot(snapshot_request req) {
    co_return co_await run_operation(std::move(req), operation::remove);
}

bool ready_state_current(const instance_paths& paths) {
    auto text = read_file((paths.vm_dir / "ready-state.json").string());
    if (!text) return false;
    auto j = json::parse(*text, nullptr, false);
    return j.is_object() && j.value("current", false);
}

void set_ready_state_current(const instance_paths& paths, bool current) {
    std::error_code ec;
    if (!current && !fs::exists(paths.vm_dir / "ready-state.json", ec)) return;
    const auto unix_now = std::chrono::duration_cast<std::chrono::seconds>(
                              std::chrono::system_clock::now().time_since_epoch())
                              .count();
    (void)write_file_atomically(
        (paths.vm_dir / "ready-state.json").string(),
        json{{"current", current}, {"at", detail::now_iso8601()}, {"unix", unix_now}}.dump() + "\n",
        0600);
}

std::optional<std::int64_t> ready_state_saved_at(const instance_paths& paths) {
    auto text = read_file((paths.vm_dir / "ready-state.json").string());
    if (!text) return std::nullopt;
    auto j = json::parse(*text, nullptr, false);
    if (!j.is_object() || !j.value("current", false) || !j.contains("unix") ||
        !j["unix"].is_number_integer())
        return std::nullopt;
    return j["unix"].get<std::int64_t>();
}

asio::awaitable<result<snapshot_outcome>> refresh_ready_state(instance inst, qmp::client& c) {
    const auto t0 = clock_type::now();
    auto listed = co_await live_snapshots(c);
    if (!listed) co_return fail(listed.error());
    if (!find_listed(*listed, std::string(ready_state_name)))
        co_return fail(errc::not_found, "no ready state saved");
    const auto saved = detail::read_state(inst.paths);
    const auto state = saved.value("state", "");
    auto st = co_await qmp::query_status(c);
    if (!st) co_return fail(st.error());
    if ((state != "ready" && state != "paused") ||
        (st->status != "running" && st->status != "paused"))
        co_return fail(errc::wrong_state,
                       fmt::format("the VM is {} (QEMU: {}), not a state to resume from",
                                   state.empty() ? "in an unknown state" : state, st->status));
    snapshot_request req;
    req.inst = std::move(inst);
    req.name = std::string(ready_state_name);
    req.replace = true;
    req.timeout = 120000ms;
    auto r = co_await save_live(req, c, t0);
    if (r && r->vm_state) set_ready_state_current(req.inst.paths, true);
    co_return r;
}

asio::awaitable<result<snapshot_listing>> list_snapshots(instance inst) {
    const auto& paths = inst.paths;
    if (!has_vm_dir(paths)) co_return snapshot_listing{};  // never started: none
    auto lock = take_lock(paths);
    if (!lock) co_return fail(lock.error());
    auto vm = co_await connect_if_running(inst);
    if (!vm) co_return fail(vm.error());
    snapshot_listing out;
    std::vector<qmp::snapshot_info> listed;
    const auto state = detail::read_state(paths);
    if (*vm) {
        auto& c = *(*vm)->qmp;
        out.running = true;
        out.current = state_fingerprint(state, version_string(c.version()));
        auto snaps = co_await live_snapshots(c);
        c.close();
        if (!snaps) co_return fail(snaps.error());
        listed = std::move(*snaps);
    } else {
        std::error_code ec;
        if (!fs::exists(paths.disk, ec)) co_return out;  // never started or reset: none
        auto snaps = image_snapshots(paths.disk);
        if (!snaps) co_return fail(snaps.error());
        listed = std::move(*snaps);
        // The QEMU the next start would run.
        std::string version;
        auto v = run_tool({detail::qemu_binary_for(inst.config), "--version"});
        if (v && v->exit_code == 0) version = parse_qemu_version_output(v->out).value_or("");
        out.current = state_fingerprint(state, version);
    }
    const auto records = read_records(paths);
    for (const auto& s : listed) {
        snapshot_entry e;
        e.info = s;
        e.vm_state = s.vm_state_size > 0;
        e.record = find_record(records, s);
        e.fit = judge_compatibility(s, e.record, out.current);
        out.snapshots.push_back(std::move(e));
    }
    co_return out;
}

}  // namespace stackemu::lifecycle
