#include "provision/download.hpp"

#include <curl/curl.h>
#include <fcntl.h>
#include <fmt/format.h>
#include <openssl/evp.h>
#include <sys/file.h>
#include <sys/stat.h>
#include <unistd.h>

#include <array>
#include <cctype>
#include <cerrno>
#include <charconv>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <vector>

#include "provision/manifest.hpp"

namespace stackemu::provision {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t max_manifest_bytes = 1 << 20;
constexpr std::string_view user_agent = "stackemu/0.1.0";

std::string lower(std::string_view text) {
    std::string out(text);
    for (auto& c : out)
        c = static_cast<char>(std::tolower(static_cast<unsigned char>(c)));
    return out;
}

bool starts_with_nocase(std::string_view text, std::string_view prefix) {
    return text.size() >= prefix.size() && lower(text.substr(0, prefix.size())) == prefix;
}

std::string human_bytes(std::uint64_t n) {
    if (n < 1024) return fmt::format("{} B", n);
    if (n < (1ull << 20)) return fmt::format("{:.1f} KiB", static_cast<double>(n) / 1024.0);
    if (n < (1ull << 30))
        return fmt::format("{:.1f} MiB", static_cast<double>(n) / static_cast<double>(1ull << 20));
    return fmt::format("{:.2f} GiB", static_cast<double>(n) / static_cast<double>(1ull << 30));
}

std::unexpected<error> io_failure(std::string_view what, const std::string& path, int err) {
    return fail(errc::io_error, fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

struct fd_guard {
    int fd = -1;
    explicit fd_guard(int f) : fd(f) {}
    fd_guard(const fd_guard&) = delete;
    fd_guard& operator=(const fd_guard&) = delete;
    ~fd_guard() {
        if (fd >= 0) ::close(fd);
    }
};

void init_curl() {
    static const CURLcode rc = curl_global_init(CURL_GLOBAL_DEFAULT);
    (void)rc;
}

struct curl_deleter {
    void operator()(CURL* c) const { curl_easy_cleanup(c); }
};
using curl_ptr = std::unique_ptr<CURL, curl_deleter>;

// What the headers of the latest response said (a redirect starts a new response).
struct response_headers {
    std::optional<std::uint64_t> range_start;  // Content-Range: bytes START-END/TOTAL
    std::optional<std::uint64_t> range_total;
    std::optional<std::uint64_t> content_length;
};

std::optional<std::uint64_t> parse_u64(std::string_view text) {
    while (!text.empty() && text.front() == ' ')
        text.remove_prefix(1);
    while (!text.empty() && (text.back() == ' ' || text.back() == '\t'))
        text.remove_suffix(1);
    std::uint64_t v = 0;
    const auto* end = text.data() + text.size();
    auto [p, ec] = std::from_chars(text.data(), end, v);
    if (ec != std::errc() || p != end || text.empty()) return std::nullopt;
    return v;
}

std::size_t on_header(char* data, std::size_t size, std::size_t count, void* user) {
    auto* h = static_cast<response_headers*>(user);
    std::string_view line(data, size * count);
    while (!line.empty() && (line.back() == '\n' || line.back() == '\r'))
        line.remove_suffix(1);
    if (line.starts_with("HTTP/")) {
        *h = {};
    } else if (starts_with_nocase(line, "content-range:")) {
        auto value = line.substr(14);
        while (!value.empty() && value.front() == ' ')
            value.remove_prefix(1);
        if (starts_with_nocase(value, "bytes ")) {
            value.remove_prefix(6);
            const auto slash = value.find('/');
            if (slash != std::string_view::npos) {
                h->range_total = parse_u64(value.substr(slash + 1));
                const auto range = value.substr(0, slash);
                if (const auto dash = range.find('-'); dash != std::string_view::npos)
                    h->range_start = parse_u64(range.substr(0, dash));
            }
        }
    } else if (starts_with_nocase(line, "content-length:")) {
        h->content_length = parse_u64(line.substr(15));
    }
    return size * count;
}

// Loopback is never sent through a proxy; otherwise the usual variables apply as libcurl reads
// them (http_proxy, https_proxy, all_proxy, no_proxy).
std::string no_proxy_list() {
    std::string list = "localhost,127.0.0.1,::1";
    for (const char* name : {"no_proxy", "NO_PROXY"}) {
        const char* v = std::getenv(name);
        if (!v || !*v) continue;
        if (std::string_view(v) == "*") return "*";
        return std::string(v) + "," + list;
    }
    return list;
}

struct easy {
    curl_ptr handle;
    std::array<char, CURL_ERROR_SIZE> errbuf{};
    response_headers headers;
};

result<std::unique_ptr<easy>> make_easy(const std::string& url, const download_options& o) {
    init_curl();
    auto e = std::make_unique<easy>();
    e->handle.reset(curl_easy_init());
    if (!e->handle) return fail(errc::internal, "cannot create a libcurl handle");
    CURL* h = e->handle.get();
    const auto proxy_exceptions = no_proxy_list();
    const std::string agent(user_agent);
    curl_easy_setopt(h, CURLOPT_URL, url.c_str());
    curl_easy_setopt(h, CURLOPT_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_REDIR_PROTOCOLS_STR, "http,https");
    curl_easy_setopt(h, CURLOPT_FOLLOWLOCATION, 1L);
    curl_easy_setopt(h, CURLOPT_MAXREDIRS, 10L);
    curl_easy_setopt(h, CURLOPT_USERAGENT, agent.c_str());
    curl_easy_setopt(h, CURLOPT_NOSIGNAL, 1L);
    curl_easy_setopt(h, CURLOPT_CONNECTTIMEOUT, static_cast<long>(o.connect_timeout.count()));
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_LIMIT, 1L);
    curl_easy_setopt(h, CURLOPT_LOW_SPEED_TIME, static_cast<long>(o.stall_timeout.count()));
    curl_easy_setopt(h, CURLOPT_NOPROXY, proxy_exceptions.c_str());
    curl_easy_setopt(h, CURLOPT_ERRORBUFFER, e->errbuf.data());
    curl_easy_setopt(h, CURLOPT_HEADERFUNCTION, &on_header);
    curl_easy_setopt(h, CURLOPT_HEADERDATA, &e->headers);
    return e;
}

std::string transport_text(const easy& e, CURLcode rc) {
    return e.errbuf[0] ? std::string(e.errbuf.data()) : std::string(curl_easy_strerror(rc));
}

long response_code(const easy& e) {
    long code = 0;
    curl_easy_getinfo(e.handle.get(), CURLINFO_RESPONSE_CODE, &code);
    return code;
}

std::unexpected<error> http_failure(const std::string& url, long code) {
    if (code == 404 || code == 410)
        return fail(
            errc::not_found,
            fmt::format("{}: HTTP {} (no such file on the server): check the URL", url, code));
    return fail(errc::io_error, fmt::format("{}: the server answered HTTP {}", url, code));
}

// --- into memory ----------------------------------------------------------------------------

struct memory_sink {
    std::string data;
    std::size_t max = 0;
    bool too_large = false;
};

std::size_t on_memory(char* data, std::size_t size, std::size_t count, void* user) {
    auto* s = static_cast<memory_sink*>(user);
    const std::size_t len = size * count;
    if (s->data.size() + len > s->max) {
        s->too_large = true;
        return 0;
    }
    s->data.append(data, len);
    return len;
}

// --- into the part file ---------------------------------------------------------------------

struct part_sink {
    int fd = -1;
    std::string path;
    std::uint64_t offset = 0;  // bytes the part held when the request was made
    std::uint64_t pos = 0;     // where the next byte goes
    easy* e = nullptr;
    const download_options* options = nullptr;
    bool decided = false;
    bool discard = false;  // an error response: its body is not the file
    bool restarted = false;
    std::optional<std::uint64_t> total;
    std::optional<error> failure;
};

void report_progress(const part_sink& s) {
    if (s.options->progress) s.options->progress({s.pos, s.total, s.restarted ? 0 : s.offset});
}

// The first body bytes decide what this response is: the rest of the file (206), the whole file
// (200: a server that ignores ranges, or a fresh download), or an error page.
bool decide(part_sink& s) {
    s.decided = true;
    const long code = response_code(*s.e);
    if (code == 206) {
        if (s.e->headers.range_start.value_or(0) != s.offset) {
            s.failure = make_error(
                errc::protocol_error,
                fmt::format("the server answered a request for the bytes from {} with another "
                            "range (Content-Range starts at {})",
                            s.offset, s.e->headers.range_start.value_or(0)));
            return false;
        }
        s.total = s.e->headers.range_total;
        return true;
    }
    if (code == 200) {
        if (s.offset > 0) {
            if (::ftruncate(s.fd, 0) != 0) {
                s.failure = make_error(errc::io_error, fmt::format("cannot truncate {}: {}", s.path,
                                                                   std::strerror(errno)));
                return false;
            }
            s.restarted = true;
            if (s.options->note)
                s.options->note(
                    fmt::format("the server ignored the range request (HTTP 200, "
                                "not 206): downloading from the start"));
        }
        s.pos = 0;
        s.total = s.e->headers.content_length;
        return true;
    }
    s.discard = true;
    return true;
}

std::size_t on_part(char* data, std::size_t size, std::size_t count, void* user) {
    auto* s = static_cast<part_sink*>(user);
    const std::size_t len = size * count;
    if (!s->decided && !decide(*s)) return 0;
    if (s->discard) return len;
    std::size_t done = 0;
    while (done < len) {
        const auto n = ::pwrite(s->fd, data + done, len - done, static_cast<off_t>(s->pos + done));
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            s->failure = make_error(
                errc::io_error,
                fmt::format("cannot write {}: {}", s->path, std::strerror(n < 0 ? errno : ENOSPC)));
            return 0;
        }
        done += static_cast<std::size_t>(n);
    }
    s->pos += len;
    report_progress(*s);
    return len;
}

result<std::uint64_t> file_size(int fd, const std::string& path) {
    struct stat st {};
    if (::fstat(fd, &st) != 0) return io_failure("cannot stat", path, errno);
    return static_cast<std::uint64_t>(st.st_size);
}

// One GET of the rest of the file into the locked, open part.
result<part_outcome> download_into(int fd, const std::string& url, const std::string& path,
                                   const download_options& options) {
    part_outcome outcome;
    // A 416 for a part that is not exactly complete leads to one more request from byte 0.
    for (int attempt = 0; attempt < 2; ++attempt) {
        auto size = file_size(fd, path);
        if (!size) return std::unexpected(size.error());
        auto e = make_easy(url, options);
        if (!e) return std::unexpected(e.error());
        part_sink sink;
        sink.fd = fd;
        sink.path = path;
        sink.offset = *size;
        sink.pos = *size;
        sink.e = e->get();
        sink.options = &options;
        CURL* h = (*e)->handle.get();
        const std::string range = fmt::format("{}-", *size);
        if (*size > 0) {
            curl_easy_setopt(h, CURLOPT_RANGE, range.c_str());
            if (options.note)
                options.note(fmt::format("resuming {} at {}", path, human_bytes(*size)));
        }
        curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &on_part);
        curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
        const CURLcode rc = curl_easy_perform(h);
        if (sink.failure) return fail(*sink.failure);
        const long code = response_code(**e);
        if (rc != CURLE_OK) {
            const auto got = file_size(fd, path).value_or(sink.pos);
            return fail(errc::io_error,
                        fmt::format("downloading {} stopped after {}{}: {}. The partial file {} "
                                    "is kept: run the same command again to resume",
                                    url, human_bytes(got),
                                    sink.total ? " of " + human_bytes(*sink.total) : "",
                                    transport_text(**e, rc), path));
        }
        if (code == 416 && *size > 0) {
            if ((*e)->headers.range_total == *size) {
                outcome.size = *size;
                outcome.resumed_from = *size;
                return outcome;
            }
            if (options.note)
                options.note(fmt::format(
                    "the partial file {} does not fit the file on the server (HTTP 416): "
                    "downloading from the start",
                    path));
            if (::ftruncate(fd, 0) != 0) return io_failure("cannot truncate", path, errno);
            outcome.restarted = true;
            continue;
        }
        if (code != 200 && code != 206) return http_failure(url, code);
        // An empty body never reached on_part.
        if (!sink.decided && !decide(sink)) return fail(*sink.failure);
        auto final_size = file_size(fd, path);
        if (!final_size) return std::unexpected(final_size.error());
        if (sink.total && *final_size != *sink.total)
            return fail(errc::io_error,
                        fmt::format("{} ended at {} bytes, but the server announced {}: run the "
                                    "same command again to resume",
                                    url, *final_size, *sink.total));
        outcome.size = *final_size;
        outcome.restarted = outcome.restarted || sink.restarted;
        outcome.resumed_from = outcome.restarted ? 0 : sink.offset;
        return outcome;
    }
    return fail(errc::io_error,
                fmt::format("{}: the server refused every range request (HTTP 416)", url));
}

