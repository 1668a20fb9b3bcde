// The parts of QEMU's command line that the fake acts on, parsed without side effects.
#pragma once

#include <optional>
#include <string>
#include <vector>

#include "common/error.hpp"

namespace stackemu::fake {

// A listening socket the fake must create: where, and the option text for error messages
// ("-chardev socket,id=...").
struct socket_spec {
    std::optional<std::string> path;  // path=P / unix:P
    std::optional<int> fd;            // fd=N: an inherited listening socket
    std::string option;               // e.g. "-qmp unix:/x.sock,server=on,wait=off"
};

struct chardev_spec {
    std::string id;
    std::string backend;                   // socket, file, null, ...
    socket_spec socket;                    // for socket
    std::optional<std::string> file_path;  // for file (path=)
    std::optional<std::string> logfile;
    bool logappend = false;
    bool server = false;
};

struct qmp_spec {
    socket_spec socket;
    bool pretty = false;
    std::optional<std::string> chardev;  // from -mon chardev=X (created with the chardevs)
};

struct forward_spec {
    std::string host;  // empty: any address
    int host_port = 0;
    int guest_port = 0;
    std::string rule;    // "tcp:127.0.0.1:26701-:26701"
    std::string netdev;  // "-netdev user,id=n0,hostfwd=..." for error messages
};

struct launch_config {
    bool version = false;  // --version
    std::vector<chardev_spec> chardevs;
    std::vector<qmp_spec> qmp;
    std::optional<std::string> serial_chardev;  // -serial chardev:X
    std::optional<std::string> serial_file;     // -serial file:P
    std::vector<std::string> agent_chardevs;    // virtserialport name=org.qemu.guest_agent.0
    std::vector<forward_spec> forwards;
    std::vector<std::string> block_nodes;  // node-name= of -blockdev/-drive
    std::optional<std::string> name;
    std::optional<std::string> pidfile;
    std::optional<std::string> debug_log;     // -D
    std::optional<std::string> panic_action;  // -action panic=
    bool daemonize = false;
    bool start_paused = false;
    bool no_shutdown = false;
    bool no_reboot = false;
    bool pvpanic = false;
};

// QEMU's options that take no argument; any other option swallows the next word.
bool takes_no_argument(std::string_view option);

// Parses argv[1..]. Errors carry QEMU's text after "qemu-system-x86_64: ".
result<launch_config> parse_command_line(const std::vector<std::string>& args);

}  // namespace stackemu::fake
