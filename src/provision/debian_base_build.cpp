// Building the Debian base image: the steps, the cache entry and its lock (the I/O shell around
// the recipe in debian_base.cpp).
#include <fcntl.h>
#include <fmt/format.h>
#include <ftw.h>
#include <sys/file.h>
#include <sys/mount.h>
#include <sys/stat.h>
#include <unistd.h>

#include <cerrno>
#include <chrono>
#include <cmath>
#include <cstring>
#include <ctime>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>

#include "provision/debian_base.hpp"
#include "provision/download.hpp"

namespace stackemu::provision {

namespace fs = std::filesystem;
using json = nlohmann::json;

namespace {

constexpr int base_json_format = 1;
constexpr std::string_view qcow2_name = "base.qcow2";
constexpr std::string_view kernel_name = "vmlinuz";
constexpr std::string_view initrd_name = "initrd.img";
constexpr std::string_view base_json_name = "base.json";
constexpr std::size_t error_tail_lines = 15;

// The environment of every tool: no prompts, a PATH with the sbin directories (package scripts
// in the chroot call ldconfig, update-initramfs, ...), and C messages.
stream_options tool_options() {
    stream_options o;
    o.env = {{"PATH", "/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin"},
             {"LC_ALL", "C"},
             {"LANG", std::nullopt},
             {"LANGUAGE", std::nullopt},
             {"DEBIAN_FRONTEND", "noninteractive"},
             {"DEBCONF_NONINTERACTIVE_SEEN", "true"}};
    return o;
}

std::string errno_text(int e = errno) {
    return std::strerror(e);
}

std::string command_text(const std::vector<std::string>& argv) {
    std::string out;
    for (const auto& a : argv) {
        if (!out.empty()) out += ' ';
        out += a;
    }
    return out;
}

std::string tail_text(const std::vector<std::string>& lines) {
    const auto from = lines.size() > error_tail_lines ? lines.size() - error_tail_lines : 0;
    std::string out;
    for (auto i = from; i < lines.size(); ++i)
        out += fmt::format("\n  {}", lines[i]);
    return out.empty() ? std::string("\n  (it printed nothing)") : out;
}

error step_error(std::string_view step, errc code, std::string_view what) {
    return make_error(code,
                      fmt::format("building the Debian base failed at step {}: {}", step, what));
}

// Runs one tool of a step, every line to `progress`; its failure becomes the step's error.
result<void> run_step_tool(std::string_view step, std::vector<std::string> argv,
                           const line_sink& progress) {
    progress(fmt::format("{}: {}", step, command_text(argv)));
    const std::string program = argv.front();
    auto run = run_streaming(std::move(argv), progress, tool_options());
    if (!run) return fail(step_error(step, run.error().code, run.error().message));
    if (run->exit_code != 0)
        return fail(step_error(step, errc::process_failed,
                               fmt::format("{} exited with status {}; its last lines:{}", program,
                                           run->exit_code, tail_text(run->last_lines))));
    return {};
}

// ---- Files --------------------------------------------------------------------------------

result<std::string> read_file(const fs::path& path) {
    std::ifstream in(path, std::ios::binary);
    if (!in)
        return fail(errc::io_error, fmt::format("cannot read {}: {}", path.string(), errno_text()));
    std::ostringstream s;
    s << in.rdbuf();
    return s.str();
}

// Writes `content` to a new file (replacing a file or symlink of that name) with `mode`.
result<void> write_new_file(const fs::path& path, std::string_view content, mode_t mode) {
    std::error_code ec;
    fs::remove(path, ec);
    const int fd = ::open(path.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_NOFOLLOW | O_CLOEXEC, mode);
    if (fd < 0)
        return fail(errc::io_error,
                    fmt::format("cannot create {}: {}", path.string(), errno_text()));
    std::size_t done = 0;
    while (done < content.size()) {
        const ssize_t n = ::write(fd, content.data() + done, content.size() - done);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) {
            const auto why = errno_text();
            ::close(fd);
            return fail(errc::io_error, fmt::format("cannot write {}: {}", path.string(), why));
        }
        done += static_cast<std::size_t>(n);
    }
    // The umask must not take bits away (machine-id is 0444, scripts 0755).
    const bool ok = ::fchmod(fd, mode) == 0 && ::fsync(fd) == 0;
    const auto why = errno_text();
    if (::close(fd) != 0 || !ok)
        return fail(errc::io_error, fmt::format("cannot write {}: {}", path.string(), why));
    return {};
}

// Rewrites an existing file in place, keeping its owner and mode (/etc/shadow is root:shadow 0640).
result<void> rewrite_file(const fs::path& path, std::string_view content) {
    const int fd = ::open(path.c_str(), O_WRONLY | O_TRUNC | O_NOFOLLOW | O_CLOEXEC);
    if (fd < 0)
        return fail(errc::io_error, fmt::format("cannot open {}: {}", path.string(), errno_text()));
    const bool ok =
        ::write(fd, content.data(), content.size()) == static_cast<ssize_t>(content.size());
    const auto why = errno_text();
    if (::close(fd) != 0 || !ok)
        return fail(errc::io_error, fmt::format("cannot write {}: {}", path.string(), why));
    return {};
}

result<void> write_rootfs_entry(const fs::path& rootfs, const rootfs_entry& entry) {
    const fs::path path = rootfs / entry.path;
    std::error_code ec;
    fs::create_directories(path.parent_path(), ec);
    if (ec)
        return fail(errc::io_error,
                    fmt::format("cannot create {}: {}", path.parent_path().string(), ec.message()));
    if (!entry.symlink) return write_new_file(path, entry.content, entry.mode);
    fs::remove(path, ec);
    fs::create_symlink(entry.content, path, ec);
    if (ec)
        return fail(errc::io_error,
                    fmt::format("cannot create the symlink {}: {}", path.string(), ec.message()));
    return {};
}

// Removes every file under `dir` except lock files; directories stay (apt expects them).
result<void> clean_dir(const fs::path& dir) {
    std::error_code ec;
    if (!fs::exists(dir, ec)) return {};
    std::vector<fs::path> doomed;
    for (auto it = fs::recursive_directory_iterator(dir, ec); !ec && it != fs::end(it);
         it.increment(ec)) {
        if (it->is_directory(ec) && !it->is_symlink(ec)) continue;
        if (it->path().filename() == "lock") continue;
        doomed.push_back(it->path());
    }
    if (ec)
        return fail(errc::io_error, fmt::format("cannot list {}: {}", dir.string(), ec.message()));
    for (const auto& p : doomed)
        if (!fs::remove(p, ec) && ec)
            return fail(errc::io_error,
                        fmt::format("cannot remove {}: {}", p.string(), ec.message()));
    return {};
}

// ---- Removing a build tree safely ---------------------------------------------------------

// nftw takes a plain function: its first error is kept here.
thread_local std::string removal_error;

int remove_one(const char* path, const struct stat*, int type, struct FTW*) {
    const int rc = type == FTW_DP ? ::rmdir(path) : ::unlink(path);
    if (rc != 0 && removal_error.empty())
        removal_error = fmt::format("cannot remove {}: {}", path, errno_text());
    return 0;
}

// Removes a temporary build directory. debootstrap mounts /proc and /sys inside the root file
// system while it works and unmounts them when it ends; if it was killed they may still be
// there, so they are detached first, and the walk never crosses into another file system
// (deleting "files" under a mounted /proc, /sys or a bound /dev would reach the host's).
result<void> remove_build_tree(const fs::path& dir) {
    std::error_code ec;
    if (!fs::exists(fs::symlink_status(dir, ec))) return {};
    const fs::path real = fs::canonical(dir, ec);
    if (!ec) {
        if (auto mountinfo = read_file("/proc/self/mountinfo")) {
            for (const auto& mount_point : mounts_under(*mountinfo, real))
                if (::umount2(mount_point.c_str(), MNT_DETACH) != 0 && errno != EINVAL)
                    return fail(errc::io_error,
                                fmt::format("cannot detach {} (left mounted by an interrupted "
                                            "debootstrap): {}; unmount it and remove {}",
                                            mount_point, errno_text(), dir.string()));
        }
    }
    removal_error.clear();
    if (::nftw(dir.c_str(), remove_one, 32, FTW_DEPTH | FTW_PHYS | FTW_MOUNT) != 0 &&
        removal_error.empty())
        removal_error = fmt::format("cannot walk {}: {}", dir.string(), errno_text());
    if (!removal_error.empty()) return fail(errc::io_error, removal_error);
    return {};
}

// Removes the temporary directory when the build ends without renaming it into place.
class build_dir_guard {
  public:
    explicit build_dir_guard(fs::path dir, line_sink progress)
        : dir_(std::move(dir)), progress_(std::move(progress)) {}
    build_dir_guard(const build_dir_guard&) = delete;
    build_dir_guard& operator=(const build_dir_guard&) = delete;
    ~build_dir_guard() {
        if (dir_.empty()) return;
        if (auto r = remove_build_tree(dir_); !r)
            progress_(fmt::format("warning: {}", r.error().message));
    }
    void release() { dir_.clear(); }