result<std::string> sha256_of_fd(int fd, const std::string& path) {
    std::unique_ptr<EVP_MD_CTX, decltype(&EVP_MD_CTX_free)> ctx(EVP_MD_CTX_new(), &EVP_MD_CTX_free);
    if (!ctx || EVP_DigestInit_ex(ctx.get(), EVP_sha256(), nullptr) != 1)
        return fail(errc::internal, "cannot initialise SHA-256 (OpenSSL)");
    std::vector<unsigned char> buf(1 << 20);
    off_t at = 0;
    for (;;) {
        const auto n = ::pread(fd, buf.data(), buf.size(), at);
        if (n < 0 && errno == EINTR) continue;
        if (n < 0) return io_failure("cannot read", path, errno);
        if (n == 0) break;
        if (EVP_DigestUpdate(ctx.get(), buf.data(), static_cast<std::size_t>(n)) != 1)
            return fail(errc::internal, "SHA-256 update failed (OpenSSL)");
        at += n;
    }
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int len = 0;
    if (EVP_DigestFinal_ex(ctx.get(), digest.data(), &len) != 1)
        return fail(errc::internal, "SHA-256 final failed (OpenSSL)");
    std::string hex;
    for (unsigned int i = 0; i < len; ++i)
        hex += fmt::format("{:02x}", digest[i]);
    return hex;
}

