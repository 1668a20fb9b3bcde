#include "provision/iso.hpp"

#include <fcntl.h>
#include <fmt/format.h>
// The struct burn_source copy in libisofs.h: we read the image ourselves, without libburn.
#define LIBISOFS_WITHOUT_LIBBURN 1  // NOLINT(cppcoreguidelines-macro-usage): libisofs.h reads it
#include <libisofs/libisofs.h>
#include <sys/stat.h>
#include <unistd.h>

#include <algorithm>
#include <cerrno>
#include <cstdlib>
#include <cstring>
#include <memory>
#include <mutex>
#include <set>

namespace stackemu::provision {
namespace {

namespace fs = std::filesystem;

constexpr std::size_t max_label_length = 32;
constexpr std::size_t max_component_length = 64;
constexpr mode_t dir_mode = 0555;

// libisofs keeps process-wide state (its message queue); one image is made at a time.
std::mutex libisofs_mutex;

result<void> init_libisofs() {
    static int status = [] {
        // bit0: do not take the charset from LC_*; our names are ASCII, read as UTF-8.
        int rc = iso_init_with_flag(1);
        if (rc < 0) return rc;
        char utf8[] = "UTF-8";
        iso_set_local_charset(utf8, 0);
        // Messages are queued (and read after each image), never printed on our stderr.
        char queue[] = "SORRY";
        char print[] = "NEVER";
        char id[] = "libisofs";
        iso_set_msgs_severities(queue, print, id);
        return 1;
    }();
    if (status < 0)
        return fail(errc::internal,
                    fmt::format("cannot initialise libisofs: {}", iso_error_to_msg(status)));
    return {};
}

std::string libisofs_text(int rc) {
    return fmt::format("{} (libisofs error {:#x})", iso_error_to_msg(rc),
                       static_cast<unsigned>(rc));
}

// Drops queued messages; returns the first SORRY-or-worse one about `image_id`, if any.
std::optional<std::string> drain_messages(int image_id) {
    std::optional<std::string> first;
    for (;;) {
        int code = 0;
        int id = 0;
        char text[ISO_MSGS_MESSAGE_LEN] = {};
        char severity[80] = {};
        char all[] = "ALL";
        if (iso_obtain_msgs(all, &code, &id, text, severity) <= 0) break;
        if (!first && id == image_id) first = fmt::format("{}: {}", severity, text);
    }
    return first;
}

struct image_deleter {
    void operator()(IsoImage* p) const { iso_image_unref(p); }
};
struct opts_deleter {
    void operator()(IsoWriteOpts* p) const { iso_write_opts_free(p); }
};
using image_ptr = std::unique_ptr<IsoImage, image_deleter>;
using opts_ptr = std::unique_ptr<IsoWriteOpts, opts_deleter>;

// The burn source runs a writer thread; freeing it joins that thread.
struct source_ptr {
    burn_source* p = nullptr;
    bool complete = false;  // every byte was read: nothing to cancel
    source_ptr() = default;
    source_ptr(const source_ptr&) = delete;
    source_ptr& operator=(const source_ptr&) = delete;
    ~source_ptr() { reset(); }
    void reset() {
        if (!p) return;
        if (!complete && p->read == nullptr && p->version >= 1 && p->cancel) p->cancel(p);
        p->free_data(p);
        std::free(p);
        p = nullptr;
    }
    int read(unsigned char* buf, int size) const {
        return p->read ? p->read(p, buf, size) : p->read_xt(p, buf, size);
    }
};

// A temporary file beside the target that is removed unless committed.
struct temp_file {
    std::string path;
    int fd = -1;
    bool committed = false;
    temp_file() = default;
    temp_file(const temp_file&) = delete;
    temp_file& operator=(const temp_file&) = delete;
    ~temp_file() {
        if (fd >= 0) ::close(fd);
        if (!committed && !path.empty()) ::unlink(path.c_str());
    }
};

std::unexpected<error> io_failure(std::string_view what, const std::string& path, int err) {
    return fail(errc::io_error, fmt::format("{} {}: {}", what, path, std::strerror(err)));
}

bool label_char(char c) {
    return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') || c == '_' ||
           c == '-';
}

bool name_char(char c) {
    return label_char(c) || c == '.' || c == '+' || c == '@';
}

std::vector<std::string_view> components(std::string_view name) {
    std::vector<std::string_view> out;
    std::size_t start = 0;
    for (;;) {
        const auto slash = name.find('/', start);
        out.push_back(name.substr(
            start, slash == std::string_view::npos ? std::string_view::npos : slash - start));
        if (slash == std::string_view::npos) break;
        start = slash + 1;
    }
    return out;
}

void stamp(IsoNode* node, mode_t mode, std::time_t t) {
    iso_node_set_permissions(node, mode);
    iso_node_set_uid(node, 0);
    iso_node_set_gid(node, 0);
    iso_node_set_atime(node, t);
    iso_node_set_mtime(node, t);
    iso_node_set_ctime(node, t);
}

// The directory for `parts[0..n-1]` under root, created as needed.
result<IsoDir*> directory_for(IsoDir* root, const std::vector<std::string_view>& parts,
                              std::time_t t) {
    IsoDir* dir = root;
    for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
        const std::string part(parts[i]);
        IsoNode* existing = nullptr;
        if (iso_dir_get_node(dir, part.c_str(), &existing) == 1 && existing) {
            if (iso_node_get_type(existing) != LIBISO_DIR)
                return fail(errc::internal, "a file sits where a directory is needed: " + part);
            dir = reinterpret_cast<IsoDir*>(existing);
            continue;
        }
        IsoDir* made = nullptr;
        const int rc = iso_tree_add_new_dir(dir, part.c_str(), &made);
        if (rc < 0)
            return fail(errc::internal,
                        fmt::format("cannot add directory {}: {}", part, libisofs_text(rc)));
        stamp(reinterpret_cast<IsoNode*>(made), dir_mode, t);
        dir = made;
    }
    return dir;
}

// Checks the whole list before anything is built: names, duplicates, readable host files.
result<void> check_files(const std::vector<iso_file>& files) {
    std::set<std::string, std::less<>> file_names;
    std::set<std::string, std::less<>> dir_names;
    for (const auto& f : files) {
        if (auto ok = check_iso_name(f.name); !ok) return ok;
        if ((f.mode & ~static_cast<mode_t>(07777)) != 0)
            return fail(errc::invalid_argument,
                        fmt::format("ISO file {}: mode {:o} has bits beyond permissions", f.name,
                                    static_cast<unsigned>(f.mode)));
        if (!file_names.insert(f.name).second)
            return fail(
                errc::invalid_argument,
                fmt::format("ISO file {} is listed twice: each name may appear once", f.name));
        const auto parts = components(f.name);
        std::string prefix;
        for (std::size_t i = 0; i + 1 < parts.size(); ++i) {
            if (!prefix.empty()) prefix += '/';
            prefix += parts[i];
            dir_names.insert(prefix);
        }
        if (const auto* host = std::get_if<fs::path>(&f.content)) {
            const int fd = ::open(host->c_str(), O_RDONLY | O_CLOEXEC);
            if (fd < 0)
                return fail(errc::invalid_argument,
                            fmt::format("cannot read {} (for ISO file {}): {}", host->string(),
                                        f.name, std::strerror(errno)));
            struct stat st {};
            const int rc = ::fstat(fd, &st);
            ::close(fd);
            if (rc != 0 || !S_ISREG(st.st_mode))
                return fail(errc::invalid_argument,
                            fmt::format("{} (for ISO file {}) is not a regular file",
                                        host->string(), f.name));
        }
    }
    for (const auto& d : dir_names)
        if (file_names.contains(d))
            return fail(
                errc::invalid_argument,
                fmt::format("ISO name {} is both a file and a directory of other files", d));
    return {};
}

result<void> add_file(IsoImage* image, const iso_file& f, std::time_t t) {
    const auto parts = components(f.name);
    auto dir = directory_for(iso_image_get_root(image), parts, t);
    if (!dir) return std::unexpected(dir.error());
    const std::string leaf(parts.back());
    IsoNode* node = nullptr;
    std::string_view memory;
    const auto* bytes = std::get_if<std::string>(&f.content);
    if (bytes) memory = *bytes;
    const auto* host = std::get_if<fs::path>(&f.content);
    if (host) {
        std::error_code ec;
        const auto size = fs::file_size(*host, ec);
        if (ec)
            return fail(errc::invalid_argument,
                        fmt::format("cannot read {}: {}", host->string(), ec.message()));
        if (size > 0) {
            // Streamed while the image is written: the data never sits in memory. libisofs
            // wants an absolute path.
            const auto absolute = fs::absolute(*host, ec);
            if (ec)
                return fail(errc::invalid_argument,
                            fmt::format("cannot resolve {}: {}", host->string(), ec.message()));
            const int rc = iso_tree_add_new_cut_out_node(
                image, *dir, leaf.c_str(), absolute.c_str(), 0, static_cast<off_t>(size), &node);
            if (rc < 0)
                return fail(errc::invalid_argument,
                            fmt::format("cannot add {} as {}: {}", host->string(), f.name,
                                        libisofs_text(rc)));
        }
        // An empty host file is added as empty content (libisofs cannot cut out zero bytes).
    }
    if (!node) {
        // The stream owns a malloc'd copy; a zero-length buffer still needs a valid pointer.
        auto* buf = static_cast<unsigned char*>(std::malloc(memory.empty() ? 1 : memory.size()));
        if (!buf) return fail(errc::internal, "out of memory building an ISO image");
        if (!memory.empty()) std::memcpy(buf, memory.data(), memory.size());
        IsoStream* stream = nullptr;
        int rc = iso_memory_stream_new(buf, memory.size(), &stream);
        if (rc < 0) {
            std::free(buf);
            return fail(errc::internal,
                        fmt::format("cannot hold {} in memory: {}", f.name, libisofs_text(rc)));
        }
        IsoFile* file = nullptr;
        rc = iso_image_add_new_file(image, *dir, leaf.c_str(), stream, &file);
        if (rc < 0) {
            iso_stream_unref(stream);
            return fail(errc::internal,
                        fmt::format("cannot add {}: {}", f.name, libisofs_text(rc)));
        }
        node = reinterpret_cast<IsoNode*>(file);
    }
    stamp(node, f.mode, t);
    return {};
}

result<opts_ptr> make_options(std::time_t t, std::string_view label) {
    IsoWriteOpts* raw = nullptr;
    const int rc = iso_write_opts_new(&raw, 0);
    if (rc < 0)
        return fail(errc::internal,
                    fmt::format("cannot create ISO write options: {}", libisofs_text(rc)));
    opts_ptr opts(raw);
    // Level 3: files over 4 GiB are split into extents (a large payload may need it).
    iso_write_opts_set_iso_level(raw, 3);
    iso_write_opts_set_rockridge(raw, 1);
    iso_write_opts_set_joliet(raw, 1);
    // Joliet names exactly as given: no ";1" version suffix and no dot forced onto a name
    // without an extension ("user-data", not "user-data.;1"). ISO 9660 names stay compliant.
    iso_write_opts_set_omit_version_numbers(raw, 2);
    iso_write_opts_set_no_force_dots(raw, 2);
    // The label exactly as given (lowercase "cidata" like genisoimage -V writes it).
    iso_write_opts_set_relaxed_vol_atts(raw, 1);
    iso_write_opts_set_output_charset(raw, "UTF-8");
    iso_write_opts_set_always_gmt(raw, 1);
    // Reproducible bytes: fixed owners, node times and volume times.
    iso_write_opts_set_replace_mode(raw, 0, 0, 2, 2);
    iso_write_opts_set_default_uid(raw, 0);
    iso_write_opts_set_default_gid(raw, 0);
    iso_write_opts_set_replace_timestamps(raw, 2);
    iso_write_opts_set_default_timestamp(raw, t);
    iso_write_opts_set_dir_rec_mtime(raw, 1);
    // The volume times double as the "UUID" blkid and udev report (/dev/disk/by-uuid): the
    // label picks the centiseconds so the seed, config and bundle ISOs of one VM differ.
    std::tm utc{};
    ::gmtime_r(&t, &utc);
    unsigned label_hash = 0;
    for (unsigned char c : label)
        label_hash = label_hash * 31 + c;
    auto stamp_text =
        fmt::format("{:04}{:02}{:02}{:02}{:02}{:02}{:02}", utc.tm_year + 1900, utc.tm_mon + 1,
                    utc.tm_mday, utc.tm_hour, utc.tm_min, utc.tm_sec, label_hash % 100);
    iso_write_opts_set_pvd_times(raw, t, t, 0, 0, stamp_text.data());
    return opts;
}

}  // namespace

