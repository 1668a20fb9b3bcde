// The fake guest agent: qemu-ga 7.2's framing, sentinels, error texts and commands, in memory.
#include "agent.hpp"

#include <fmt/format.h>

#include <array>
#include <asio/experimental/as_tuple.hpp>
#include <asio/steady_timer.hpp>
#include <asio/use_awaitable.hpp>
#include <asio/write.hpp>
#include <charconv>

#include "common/base64.hpp"
#include "qmp/framer.hpp"

namespace stackemu::fake {

namespace {

constexpr auto as_tuple_awaitable = asio::experimental::as_tuple(asio::use_awaitable);
constexpr char sentinel = '\xff';                  // QGA_SENTINEL_BYTE
constexpr std::int64_t read_count_default = 4096;  // QGA_READ_COUNT_DEFAULT

// Every command the fake implements, in the order guest-info lists them.
const std::vector<std::string>& supported_commands() {
    static const std::vector<std::string> names = {
        "guest-sync-delimited", "guest-sync",        "guest-ping",           "guest-info",
        "guest-get-osinfo",     "guest-exec",        "guest-exec-status",    "guest-shutdown",
        "guest-suspend-disk",   "guest-suspend-ram", "guest-suspend-hybrid", "guest-set-time",
        "guest-get-time",       "guest-file-open",   "guest-file-read",      "guest-file-write",
        "guest-file-seek",      "guest-file-flush",  "guest-file-close"};
    return names;
}

bool never_replies(std::string_view name) {
    return name == "guest-shutdown" || name.starts_with("guest-suspend-");
}

std::string error_line(std::string_view error_class, std::string_view desc) {
    value rsp = {{"error", {{"class", error_class}, {"desc", desc}}}};
    return to_qemu_json(rsp) + "\n";
}

// QAPI's input visitor: the member's presence and JSON type, with QEMU 7.2's messages.
enum class type { string, integer, boolean, array };

std::optional<std::string> check(const value& args, const char* key, type t, bool required) {
    auto it = args.find(key);
    if (it == args.end()) {
        if (required) return fmt::format("Parameter '{}' is missing", key);
        return std::nullopt;
    }
    const char* expected = nullptr;
    switch (t) {
        case type::string:
            if (!it->is_string()) expected = "string";
            break;
        case type::integer:
            if (!it->is_number_integer()) expected = "integer";
            break;
        case type::boolean:
            if (!it->is_boolean()) expected = "boolean";
            break;
        case type::array:
            if (!it->is_array()) expected = "array";
            break;
    }
    if (expected)
        return fmt::format("Invalid parameter type for '{}', expected: {}", key, expected);
    return std::nullopt;
}

// Words of a shell command line: whitespace-separated, '...' and "..." quote.
std::vector<std::string> shell_words(std::string_view line) {
    std::vector<std::string> words;
    std::string word;
    bool in_word = false;
    char quote = 0;
    for (char c : line) {
        if (quote) {
            if (c == quote)
                quote = 0;
            else
                word.push_back(c);
        } else if (c == '\'' || c == '"') {
            quote = c;
            in_word = true;
        } else if (c == ' ' || c == '\t') {
            if (in_word) words.push_back(std::move(word));
            word.clear();
            in_word = false;
        } else {
            word.push_back(c);
            in_word = true;
        }
    }
    if (in_word) words.push_back(std::move(word));
    return words;
}

std::optional<int> parse_int(std::string_view text) {
    int n = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), n);
    if (ec != std::errc{} || end != text.data() + text.size()) return std::nullopt;
    return n;
}