  private:
    fs::path dir_;
    line_sink progress_;
};

// cache_root/.lock, held with flock for the whole build.
class cache_lock {
  public:
    static result<cache_lock> acquire(const fs::path& cache_root, const line_sink& progress) {
        const auto path = cache_root / ".lock";
        const int fd = ::open(path.c_str(), O_RDWR | O_CREAT | O_CLOEXEC, 0644);
        if (fd < 0)
            return fail(errc::io_error,
                        fmt::format("cannot open {}: {}", path.string(), errno_text()));
        if (::flock(fd, LOCK_EX | LOCK_NB) != 0) {
            progress(
                fmt::format("waiting for another base build in {} to finish", cache_root.string()));
            while (::flock(fd, LOCK_EX) != 0) {
                if (errno == EINTR) continue;
                const auto why = errno_text();
                ::close(fd);
                return fail(errc::io_error, fmt::format("cannot lock {}: {}", path.string(), why));
            }
        }
        return cache_lock(fd);
    }
    cache_lock(cache_lock&& other) noexcept : fd_(std::exchange(other.fd_, -1)) {}
    cache_lock& operator=(cache_lock&&) = delete;
    cache_lock(const cache_lock&) = delete;
    cache_lock& operator=(const cache_lock&) = delete;
    ~cache_lock() {
        if (fd_ >= 0) ::close(fd_);
    }

