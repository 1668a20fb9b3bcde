// `stackemu qmp --scratch`'s throwaway QEMU (-M none): its QMP socket in a private 0700
// directory, and always ended through the controller's stop ladder before that directory goes.
#pragma once

#include <sys/types.h>

#include <asio/awaitable.hpp>
#include <chrono>
#include <filesystem>
#include <string>

#include "common/error.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "qmp/client.hpp"

namespace stackemu::lifecycle {

class scratch_qemu {
  public:
    // Launches `program` (a path, or a name on PATH) and connects to its monitor, waiting at
    // most `timeout` for the greeting. A QEMU that started but cannot be talked to (it never
    // greets, garbles its greeting) is ended by SIGTERM, then SIGKILL, before the error returns.
    static asio::awaitable<result<scratch_qemu>> start(std::string program,
                                                       std::chrono::milliseconds timeout,
                                                       progress_sink progress);

    qmp::client& monitor() { return *vm_.qmp; }

    // The ladder without the guest rung: quit, SIGTERM, SIGKILL, each awaited on the pidfd;
    // the directory goes once QEMU has. An error when `quit` alone did not end QEMU (it names
    // the signal that did) or when it still runs (its directory is then left).
    asio::awaitable<result<void>> end();

    scratch_qemu(scratch_qemu&& other) noexcept;
    scratch_qemu& operator=(scratch_qemu&&) = delete;
    scratch_qemu(const scratch_qemu&) = delete;
    scratch_qemu& operator=(const scratch_qemu&) = delete;
    // A QEMU that end() was not awaited for (an exception) gets SIGKILL; the directory goes
    // unless QEMU may still run there.
    ~scratch_qemu();

  private:
    scratch_qemu() = default;
    std::filesystem::path dir_;
    bool keep_dir_ = false;
    std::string program_;
    progress_sink progress_;
    detail::connected_vm vm_;
};

}  // namespace stackemu::lifecycle