// The tiny /bin/sh: `;`-separated echo, cat, true, false, exit N, kill -N $$.
program_result run_shell(const std::string& script, const std::string& input) {
    program_result r;
    int status = 0;
    std::size_t start = 0;
    while (start <= script.size()) {
        auto end = script.find(';', start);
        if (end == std::string::npos) end = script.size();
        auto words = shell_words(std::string_view(script).substr(start, end - start));
        start = end + 1;
        if (words.empty()) continue;
        const std::string cmd = words[0];
        if (cmd == "echo") {
            bool to_err = false;
            if (words.back() == ">&2" || words.back() == "1>&2") {
                to_err = true;
                words.pop_back();
            }
            std::string line;
            for (std::size_t i = 1; i < words.size(); ++i)
                line += (i > 1 ? " " : "") + words[i];
            (to_err ? r.err : r.out) += line + "\n";
            status = 0;
        } else if (cmd == "cat") {
            r.out += input;
            status = 0;
        } else if (cmd == "true") {
            status = 0;
        } else if (cmd == "false") {
            status = 1;
        } else if (cmd == "exit") {
            if (words.size() > 1) {
                auto n = parse_int(words[1]);
                if (!n) {
                    r.err += fmt::format("sh: 1: exit: Illegal number: {}\n", words[1]);
                    r.exit_code = 2;
                    return r;
                }
                status = *n & 0xff;
            }
            r.exit_code = status;
            return r;
        } else if (cmd == "kill" && words.size() == 3 && words[1].starts_with("-") &&
                   words[2] == "$$") {
            if (auto n = parse_int(std::string_view(words[1]).substr(1))) {
                r.signal = *n;
                return r;
            }
            r.err += fmt::format("sh: 1: kill: invalid signal number or name: {}\n", words[1]);
            status = 2;
        } else {
            r.err += fmt::format("sh: 1: {}: not found\n", cmd);
            status = 127;
        }
    }
    r.exit_code = status;
    return r;
}

}  // namespace

agent::agent(agent_options options) : options_(std::move(options)) {
}

agent::~agent() {
    stop();
}

void agent::stop() {
    if (busy_) busy_->cancel();
    if (!socket_) return;
    asio::error_code ignored;
    socket_->shutdown(asio::socket_base::shutdown_both, ignored);
    socket_->close(ignored);
    socket_.reset();
}

void agent::add_program(std::string path, program p) {
    programs_[std::move(path)] = std::move(p);
}
void agent::set_file(std::string path, std::string contents) {
    files_[std::move(path)] = std::move(contents);
}
std::optional<std::string> agent::file(const std::string& path) const {
    auto it = files_.find(path);
    if (it == files_.end()) return std::nullopt;
    return it->second;
}
void agent::remove_file(const std::string& path) {
    files_.erase(path);
}
std::vector<std::string> agent::file_names() const {
    std::vector<std::string> names;
    for (const auto& [path, contents] : files_)
        names.push_back(path);
    return names;
}
void agent::on_shutdown(std::function<void(const std::string& mode)> callback) {
    on_shutdown_ = std::move(callback);
}
std::int64_t agent::guest_time_ns() const {
    const auto now = std::chrono::duration_cast<std::chrono::nanoseconds>(
        std::chrono::system_clock::now().time_since_epoch());
    return now.count() + clock_offset_ns_;
}
void agent::preload(std::string bytes) {
    preload_ += bytes;
}
void agent::set_silent(bool silent) {
    silent_ = silent;
}
void agent::delay(std::string command, std::chrono::milliseconds d) {
    delays_[std::move(command)] = d;
}
void agent::close_on(std::string command) {
    close_on_.insert(std::move(command));
}
void agent::fail(std::string command, std::string desc) {
    failures_[std::move(command)] = std::move(desc);
}

void agent::reply_raw(std::string command, std::string bytes) {
    raw_replies_[std::move(command)] = std::move(bytes);
}

void agent::arm_fault(wire_fault fault, std::function<void(const std::string&)> log,
                      std::function<void()> cut) {
    fault_ = armed_fault{std::move(fault), std::move(log), std::move(cut), 0};
}

void agent::disarm_fault() {
    fault_.reset();
}

bool agent::fault_strikes(const std::string& name) {
    if (!fault_) return false;
    const auto step = ++fault_->seen;
    const bool strikes = step == fault_->fault.at;
    if (fault_->log)
        fault_->log(
            fmt::format("fault: agent step {}: {}{}", step, name,
                        strikes ? fmt::format(" ({})", to_string(fault_->fault.what)) : ""));
    return strikes;
}

