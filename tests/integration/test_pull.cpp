// `stackemu pull` against a small HTTP server in this test (a thread, POSIX sockets): a full
// download, a cut-off download that resumes on the second run, a server that ignores ranges, a
// corrupted file and a 404. The real stackemu binary runs as a user runs it.
#include <fcntl.h>
#include <netinet/in.h>
#include <poll.h>
#include <signal.h>
#include <spawn.h>
#include <sys/file.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <map>
#include <mutex>
#include <nlohmann/json.hpp>
#include <optional>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "provision/download.hpp"
#include "provision/manifest.hpp"
#include "support/process.hpp"

extern char** environ;

namespace fs = std::filesystem;
using namespace std::chrono_literals;
using nlohmann::json;

namespace {

struct pull_temp_dir {
    fs::path path;
    pull_temp_dir() {
        std::string pattern = (fs::temp_directory_path() / "stackemu-pull-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    pull_temp_dir(const pull_temp_dir&) = delete;
    pull_temp_dir& operator=(const pull_temp_dir&) = delete;
    ~pull_temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
};

std::string read_all(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

std::vector<std::string> entries(const fs::path& dir) {
    std::vector<std::string> out;
    for (const auto& e : fs::directory_iterator(dir))
        out.push_back(e.path().filename());
    std::sort(out.begin(), out.end());
    return out;
}

// --- the server ------------------------------------------------------------------------------

struct route {
    std::string body;
    int status = 200;
    bool honor_range = true;
    // Close the connection after this many body bytes, for the next `cut_times` requests.
    std::optional<std::size_t> cut_after;
    int cut_times = 0;
};

route serve(std::string body) {
    route r;
    r.body = std::move(body);
    return r;
}

struct seen_request {
    std::string path;
    std::string range;  // the Range header's value, empty when absent
};

class http_server {
  public:
    http_server() {
        fd_ = ::socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        REQUIRE(fd_ >= 0);
        int one = 1;
        ::setsockopt(fd_, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        sockaddr_in addr{};
        addr.sin_family = AF_INET;
        addr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
        REQUIRE(::bind(fd_, reinterpret_cast<sockaddr*>(&addr), sizeof addr) == 0);
        socklen_t len = sizeof addr;
        REQUIRE(::getsockname(fd_, reinterpret_cast<sockaddr*>(&addr), &len) == 0);
        port_ = ntohs(addr.sin_port);
        REQUIRE(::listen(fd_, 16) == 0);
        thread_ = std::thread([this] { serve(); });
    }
    http_server(const http_server&) = delete;
    http_server& operator=(const http_server&) = delete;
    ~http_server() {
        stop_ = true;
        thread_.join();
        ::close(fd_);
    }

    std::string url(const std::string& path) const {
        return "http://127.0.0.1:" + std::to_string(port_) + path;
    }
    void set(const std::string& path, route r) {
        std::lock_guard lock(mutex_);
        routes_[path] = std::move(r);
    }
    std::vector<seen_request> requests() {
        std::lock_guard lock(mutex_);
        return seen_;
    }
    void forget_requests() {
        std::lock_guard lock(mutex_);
        seen_.clear();
    }

  private:
    void serve() {
        while (!stop_) {
            pollfd p{fd_, POLLIN, 0};
            if (::poll(&p, 1, 50) <= 0) continue;
            const int c = ::accept4(fd_, nullptr, nullptr, SOCK_CLOEXEC);
            if (c < 0) continue;
            timeval tv{5, 0};
            ::setsockopt(c, SOL_SOCKET, SO_RCVTIMEO, &tv, sizeof tv);
            handle(c);
            ::close(c);
        }
    }

    static bool send_all(int c, std::string_view data) {
        while (!data.empty()) {
            const auto n = ::send(c, data.data(), data.size(), MSG_NOSIGNAL);
            if (n <= 0) return false;
            data.remove_prefix(static_cast<std::size_t>(n));
        }
        return true;
    }

    void handle(int c) {
        std::string request;
        char buf[4096];
        while (request.find("\r\n\r\n") == std::string::npos) {
            const auto n = ::recv(c, buf, sizeof buf, 0);
            if (n <= 0) return;
            request.append(buf, static_cast<std::size_t>(n));
        }
        std::istringstream in(request);
        std::string method, path, version;
        in >> method >> path >> version;
        std::string line, range;
        std::getline(in, line);
        while (std::getline(in, line) && line != "\r") {
            const auto colon = line.find(':');
            if (colon == std::string::npos) continue;
            std::string name = line.substr(0, colon);
            for (auto& ch : name)
                ch = static_cast<char>(std::tolower(ch));
            if (name == "range") {
                range = line.substr(colon + 1);
                while (!range.empty() && range.front() == ' ')
                    range.erase(0, 1);
                while (!range.empty() && (range.back() == '\r' || range.back() == ' '))
                    range.pop_back();
            }
        }
        route r;
        bool cut = false;
        {
            std::lock_guard lock(mutex_);
            seen_.push_back({path, range});
            auto it = routes_.find(path);
            if (it == routes_.end()) {
                r.status = 404;
                r.body = "not here\n";
            } else {
                r = it->second;
                if (it->second.cut_after && it->second.cut_times > 0) {
                    cut = true;
                    --it->second.cut_times;
                }
            }
        }
        std::string status = "200 OK";
        std::string extra;
        std::string_view body = r.body;
        if (r.status != 200) {
            status = std::to_string(r.status) + " Error";
        } else if (r.honor_range && range.rfind("bytes=", 0) == 0 && range.back() == '-') {
            const auto from = std::stoull(range.substr(6, range.size() - 7));
            if (from >= r.body.size()) {
                send_all(c, "HTTP/1.1 416 Range Not Satisfiable\r\nContent-Range: bytes */" +
                                std::to_string(r.body.size()) +
                                "\r\nContent-Length: 0\r\nConnection: close\r\n\r\n");
                return;
            }
            status = "206 Partial Content";
            extra = "Content-Range: bytes " + std::to_string(from) + "-" +
                    std::to_string(r.body.size() - 1) + "/" + std::to_string(r.body.size()) +
                    "\r\n";
            body.remove_prefix(from);
        }
        const std::string head = "HTTP/1.1 " + status +
                                 "\r\nContent-Length: " + std::to_string(body.size()) + "\r\n" +
                                 extra + "Connection: close\r\n\r\n";
        if (!send_all(c, head)) return;
        if (cut) body = body.substr(0, std::min(body.size(), *r.cut_after));
        send_all(c, body);
    }

    int fd_ = -1;
    std::uint16_t port_ = 0;
    std::atomic<bool> stop_{false};
    std::thread thread_;
    std::mutex mutex_;
    std::map<std::string, route> routes_;
    std::vector<seen_request> seen_;
};

// --- the stackemu binary ---------------------------------------------------------------------

struct cli_run {
    int exit_code = -1;
    std::string out;
    std::string err;
};

// Runs stackemu with `args`, EMULATOR_IMAGE_DIR and HOME pointing into the test's directory and
// no proxy variables; stdout and stderr are files (not a terminal: plain progress lines).
cli_run run_cli(const fs::path& dir, std::vector<std::string> args) {
    std::vector<std::string> env_strings;
    for (char** e = environ; *e; ++e) {
        std::string_view kv(*e);
        const auto name = kv.substr(0, kv.find('='));
        std::string lower(name);
        for (auto& ch : lower)
            ch = static_cast<char>(std::tolower(ch));
        if (lower.ends_with("_proxy") || name.starts_with("EMULATOR_") || name == "HOME") continue;
        env_strings.emplace_back(kv);
    }
    env_strings.push_back("HOME=" + dir.string());
    env_strings.push_back("EMULATOR_IMAGE_DIR=" + (dir / "images").string());
    std::vector<char*> envp;
    for (auto& s : env_strings)
        envp.push_back(s.data());
    envp.push_back(nullptr);

    std::vector<std::string> argv_strings = {STACKEMU_CLI_EXE};
    argv_strings.insert(argv_strings.end(), args.begin(), args.end());
    std::vector<char*> argv;
    for (auto& s : argv_strings)
        argv.push_back(s.data());
    argv.push_back(nullptr);

    const auto out_path = dir / "cli.out";
    const auto err_path = dir / "cli.err";
    posix_spawn_file_actions_t actions;
    posix_spawn_file_actions_init(&actions);
    posix_spawn_file_actions_addopen(&actions, 0, "/dev/null", O_RDONLY, 0);
    posix_spawn_file_actions_addopen(&actions, 1, out_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    posix_spawn_file_actions_addopen(&actions, 2, err_path.c_str(), O_WRONLY | O_CREAT | O_TRUNC,
                                     0600);
    pid_t pid = -1;
    const int rc = ::posix_spawn(&pid, argv[0], &actions, nullptr, argv.data(), envp.data());
    posix_spawn_file_actions_destroy(&actions);
    REQUIRE(rc == 0);
    cli_run r;
    const auto code = stackemu::test::wait_child(pid, 60s);
    if (!code) FAIL("stackemu pull hung past 60 s");
    r.exit_code = *code;
    r.out = read_all(out_path);
    r.err = read_all(err_path);
    fs::remove(out_path);
    fs::remove(err_path);
    return r;
}

// --- the image ---------------------------------------------------------------------------------

// A qcow2 header followed by deterministic bytes: pull only looks at the magic.
std::string fake_qcow2(std::size_t size) {
    std::string s(size, '\0');
    s[0] = 'Q';
    s[1] = 'F';
    s[2] = 'I';
    s[3] = static_cast<char>(0xfb);
    std::uint32_t x = 2463534242u;
    for (std::size_t i = 4; i < size; ++i) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        s[i] = static_cast<char>(x);
    }
    return s;
}

std::string sha256_hex(const fs::path& dir, const std::string& bytes) {
    const auto p = dir / "hash-input";
    {
        std::ofstream out(p, std::ios::binary);
        out << bytes;
    }
    auto h = stackemu::provision::sha256_of_file(p);
    REQUIRE(h);
    fs::remove(p);
    return *h;
}

std::string manifest_text(const std::string& arch = "amd64", bool kernel_boot = false) {
    json boot = {{"mode", "firmware"}};
    if (kernel_boot) boot = {{"mode", "kernel"}, {"kernel", "vmlinuz"}, {"initrd", "initrd.img"}};
    json m = {{"format", 1},
              {"arch", arch},
              {"disk", "published-name.qcow2"},
              {"boot", boot},
              {"profile",
               {{"name", "demo"},
                {"forwards", json::array({{{"name", "backend"}, {"guest", 8080}}})},
                {"probes", json::array()},
                {"ready_marker", "STACK_READY"}}},
              {"base", {{"source", "debian"}, {"sha256", ""}}},
              {"build_id", "build-42"}};
    return m.dump(2);
}

struct fixture {
    pull_temp_dir dir;
    http_server server;
    std::string image = fake_qcow2(3u << 20);
    std::string sha = sha256_hex(dir.path, image);
    fs::path images = dir.path / "images";
    fs::path installed = images / "stack-emulator-amd64.qcow2";
    fs::path installed_manifest = images / "stack-emulator-amd64.json";
    fs::path part = images / "stack-emulator-amd64.qcow2.part";

    fixture() {
        server.set("/img/stack.qcow2", serve(image));
        server.set("/img/stack.json", serve(manifest_text()));
    }
    cli_run pull(std::vector<std::string> extra = {}) {
        std::vector<std::string> args = {
            "pull", "--url", server.url("/img/stack.qcow2"), "--sha256", sha, "--arch", "amd64"};
        args.insert(args.end(), extra.begin(), extra.end());
        return run_cli(dir.path, args);
    }
    void check_installed() {
        CHECK(read_all(installed) == image);
        auto m = stackemu::provision::load_manifest(installed);
        INFO((m ? std::string() : m.error().what()));
        REQUIRE(m);
        CHECK(m->disk == installed);
        CHECK(m->build_id == "build-42");
        CHECK(m->prof.name == "demo");
        CHECK(entries(images) ==
              std::vector<std::string>{"stack-emulator-amd64.json", "stack-emulator-amd64.qcow2"});
    }
};

}  // namespace

TEST_CASE("pull: a full download is verified and installed with its manifest", "[pull]") {
    fixture f;
    auto r = f.pull({"--json"});
    INFO("stderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    f.check_installed();
    auto out = json::parse(r.out);
    CHECK(out["image"] == f.installed.string());
    CHECK(out["sha256"] == f.sha);
    CHECK(out["bytes"] == f.image.size());
    CHECK(out["resumed_from"] == 0);
    CHECK(out["build_id"] == "build-42");
    // Not a terminal: plain lines, no carriage returns.
    CHECK(r.err.find('\r') == std::string::npos);
    CHECK_THAT(r.err, Catch::Contains("stackemu pull: downloaded 3.0 MiB"));
    CHECK_THAT(r.err, Catch::Contains("verifying the SHA-256"));
    const auto seen = f.server.requests();
    REQUIRE(seen.size() == 2);
    CHECK(seen[0].path == "/img/stack.json");
    CHECK(seen[1].path == "/img/stack.qcow2");
    CHECK(seen[1].range.empty());

    // A second pull replaces the image (same bytes) and leaves no part behind.
    auto again = f.pull();
    INFO("stderr: " << again.err);
    CHECK(again.exit_code == 0);
    CHECK_THAT(again.out, Catch::Contains("installed " + f.installed.string()));
    f.check_installed();
}

TEST_CASE("pull: a cut-off download resumes on the second run", "[pull]") {
    fixture f;
    route cut = serve(f.image);
    cut.cut_after = 1000000;
    cut.cut_times = 1;
    f.server.set("/img/stack.qcow2", cut);

    auto first = f.pull();
    INFO("first stderr: " << first.err);
    CHECK(first.exit_code == 1);
    CHECK_THAT(first.err, Catch::Contains("run the same command again to resume"));
    CHECK_FALSE(fs::exists(f.installed));
    CHECK_FALSE(fs::exists(f.installed_manifest));
    REQUIRE(fs::exists(f.part));
    CHECK(fs::file_size(f.part) == 1000000);

    f.server.forget_requests();
    auto second = f.pull({"--json"});
    INFO("second stderr: " << second.err);
    REQUIRE(second.exit_code == 0);
    CHECK_THAT(second.err, Catch::Contains("resuming"));
    f.check_installed();
    CHECK(json::parse(second.out)["resumed_from"] == 1000000);
    const auto seen = f.server.requests();
    REQUIRE(seen.size() == 2);
    CHECK(seen[1].range == "bytes=1000000-");
}

TEST_CASE("pull: a server that ignores ranges gets a clean restart", "[pull]") {
    fixture f;
    route cut = serve(f.image);
    cut.cut_after = 700000;
    cut.cut_times = 1;
    cut.honor_range = false;
    f.server.set("/img/stack.qcow2", cut);

    auto first = f.pull();
    CHECK(first.exit_code == 1);
    REQUIRE(fs::file_size(f.part) == 700000);

    f.server.forget_requests();
    auto second = f.pull({"--json"});
    INFO("second stderr: " << second.err);
    REQUIRE(second.exit_code == 0);
    CHECK_THAT(second.err, Catch::Contains("ignored the range request"));
    f.check_installed();
    auto out = json::parse(second.out);
    CHECK(out["restarted"] == true);
    CHECK(out["resumed_from"] == 0);
    CHECK(f.server.requests().back().range == "bytes=700000-");
}

TEST_CASE("pull: a part that already holds the whole file is verified without a body", "[pull]") {
    fixture f;
    fs::create_directories(f.images);
    {
        std::ofstream out(f.part, std::ios::binary);
        out << f.image;
    }
    // The part was started by a run with the same URL and checksum.
    {
        std::ofstream out(f.part.string() + ".source");
        out << f.server.url("/img/stack.qcow2") << "\n" << f.sha << "\n";
    }
    auto r = f.pull();
    INFO("stderr: " << r.err);
    REQUIRE(r.exit_code == 0);
    f.check_installed();
}

TEST_CASE("pull: a corrupted file is refused and nothing is installed", "[pull]") {
    fixture f;
    auto corrupted = f.image;
    corrupted[corrupted.size() / 2] ^= 0x01;
    f.server.set("/img/stack.qcow2", serve(corrupted));
    auto r = f.pull();
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("does not have the expected SHA-256"));
    CHECK_THAT(r.err, Catch::Contains("expected " + f.sha));
    CHECK_THAT(r.err, Catch::Contains("got      " + sha256_hex(f.dir.path, corrupted)));
    CHECK_THAT(r.err, Catch::Contains("partial file was removed"));
    CHECK(entries(f.images).empty());
}

TEST_CASE("pull: a 404 is a clear error", "[pull]") {
    fixture f;
    auto r = run_cli(f.dir.path, {"pull", "--url", f.server.url("/img/missing.qcow2"), "--sha256",
                                  f.sha, "--arch", "amd64"});
    CHECK(r.exit_code == 1);
    CHECK_THAT(r.err, Catch::Contains("/img/missing.json: HTTP 404"));
    CHECK_THAT(r.err, Catch::Contains("--manifest-url"));

    // The manifest exists but the image does not.
    auto image_missing =
        run_cli(f.dir.path, {"pull", "--url", f.server.url("/img/missing.qcow2"), "--sha256", f.sha,
                             "--arch", "amd64", "--manifest-url", f.server.url("/img/stack.json")});
    CHECK(image_missing.exit_code == 1);
    CHECK_THAT(image_missing.err, Catch::Contains("/img/missing.qcow2: HTTP 404"));
    CHECK_FALSE(fs::exists(f.installed));
    CHECK_FALSE(fs::exists(f.installed_manifest));
}

TEST_CASE("pull: manifests that do not fit are refused before the download", "[pull]") {
    fixture f;
    f.server.set("/img/stack.json", serve(manifest_text("arm64")));
    auto wrong_arch = f.pull();
    CHECK(wrong_arch.exit_code == 1);
    CHECK_THAT(wrong_arch.err, Catch::Contains("describes an arm64 image, not amd64"));

    f.server.set("/img/stack.json", serve(manifest_text("amd64", true)));
    auto kernel = f.pull();
    CHECK(kernel.exit_code == 1);
    CHECK_THAT(kernel.err, Catch::Contains("kernel and initrd"));

    f.server.set("/img/stack.json", serve("{\"format\": 1}"));
    auto broken = f.pull();
    CHECK(broken.exit_code == 1);
    CHECK_THAT(broken.err, Catch::Contains("is not usable: manifest field \"arch\""));
    for (const auto& s : f.server.requests())
        CHECK(s.path == "/img/stack.json");
    CHECK_FALSE(fs::exists(f.installed));
}

TEST_CASE("pull: bad flags are usage errors", "[pull]") {
    fixture f;
    auto no_sha = run_cli(f.dir.path, {"pull", "--url", f.server.url("/img/stack.qcow2")});
    CHECK(no_sha.exit_code == 2);
    CHECK_THAT(no_sha.err, Catch::Contains("--sha256"));
    const auto url = f.server.url("/img/stack.qcow2");
    auto bad_sha = run_cli(f.dir.path, {"pull", "--url", url, "--sha256", "xyz"});
    CHECK(bad_sha.exit_code == 2);
    CHECK_THAT(bad_sha.err, Catch::Contains("64 hexadecimal digits"));
    auto ftp = run_cli(f.dir.path, {"pull", "--url", "ftp://127.0.0.1/a.qcow2", "--sha256", f.sha});
    CHECK(ftp.exit_code == 2);
    CHECK_THAT(ftp.err, Catch::Contains("not an http:// or https:// URL"));
    auto arch = run_cli(f.dir.path, {"pull", "--url", url, "--sha256", f.sha, "--arch", "sparc"});
    CHECK(arch.exit_code == 2);
    CHECK(f.server.requests().empty());
}

TEST_CASE("pull: a second pull into the same directory waits its turn", "[pull]") {
    fixture f;
    fs::create_directories(f.images);
    const int fd = ::open(f.part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    REQUIRE(fd >= 0);
    REQUIRE(::flock(fd, LOCK_EX) == 0);
    auto r = f.pull();
    ::close(fd);
    CHECK(r.exit_code == 7);
    CHECK_THAT(r.err, Catch::Contains("another stackemu pull is downloading into"));
    CHECK_FALSE(fs::exists(f.installed));
}
