// Private directories and crash-safe files.
#include "lifecycle/files.hpp"

#include <fcntl.h>
#include <fmt/format.h>
#include <pwd.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <cstring>
#include <filesystem>
#include <utility>

namespace stackemu::lifecycle {

namespace {

namespace fs = std::filesystem;

constexpr mode_t private_dir_mode = S_IRWXU;  // 0700

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

std::string user_name(uid_t uid) {
    if (const passwd* pw = ::getpwuid(uid); pw && pw->pw_name) return pw->pw_name;
    return fmt::format("uid {}", uid);
}

std::unexpected<error> io_failure(std::string_view what, const std::string& path) {
    return fail(errc::io_error, fmt::format("{} {}: {}", what, path, std::strerror(errno)));
}

// What to do when a directory cannot be made or written, by errno; empty when unknown.
std::string_view dir_remedy(int err) {
    switch (err) {
        case ENOTDIR:
            return "; a part of that path is a file, not a directory: choose another directory "
                   "(e.g. another EMULATOR_RUN_DIR)";
        case EROFS:
            return "; the file system is read-only: choose a directory on a writable one "
                   "(e.g. another EMULATOR_RUN_DIR)";
        case EPERM:
        case EACCES:
            return "; the directory is read-only or immutable (`lsattr -d` shows an 'i'): make "
                   "it writable or choose another directory (e.g. another EMULATOR_RUN_DIR)";
        case ENOSPC:
        case EDQUOT:
            return "; the disk is full: free some space";
        default:
            return "";
    }
}

// io_failure with what to do about errno.
std::unexpected<error> dir_failure(std::string_view what, const std::string& path) {
    const int err = errno;
    return fail(errc::io_error,
                fmt::format("{} {}: {}{}", what, path, std::strerror(err), dir_remedy(err)));
}

std::unexpected<error> not_ours(const std::string& path, uid_t owner) {
    const uid_t me = ::geteuid();
    return fail(errc::wrong_state,
                fmt::format("{} belongs to {}, not to you ({}): stackemu uses only directories "
                            "of its own user; choose another directory (e.g. another "
                            "EMULATOR_RUN_DIR) or change its owner",
                            path, user_name(owner), user_name(me)));
}

result<void> write_all(int fd, std::string_view bytes, const std::string& path) {
    while (!bytes.empty()) {
        const auto n = ::write(fd, bytes.data(), bytes.size());
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return io_failure("cannot write", path);
        bytes.remove_prefix(static_cast<std::size_t>(n));
    }
    return {};
}

}  // namespace

result<void> ensure_private_dir(const std::string& path) {
    if (path.empty()) return fail(errc::invalid_argument, "ensure_private_dir: empty path");
    const fs::path dir(path);
    if (dir.has_parent_path() && dir.parent_path() != dir) {
        std::error_code ec;
        fs::create_directories(dir.parent_path(), ec);
        if (ec)
            return fail(errc::io_error,
                        fmt::format("cannot create {}: {}{}", dir.parent_path().string(),
                                    ec.message(), dir_remedy(ec.value())));
    }
    if (::mkdir(path.c_str(), private_dir_mode) != 0 && errno != EEXIST)
        return dir_failure("cannot create", path);

    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) return io_failure("cannot stat", path);
    if (!S_ISDIR(st.st_mode))
        return fail(errc::already_exists,
                    fmt::format("{} exists and is not a directory: move it away or choose "
                                "another directory",
                                path));
    if (st.st_uid != ::geteuid()) return not_ours(path, st.st_uid);
    // Ours but open to others (e.g. made by an older version or by hand), or narrowed by the
    // umask: make it exactly 0700.
    if ((st.st_mode & 07777) != private_dir_mode && ::chmod(path.c_str(), private_dir_mode) != 0)
        return dir_failure("cannot make private (chmod 0700)", path);
    // Root passes permission bits but not an immutable flag or a read-only mount: say so now
    // rather than at the first file written inside.
    if (::access(path.c_str(), W_OK) != 0) return dir_failure("cannot write to", path);
    return {};
}

result<void> check_dir_owner(const std::string& path) {
    struct stat st {};
    if (::stat(path.c_str(), &st) != 0) {
        if (errno == ENOENT || errno == ENOTDIR) return {};  // nothing there yet
        return io_failure("cannot stat", path);
    }
    if (st.st_uid != ::geteuid()) return not_ours(path, st.st_uid);
    return {};
}

result<void> write_file_atomically(const std::string& path, std::string_view bytes, mode_t mode) {
    const fs::path target(path);
    const fs::path dir = target.has_parent_path() ? target.parent_path() : fs::path(".");
    std::string temp = (dir / fmt::format(".{}.tmp-XXXXXX", target.filename().string())).string();
    fd_guard fd(::mkostemp(temp.data(), O_CLOEXEC));  // 0600 from the start
    if (fd.fd < 0) return io_failure("cannot create a temporary file in", dir.string());

    auto cleanup = [&](std::unexpected<error> e) {
        ::unlink(temp.c_str());
        return e;
    };
    if (::fchmod(fd.fd, mode) != 0) return cleanup(io_failure("cannot chmod", temp));
    if (auto w = write_all(fd.fd, bytes, temp); !w) return cleanup(std::unexpected(w.error()));
    if (::fsync(fd.fd) != 0) return cleanup(io_failure("cannot fsync", temp));
    if (::close(std::exchange(fd.fd, -1)) != 0) return cleanup(io_failure("cannot close", temp));
    if (::rename(temp.c_str(), path.c_str()) != 0)
        return cleanup(io_failure("cannot rename a temporary file to", path));
    // The rename is durable only once the directory is.
    fd_guard dir_fd(::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC));
    if (dir_fd.fd < 0) return io_failure("cannot open directory", dir.string());
    if (::fsync(dir_fd.fd) != 0) return io_failure("cannot fsync directory", dir.string());
    return {};
}

result<std::string> read_file(const std::string& path) {
    fd_guard fd(::open(path.c_str(), O_RDONLY | O_CLOEXEC));
    if (fd.fd < 0) {
        if (errno == ENOENT) return fail(errc::not_found, fmt::format("{} does not exist", path));
        return io_failure("cannot open", path);
    }
    std::string text;
    char buffer[65536];
    for (;;) {
        const auto n = ::read(fd.fd, buffer, sizeof buffer);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return io_failure("cannot read", path);
        if (n == 0) break;
        text.append(buffer, static_cast<std::size_t>(n));
    }
    return text;
}

}  // namespace stackemu::lifecycle