std::vector<std::string> agent::received_names() const {
    std::vector<std::string> names;
    for (const auto& r : received_)
        names.push_back(r.is_object() ? r.value("execute", "") : "");
    return names;
}

asio::awaitable<void> agent::serve(qmp::stream_socket socket) {
    return serve_connection(std::make_shared<qmp::stream_socket>(std::move(socket)));
}

asio::awaitable<void> agent::serve_borrowed(qmp::stream_socket& socket) {
    // Non-owning: the aliasing constructor with an empty owner.
    return serve_connection(std::shared_ptr<qmp::stream_socket>(std::shared_ptr<void>(), &socket));
}

asio::awaitable<void> agent::serve_connection(std::shared_ptr<qmp::stream_socket> sock) {
    stop();
    socket_ = sock;
    ++connections_;
    qmp::framer framer;
    std::string pending;  // read, not yet given to the framer: split at every sentinel
    std::array<char, 4096> buffer;

    auto finish = [&] {
        asio::error_code ignored;
        sock->close(ignored);
        if (socket_ == sock) socket_.reset();
    };

    if (!preload_.empty()) {
        std::string stale = std::move(preload_);
        preload_.clear();
        if (!co_await send(*sock, std::move(stale))) co_return finish();
    }
    for (;;) {
        // One request at a time, in order: qemu-ga is synchronous.
        for (;;) {
            auto next = framer.next();
            if (!next) {
                framer.reset();
                if (!silent_ &&
                    !co_await send(*sock, error_line("GenericError",
                                                     "JSON parse error, " + next.error().message)))
                    co_return finish();
                break;
            }
            if (!*next) break;
            std::string text(**next);
            if (!co_await handle(*sock, std::move(text))) co_return finish();
        }
        if (pending.empty()) {
            auto [ec, n] = co_await sock->async_read_some(asio::buffer(buffer), as_tuple_awaitable);
            if (ec) co_return finish();
            pending.append(buffer.data(), n);
            continue;
        }
        const auto cut = pending.find(sentinel);
        if (cut == 0) {
            // A lexical error: QEMU's JSON parser drops what it held and reports the stray byte
            // (json-streamer.c), which is why a client sends 0xFF before guest-sync-delimited.
            framer.reset();
            pending.erase(0, 1);
            if (!silent_ &&
                !co_await send(*sock, error_line("GenericError", "JSON parse error, stray '\xff'")))
                co_return finish();
            continue;
        }
        framer.feed(std::string_view(pending).substr(0, cut));
        pending.erase(0, cut);
    }
}

asio::awaitable<bool> agent::send(qmp::stream_socket& socket, std::string bytes) {
    auto [ec, n] = co_await asio::async_write(socket, asio::buffer(bytes), as_tuple_awaitable);
    co_return !ec;
}