  private:
    explicit cache_lock(int fd) : fd_(fd) {}
    int fd_ = -1;
};

std::string now_utc() {
    const std::time_t t = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&t, &tm);
    char buf[32];
    std::strftime(buf, sizeof buf, "%Y-%m-%dT%H:%M:%SZ", &tm);
    return buf;
}

std::string source_text(const debian_base_recipe& recipe, std::string_view key) {
    return fmt::format("debian:{}/{} (debootstrap, key {})", recipe.suite, recipe.arch,
                       key.substr(0, 16));
}

class stopwatch {
  public:
    double seconds() const {
        return std::chrono::duration<double>(std::chrono::steady_clock::now() - start_).count();
    }

  private:
    std::chrono::steady_clock::time_point start_ = std::chrono::steady_clock::now();
};

// ---- The steps ----------------------------------------------------------------------------

result<void> configure_rootfs(const debian_base_recipe& recipe, const fs::path& rootfs,
                              const line_sink& progress) {
    constexpr std::string_view step = "configure";
    for (const auto& entry : debian_base_rootfs_files(recipe)) {
        if (auto r = write_rootfs_entry(rootfs, entry); !r)
            return fail(step_error(step, r.error().code, r.error().message));
        progress(fmt::format("{}: wrote /{}", step, entry.path));
    }
    const auto shadow_path = rootfs / "etc/shadow";
    auto shadow = read_file(shadow_path);
    if (!shadow) return fail(step_error(step, shadow.error().code, shadow.error().message));
    auto locked = lock_root_password(*shadow);
    if (!locked) return fail(step_error(step, locked.error().code, locked.error().message));
    if (auto r = rewrite_file(shadow_path, *locked); !r)
        return fail(step_error(step, r.error().code, r.error().message));
    progress(fmt::format("{}: root account locked, no password", step));
    for (auto& argv : systemctl_argvs(rootfs))
        if (auto r = run_step_tool(step, std::move(argv), progress); !r) return r;
    for (const auto& dir : debian_base_cleaned_dirs()) {
        if (auto r = clean_dir(rootfs / dir); !r)
            return fail(step_error(step, r.error().code, r.error().message));
        progress(fmt::format("{}: emptied /{}", step, dir));
    }
    return {};
}

struct kernel_out {
    std::string version;
};