result<void> write_small_file_atomically(const fs::path& path, std::string_view bytes,
                                         mode_t mode) {
    // One fmt::format, not chained operator+: GCC 12 at -O3 misreads the latter as an
    // overlapping memcpy (-Wrestrict), a known false positive.
    std::string pattern =
        (path.parent_path() / fmt::format(".{}.tmp-XXXXXX", path.filename().string())).string();
    const int fd = ::mkstemp(pattern.data());
    if (fd < 0) return io_failure("cannot create a temporary file for", path.string(), errno);
    fd_guard guard(fd);
    bool ok = ::fchmod(fd, mode) == 0;
    for (std::size_t done = 0; ok && done < bytes.size();) {
        const auto n = ::write(fd, bytes.data() + done, bytes.size() - done);
        if (n < 0 && errno == EINTR) continue;
        ok = n > 0;
        if (ok) done += static_cast<std::size_t>(n);
    }
    ok = ok && ::fsync(fd) == 0;
    if (!ok || ::rename(pattern.c_str(), path.c_str()) != 0) {
        const int err = errno;
        ::unlink(pattern.c_str());
        return io_failure("cannot write", path.string(), err);
    }
    return {};
}

void sync_dir(const fs::path& dir) {
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
}

}  // namespace

result<void> check_download_url(std::string_view url) {
    const auto l = lower(url);
    std::string_view rest;
    if (l.starts_with("https://"))
        rest = url.substr(8);
    else if (l.starts_with("http://"))
        rest = url.substr(7);
    else
        return fail(errc::invalid_argument,
                    fmt::format("{:?} is not an http:// or https:// URL (pull downloads over "
                                "HTTP(S) only; for a local file use `stackemu build-image "
                                "--base FILE`)",
                                std::string(url)));
    if (rest.empty() || rest.front() == '/' || rest.front() == '?' || rest.front() == '#')
        return fail(errc::invalid_argument, fmt::format("{:?} names no host", std::string(url)));
    for (unsigned char c : url)
        if (c <= 0x20 || c == 0x7f)
            return fail(errc::invalid_argument,
                        fmt::format("{:?} contains blanks or control characters: percent-encode "
                                    "them",
                                    std::string(url)));
    return {};
}