asio::awaitable<bool> agent::handle(qmp::stream_socket& socket, std::string text) {
    value request = value::parse(text, nullptr, /*allow_exceptions=*/false);
    received_.push_back(request);
    if (silent_) co_return true;
    if (request.is_discarded())
        co_return co_await send(socket, error_line("GenericError", "JSON parse error"));
    if (!request.is_object())
        co_return co_await send(socket,
                                error_line("GenericError", "QMP input must be a JSON object"));

    const value* id = request.contains("id") ? &request["id"] : nullptr;
    auto execute = request.find("execute");
    outcome result;
    std::string name;
    bool faulted = false;
    if (execute == request.end() || !execute->is_string()) {
        result = {outcome::kind::error,
                  {},
                  "GenericError",
                  "QMP input member 'execute' must be a string"};
    } else if (auto a = request.find("arguments"); a != request.end() && !a->is_object()) {
        result = {outcome::kind::error,
                  {},
                  "GenericError",
                  "QMP input member 'arguments' must be an object"};
    } else {
        name = execute->get<std::string>();
        if (close_on_.contains(name)) co_return false;
        faulted = fault_strikes(name);
        if (faulted && fault_->fault.what == wire_fault::kind::cut) {
            if (fault_->cut) fault_->cut();
            co_return false;
        }
        if (faulted && fault_->fault.what == wire_fault::kind::delay) {
            auto busy =
                std::make_shared<asio::steady_timer>(socket.get_executor(), fault_->fault.delay);
            busy_ = busy;
            auto [ec] = co_await busy->async_wait(as_tuple_awaitable);
            if (busy_ == busy) busy_.reset();
            if (ec || !socket.is_open()) co_return false;
        }
        if (auto d = delays_.find(name); d != delays_.end()) {
            auto busy = std::make_shared<asio::steady_timer>(socket.get_executor(), d->second);
            busy_ = busy;
            auto [ec] = co_await busy->async_wait(as_tuple_awaitable);
            if (busy_ == busy) busy_.reset();
            if (ec || !socket.is_open()) co_return false;
        }
        if (auto raw = raw_replies_.find(name); raw != raw_replies_.end())
            co_return co_await send(socket, raw->second);
        const value args = request.value("arguments", value::object());
        if (auto f = failures_.find(name); f != failures_.end())
            result = {outcome::kind::error, {}, "GenericError", f->second};
        else
            result = dispatch(name, args);
    }

    if (faulted && fault_->fault.what == wire_fault::kind::garbage)
        co_return co_await send(socket, "#fault: not JSON at all#\n");
    if (faulted && fault_->fault.what == wire_fault::kind::wrong_id) {
        // An id the client never sent: at the top level, and in guest-sync's echo.
        value rsp;
        if (name == "guest-sync" || name == "guest-sync-delimited")
            rsp["return"] = 987654321;
        else
            rsp["return"] = result.what == outcome::kind::reply ? result.result : value::object();
        rsp["id"] = "fault-wrong-id";
        std::string line = result.delimited ? std::string(1, sentinel) : std::string();
        line += to_qemu_json(rsp) + "\n";
        co_return co_await send(socket, std::move(line));
    }
    if (result.what == outcome::kind::none) {
        if (name == "guest-shutdown" && options_.close_after_shutdown) co_return false;
        co_return true;
    }
    value rsp;
    if (result.what == outcome::kind::reply)
        rsp["return"] = std::move(result.result);
    else
        rsp["error"] = {{"class", result.error_class}, {"desc", result.desc}};
    if (id && options_.echo_id) rsp["id"] = *id;
    std::string line = result.delimited ? std::string(1, sentinel) : std::string();
    line += to_qemu_json(rsp) + "\n";
    co_return co_await send(socket, std::move(line));
}

agent::outcome agent::dispatch(const std::string& name, const value& args) {
    auto reply = [](value v) { return outcome{outcome::kind::reply, std::move(v), {}, {}}; };
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };

    if (name == "guest-sync" || name == "guest-sync-delimited") {
        if (auto bad = check(args, "id", type::integer, true)) return error(*bad);
        auto r = reply(args["id"]);
        r.delimited = name == "guest-sync-delimited";
        return r;
    }
    if (name == "guest-ping") return reply(value::object());
    if (name == "guest-info") return info();
    if (name == "guest-get-osinfo") return reply(options_.osinfo);
    if (name == "guest-exec") return exec(args);
    if (name == "guest-exec-status") return exec_status(args);
    if (name == "guest-shutdown") {
        if (auto bad = check(args, "mode", type::string, false)) return error(*bad);
        const std::string mode = args.value("mode", "powerdown");
        if (mode != "halt" && mode != "powerdown" && mode != "reboot")
            return error("Parameter 'mode' expects 'halt', 'powerdown', or 'reboot'");
        if (on_shutdown_) on_shutdown_(mode);
        return outcome{outcome::kind::none, {}, {}, {}};
    }
    if (never_replies(name)) return outcome{outcome::kind::none, {}, {}, {}};
    if (name == "guest-set-time") {
        if (auto bad = check(args, "time", type::integer, false)) return error(*bad);
        if (args.contains("time")) {
            clock_offset_ns_ = 0;
            clock_offset_ns_ = args["time"].get<std::int64_t>() - guest_time_ns();
        } else {
            clock_offset_ns_ = 0;  // "set from the hardware clock"
        }
        return reply(value::object());
    }
    if (name == "guest-get-time") return reply(guest_time_ns());
    if (name == "guest-file-open") return file_open(args);
    if (name == "guest-file-read") return file_read(args);
    if (name == "guest-file-write") return file_write(args);
    if (name == "guest-file-seek") return file_seek(args);
    if (name == "guest-file-close") return file_close(args);
    if (name == "guest-file-flush") {
        if (auto bad = check(args, "handle", type::integer, true)) return error(*bad);
        const auto handle = args["handle"].get<std::int64_t>();
        if (!handles_.contains(handle))
            return error(fmt::format("handle '{}' has not been found", handle));
        return reply(value::object());
    }
    return outcome{outcome::kind::error,
                   {},
                   "CommandNotFound",
                   fmt::format("The command {} has not been found", name)};
}

