// Shared pieces of the controller: the instance layout, forwards, the state file, events log.
#include <fcntl.h>
#include <fmt/chrono.h>
#include <fmt/format.h>
#include <netinet/in.h>
#include <sys/socket.h>
#include <unistd.h>

#include <fstream>
#include <nlohmann/json.hpp>

#include "lifecycle/controller.hpp"
#include "lifecycle/controller_detail.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/vm_process.hpp"

namespace stackemu::lifecycle {

using nlohmann::json;
namespace fs = std::filesystem;

result<instance> open_instance(settings config) {
    socket_fallback fallback;
    fallback.uid = ::getuid();
    if (const char* xdg = std::getenv("XDG_RUNTIME_DIR"); xdg && *xdg)
        fallback.xdg_runtime_dir = xdg;
    auto paths = make_instance_paths(config, fallback);
    if (!paths) return std::unexpected(paths.error());
    return instance{std::move(config), std::move(*paths)};
}

result<void> check_instance_owner(const instance& inst) {
    const auto& p = inst.paths;
    std::vector<fs::path> dirs{inst.config.run_dir, p.instance_dir, p.vm_dir};
    if (p.sockets_relocated) dirs.insert(dirs.end(), {p.socket_dir.parent_path(), p.socket_dir});
    for (const auto& dir : dirs)
        if (auto ok = check_dir_owner(dir.string()); !ok) return ok;
    return {};
}

std::vector<resolved_forward> resolve_forwards(const provision::profile& p, const settings& s) {
    std::vector<resolved_forward> out;
    for (const auto& f : p.forwards) {
        resolved_forward r{f.name, f.host_default.value_or(f.guest_port), f.guest_port, ""};
        if (f.name == "dashboard")
            r = {f.name, s.ports.dashboard, f.guest_port, "EMULATOR_DASHBOARD_PORT"};
        if (f.name == "backend")
            r = {f.name, s.ports.backend, f.guest_port, "EMULATOR_BACKEND_PORT"};
        if (f.name == "minio") r = {f.name, s.ports.minio, f.guest_port, "EMULATOR_MINIO_PORT"};
        if (f.name == "inbucket")
            r = {f.name, s.ports.inbucket, f.guest_port, "EMULATOR_INBUCKET_PORT"};
        out.push_back(std::move(r));
    }
    return out;
}

bool vm_running(const instance_paths& paths) {
    if (const auto launched = detail::launched_identity(detail::read_state(paths))) {
        auto process = open_launched(*launched);
        return process || process.error().code != errc::not_found;
    }
    std::error_code ec;
    return fs::exists(paths.qmp_socket, ec);
}

bool host_port_in_use(std::uint16_t port) {
    const int fd = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) return false;
    // As QEMU's slirp does: connections in TIME_WAIT on the port must not count as taken.
    const int one = 1;
    ::setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    sockaddr_in addr{};
    addr.sin_family = AF_INET;
    addr.sin_port = htons(port);
    addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    const bool taken =
        ::bind(fd, reinterpret_cast<sockaddr*>(&addr), sizeof addr) != 0 && errno == EADDRINUSE;
    ::close(fd);
    return taken;
}

result<std::vector<json>> read_events(const instance_paths& paths) {
    std::ifstream in(paths.events);
    std::vector<json> out;
    if (!in) return out;
    std::string line;
    while (std::getline(in, line)) {
        auto j = json::parse(line, nullptr, false);
        if (!j.is_discarded()) out.push_back(std::move(j));
    }
    return out;
}

namespace detail {

json read_state(const instance_paths& paths) {
    auto text = read_file(paths.state);
    if (!text) return json::object();
    auto j = json::parse(*text, nullptr, false);
    return j.is_discarded() || !j.is_object() ? json::object() : j;
}

void write_state(const instance_paths& paths, const json& state) {
    // Best effort: the state file only informs `status`; the QMP socket is the truth.
    (void)write_file_atomically(paths.state, state.dump(2) + "\n", 0600);
}

void update_state(const instance_paths& paths, const json& changes) {
    auto state = read_state(paths);
    state.update(changes);
    write_state(paths, state);
}

void append_event(const instance_paths& paths, const json& record) {
    append_events(paths, std::span(&record, 1));
}

void append_events(const instance_paths& paths, std::span<const json> records) {
    // One write() per batch with O_APPEND: concurrent writers never interleave inside a line.
    const int fd = ::open(paths.events.c_str(), O_WRONLY | O_APPEND | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return;
    std::string lines;
    for (const auto& record : records)
        lines += record.dump(-1, ' ', false, json::error_handler_t::replace) + "\n";
    (void)!::write(fd, lines.data(), lines.size());
    ::close(fd);
}

std::string now_iso8601() {
    auto now = std::chrono::system_clock::now();
    return fmt::format("{:%Y-%m-%dT%H:%M:%S}Z", std::chrono::floor<std::chrono::seconds>(now));
}

double ms_since(std::chrono::steady_clock::time_point t0) {
    return std::chrono::duration<double, std::milli>(std::chrono::steady_clock::now() - t0).count();
}

void remove_sockets(const instance_paths& paths) {
    std::error_code ignored;
    for (const auto& p :
         {paths.qmp_socket, paths.monitor_socket, paths.serial_socket, paths.qga_socket})
        fs::remove(p, ignored);
}

std::string interrupted_command_note(const json& saved) {
    const std::string state = saved.is_object() ? saved.value("state", "") : "";
    if (state == "launching" || state == "booting")
        return "the `stackemu start` that launched it was interrupted before the VM was ready; "
               "`stackemu stop` ends it";
    if (state == "stopping")
        return "a `stackemu stop` was interrupted before QEMU exited; `stackemu stop` ends it";
    return {};
}

std::optional<process_identity> launched_identity(const json& saved) {
    if (!saved.is_object()) return std::nullopt;
    const auto it = saved.find("qemu");
    if (it == saved.end() || !it->is_object()) return std::nullopt;
    const auto& q = *it;
    for (const auto* key : {"pid", "start_time", "exe_dev", "exe_ino"})
        if (!q.contains(key) || !q[key].is_number_integer()) return std::nullopt;
    return process_identity{q["pid"].get<pid_t>(), q["start_time"].get<std::uint64_t>(),
                            q["exe_dev"].get<std::uint64_t>(), q["exe_ino"].get<std::uint64_t>()};
}

json identity_json(const process_identity& id) {
    return json{{"pid", id.pid},
                {"start_time", id.start_time},
                {"exe_dev", id.exe_dev},
                {"exe_ino", id.exe_ino}};
}

}  // namespace detail
}  // namespace stackemu::lifecycle