result<std::string> manifest_url_for(std::string_view image_url) {
    if (auto ok = check_download_url(image_url); !ok) return std::unexpected(ok.error());
    const auto path_end = image_url.find_first_of("?#");
    const auto path = image_url.substr(0, path_end);
    constexpr std::string_view suffix = ".qcow2";
    if (path.size() <= suffix.size() || lower(path.substr(path.size() - suffix.size())) != suffix)
        return fail(errc::invalid_argument,
                    fmt::format("cannot guess the manifest of {}: its path does not end in "
                                ".qcow2; pass --manifest-url",
                                std::string(image_url)));
    std::string out(path.substr(0, path.size() - suffix.size()));
    out += ".json";
    if (path_end != std::string_view::npos) out += image_url.substr(path_end);
    return out;
}

result<std::string> parse_sha256_hex(std::string_view text) {
    if (text.size() != 64)
        return fail(errc::invalid_argument,
                    fmt::format("a SHA-256 is 64 hexadecimal digits; {:?} has {} characters",
                                std::string(text), text.size()));
    std::string out = lower(text);
    for (char c : out)
        if (!std::isxdigit(static_cast<unsigned char>(c)))
            return fail(errc::invalid_argument,
                        fmt::format("{:?} is not hexadecimal (a SHA-256 is 64 digits 0-9 a-f)",
                                    std::string(text)));
    return out;
}

