// One stackemu command at a time per instance (defect 3): an open file description lock on the
// instance's lock file. The kernel drops it when the holder exits, so it is never stale.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <optional>
#include <string>

#include "common/error.hpp"

namespace stackemu::lifecycle {

// Who holds a lock, from what the holder wrote into the file: "<pid> <operation> <started-at>".
struct lock_holder {
    pid_t pid = 0;           // 0 when the holder has not written it yet (a moment's race)
    std::string operation;   // e.g. "start", "stop"; "unknown" when not written yet
    std::string started_at;  // UTC, e.g. 2025-11-29T09:55:00Z
};

// A held lock. Move-only; released by release() or the destructor (or the process's death).
// The file is never deleted: deleting it would let two processes lock two different files.
class instance_lock {
  public:
    instance_lock() = default;
    instance_lock(instance_lock&& other) noexcept;
    instance_lock& operator=(instance_lock&& other) noexcept;
    instance_lock(const instance_lock&) = delete;
    instance_lock& operator=(const instance_lock&) = delete;
    ~instance_lock();

    bool held() const { return fd_ >= 0; }
    const std::string& path() const { return path_; }
    const std::string& operation() const { return operation_; }
    void release();

  private:
    friend result<instance_lock> try_acquire(std::string, std::string);
    friend asio::awaitable<result<instance_lock>> acquire_wait(std::string, std::string,
                                                               std::chrono::milliseconds);
    instance_lock(int fd, std::string path, std::string operation)
        : fd_(fd), path_(std::move(path)), operation_(std::move(operation)) {}
    int fd_ = -1;
    std::string path_;
    std::string operation_;
};

// Takes the lock on `path` (created 0600 if missing) without waiting, and records
// "<our pid> <operation> <now>" in it. `operation` is one word. Held elsewhere: errc::busy,
// naming the holder's pid and operation.
result<instance_lock> try_acquire(std::string path, std::string operation);

// As try_acquire, waiting up to `timeout` for the holder to let go; errc::busy at the end.
// Event-driven: inotify reports IN_CLOSE_WRITE on the lock file when the holder closes it
// (on release or death), then we retry. The kernel sends that event just before it drops the
// lock (__fput: fsnotify_close, then locks_remove_file), so a failed retry is repeated after
// a short delay, and a slow recheck covers closes inotify cannot see (e.g. NFS).
asio::awaitable<result<instance_lock>> acquire_wait(std::string path, std::string operation,
                                                    std::chrono::milliseconds timeout);

// The current holder, without taking the lock (for status): nullopt when free or missing.
result<std::optional<lock_holder>> holder(const std::string& path);

}  // namespace stackemu::lifecycle