// Copies the kernel and initrd out of /boot and checks the initrd can mount the root.
result<kernel_out> extract_kernel(const fs::path& rootfs, const fs::path& out_dir,
                                  const line_sink& progress) {
    constexpr std::string_view step = "kernel";
    std::vector<std::string> names;
    std::error_code ec;
    for (const auto& e : fs::directory_iterator(rootfs / "boot", ec))
        names.push_back(e.path().filename().string());
    if (ec)
        return fail(
            step_error(step, errc::io_error, fmt::format("cannot list /boot: {}", ec.message())));
    std::ranges::sort(names);
    auto version = pick_kernel_version(names);
    if (!version) return fail(step_error(step, version.error().code, version.error().message));
    const auto kernel = rootfs / "boot" / ("vmlinuz-" + *version);
    const auto initrd = rootfs / "boot" / ("initrd.img-" + *version);
    // debootstrap made the initrd before the configuration was written: again, smaller.
    if (auto r = run_step_tool(step, update_initramfs_argv(rootfs, *version), progress); !r)
        return fail(r.error());

    std::string listing;
    auto run = run_streaming(
        lsinitramfs_argv(initrd),
        [&](std::string_view line) {
            listing += line;
            listing += '\n';
        },
        tool_options());
    if (!run) return fail(step_error(step, run.error().code, run.error().message));
    if (run->exit_code != 0)
        return fail(step_error(step, errc::process_failed,
                               fmt::format("lsinitramfs exited with status {}; its last lines:{}",
                                           run->exit_code, tail_text(run->last_lines))));
    const auto builtin = read_file(rootfs / "usr/lib/modules" / *version / "modules.builtin");
    if (auto r = check_initrd_listing(listing, builtin ? *builtin : std::string()); !r)
        return fail(step_error(step, r.error().code, r.error().message));
    std::error_code size_ec;
    progress(fmt::format("{}: {} with a {:.1f} MiB initrd holding virtio_blk and ext4", step,
                         *version,
                         static_cast<double>(fs::file_size(initrd, size_ec)) / (1 << 20)));

    for (const auto& [from, to] :
         {std::pair{kernel, out_dir / kernel_name}, std::pair{initrd, out_dir / initrd_name}}) {
        fs::copy_file(from, to, fs::copy_options::overwrite_existing, ec);
        if (!ec) fs::permissions(to, fs::perms(0644), ec);
        if (ec)
            return fail(step_error(
                step, errc::io_error,
                fmt::format("cannot copy {} to {}: {}", from.string(), to.string(), ec.message())));
    }
    return kernel_out{*version};
}

result<void> make_raw_image(const fs::path& raw, std::uint64_t bytes) {
    const int fd = ::open(raw.c_str(), O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (fd < 0)
        return fail(errc::io_error,
                    fmt::format("cannot create {}: {}", raw.string(), errno_text()));
    const bool ok = ::ftruncate(fd, static_cast<off_t>(bytes)) == 0;
    const auto why = errno_text();
    ::close(fd);
    if (!ok) return fail(errc::io_error, fmt::format("cannot size {}: {}", raw.string(), why));
    return {};
}

json timings_json(const std::vector<step_timing>& timings) {
    json out = json::array();
    for (const auto& t : timings)
        out.push_back({{"step", t.step}, {"seconds", std::round(t.seconds * 10) / 10}});
    return out;
}

// Times one step; done() records it and says so.
class step_clock {
  public:
    step_clock(std::vector<step_timing>& timings, const line_sink& progress, std::string name)
        : timings_(timings), progress_(progress), name_(std::move(name)) {}
    void done() {
        timings_.push_back({name_, watch_.seconds()});
        progress_(fmt::format("{}: done in {:.1f} s", name_, timings_.back().seconds));
    }

  private:
    std::vector<step_timing>& timings_;
    const line_sink& progress_;
    std::string name_;
    stopwatch watch_;
};

}  // namespace

