// Creating the fake's listening sockets with QEMU's error messages, before any io_context.
#pragma once

#include <string>

#include "common/error.hpp"

namespace stackemu::fake {

// A listening Unix stream socket at `path` (a stale file there is removed first, as QEMU
// does). Fails with "Failed to bind socket to PATH: REASON".
result<int> listen_unix(const std::string& path);
// A listening TCP socket on host:port (SO_REUSEADDR, like slirp's host forwards).
result<int> listen_tcp(const std::string& host, int port);
// Opens a chardev logfile: created, truncated (QEMU's default without logappend=on).
result<int> open_logfile(const std::string& path, bool append = false);
// Whether `fd` is a listening socket (for fd=N options).
bool is_listening_socket(int fd);

}  // namespace stackemu::fake
