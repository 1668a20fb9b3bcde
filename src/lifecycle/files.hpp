// Private directories and crash-safe files for an instance's state.
#pragma once

#include <sys/types.h>

#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::lifecycle {

// Creates `path` and its missing parents; `path` itself ends up mode 0700 and ours. An
// existing directory of ours with another mode is fixed; one owned by another user, or
// something that is not a directory, is an error that says what to do.
result<void> ensure_private_dir(const std::string& path);

// An existing directory must belong to the invoking user, as ssh demands of ~/.ssh: another
// user's directory could hold sockets that pose as our QEMU. A missing one passes (it will be
// made ours). The error says whose it is and what to do.
result<void> check_dir_owner(const std::string& path);

// Replaces `path` with `bytes` so a reader sees the old or the new content, never a mix, even
// after a crash: a temporary file in the same directory, fsync, rename, fsync the directory.
result<void> write_file_atomically(const std::string& path, std::string_view bytes,
                                   mode_t mode = 0600);

// The whole file; errc::not_found when it does not exist.
result<std::string> read_file(const std::string& path);

}  // namespace stackemu::lifecycle
