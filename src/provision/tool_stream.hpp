// Running a long build tool (debootstrap, mke2fs, qemu-img) and handing each line it prints to
// the caller as it comes, so an image build shows its progress instead of minutes of silence.
#pragma once

#include <cstddef>
#include <functional>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.hpp"

namespace stackemu::provision {

using line_sink = std::function<void(std::string_view)>;

// Cuts a byte stream into lines at "\n", "\r\n" or a lone "\r" (progress bars redraw with "\r"),
// without the terminator; a backspace takes back the character before it, as on a terminal. A
// line longer than `max_line` is handed over in pieces of that size.
// Pure: fed with any split of the bytes it produces the same lines.
class line_splitter {
  public:
    explicit line_splitter(std::size_t max_line = std::size_t{64} * 1024) : max_line_(max_line) {}
    void feed(std::string_view bytes, const line_sink& sink);
    // The last line when the stream ended without a terminator.
    void finish(const line_sink& sink);

  private:
    std::size_t max_line_;
    std::string partial_;
    bool after_cr_ = false;  // the previous byte was "\r": a following "\n" ends nothing
};

struct streamed_run {
    int exit_code = 0;                    // 128 + signal when killed
    std::vector<std::string> last_lines;  // the last `keep_last` non-empty lines, oldest first
};

struct stream_options {
    // Environment changes for the child: set name=value, or remove name when nullopt.
    std::vector<std::pair<std::string, std::optional<std::string>>> env;
    std::size_t keep_last = 40;
};

// Runs argv (never through a shell) with stdin /dev/null and stdout+stderr merged into one pipe,
// and calls `on_line` with every non-empty line as it arrives. A program name without '/' is
// looked up on the child's PATH (the PATH in options.env when set there). Only a failure to run
// it at all is an error (errc::spawn_failed, naming the program); a non-zero exit is in the
// result, with the tool's last lines for the caller's error message.
result<streamed_run> run_streaming(std::vector<std::string> argv, const line_sink& on_line,
                                   const stream_options& options = {});

}  // namespace stackemu::provision