agent::outcome agent::info() const {
    value commands = value::array();
    for (const auto& cmd : supported_commands())
        commands.push_back(
            {{"enabled", true}, {"name", cmd}, {"success-response", !never_replies(cmd)}});
    value v = {{"version", options_.version}, {"supported_commands", std::move(commands)}};
    return outcome{outcome::kind::reply, std::move(v), {}, {}};
}

std::optional<program_result> agent::run_program(const std::string& path,
                                                 const std::vector<std::string>& args,
                                                 const std::string& input) const {
    if (auto it = programs_.find(path); it != programs_.end()) return it->second(args, input);
    if (path == "/bin/echo") {
        std::string line;
        for (std::size_t i = 0; i < args.size(); ++i)
            line += (i ? " " : "") + args[i];
        return program_result{0, std::nullopt, line + "\n", {}};
    }
    if (path == "/bin/cat") return program_result{0, std::nullopt, input, {}};
    if (path == "/bin/true") return program_result{};
    if (path == "/bin/false") return program_result{1, std::nullopt, {}, {}};
    if (path == "/bin/sh") {
        if (args.size() >= 2 && args[0] == "-c") return run_shell(args[1], input);
        return run_shell(input, {});
    }
    return std::nullopt;
}

agent::outcome agent::exec(const value& args) {
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };
    if (auto bad = check(args, "path", type::string, true)) return error(*bad);
    if (auto bad = check(args, "arg", type::array, false)) return error(*bad);
    if (auto bad = check(args, "env", type::array, false)) return error(*bad);
    if (auto bad = check(args, "input-data", type::string, false)) return error(*bad);
    if (auto bad = check(args, "capture-output", type::boolean, false)) return error(*bad);
    const std::string path = args["path"].get<std::string>();
    std::vector<std::string> argv;
    for (const auto& a : args.value("arg", value::array())) {
        if (!a.is_string()) return error("Invalid parameter type for 'arg[0]', expected: string");
        argv.push_back(a.get<std::string>());
    }
    std::string input;
    if (args.contains("input-data")) {
        auto decoded = base64_decode(args["input-data"].get<std::string>());
        if (!decoded) return error("Guest agent command failed, error was 'Invalid Base64 data'");
        input = std::move(*decoded);
    }
    auto outcome_of = run_program(path, argv, input);
    if (!outcome_of)
        return error(
            fmt::format("Guest agent command failed, error was 'Failed to execute "
                        "child process \u201c{}\u201d (No such file or directory)'",
                        path));
    const std::int64_t pid = next_pid_++;
    processes_[pid] = process{std::chrono::steady_clock::now() + options_.exec_duration,
                              std::move(*outcome_of), args.value("capture-output", false)};
    return outcome{outcome::kind::reply, value{{"pid", pid}}, {}, {}};
}