result<void> check_volume_label(std::string_view label) {
    if (label.empty())
        return fail(errc::invalid_argument,
                    "the ISO volume label is empty: give 1 to 32 characters of A-Z a-z 0-9 _ -");
    if (label.size() > max_label_length)
        return fail(errc::invalid_argument,
                    fmt::format("the ISO volume label {} has {} characters: at most {} fit", label,
                                label.size(), max_label_length));
    for (char c : label)
        if (!label_char(c))
            return fail(errc::invalid_argument,
                        fmt::format("the ISO volume label {:?} may only use A-Z a-z 0-9 _ -",
                                    std::string(label)));
    return {};
}

result<void> check_iso_name(std::string_view name) {
    if (name.empty()) return fail(errc::invalid_argument, "an ISO file name is empty");
    for (auto part : components(name)) {
        if (part.empty())
            return fail(errc::invalid_argument,
                        fmt::format("ISO file name {:?} has an empty component (a leading, "
                                    "trailing or doubled '/')",
                                    std::string(name)));
        if (part == "." || part == "..")
            return fail(errc::invalid_argument,
                        fmt::format("ISO file name {:?} contains {:?}: names are plain paths "
                                    "inside the image",
                                    std::string(name), std::string(part)));
        if (part.size() > max_component_length)
            return fail(errc::invalid_argument,
                        fmt::format("ISO file name {:?}: the component {:?} is longer than {} "
                                    "characters (Joliet's limit)",
                                    std::string(name), std::string(part), max_component_length));
        for (char c : part)
            if (!name_char(c))
                return fail(errc::invalid_argument,
                            fmt::format("ISO file name {:?} may only use A-Z a-z 0-9 . _ + @ - "
                                        "and '/' between directories",
                                        std::string(name)));
    }
    return {};
}

