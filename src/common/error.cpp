// Names and classification of stackemu errors.
#include "common/error.hpp"

#include <fmt/format.h>

namespace stackemu {

std::string_view to_string(errc code) {
    switch (code) {
        case errc::invalid_endpoint:
            return "invalid_endpoint";
        case errc::connect_failed:
            return "connect_failed";
        case errc::timeout:
            return "timeout";
        case errc::cancelled:
            return "cancelled";
        case errc::disconnected:
            return "disconnected";
        case errc::disconnected_after_quit:
            return "disconnected_after_quit";
        case errc::closed:
            return "closed";
        case errc::protocol_error:
            return "protocol_error";
        case errc::message_too_large:
            return "message_too_large";
        case errc::bad_greeting:
            return "bad_greeting";
        case errc::too_many_in_flight:
            return "too_many_in_flight";
        case errc::qemu_error:
            return "qemu_error";
        case errc::job_failed:
            return "job_failed";
        case errc::agent_unavailable:
            return "agent_unavailable";
        case errc::invalid_argument:
            return "invalid_argument";
        case errc::not_found:
            return "not_found";
        case errc::already_exists:
            return "already_exists";
        case errc::busy:
            return "busy";
        case errc::wrong_state:
            return "wrong_state";
        case errc::io_error:
            return "io_error";
        case errc::spawn_failed:
            return "spawn_failed";
        case errc::process_failed:
            return "process_failed";
        case errc::guest_failed:
            return "guest_failed";
        case errc::incompatible:
            return "incompatible";
        case errc::checksum_mismatch:
            return "checksum_mismatch";
        case errc::internal:
            return "internal";
    }
    return "unknown";
}

bool error::is_fatal() const {
    switch (code) {
        case errc::invalid_endpoint:
        case errc::connect_failed:
        case errc::disconnected:
        case errc::disconnected_after_quit:
        case errc::closed:
        case errc::protocol_error:
        case errc::message_too_large:
        case errc::bad_greeting:
            return true;
        default:
            return false;
    }
}

std::string error::what() const {
    std::string out = message;
    auto add = [&out](std::string_view part) {
        if (!out.empty()) out += ": ";
        out += part;
    };
    if (!qemu_class.empty()) add(fmt::format("QEMU {}", qemu_class));
    if (!qemu_desc.empty()) add(qemu_desc);
    return out;
}

error make_error(errc code, std::string message) {
    return error{code, std::move(message), {}, {}};
}

error make_qemu_error(std::string qemu_class, std::string qemu_desc, std::string context) {
    return error{errc::qemu_error, std::move(context), std::move(qemu_class), std::move(qemu_desc)};
}

}  // namespace stackemu