std::string sha256_hex(std::string_view bytes) {
    std::array<unsigned char, EVP_MAX_MD_SIZE> digest{};
    unsigned int len = 0;
    EVP_Digest(bytes.data(), bytes.size(), digest.data(), &len, EVP_sha256(), nullptr);
    std::string out;
    for (unsigned int i = 0; i < len; ++i)
        out += fmt::format("{:02x}", digest[i]);
    return out;
}

result<std::string> sha256_of_file(const fs::path& path) {
    const int fd = ::open(path.c_str(), O_RDONLY | O_CLOEXEC);
    if (fd < 0) return io_failure("cannot open", path.string(), errno);
    fd_guard guard(fd);
    return sha256_of_fd(fd, path.string());
}

result<std::string> fetch_text(const std::string& url, std::size_t max_bytes,
                               const download_options& options) {
    if (auto ok = check_download_url(url); !ok) return std::unexpected(ok.error());
    auto e = make_easy(url, options);
    if (!e) return std::unexpected(e.error());
    memory_sink sink;
    sink.max = max_bytes;
    CURL* h = (*e)->handle.get();
    curl_easy_setopt(h, CURLOPT_WRITEFUNCTION, &on_memory);
    curl_easy_setopt(h, CURLOPT_WRITEDATA, &sink);
    const CURLcode rc = curl_easy_perform(h);
    const long code = response_code(**e);
    if (code >= 300 && code != 0) return http_failure(url, code);
    if (sink.too_large)
        return fail(errc::protocol_error, fmt::format("{} is larger than {}: not a manifest", url,
                                                      human_bytes(max_bytes)));
    if (rc != CURLE_OK)
        return fail(errc::io_error,
                    fmt::format("cannot download {}: {}", url, transport_text(**e, rc)));
    return std::move(sink.data);
}