result<void> write_iso(const fs::path& out, const std::string& volume_label,
                       const std::vector<iso_file>& files, iso_options options) {
    if (auto ok = check_volume_label(volume_label); !ok) return ok;
    if (out.empty() || !out.has_filename())
        return fail(errc::invalid_argument, "write_iso: the output path names no file");
    if (auto ok = check_files(files); !ok) return ok;
    if (auto ok = init_libisofs(); !ok) return ok;

    std::lock_guard lock(libisofs_mutex);
    const auto t = options.timestamp;
    IsoImage* raw_image = nullptr;
    int rc = iso_image_new(volume_label.c_str(), &raw_image);
    if (rc < 0)
        return fail(errc::internal,
                    fmt::format("cannot create an ISO image: {}", libisofs_text(rc)));
    image_ptr image(raw_image);
    iso_image_set_volume_id(raw_image, volume_label.c_str());
    iso_image_set_application_id(raw_image, "STACKEMU");
    stamp(reinterpret_cast<IsoNode*>(iso_image_get_root(raw_image)), dir_mode, t);
    const int image_id = iso_image_get_msg_id(raw_image);
    drain_messages(-1);  // whatever an earlier image left
    for (const auto& f : files)
        if (auto ok = add_file(raw_image, f, t); !ok) return ok;

    auto opts = make_options(t, volume_label);
    if (!opts) return std::unexpected(opts.error());

    // Written beside `out` so the final rename stays on one filesystem.
    const fs::path dir = out.has_parent_path() ? out.parent_path() : fs::path(".");
    temp_file tmp;
    // One fmt::format, not chained operator+ (a GCC 12 -O3 -Wrestrict false positive).
    std::string pattern = (dir / fmt::format(".{}.tmp-XXXXXX", out.filename().string())).string();
    tmp.fd = ::mkstemp(pattern.data());
    if (tmp.fd < 0) return io_failure("cannot create a temporary file in", dir.string(), errno);
    tmp.path = pattern;

    source_ptr source;
    rc = iso_image_create_burn_source(raw_image, opts->get(), &source.p);
    if (rc < 0) {
        source.p = nullptr;
        return fail(errc::internal,
                    fmt::format("cannot start writing the ISO image: {}", libisofs_text(rc)));
    }
    const off_t total = source.p->get_size(source.p);
    constexpr int block = 2048;
    constexpr int chunk_blocks = 32;
    std::vector<unsigned char> buf(static_cast<std::size_t>(block * chunk_blocks));
    off_t written = 0;
    while (written < total) {
        const off_t left = total - written;
        const int want = static_cast<int>(std::min<off_t>(left, static_cast<off_t>(buf.size())));
        const int got = source.read(buf.data(), want);
        if (got <= 0) {
            auto why = drain_messages(image_id);
            return fail(errc::internal,
                        fmt::format("libisofs stopped after {} of {} bytes of {}{}", written, total,
                                    out.string(), why ? ": " + *why : std::string()));
        }
        for (int done = 0; done < got;) {
            const auto n = ::write(tmp.fd, buf.data() + done, static_cast<std::size_t>(got - done));
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) return io_failure("cannot write", tmp.path, errno);
            done += static_cast<int>(n);
        }
        written += got;
    }
    // Joins the writer thread; its messages are all queued after this.
    source.complete = true;
    source.reset();
    if (auto why = drain_messages(image_id))
        return fail(errc::io_error,
                    fmt::format("writing {} failed: {} (is a payload file changing or "
                                "unreadable?)",
                                out.string(), *why));
    if (::fchmod(tmp.fd, 0600) != 0) return io_failure("cannot chmod", tmp.path, errno);
    if (::fsync(tmp.fd) != 0) return io_failure("cannot sync", tmp.path, errno);
    ::close(tmp.fd);
    tmp.fd = -1;
    if (::rename(tmp.path.c_str(), out.c_str()) != 0)
        return io_failure("cannot rename the finished image to", out.string(), errno);
    tmp.committed = true;
    if (const int dfd = ::open(dir.c_str(), O_RDONLY | O_DIRECTORY | O_CLOEXEC); dfd >= 0) {
        ::fsync(dfd);
        ::close(dfd);
    }
    return {};
}

