// QMP request handling with QEMU 7.2's checks and texts.
#include "qmp_dispatcher.hpp"

#include <fmt/format.h>

#include "argument_reader.hpp"
#include "hmp.hpp"
#include "qemu_commands.hpp"

namespace stackemu::fake {

namespace {

value error_message(std::string_view error_class, std::string_view desc) {
    value e = value::object();
    e["class"] = error_class;
    e["desc"] = desc;
    value message = value::object();
    message["error"] = std::move(e);
    return message;
}

std::unexpected<error> generic(std::string desc) {
    return fail(make_qemu_error("GenericError", std::move(desc)));
}

// A small stand-in for the 200 KB schema: one entry per command, like QEMU's shape.
value small_schema() {
    value list = value::array();
    for (auto name : qemu_commands()) {
        value entry = value::object();
        entry["name"] = name;
        entry["meta-type"] = "command";
        entry["arg-type"] = "0";
        entry["ret-type"] = "0";
        list.push_back(std::move(entry));
    }
    value empty = value::object();
    empty["name"] = "0";
    empty["meta-type"] = "object";
    empty["members"] = value::array();
    list.push_back(std::move(empty));
    return list;
}

}  // namespace

qmp_dispatcher::qmp_dispatcher(vm& machine) : vm_(machine) {
}

value qmp_dispatcher::greeting() const {
    const auto& o = vm_.config();
    if (o.greeting) return *o.greeting;
    value triple = value::object();
    triple["major"] = o.major;
    triple["minor"] = o.minor;
    triple["micro"] = o.micro;
    value version = value::object();
    version["qemu"] = std::move(triple);
    version["package"] = o.package;
    value body = value::object();
    body["version"] = std::move(version);
    body["capabilities"] = o.capabilities;
    value message = value::object();
    message["QMP"] = std::move(body);
    return message;
}

qmp_dispatcher::response qmp_dispatcher::handle(const json_reader::item& item) {
    response r;
    if (!item.json) {
        r.reply = error_message("GenericError", item.error);
        return r;
    }
    const value& request = *item.json;
    if (!request.is_object()) {
        r.reply = error_message("GenericError", "QMP input must be a JSON object");
        return r;
    }
    if (auto it = request.find("id"); it != request.end()) r.id = *it;

    auto finish = [&](result<value> outcome) {
        value message;
        if (outcome) {
            message = value::object();
            message["return"] = std::move(*outcome);
        } else {
            message = error_message(outcome.error().qemu_class, outcome.error().qemu_desc);
        }
        if (r.id) message["id"] = *r.id;
        r.reply = std::move(message);
        return r;
    };

    // qmp_dispatch_check_obj(): members in QDict order, first problem wins.
    std::optional<std::string> exec_key;
    for (const auto& key : qdict_order(request)) {
        const value& member = request.at(key);
        if (key == "execute" || (key == "exec-oob" && oob_)) {
            if (!member.is_string())
                return finish(generic(fmt::format("QMP input member '{}' must be a string", key)));
            if (exec_key)
                return finish(generic(
                    fmt::format("QMP input member '{}' clashes with '{}'", key, *exec_key)));
            exec_key = key;
        } else if (key == "arguments") {
            if (!member.is_object())
                return finish(generic("QMP input member 'arguments' must be an object"));
        } else if (key != "id") {
            return finish(generic(fmt::format("QMP input member '{}' is unexpected", key)));
        }
    }
    if (!exec_key) return finish(generic("QMP input lacks member 'execute'"));
    r.command = request.at(*exec_key).get<std::string>();
    const bool oob = *exec_key == "exec-oob";
    static const value no_arguments = value::object();
    const value& arguments = request.contains("arguments") ? request.at("arguments") : no_arguments;

    if (!negotiated_) {
        // Only qmp_capabilities exists before negotiation; monitor_qmp_dispatch() rewrites
        // CommandNotFound into a hint.
        if (r.command != "qmp_capabilities")
            return finish(fail(make_qemu_error(
                "CommandNotFound", "Expecting capabilities negotiation with 'qmp_capabilities'")));
        return finish(qmp_capabilities(arguments));
    }
    if (!is_qemu_command(r.command))
        return finish(fail(make_qemu_error(
            "CommandNotFound", fmt::format("The command {} has not been found", r.command))));
    if (oob && !allows_oob(r.command))
        return finish(generic(fmt::format("The command {} does not support OOB", r.command)));
    return finish(execute(r.command, arguments));
}

result<value> qmp_dispatcher::qmp_capabilities(const value& arguments) {
    // Arguments first: the marshaller visits them before the command runs.
    std::vector<std::string> enable;
    if (auto it = arguments.find("enable"); it != arguments.end()) {
        if (!it->is_array()) return generic("Invalid parameter type for 'enable', expected: array");
        for (std::size_t i = 0; i < it->size(); ++i) {
            const auto& e = (*it)[i];
            if (!e.is_string())
                return generic(
                    fmt::format("Invalid parameter type for 'enable[{}]', expected: string", i));
            // The enum visitor gets no name for list members, hence QEMU's 'null'.
            if (e.get<std::string>() != "oob")
                return generic(fmt::format("Parameter 'null' does not accept value '{}'",
                                           e.get<std::string>()));
            enable.push_back(e.get<std::string>());
        }
    }
    for (const auto& key : ghash_order(qdict_order(arguments)))
        if (key != "enable") return generic(fmt::format("Parameter '{}' is unexpected", key));
    if (negotiated_)
        return fail(make_qemu_error(
            "CommandNotFound", "Capabilities negotiation is already complete, command ignored"));
    const auto& offered = vm_.config().capabilities;
    std::string unavailable;
    for (const auto& cap : enable)
        if (std::ranges::find(offered, cap) == offered.end())
            unavailable += (unavailable.empty() ? "" : ", ") + cap;
    if (!unavailable.empty())
        return generic(fmt::format("Capability {} not available", unavailable));
    negotiated_ = true;
    oob_ = !enable.empty();
    return value::object();
}

result<value> qmp_dispatcher::execute(const std::string& command, const value& arguments) {
    argument_reader args(arguments);
    auto no_arguments = [&]() -> result<void> { return args.finish(); };
    const auto& o = vm_.config();

    if (command == "qmp_capabilities") return qmp_capabilities(arguments);
    if (command == "query-status") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        value status = value::object();  // StatusInfo: running, singlestep, status
        status["running"] = vm_.running();
        status["singlestep"] = false;
        status["status"] = to_string(vm_.state());
        return status;
    }
    if (command == "query-name") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        value name = value::object();
        if (o.name) name["name"] = *o.name;
        return name;
    }
    if (command == "query-version") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        return greeting().at("QMP").at("version");
    }
    if (command == "query-kvm") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        value kvm = value::object();
        kvm["enabled"] = o.kvm_enabled;
        kvm["present"] = o.kvm_present;
        return kvm;
    }
    if (command == "query-commands") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        value list = value::array();
        for (auto name : qemu_commands()) {
            value entry = value::object();
            entry["name"] = name;
            list.push_back(std::move(entry));
        }
        return list;
    }
    if (command == "query-qmp-schema") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        return small_schema();
    }
    if (command == "query-jobs") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        return vm_.query_jobs();
    }
    if (command == "stop" || command == "cont" || command == "system_powerdown" ||
        command == "system_reset" || command == "quit") {
        if (auto r = no_arguments(); !r) return fail(r.error());
        if (command == "stop") vm_.stop();
        if (command == "cont") {
            if (auto r = vm_.cont(); !r) return fail(r.error());
        }
        if (command == "system_powerdown") vm_.system_powerdown();
        if (command == "system_reset") vm_.system_reset();
        if (command == "quit") vm_.quit();
        return value::object();
    }
    if (command == "job-dismiss" || command == "job-cancel") {
        const auto id = args.required_string("id");
        if (auto r = args.finish(); !r) return fail(r.error());
        auto r = command == "job-dismiss" ? vm_.job_dismiss(id) : vm_.job_cancel(id);
        if (!r) return fail(r.error());
        return value::object();
    }
    if (command == "snapshot-save" || command == "snapshot-load" || command == "snapshot-delete") {
        const auto job_id = args.required_string("job-id");
        const auto tag = args.required_string("tag");
        std::optional<std::string> vmstate;
        if (command != "snapshot-delete") vmstate = args.required_string("vmstate");
        auto devices = args.string_list("devices", true);
        if (auto r = args.finish(); !r) return fail(r.error());
        auto r = vm_.snapshot_job(command, job_id, tag, vmstate, *devices);
        if (!r) return fail(r.error());
        return value::object();
    }
    if (command == "query-named-block-nodes") {
        // BlockDeviceInfo, trimmed to what a snapshot lister reads: node-name, drv, ro and the
        // qcow2 image's snapshots (left out when there are none, as QEMU does).
        if (auto r = no_arguments(); !r) return fail(r.error());
        value list = value::array();
        for (const auto& node : o.block_nodes) {
            value image = value::object();
            image["filename"] = node + ".qcow2";
            image["format"] = "qcow2";
            image["virtual-size"] = std::int64_t{268435456};
            const auto snaps = vm_.snapshots();
            if (!snaps.empty()) {
                value infos = value::array();
                for (const auto& s : snaps) {
                    value info = value::object();  // SnapshotInfo's field order
                    info["id"] = "--";
                    info["name"] = s.tag;
                    info["vm-state-size"] = static_cast<std::int64_t>(s.vm_state_size);
                    info["date-sec"] = s.date_sec;
                    info["date-nsec"] = std::int64_t{0};
                    info["vm-clock-sec"] = s.vm_clock_nsec / 1000000000;
                    info["vm-clock-nsec"] = s.vm_clock_nsec % 1000000000;
                    infos.push_back(std::move(info));
                }
                image["snapshots"] = std::move(infos);
            }
            value info = value::object();
            info["file"] = node + ".qcow2";
            info["node-name"] = node;
            info["ro"] = false;
            info["drv"] = "qcow2";
            info["image"] = std::move(image);
            list.push_back(std::move(info));
        }
        return list;
    }
    if (command == "human-monitor-command") {
        const auto line = args.required_string("command-line");
        const auto cpu = args.optional_int("cpu-index");
        if (auto r = args.finish(); !r) return fail(r.error());
        if (cpu && *cpu != 0) return generic("Parameter 'cpu-index' expects a CPU number");
        return value(hmp_execute(vm_, line));
    }
    if (command == "migrate-pause")
        return generic("migrate-pause is currently only supported during postcopy-active state");
    if (command == "migrate-recover")
        return generic("Migrate recover can only be run when postcopy is paused.");
    return generic(fmt::format("fake-qemu does not implement {}", command));
}

}  // namespace stackemu::fake
