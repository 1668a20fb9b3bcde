#include "lifecycle/scratch_qemu.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <asio.hpp>
#include <cerrno>
#include <csignal>
#include <cstring>
#include <utility>

#include "lifecycle/process.hpp"
#include "lifecycle/vm_process.hpp"

namespace stackemu::lifecycle {

namespace fs = std::filesystem;

scratch_qemu::scratch_qemu(scratch_qemu&& other) noexcept
    : dir_(std::exchange(other.dir_, {})),
      keep_dir_(other.keep_dir_),
      program_(std::move(other.program_)),
      progress_(std::move(other.progress_)),
      vm_(std::move(other.vm_)) {
}

scratch_qemu::~scratch_qemu() {
    if (vm_.process && !vm_.process->exited()) (void)vm_.process->signal(SIGKILL);
    std::error_code ignored;
    if (!dir_.empty() && !keep_dir_) fs::remove_all(dir_, ignored);
}

asio::awaitable<result<scratch_qemu>> scratch_qemu::start(std::string program,
                                                          std::chrono::milliseconds timeout,
                                                          progress_sink progress) {
    scratch_qemu s;
    s.program_ = program;
    s.progress_ = std::move(progress);
    std::error_code ec;
    const auto tmp = fs::temp_directory_path(ec);
    if (ec) co_return fail(errc::io_error, "no directory for temporary files: " + ec.message());
    std::string templ = (tmp / "stackemu-scratch-XXXXXX").string();
    if (!::mkdtemp(templ.data()))
        co_return fail(errc::io_error, fmt::format("cannot create a directory in {}: {}",
                                                   tmp.string(), std::strerror(errno)));
    s.dir_ = templ;  // mkdtemp makes it 0700
    instance_paths paths;
    paths.qmp_socket = s.dir_ / "monitor.sock";
    auto launched = launch_daemonized(
        {program, "-M", "none", "-nodefaults", "-display", "none", "-qmp",
         "unix:" + paths.qmp_socket.string() + ",server=on,wait=off", "-daemonize"},
        (s.dir_ / "qemu-stderr.log").string());
    if (!launched) co_return fail(launched.error());

    auto vm = co_await detail::connect_vm(paths, program, timeout);
    if (vm) {
        s.vm_ = std::move(*vm);
        co_return s;
    }
    // It runs but cannot be asked to quit: the signal rungs, as stop does for a hung monitor.
    auto e = vm.error();
    auto ended = co_await detail::stop_unresponsive(paths, program, s.progress_);
    if (ended) {
        e.message += fmt::format("; the scratch QEMU was ended by {}",
                                 ended->rung == "sigterm" ? "SIGTERM" : "SIGKILL");
    } else if (ended.error().code != errc::connect_failed) {
        // Nothing listening means nothing left to end; anything else may leave QEMU running.
        s.keep_dir_ = true;
        e.message += fmt::format(
            "; the scratch QEMU could not be ended ({}): its directory {} is "
            "left for you to find it",
            ended.error().what(), s.dir_.string());
    }
    co_return fail(std::move(e));
}

asio::awaitable<result<void>> scratch_qemu::end() {
    detail::ladder_inputs in;
    in.paths.qmp_socket = dir_ / "monitor.sock";
    in.qmp = vm_.qmp.get();
    in.process = vm_.process.get();
    in.progress = progress_;
    in.skip_guest_rung = true;  // -M none has no guest to ask
    const auto out = co_await detail::run_ladder(in);
    const pid_t pid = vm_.process->pid();
    if (!vm_.process->exited()) {
        keep_dir_ = true;
        co_return fail(errc::process_failed,
                       fmt::format("the scratch QEMU (pid {}) still runs after SIGKILL; its "
                                   "directory {} is left",
                                   pid, dir_.string()));
    }
    std::error_code ignored;
    fs::remove_all(dir_, ignored);
    dir_.clear();
    if (out.rung == "quit") co_return result<void>{};
    co_return fail(errc::process_failed,
                   fmt::format("the scratch QEMU (pid {}) did not quit; it was ended by {}", pid,
                               out.rung == "sigterm" ? "SIGTERM" : "SIGKILL"));
}

}  // namespace stackemu::lifecycle
