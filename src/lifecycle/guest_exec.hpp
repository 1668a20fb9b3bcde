// Commands and files in the guest without SSH, through the QEMU guest agent: `stackemu exec`
// and `stackemu cp`.
//
// What the agent protocol allows (qemu-ga 7.2, checked against the real agent):
// - guest-exec has no completion event: we poll guest-exec-status, 10 ms at first, backing off
//   to 200 ms. A command's end is therefore seen up to 200 ms late.
// - With capture-output, qemu-ga hands a command's stdout and stderr over only in the
//   guest-exec-status reply that reports it exited (at most 16 MiB of each; it keeps the rest
//   out): nothing can be printed while the command runs. guest_command::stream works around
//   that by redirecting the command's output to two files in the guest's /tmp and reading them
//   as they grow (see below).
// - guest-exec has no kill. On a timeout we run the guest's own `kill -KILL <pid>` (argv, no
//   shell); when that fails the command may still run in the guest, and the error says so.
// - stdin is one base64 member of the guest-exec request, so it is read whole before the
//   command starts (at most max_input_bytes) and the command sees it as a pipe that then closes.
// - The agent serves one client at a time: every operation here holds the instance lock.
#pragma once

#include <asio/awaitable.hpp>
#include <chrono>
#include <cstdint>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "common/error.hpp"
#include "lifecycle/controller.hpp"
#include "qmp/qga.hpp"

namespace stackemu::lifecycle {

// Exit codes of `stackemu exec`: the command's own exit status (0-255, a signal n as 128+n),
// and, as `docker exec` does, codes above the usual range for what went wrong around it.
namespace exec_exit {
inline constexpr int timeout = 124;     // --timeout passed (the command was killed, or may run on)
inline constexpr int failed = 125;      // stackemu could not run it: VM down, agent mute, busy...
inline constexpr int cannot_run = 126;  // the guest found the program but could not execute it
inline constexpr int not_found = 127;   // no such program in the guest
}  // namespace exec_exit

// stdin travels in one agent message: more than this is refused (use `stackemu cp`).
inline constexpr std::size_t max_input_bytes = 16u << 20;

// Timings and sizes; the defaults suit a real guest, tests shorten them.
struct agent_options {
    std::chrono::milliseconds connect_timeout{3000};
    // How long the agent gets to answer the first resynchronisation.
    std::chrono::milliseconds sync_timeout{5000};
    // Each agent command's own deadline (a file chunk, one status poll...).
    std::chrono::milliseconds command_timeout{30000};
    std::chrono::milliseconds first_poll{10};
    std::chrono::milliseconds max_poll{200};
    // Bytes per guest-file-read/-write (48 KiB: 64 KiB of base64 on the wire).
    std::size_t chunk_bytes = std::size_t{48} * 1024;
    // How long the guest's `kill` gets, and the killed process to be reported gone.
    std::chrono::milliseconds kill_budget{3000};
};

using output_sink = std::function<void(std::string_view bytes)>;

struct guest_command {
    std::vector<std::string> argv;     // argv[0] is looked up in the guest agent's PATH
    std::optional<std::string> input;  // the command's stdin; without it, /dev/null
    std::optional<std::chrono::milliseconds> timeout;  // none: wait as long as it runs
    output_sink on_stdout;  // called with the bytes as they are known (see stream)
    output_sink on_stderr;
    // Redirect stdout and stderr to files in the guest's /tmp and read them as they grow, so
    // output arrives while the command runs. Needs the guest's /bin/sh (which only runs
    // `exec "$@"`: the command's words are never parsed by a shell), `rm`, and room in /tmp;
    // stdout and stderr are then files, not pipes. Without it, output comes when it exits.
    bool stream = false;
};

struct guest_command_outcome {
    std::int64_t pid = 0;  // in the guest
    std::optional<int> exit_code;
    std::optional<int> signal;
    bool out_truncated = false;  // qemu-ga kept only the first 16 MiB
    bool err_truncated = false;
    double ms = 0;
    // The exit code, or 128 + the signal (as a shell reports it).
    int status() const;
};

// Resynchronises with the agent. A mute agent is errc::agent_unavailable "the guest agent does
// not answer (is qemu-guest-agent running in the guest?)"; `paused` says why instead.
asio::awaitable<result<void>> check_agent(qmp::qga::client& agent,
                                          std::chrono::milliseconds timeout, bool paused = false);

// Runs cmd.argv in the guest and waits for it. A program the guest cannot find is
// errc::not_found, one it cannot execute errc::spawn_failed; --timeout passing is errc::timeout
// (its message says whether the command was killed). A non-zero exit is not an error.
asio::awaitable<result<guest_command_outcome>> run_guest_command(qmp::qga::client& agent,
                                                                 guest_command cmd,
                                                                 agent_options options = {});

// ---- cp ----

enum class copy_direction { to_guest, from_guest };

struct copy_spec {
    copy_direction direction = copy_direction::to_guest;
    std::string host_path;
    std::string guest_path;  // absolute
};

// `SRC DST` where exactly one side is guest:/absolute/path (as `docker cp` takes them).
result<copy_spec> parse_copy_args(std::string_view source, std::string_view destination);

struct copy_outcome {
    copy_direction direction = copy_direction::to_guest;
    std::string source;       // as resolved: guest:/path or the host path
    std::string destination;  // a directory destination gets the source's name appended
    std::uint64_t bytes = 0;
    std::string sha256;  // of the bytes copied, computed on the host
    // How the guest's copy was checked: "sha256sum in the guest", "read back" (the guest has
    // no sha256sum), "size" (guest to host without sha256sum), "none" (a pseudo-file such as
    // /proc/..., whose size the guest reports as 0).
    std::string verified_by;
    double ms = 0;
};

// Host to guest: the bytes go to a temporary file beside the destination (guest-file-open,
// -write in chunk_bytes pieces, -flush, -close), are checked with the guest's sha256sum (else
// read back), get the host file's permission bits (chmod), and are renamed over the
// destination (mv -f -T). A failure removes the temporary file and leaves the destination as
// it was. Needs guest-exec and the guest's test, sha256sum, chmod, mv and rm (argv, no shell).
asio::awaitable<result<copy_outcome>> copy_to_guest(qmp::qga::client& agent, std::string host_path,
                                                    std::string guest_path,
                                                    agent_options options = {});
// Guest to host: guest-file-read until eof into a temporary file beside the destination, which
// replaces it only once the size (taken before reading) and the guest's sha256sum match.
asio::awaitable<result<copy_outcome>> copy_from_guest(qmp::qga::client& agent,
                                                      std::string guest_path, std::string host_path,
                                                      agent_options options = {});

// ---- on an instance ----

// Take the instance lock (errc::busy names the holder), check that the VM runs (its QMP socket
// exists; errc::wrong_state otherwise), connect to its agent and check that it answers.
asio::awaitable<result<guest_command_outcome>> guest_exec(instance inst, guest_command cmd,
                                                          agent_options options = {});
asio::awaitable<result<copy_outcome>> guest_copy(instance inst, copy_spec spec,
                                                 agent_options options = {});

// Lower-case hex SHA-256 of `bytes`.
std::string sha256_hex(std::string_view bytes);

}  // namespace stackemu::lifecycle
