// Typed QMP command helpers and the block-job runner.
#include "qmp/commands.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>

namespace stackemu::qmp {

namespace {

result<void> discard(result<json> r) {
    if (!r) return fail(r.error());
    return {};
}

std::unexpected<error> malformed(std::string_view command, const json& value) {
    return fail(errc::protocol_error,
                fmt::format("unexpected reply to {}: {:.200}", command, value.dump()));
}

// json::value() throws on a member of another type (or a non-object): these never do.
std::string string_member(const json& j, const char* key) {
    if (!j.is_object()) return {};
    auto it = j.find(key);
    return it != j.end() && it->is_string() ? it->get<std::string>() : std::string();
}
std::int64_t integer_member(const json& j, const char* key) {
    if (!j.is_object()) return 0;
    auto it = j.find(key);
    return it != j.end() && it->is_number_integer() ? it->get<std::int64_t>() : 0;
}

// A JOB_STATUS_CHANGE of `job_id` reaching `status`.
bool job_event_is(const event& ev, const std::string& job_id, std::string_view status) {
    return string_member(ev.data, "id") == job_id && string_member(ev.data, "status") == status;
}

}  // namespace

asio::awaitable<result<vm_status>> query_status(client& c) {
    auto r = co_await c.execute("query-status");
    if (!r) co_return fail(r.error());
    if (!r->is_object() || !(*r)["running"].is_boolean() || !(*r)["status"].is_string())
        co_return malformed("query-status", *r);
    co_return vm_status{(*r)["running"].get<bool>(), (*r)["status"].get<std::string>()};
}

asio::awaitable<result<qemu_version>> query_version(client& c) {
    auto r = co_await c.execute("query-version");
    if (!r) co_return fail(r.error());
    // query-version answers with the same shape as the greeting's version member.
    auto as_greeting = classify(json{{"QMP", {{"version", *r}, {"capabilities", json::array()}}}});
    if (!as_greeting) co_return malformed("query-version", *r);
    co_return std::get<greeting>(*as_greeting).version;
}

asio::awaitable<result<std::optional<std::string>>> query_name(client& c) {
    auto r = co_await c.execute("query-name");
    if (!r) co_return fail(r.error());
    if (!r->is_object()) co_return malformed("query-name", *r);
    auto it = r->find("name");
    if (it == r->end()) co_return std::optional<std::string>{};
    if (!it->is_string()) co_return malformed("query-name", *r);
    co_return std::optional<std::string>(it->get<std::string>());
}

asio::awaitable<result<std::vector<job_info>>> query_jobs(client& c) {
    auto r = co_await c.execute("query-jobs");
    if (!r) co_return fail(r.error());
    if (!r->is_array()) co_return malformed("query-jobs", *r);
    std::vector<job_info> jobs;
    for (const auto& j : *r) {
        if (!j.is_object() || !j.value("id", json()).is_string())
            co_return malformed("query-jobs", *r);
        job_info info;
        info.id = j["id"].get<std::string>();
        // Typed reads that never throw: a member of another type reads as absent.
        info.type = string_member(j, "type");
        info.status = string_member(j, "status");
        info.current_progress = integer_member(j, "current-progress");
        info.total_progress = integer_member(j, "total-progress");
        if (auto e = j.find("error"); e != j.end() && e->is_string())
            info.error = e->get<std::string>();
        jobs.push_back(std::move(info));
    }
    co_return jobs;
}

asio::awaitable<result<void>> job_dismiss(client& c, std::string job_id) {
    // GCC 12 miscompiles braced initialisers inside co_await expressions: build args first.
    json args = {{"id", std::move(job_id)}};
    co_return discard(co_await c.execute("job-dismiss", std::move(args)));
}

asio::awaitable<result<void>> system_powerdown(client& c) {
    co_return discard(co_await c.execute("system_powerdown"));
}
asio::awaitable<result<void>> system_reset(client& c) {
    co_return discard(co_await c.execute("system_reset"));
}
asio::awaitable<result<void>> stop(client& c) {
    co_return discard(co_await c.execute("stop"));
}
asio::awaitable<result<void>> cont(client& c) {
    co_return discard(co_await c.execute("cont"));
}

asio::awaitable<result<void>> quit(client& c, milliseconds timeout) {
    auto r = co_await c.execute("quit", json::object(), timeout);
    // The client turns EOF after quit into success already; a socket already closed by an
    // earlier quit counts too.
    if (!r && r.error().code == errc::disconnected_after_quit) co_return result<void>{};
    co_return discard(std::move(r));
}

asio::awaitable<result<std::string>> human_monitor_command(client& c, std::string command_line,
                                                           milliseconds timeout) {
    json args = {{"command-line", std::move(command_line)}};
    auto r = co_await c.execute("human-monitor-command", std::move(args), timeout);
    if (!r) co_return fail(r.error());
    if (!r->is_string()) co_return malformed("human-monitor-command", *r);
    co_return r->get<std::string>();
}

asio::awaitable<result<void>> run_job(client& c, std::string command, json arguments,
                                      std::string job_id, milliseconds timeout) {
    const auto start = std::chrono::steady_clock::now();
    auto left = [&] {
        return std::max(milliseconds(0), std::chrono::duration_cast<milliseconds>(
                                             timeout - (std::chrono::steady_clock::now() - start)));
    };
    // Subscribe first: QEMU 7.2 sends created/running (and STOP/RESUME) before the reply.
    auto sub = c.subscribe(event_filter{{"JOB_STATUS_CHANGE"}});
    arguments["job-id"] = job_id;
    auto accepted = co_await c.execute(command, std::move(arguments), timeout);
    if (!accepted) co_return fail(accepted.error());

    auto concluded = co_await sub.wait_for(
        [&](const event& ev) { return job_event_is(ev, job_id, "concluded"); }, left());
    if (!concluded) {
        if (concluded.error().code != errc::timeout) {
            auto e = concluded.error();
            e.message = fmt::format(
                "the connection to QEMU ended before the {} job '{}' concluded, so its outcome is "
                "unknown: {}",
                command, job_id, e.message);
            co_return fail(std::move(e));
        }
        // Do not leave a job running behind a reported failure: cancel it, and once it has
        // concluded (promptly, if QEMU can cancel it at all), dismiss it.
        json cancel_args = {{"id", job_id}};
        auto cancelled =
            co_await c.execute("job-cancel", std::move(cancel_args), milliseconds(2000));
        std::string after = "it could not be cancelled and may still finish";
        if (cancelled) {
            auto gone = co_await sub.wait_for(
                [&](const event& ev) { return job_event_is(ev, job_id, "concluded"); },
                milliseconds(2000));
            if (gone) {
                auto dismissed = co_await job_dismiss(c, job_id);
                if (dismissed) after = "it was cancelled";
            }
        }
        co_return fail(errc::timeout, fmt::format("{} job '{}' did not conclude within {} ms; {}",
                                                  command, job_id, timeout.count(), after));
    }

    std::optional<std::string> job_error;
    auto jobs = co_await query_jobs(c);
    if (!jobs) co_return fail(jobs.error());
    for (const auto& j : *jobs)
        if (j.id == job_id) job_error = j.error;
    auto dismissed = co_await job_dismiss(c, job_id);
    if (job_error)
        co_return fail(error{errc::job_failed, fmt::format("{} failed", command), {}, *job_error});
    if (!dismissed) co_return fail(dismissed.error());
    co_return result<void>{};
}

result<std::vector<snapshot_info>> parse_snapshot_list(const json& list) {
    if (!list.is_array())
        return fail(errc::protocol_error,
                    fmt::format("a snapshot list is not an array: {:.200}", list.dump()));
    std::vector<snapshot_info> out;
    for (const auto& s : list) {
        if (!s.is_object() || !s.contains("name") || !s["name"].is_string())
            return fail(errc::protocol_error,
                        fmt::format("a snapshot entry without a name: {:.200}", s.dump()));
        snapshot_info info;
        info.id = string_member(s, "id");
        info.name = s["name"].get<std::string>();
        info.vm_state_size = static_cast<std::uint64_t>(
            std::max<std::int64_t>(0, integer_member(s, "vm-state-size")));
        info.date_sec = integer_member(s, "date-sec");
        info.date_nsec = integer_member(s, "date-nsec");
        info.vm_clock_sec = integer_member(s, "vm-clock-sec");
        info.vm_clock_nsec = integer_member(s, "vm-clock-nsec");
        out.push_back(std::move(info));
    }
    return out;
}

asio::awaitable<result<std::vector<snapshot_info>>> query_snapshots(client& c,
                                                                    std::string node_name) {
    // No "flat": QEMU before 5.0 does not know it; the backing images' details are ignored.
    auto r = co_await c.execute("query-named-block-nodes");
    if (!r) co_return fail(r.error());
    if (!r->is_array()) co_return malformed("query-named-block-nodes", *r);
    for (const auto& node : *r) {
        if (string_member(node, "node-name") != node_name) continue;
        auto image = node.find("image");
        if (image == node.end() || !image->is_object())
            co_return malformed("query-named-block-nodes", node);
        // QEMU leaves "snapshots" out when there are none.
        auto snaps = image->find("snapshots");
        if (snaps == image->end()) co_return std::vector<snapshot_info>{};
        co_return parse_snapshot_list(*snaps);
    }
    co_return fail(
        errc::not_found,
        fmt::format("QEMU has no block node named '{}' (query-named-block-nodes)", node_name));
}

namespace {

std::string next_job_id(std::string_view kind) {
    static unsigned counter = 0;
    return fmt::format("stackemu-{}-{}-{}", kind, ::getpid(), ++counter);
}

}  // namespace

asio::awaitable<result<void>> snapshot_save(client& c, snapshot_target target,
                                            milliseconds timeout) {
    json args = {
        {"tag", target.tag}, {"vmstate", target.vmstate_node}, {"devices", target.devices}};
    co_return co_await run_job(c, "snapshot-save", std::move(args), next_job_id("save"), timeout);
}

asio::awaitable<result<void>> snapshot_load(client& c, snapshot_target target,
                                            milliseconds timeout) {
    json args = {
        {"tag", target.tag}, {"vmstate", target.vmstate_node}, {"devices", target.devices}};
    co_return co_await run_job(c, "snapshot-load", std::move(args), next_job_id("load"), timeout);
}

asio::awaitable<result<void>> snapshot_delete(client& c, std::string tag,
                                              std::vector<std::string> devices,
                                              milliseconds timeout) {
    json args = {{"tag", tag}, {"devices", devices}};
    co_return co_await run_job(c, "snapshot-delete", std::move(args), next_job_id("delete"),
                               timeout);
}

}  // namespace stackemu::qmp