result<debian_base> load_debian_base(const fs::path& dir, std::string_view key) {
    const auto json_path = dir / base_json_name;
    auto text = read_file(json_path);
    if (!text) return fail(errc::not_found, fmt::format("no complete base in {}", dir.string()));
    const auto doc = json::parse(*text, nullptr, false);
    if (doc.is_discarded() || !doc.is_object() || doc.value("format", 0) != base_json_format)
        return fail(errc::invalid_argument, fmt::format("{} is not a base description of format {}",
                                                        json_path.string(), base_json_format));
    debian_base base;
    base.dir = fs::absolute(dir);
    base.key = doc.value("key", "");
    if (base.key != key)
        return fail(errc::incompatible, fmt::format("{} was built for key {}, not {}",
                                                    json_path.string(), base.key, key));
    base.qcow2 = base.dir / doc.value("qcow2", std::string(qcow2_name));
    base.kernel = base.dir / doc.value("kernel", std::string(kernel_name));
    base.initrd = base.dir / doc.value("initrd", std::string(initrd_name));
    base.cmdline = doc.value("cmdline", "");
    base.sha256 = doc.value("sha256", "");
    base.source = doc.value("source", "");
    base.kernel_version = doc.value("kernel_version", "");
    if (doc.contains("timings") && doc["timings"].is_array())
        for (const auto& t : doc["timings"])
            if (t.is_object())
                base.timings.push_back({t.value("step", ""), t.value("seconds", 0.0)});
    for (const auto& f : {base.qcow2, base.kernel, base.initrd}) {
        std::error_code ec;
        if (!fs::is_regular_file(f, ec))
            return fail(errc::not_found, fmt::format("the base in {} is incomplete: {} is missing",
                                                     dir.string(), f.string()));
    }
    if (base.cmdline.empty() || base.sha256.size() != 64)
        return fail(errc::invalid_argument,
                    fmt::format("{} lacks the cmdline or sha256", json_path.string()));
    return base;
}