std::vector<iso_file> nocloud_files(const nocloud_seed& seed) {
    std::vector<iso_file> files;
    files.push_back({"meta-data", seed.meta_data, 0444});
    files.push_back({"user-data", seed.user_data, 0444});
    if (seed.network_config) files.push_back({"network-config", *seed.network_config, 0444});
    return files;
}

namespace {

bool env_key_ok(std::string_view key) {
    if (key.empty()) return false;
    for (std::size_t i = 0; i < key.size(); ++i) {
        const char c = key[i];
        const bool upper = c >= 'A' && c <= 'Z';
        const bool digit = c >= '0' && c <= '9';
        if (!upper && c != '_' && (!digit || i == 0)) return false;
    }
    return true;
}

bool env_value_ok(std::string_view value) {
    return std::ranges::all_of(value, [](char c) {
        const bool alnum =
            (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
        return alnum || std::string_view("_.,:/@+-").find(c) != std::string_view::npos;
    });
}

}  // namespace

result<std::string> render_stack_env(const runtime_config& config) {
    std::vector<std::pair<std::string, std::string>> lines = {
        {"STACKEMU_CONFIG_FORMAT", std::to_string(config_format)},
        {"EMULATOR_NAME", config.instance_name.empty() ? "default" : config.instance_name},
        {"EMULATOR_DASHBOARD_PORT", std::to_string(config.dashboard_port)},
        {"EMULATOR_BACKEND_PORT", std::to_string(config.backend_port)},
        {"EMULATOR_MINIO_PORT", std::to_string(config.minio_port)},
        {"EMULATOR_INBUCKET_PORT", std::to_string(config.inbucket_port)},
    };
    lines.insert(lines.end(), config.extra.begin(), config.extra.end());
    std::set<std::string, std::less<>> seen;
    std::string text;
    for (const auto& [key, value] : lines) {
        if (!env_key_ok(key))
            return fail(errc::invalid_argument,
                        fmt::format("{} setting {:?}: keys are A-Z, 0-9 and _, not starting "
                                    "with a digit",
                                    config_file_name, key));
        if (!seen.insert(key).second)
            return fail(errc::invalid_argument,
                        fmt::format("{} setting {} appears twice", config_file_name, key));
        if (!env_value_ok(value))
            return fail(errc::invalid_argument,
                        fmt::format("{} setting {}: the value {:?} may only use A-Z a-z 0-9 "
                                    "_ . , : / @ + - (the guest reads it unquoted)",
                                    config_file_name, key, value));
        text += key;
        text += '=';
        text += value;
        text += '\n';
    }
    return text;
}

result<std::vector<iso_file>> runtime_config_files(const runtime_config& config) {
    auto text = render_stack_env(config);
    if (!text) return std::unexpected(text.error());
    std::vector<iso_file> files;
    files.push_back({std::string(config_file_name), std::move(*text), 0444});
    return files;
}

std::vector<iso_file> bundle_files(const bundle& b) {
    std::vector<iso_file> files;
    files.push_back({b.payload_name, b.payload, 0444});
    for (const auto& [name, content] : b.env_files)
        files.push_back({name, content, 0444});
    return files;
}

}  // namespace stackemu::provision