agent::outcome agent::exec_status(const value& args) {
    if (auto bad = check(args, "pid", type::integer, true))
        return outcome{outcome::kind::error, {}, "GenericError", *bad};
    auto it = processes_.find(args["pid"].get<std::int64_t>());
    if (it == processes_.end())
        return outcome{outcome::kind::error, {}, "GenericError", "Invalid parameter 'pid'"};
    if (std::chrono::steady_clock::now() < it->second.exits_at)
        return outcome{outcome::kind::reply, value{{"exited", false}}, {}, {}};
    const process p = std::move(it->second);
    processes_.erase(it);  // qemu-ga forgets a process once it has reported its exit
    value v = {{"exited", true}};
    if (p.outcome.signal)
        v["signal"] = *p.outcome.signal;
    else
        v["exitcode"] = p.outcome.exit_code;
    auto add_stream = [&](const std::string& data, const char* key, const char* truncated_key) {
        if (!p.capture || data.empty()) return;
        const bool truncated = data.size() > options_.max_output;
        v[key] = base64_encode(truncated ? data.substr(0, options_.max_output) : data);
        v[truncated_key] = truncated;
    };
    add_stream(p.outcome.out, "out-data", "out-truncated");
    add_stream(p.outcome.err, "err-data", "err-truncated");
    return outcome{outcome::kind::reply, std::move(v), {}, {}};
}

agent::outcome agent::file_open(const value& args) {
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };
    if (auto bad = check(args, "path", type::string, true)) return error(*bad);
    if (auto bad = check(args, "mode", type::string, false)) return error(*bad);
    const std::string path = args["path"].get<std::string>();
    const std::string mode = args.value("mode", "r");
    static const std::set<std::string> modes = {"r",   "rb",  "r+", "rb+", "r+b", "w",   "wb", "w+",
                                                "wb+", "w+b", "a",  "ab",  "a+",  "ab+", "a+b"};
    if (!modes.contains(mode)) return error(fmt::format("invalid file open mode '{}'", mode));
    open_file f{path, 0, false, false, false};
    const bool plus = mode.find('+') != std::string::npos;
    switch (mode[0]) {
        case 'r':
            if (!files_.contains(path))
                return error(
                    fmt::format("failed to open file '{}' (mode: '{}'): No such file or directory",
                                path, mode));
            f.readable = true;
            f.writable = plus;
            break;
        case 'w':
            files_[path].clear();
            f.writable = true;
            f.readable = plus;
            break;
        default:  // 'a'
            files_[path];
            f.writable = f.append = true;
            f.readable = plus;
            break;
    }
    const std::int64_t handle = next_handle_++;
    handles_[handle] = f;
    return outcome{outcome::kind::reply, value(handle), {}, {}};
}

agent::outcome agent::file_read(const value& args) {
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };
    if (auto bad = check(args, "handle", type::integer, true)) return error(*bad);
    if (auto bad = check(args, "count", type::integer, false)) return error(*bad);
    const auto handle = args["handle"].get<std::int64_t>();
    auto it = handles_.find(handle);
    if (it == handles_.end()) return error(fmt::format("handle '{}' has not been found", handle));
    const auto count = args.value("count", read_count_default);
    if (count < 0 || count >= std::int64_t{0xffffffff})
        return error(fmt::format("value '{}' is invalid for argument count", count));
    auto& f = it->second;
    if (!f.readable) return error("failed to read file: Bad file descriptor");
    const std::string& contents = files_[f.path];
    const std::size_t available = f.position < contents.size() ? contents.size() - f.position : 0;
    const auto n = std::min<std::size_t>(available, static_cast<std::size_t>(count));
    std::string bytes = contents.substr(std::min(f.position, contents.size()), n);
    f.position += n;
    // feof(): set only when a read asked for more than was left.
    const bool eof = static_cast<std::size_t>(count) > available;
    value v = {{"count", n}, {"buf-b64", base64_encode(bytes)}, {"eof", eof}};
    return outcome{outcome::kind::reply, std::move(v), {}, {}};
}