result<part_outcome> download_to_part(const std::string& url, const fs::path& part,
                                      const download_options& options) {
    if (auto ok = check_download_url(url); !ok) return std::unexpected(ok.error());
    const int fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return io_failure("cannot open", part.string(), errno);
    fd_guard guard(fd);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0)
        return fail(errc::busy, fmt::format("another download is writing {}: wait for it to "
                                            "finish",
                                            part.string()));
    return download_into(fd, url, part.string(), options);
}

result<pull_result> pull_image(const pull_request& request) {
    if (auto ok = check_download_url(request.url); !ok) return std::unexpected(ok.error());
    auto manifest_url = request.manifest_url.empty() ? manifest_url_for(request.url)
                                                     : result<std::string>(request.manifest_url);
    if (!manifest_url) return std::unexpected(manifest_url.error());
    if (auto ok = check_download_url(*manifest_url); !ok) return std::unexpected(ok.error());
    if (request.sha256.empty())
        return fail(errc::invalid_argument,
                    "--sha256 is required: the SHA-256 of the qcow2, as its publisher states it");
    auto sha = parse_sha256_hex(request.sha256);
    if (!sha) return std::unexpected(sha.error());
    if (request.arch != "amd64" && request.arch != "arm64")
        return fail(errc::invalid_argument,
                    fmt::format("architecture {:?}: amd64 or arm64 expected", request.arch));
    if (request.image_dir.empty() || !request.image_dir.is_absolute())
        return fail(errc::invalid_argument,
                    fmt::format("the image directory {:?} must be an absolute path",
                                request.image_dir.string()));
    const auto& note = request.transfer.note;

    std::error_code ec;
    fs::create_directories(request.image_dir, ec);
    if (ec)
        return fail(errc::io_error,
                    fmt::format("cannot create {}: {}", request.image_dir.string(), ec.message()));

    // The manifest first: a wrong or unusable image is refused before a long download.
    if (note) note(fmt::format("fetching the manifest {}", *manifest_url));
    auto text = fetch_text(*manifest_url, max_manifest_bytes, request.transfer);
    if (!text) {
        if (request.manifest_url.empty())
            text.error().message +=
                " (the manifest is looked for beside the image, with .json "
                "for .qcow2; pass --manifest-url if it lives elsewhere)";
        return std::unexpected(text.error());
    }
    auto m = parse_manifest(*text, request.image_dir);
    if (!m)
        return fail(errc::incompatible, fmt::format("the manifest {} is not usable: {}",
                                                    *manifest_url, m.error().message));
    if (m->arch != request.arch)
        return fail(errc::incompatible,
                    fmt::format("the manifest {} describes an {} image, not {}: pass --arch {} "
                                "or the URL of the {} image",
                                *manifest_url, m->arch, request.arch, m->arch, request.arch));
    if (m->kernel_boot)
        return fail(errc::incompatible,
                    fmt::format("the image at {} boots a kernel and initrd from files beside "
                                "it, which pull does not fetch (only the qcow2 carries a "
                                "checksum): use an image that boots through the firmware, or "
                                "build one here with `stackemu build-image`",
                                request.url));

    const fs::path image = default_image(request.image_dir, request.arch);
    const fs::path manifest_path = fs::path(image).replace_extension(".json");
    const fs::path part = image.string() + ".part";
    const fs::path source = image.string() + ".part.source";

    const int fd = ::open(part.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    if (fd < 0) return io_failure("cannot open", part.string(), errno);
    fd_guard guard(fd);
    if (::flock(fd, LOCK_EX | LOCK_NB) != 0)
        return fail(errc::busy, fmt::format("another stackemu pull is downloading into {}: wait "
                                            "for it to finish",
                                            part.string()));
    // Which download the part belongs to: bytes of another URL or checksum are not resumed.
    const std::string source_text = request.url + "\n" + *sha + "\n";
    {
        std::string previous;
        if (const int sfd = ::open(source.c_str(), O_RDONLY | O_CLOEXEC); sfd >= 0) {
            std::array<char, 4096> buf{};
            const auto n = ::read(sfd, buf.data(), buf.size());
            if (n > 0) previous.assign(buf.data(), static_cast<std::size_t>(n));
            ::close(sfd);
        }
        auto size = file_size(fd, part.string());
        if (!size) return std::unexpected(size.error());
        if (*size > 0 && previous != source_text) {
            if (note)
                note(
                    fmt::format("discarding {}: it is a partial download of another URL or "
                                "checksum",
                                part.string()));
            if (::ftruncate(fd, 0) != 0) return io_failure("cannot truncate", part.string(), errno);
        }
        if (previous != source_text)
            if (auto ok = write_small_file_atomically(source, source_text, 0600); !ok)
                return std::unexpected(ok.error());
    }

    auto outcome = download_into(fd, request.url, part.string(), request.transfer);
    if (!outcome) return std::unexpected(outcome.error());

    if (note) note(fmt::format("verifying the SHA-256 of {}", human_bytes(outcome->size)));
    auto got = sha256_of_fd(fd, part.string());
    if (!got) return std::unexpected(got.error());
    auto discard_part = [&] {
        ::unlink(part.c_str());
        ::unlink(source.c_str());
    };
    if (*got != *sha) {
        discard_part();
        return fail(errc::checksum_mismatch,
                    fmt::format("the download of {} does not have the expected SHA-256:\n"
                                "  expected {}\n"
                                "  got      {}\n"
                                "nothing was installed and the partial file was removed: check "
                                "--sha256 and the URL",
                                request.url, *sha, *got));
    }
    std::array<unsigned char, 4> magic{};
    if (::pread(fd, magic.data(), magic.size(), 0) != static_cast<ssize_t>(magic.size()) ||
        magic != std::array<unsigned char, 4>{'Q', 'F', 'I', 0xfb}) {
        discard_part();
        return fail(errc::incompatible,
                    fmt::format("{} matches the SHA-256 but is not a qcow2 image (no QFI\\xfb "
                                "header): nothing was installed",
                                request.url));
    }
    // Like the manifest beside it: a downloaded image holds nothing private.
    if (::fchmod(fd, 0644) != 0) return io_failure("cannot chmod", part.string(), errno);
    if (::fsync(fd) != 0) return io_failure("cannot sync", part.string(), errno);

    // Replace: no manifest while the disk changes, then the disk, then the manifest, last.
    if (::unlink(manifest_path.c_str()) != 0 && errno != ENOENT)
        return io_failure("cannot remove the old manifest", manifest_path.string(), errno);
    if (::rename(part.c_str(), image.c_str()) != 0)
        return io_failure("cannot rename the download to", image.string(), errno);
    ::unlink(source.c_str());
    sync_dir(request.image_dir);
    m->disk = image;
    if (auto ok =
            write_small_file_atomically(manifest_path, to_json_text(*m, request.image_dir), 0644);
        !ok)
        return std::unexpected(ok.error());
    sync_dir(request.image_dir);

    pull_result r;
    r.image = image;
    r.manifest = manifest_path;
    r.sha256 = *got;
    r.bytes = outcome->size;
    r.resumed_from = outcome->resumed_from;
    r.restarted = outcome->restarted;
    r.build_id = m->build_id;
    r.profile = m->prof.name;
    return r;
}

}  // namespace stackemu::provision