result<debian_base> ensure_debian_base(const debian_base_recipe& recipe,
                                       const fs::path& cache_root_in, line_sink progress,
                                       bool force) {
    if (!progress) progress = [](std::string_view) {};
    if (auto ok = check_recipe(recipe, host_debian_arch()); !ok) return fail(ok.error());
    std::error_code ec;
    const fs::path cache_root = fs::absolute(cache_root_in, ec);
    const std::string key = recipe_key(recipe);
    const std::string name = debian_base_entry_name(recipe);
    const fs::path entry = cache_root / name;

    if (!force)
        if (auto existing = load_debian_base(entry, key)) return existing;

    if (::geteuid() != 0)
        return fail(errc::invalid_argument,
                    fmt::format("building the Debian base {} needs root (debootstrap installs "
                                "packages as root and runs their scripts in a chroot): run this "
                                "as root once; later runs reuse the cached base",
                                name));
    fs::create_directories(cache_root, ec);
    if (ec)
        return fail(errc::io_error, fmt::format("cannot create the base cache {}: {}",
                                                cache_root.string(), ec.message()));
    auto lock = cache_lock::acquire(cache_root, progress);
    if (!lock) return fail(lock.error());
    // Another caller may have built it while we waited for the lock.
    if (!force)
        if (auto existing = load_debian_base(entry, key)) return existing;

    // Holding the lock, any temporary directory is a leftover of a build that was killed.
    for (const auto& e : fs::directory_iterator(cache_root, ec)) {
        const auto n = e.path().filename().string();
        if (!n.starts_with(".tmp-") && !n.starts_with(".old-")) continue;
        progress(fmt::format("removing {} (left by an interrupted build)", e.path().string()));
        if (auto r = remove_build_tree(e.path()); !r) return fail(r.error());
    }

    const fs::path deb_cache =
        cache_root / "debs" / fmt::format("{}-{}", recipe.suite, recipe.arch);
    fs::create_directories(deb_cache, ec);
    if (ec)
        return fail(errc::io_error, fmt::format("cannot create the package cache {}: {}",
                                                deb_cache.string(), ec.message()));
    std::string tmp_template = (cache_root / fmt::format(".tmp-{}-XXXXXX", name)).string();
    if (!::mkdtemp(tmp_template.data()))
        return fail(errc::io_error, fmt::format("cannot create a build directory in {}: {}",
                                                cache_root.string(), errno_text()));
    const fs::path tmp = tmp_template;
    build_dir_guard guard(tmp, progress);
    fs::permissions(tmp, fs::perms(0755), ec);
    const fs::path rootfs = tmp / "rootfs";
    const fs::path raw = tmp / "root.raw";

    progress(fmt::format("building the Debian base {} ({} {}, key {}) in {}", name, recipe.suite,
                         recipe.arch, key.substr(0, 16), tmp.string()));
    stopwatch total;
    std::vector<step_timing> timings;

    step_clock debootstrap{timings, progress, "debootstrap"};
    if (auto r =
            run_step_tool("debootstrap", debootstrap_argv(recipe, rootfs, deb_cache), progress);
        !r)
        return fail(r.error());
    debootstrap.done();

    step_clock configure{timings, progress, "configure"};
    if (auto r = configure_rootfs(recipe, rootfs, progress); !r) return fail(r.error());
    configure.done();

    step_clock kernel_step{timings, progress, "kernel"};
    auto kernel = extract_kernel(rootfs, tmp, progress);
    if (!kernel) return fail(kernel.error());
    kernel_step.done();

    step_clock mke2fs{timings, progress, "mke2fs"};
    if (auto r = make_raw_image(raw, recipe.disk_bytes); !r)
        return fail(step_error("mke2fs", r.error().code, r.error().message));
    if (auto r = run_step_tool("mke2fs", mke2fs_argv(rootfs, raw), progress); !r)
        return fail(r.error());
    mke2fs.done();

    step_clock convert{timings, progress, "convert"};
    const fs::path qcow2 = tmp / qcow2_name;
    if (auto r = run_step_tool("convert", qemu_img_convert_argv(raw, qcow2), progress); !r)
        return fail(r.error());
    convert.done();

    step_clock checksum{timings, progress, "checksum"};
    auto sha = sha256_of_file(qcow2);
    if (!sha) return fail(step_error("checksum", sha.error().code, sha.error().message));
    const auto qcow2_bytes = fs::file_size(qcow2, ec);
    checksum.done();

    // Slow where the host file system discards freed blocks on unlink: timed on its own.
    step_clock cleanup{timings, progress, "cleanup"};
    if (auto r = remove_build_tree(rootfs); !r)
        return fail(step_error("cleanup", r.error().code, r.error().message));
    fs::remove(raw, ec);
    cleanup.done();
    timings.push_back({"total", total.seconds()});

    json recipe_json = {{"version", debian_base_recipe_version},
                        {"suite", recipe.suite},
                        {"arch", recipe.arch},
                        {"mirror", recipe.mirror},
                        {"extra_packages", recipe.extra_packages},
                        {"disk_bytes", recipe.disk_bytes}};
    const json doc = {{"format", base_json_format},
                      {"kind", "debian-base"},
                      {"key", key},
                      {"recipe", recipe_json},
                      {"packages", debian_base_packages(recipe)},
                      {"qcow2", qcow2_name},
                      {"kernel", kernel_name},
                      {"initrd", initrd_name},
                      {"kernel_version", kernel->version},
                      {"cmdline", debian_base_cmdline()},
                      {"sha256", *sha},
                      {"qcow2_bytes", qcow2_bytes},
                      {"source", source_text(recipe, key)},
                      {"created", now_utc()},
                      {"timings", timings_json(timings)}};
    if (auto r = write_new_file(tmp / base_json_name, doc.dump(2) + "\n", 0644); !r)
        return fail(step_error("finish", r.error().code, r.error().message));

    // Into place. A stale or forced-over entry moves aside first and goes once the new one is in.
    fs::path old;
    if (fs::exists(fs::symlink_status(entry, ec))) {
        old = cache_root / fmt::format(".old-{}-{}", name, ::getpid());
        fs::rename(entry, old, ec);
        if (ec)
            return fail(step_error(
                "finish", errc::io_error,
                fmt::format("cannot move the old {} aside: {}", entry.string(), ec.message())));
    }
    fs::rename(tmp, entry, ec);
    if (ec)
        return fail(step_error(
            "finish", errc::io_error,
            fmt::format("cannot rename {} to {}: {}", tmp.string(), entry.string(), ec.message())));
    guard.release();
    if (!old.empty())
        if (auto r = remove_build_tree(old); !r)
            progress(fmt::format("warning: {}", r.error().message));

    auto base = load_debian_base(entry, key);
    if (!base) return fail(base.error());
    base->built = true;
    progress(fmt::format("base ready in {:.1f} s: {} ({:.0f} MiB)", timings.back().seconds,
                         base->qcow2.string(), static_cast<double>(qcow2_bytes) / (1 << 20)));
    return base;
}

}  // namespace stackemu::provision