agent::outcome agent::file_write(const value& args) {
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };
    if (auto bad = check(args, "handle", type::integer, true)) return error(*bad);
    if (auto bad = check(args, "buf-b64", type::string, true)) return error(*bad);
    if (auto bad = check(args, "count", type::integer, false)) return error(*bad);
    const auto handle = args["handle"].get<std::int64_t>();
    auto it = handles_.find(handle);
    if (it == handles_.end()) return error(fmt::format("handle '{}' has not been found", handle));
    auto bytes = base64_decode(args["buf-b64"].get<std::string>());
    if (!bytes) return error("Guest agent command failed, error was 'Invalid Base64 data'");
    const auto count = args.value("count", static_cast<std::int64_t>(bytes->size()));
    if (count < 0 || static_cast<std::size_t>(count) > bytes->size())
        return error(fmt::format("value '{}' is invalid for argument count", count));
    auto& f = it->second;
    if (!f.writable) return error("failed to write to file: Bad file descriptor");
    std::string& contents = files_[f.path];
    if (f.append) f.position = contents.size();
    if (contents.size() < f.position) contents.resize(f.position, '\0');
    contents.replace(f.position,
                     std::min(contents.size() - f.position, static_cast<std::size_t>(count)),
                     bytes->substr(0, static_cast<std::size_t>(count)));
    f.position += static_cast<std::size_t>(count);
    value v = {{"count", count}, {"eof", false}};
    return outcome{outcome::kind::reply, std::move(v), {}, {}};
}

agent::outcome agent::file_seek(const value& args) {
    auto error = [](std::string desc) {
        return outcome{outcome::kind::error, {}, "GenericError", std::move(desc)};
    };
    if (auto bad = check(args, "handle", type::integer, true)) return error(*bad);
    if (auto bad = check(args, "offset", type::integer, true)) return error(*bad);
    const auto handle = args["handle"].get<std::int64_t>();
    auto it = handles_.find(handle);
    if (it == handles_.end()) return error(fmt::format("handle '{}' has not been found", handle));
    auto whence = args.find("whence");
    if (whence == args.end()) return error("Parameter 'whence' is missing");
    // GuestFileWhence is an alternate: "set"/"cur"/"end" or the integer 0/1/2.
    int code = -1;
    if (whence->is_string()) {
        const auto w = whence->get<std::string>();
        code = w == "set" ? 0 : w == "cur" ? 1 : w == "end" ? 2 : -1;
        if (code < 0) return error(fmt::format("Parameter 'whence' does not accept value '{}'", w));
    } else if (whence->is_number_integer()) {
        code = whence->get<int>();
        if (code < 0 || code > 2) return error(fmt::format("invalid whence code {}", code));
    } else {
        return error("Invalid parameter type for 'whence', expected: QGASeek");
    }
    auto& f = it->second;
    const auto size = static_cast<std::int64_t>(files_[f.path].size());
    const std::int64_t base = code == 0   ? 0
                              : code == 1 ? static_cast<std::int64_t>(f.position)
                                          : size;
    const std::int64_t target = base + args["offset"].get<std::int64_t>();
    if (target < 0) return error("failed to seek file: Invalid argument");
    f.position = static_cast<std::size_t>(target);
    value v = {{"position", target}, {"eof", false}};
    return outcome{outcome::kind::reply, std::move(v), {}, {}};
}

agent::outcome agent::file_close(const value& args) {
    if (auto bad = check(args, "handle", type::integer, true))
        return outcome{outcome::kind::error, {}, "GenericError", *bad};
    const auto handle = args["handle"].get<std::int64_t>();
    if (handles_.erase(handle) == 0)
        return outcome{outcome::kind::error,
                       {},
                       "GenericError",
                       fmt::format("handle '{}' has not been found", handle)};
    return outcome{outcome::kind::reply, value::object(), {}, {}};
}

}  // namespace stackemu::fake
