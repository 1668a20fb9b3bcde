// The one error type of stackemu: our own code plus, when QEMU produced it, QEMU's class and desc.
#pragma once

#include <expected>
#include <string>
#include <string_view>

namespace stackemu {

// Our own failures. Closed: every value is handled by a switch somewhere.
enum class errc {
    // Transport and session.
    invalid_endpoint,         // malformed address, or a socket path over the sun_path limit
    connect_failed,           // connect() refused / no such socket
    timeout,                  // a deadline passed; the connection is still usable
    cancelled,                // the caller cancelled the operation
    disconnected,             // the peer closed or the socket failed before a reply
    disconnected_after_quit,  // the peer closed after we sent `quit`: the expected end
    closed,                   // we closed the connection ourselves
    // Protocol.
    protocol_error,      // bytes or JSON that are not QMP
    message_too_large,   // a message over the configured cap
    bad_greeting,        // the first message was not a valid QMP greeting
    too_many_in_flight,  // the send queue is full
    // Results from QEMU or the guest.
    qemu_error,         // QEMU answered with {"error":{class,desc}}
    job_failed,         // a block job concluded with an error
    agent_unavailable,  // the guest agent did not answer a sync
    // Local.
    invalid_argument,  // bad input from the user: say what and what to do
    not_found,
    already_exists,
    busy,         // another stackemu command holds the instance
    wrong_state,  // cannot do that in this state
    io_error,
    spawn_failed,
    process_failed,  // a child process exited non-zero
    guest_failed,    // the guest reported a failure (marker, panic)
    incompatible,    // a snapshot or image does not fit this VM
    checksum_mismatch,
    internal,
};

std::string_view to_string(errc code);

struct error {
    errc code = errc::internal;
    std::string message;     // ours: what went wrong and, where we know it, what to do
    std::string qemu_class;  // QEMU's error class when code == qemu_error (an open set)
    std::string qemu_desc;   // QEMU's human text; shown, never parsed

    // True when the connection that produced this error can no longer be used.
    bool is_fatal() const;
    // "message" or "message: QEMU <class>: <desc>", for people.
    std::string what() const;
};

error make_error(errc code, std::string message);
error make_qemu_error(std::string qemu_class, std::string qemu_desc, std::string context = {});

template <typename T>
using result = std::expected<T, error>;

inline std::unexpected<error> fail(errc code, std::string message) {
    return std::unexpected(make_error(code, std::move(message)));
}
inline std::unexpected<error> fail(error e) {
    return std::unexpected(std::move(e));
}

}  // namespace stackemu
