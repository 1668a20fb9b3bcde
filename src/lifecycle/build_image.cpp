#include "lifecycle/build_image.hpp"

#include <fmt/chrono.h>
#include <fmt/format.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <unistd.h>

#include <asio.hpp>
#include <cerrno>
#include <charconv>
#include <chrono>
#include <csignal>
#include <cstdlib>
#include <cstring>
#include <nlohmann/json.hpp>

#include "lifecycle/controller_detail.hpp"
#include "lifecycle/files.hpp"
#include "lifecycle/image_publish.hpp"
#include "lifecycle/instance_lock.hpp"
#include "lifecycle/process.hpp"
#include "lifecycle/stop_ladder.hpp"
#include "lifecycle/vm_process.hpp"
#include "provision/debian_base.hpp"
#include "provision/download.hpp"
#include "provision/iso.hpp"
#include "provision/manifest.hpp"
#include "provision/tool_stream.hpp"

namespace stackemu::lifecycle {

using namespace std::chrono_literals;
using nlohmann::json;
namespace fs = std::filesystem;
using clock_type = std::chrono::steady_clock;

fs::path stackemu_cache_dir() {
    if (const char* x = std::getenv("XDG_CACHE_HOME"); x && *x) return fs::path(x) / "stackemu";
    const char* home = std::getenv("HOME");
    return fs::path(home ? home : "/tmp") / ".cache" / "stackemu";
}

namespace {

// The base the provisioning run boots: a disk, and a kernel when it boots directly.
struct base_image {
    fs::path disk;
    std::optional<provision::kernel_files> kernel;
    std::string source;
    std::string sha256;
    std::string key;  // identifies the base build: the provisioning overlay's build id
    bool cached = false;
};

result<void> check_qcow2(const fs::path& p) {
    auto info = run_tool({"qemu-img", "info", "--output=json", p.string()});
    if (!info) return fail(info.error());
    auto j = json::parse(info->out, nullptr, false);
    if (info->exit_code != 0 || j.is_discarded())
        return fail(errc::invalid_argument,
                    fmt::format("{} is not a disk image qemu-img can read: {}", p.string(),
                                info->err.empty() ? "no details" : info->err));
    if (j.value("format", "") != "qcow2")
        return fail(errc::invalid_argument,
                    fmt::format("{} is a {} image; --base needs a qcow2 (convert it with "
                                "`qemu-img convert -O qcow2`)",
                                p.string(), j.value("format", "unknown")));
    return {};
}

result<base_image> prepare_base(const build_request& req, const progress_sink& say) {
    base_image out;
    if (req.base == "debian") {
        if (!req.base_sha256.empty())
            return fail(errc::invalid_argument,
                        "--sha256 checks a downloaded or local base; `--base debian` is built "
                        "here from Debian packages and has none to check");
        provision::debian_base_recipe recipe;
        recipe.arch = std::string(to_string(req.config.guest_arch));
        recipe.extra_packages = req.profile.file.base_packages;
        const fs::path cache = stackemu_cache_dir() / "bases";
        auto built = provision::ensure_debian_base(
            recipe, cache, [&](std::string_view line) { say(fmt::format("base: {}", line)); },
            req.rebuild_base);
        if (!built) return fail(built.error());
        out.cached = !built->built;
        if (out.cached)
            say(fmt::format("base: reusing {} ({})", built->dir.string(), built->source));
        out.disk = built->qcow2;
        out.kernel = provision::kernel_files{built->kernel, built->initrd, built->cmdline};
        out.source = built->source;
        out.sha256 = built->sha256;
        out.key = built->key;
        return out;
    }
    std::string sha256;
    if (!req.base_sha256.empty()) {
        auto parsed = provision::parse_sha256_hex(req.base_sha256);
        if (!parsed) return fail(parsed.error());
        sha256 = *parsed;
    }
    if (req.base.starts_with("http://") || req.base.starts_with("https://")) {
        if (auto ok = provision::check_download_url(req.base); !ok) return fail(ok.error());
        if (sha256.empty())
            return fail(errc::invalid_argument,
                        "a downloaded base needs --sha256 HEX (the SHA-256 its publisher lists), "
                        "so a corrupted or substituted file is never booted");
        const fs::path dir = stackemu_cache_dir() / "bases" / "downloads";
        if (auto made = ensure_private_dir(dir); !made) return fail(made.error());
        const fs::path file = dir / (sha256 + ".qcow2");
        std::error_code ec;
        if (fs::exists(file, ec)) {
            out.cached = true;
        } else {
            const fs::path part = file.string() + ".part";
            provision::download_options opts;
            opts.note = [&](std::string_view line) { say(fmt::format("base: {}", line)); };
            say(fmt::format("base: downloading {}", req.base));
            auto got = provision::download_to_part(req.base, part, opts);
            if (!got) return fail(got.error());
            auto sum = provision::sha256_of_file(part);
            if (!sum) return fail(sum.error());
            if (*sum != sha256) {
                fs::remove(part, ec);
                return fail(errc::checksum_mismatch,
                            fmt::format("the base downloaded from {} has SHA-256 {}, not {}: "
                                        "nothing was kept; check the URL and the checksum",
                                        req.base, *sum, sha256));
            }
            fs::rename(part, file, ec);
            if (ec) return fail(errc::io_error, "cannot keep the downloaded base: " + ec.message());
        }
        out.disk = file;
        out.source = req.base;
    } else {
        out.disk = fs::absolute(req.base);
        std::error_code ec;
        if (!fs::is_regular_file(out.disk, ec))
            return fail(errc::not_found,
                        fmt::format("--base {}: no such file (give a qcow2 file, an http(s) URL, "
                                    "or `debian` to build one from Debian packages)",
                                    req.base));
        out.source = out.disk.string();
        if (!sha256.empty()) {
            auto sum = provision::sha256_of_file(out.disk);
            if (!sum) return fail(sum.error());
            if (*sum != sha256)
                return fail(errc::checksum_mismatch,
                            fmt::format("--base {} has SHA-256 {}, not the {} given with --sha256",
                                        req.base, *sum, sha256));
        }
    }
    if (auto ok = check_qcow2(out.disk); !ok) return fail(ok.error());
    if (sha256.empty()) {
        auto sum = provision::sha256_of_file(out.disk);
        if (!sum) return fail(sum.error());
        sha256 = *sum;
    }
    out.sha256 = sha256;
    out.key = "base-" + sha256.substr(0, 16);
    return out;
}

// The instance the provisioning VM runs as: visible in `stackemu list`, locked like any other.
// True when a process listens on the Unix socket at `path`; false when it is a file left by a
// process that is gone (connect is refused). A full backlog still means a listener.
bool socket_has_listener(const fs::path& path) {
    const int fd = ::socket(AF_UNIX, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (fd < 0) return true;  // cannot tell: assume it is in use
    sockaddr_un addr{};
    addr.sun_family = AF_UNIX;
    std::strncpy(addr.sun_path, path.c_str(), sizeof addr.sun_path - 1);
    const bool refused =
        ::connect(fd, reinterpret_cast<const sockaddr*>(&addr), sizeof addr) != 0 &&
        (errno == ECONNREFUSED || errno == ENOENT);
    ::close(fd);
    return !refused;
}

// NAME.partial-PID files that a killed build left beside the image. A PID that still runs is
// another build in progress, and its files stay.
void remove_abandoned_partials(const fs::path& dir,
                               const std::function<void(std::string_view)>& say) {
    std::error_code ec;
    for (const auto& entry : fs::directory_iterator(dir, ec)) {
        const auto name = entry.path().filename().string();
        const auto at = name.rfind(".partial-");
        if (at == std::string::npos) continue;
        const std::string_view digits = std::string_view(name).substr(at + 9);
        pid_t pid = 0;
        const auto [end, bad] = std::from_chars(digits.data(), digits.data() + digits.size(), pid);
        if (bad != std::errc{} || end != digits.data() + digits.size() || pid <= 0) continue;
        if (::kill(pid, 0) == 0 || errno == EPERM) continue;
        std::error_code removed;
        if (fs::remove(entry.path(), removed))
            say(fmt::format("removed {}, left by a build that was killed", name));
    }
}

std::string build_instance_name(const build_request& req) {
    auto name = fmt::format("build-{}", req.profile.file.runtime.name);
    if (name.size() > 32) name.resize(32);
    while (!name.empty() && (name.back() == '-' || name.back() == '_' || name.back() == '.'))
        name.pop_back();
    return name;
}

std::tm utc_now() {
    const std::time_t now = std::time(nullptr);
    std::tm tm{};
    ::gmtime_r(&now, &tm);
    return tm;
}

// Keeps the provisioning run's logs beside the image: the VM's directory goes away after.
fs::path save_logs(const instance_paths& paths, const fs::path& image_dir,
                   const std::string& stem) {
    fs::path dir = image_dir / "build-logs" /
                   fmt::format("{}-{}", stem, fmt::format("{:%Y%m%dT%H%M%SZ}", utc_now()));
    std::error_code ec;
    fs::create_directories(dir, ec);
    for (const auto& f :
         {paths.serial_log, paths.qemu_log, paths.qemu_stderr_log, paths.events, paths.state})
        if (fs::exists(f, ec))
            fs::copy_file(f, dir / f.filename(), fs::copy_options::overwrite_existing, ec);
    return dir;
}

// Everything the image is made from, hashed: the profile's files, the base (its recipe key or
// checksum) and the payload's checksum.
result<std::string> recipe_of(const build_request& req) {
    std::string text = "stackemu-build-recipe-1\n";
    auto add = [&](std::string_view name, std::string_view value) {
        text += fmt::format("{} {}\n{}\n", name, value.size(), value);
    };
    for (const auto& name : {"profile.json", "user-data", "meta-data"}) {
        auto content = read_file((req.profile.dir / name).string());
        if (!content) return fail(content.error());
        add(name, *content);
    }
    for (std::size_t i = 0; i < req.profile.bundle_paths.size(); ++i) {
        auto content = read_file(req.profile.bundle_paths[i].string());
        if (!content) return fail(content.error());
        add(req.profile.file.bundle_files[i], *content);
    }
    if (req.base == "debian") {
        provision::debian_base_recipe recipe;
        recipe.arch = std::string(to_string(req.config.guest_arch));
        recipe.extra_packages = req.profile.file.base_packages;
        add("base", "debian " + provision::recipe_key(recipe));
    } else if (!req.base_sha256.empty()) {
        add("base", req.base_sha256);
    } else {
        auto sum = provision::sha256_of_file(req.base);
        if (!sum) return fail(sum.error());
        add("base", *sum);
    }
    if (req.payload) {
        auto sum = provision::sha256_of_file(*req.payload);
        if (!sum) return fail(sum.error());
        add("payload", *sum);
    }
    add("disk", std::to_string(req.config.disk_size_bytes));
    return provision::sha256_hex(text).substr(0, 32);
}

double ms_between(clock_type::time_point a, clock_type::time_point b) {
    return std::chrono::duration<double, std::milli>(b - a).count();
}

}  // namespace

asio::awaitable<result<build_outcome>> build_image(build_request req) {
    const auto t0 = clock_type::now();
    auto say = [&](std::string_view line) {
        if (req.progress) req.progress(line);
    };
    build_outcome out;
    const auto& prof = req.profile.file;
    if (prof.payload_required && !req.payload)
        co_return fail(errc::invalid_argument,
                       fmt::format("the {} profile needs a payload: pass --payload FILE (e.g. a "
                                   "`docker save` tarball)",
                                   prof.runtime.name));
    if (req.payload) {
        std::error_code ec;
        if (!fs::is_regular_file(*req.payload, ec))
            co_return fail(errc::not_found,
                           fmt::format("--payload {}: not a readable file", req.payload->string()));
    }
    const fs::path output = fs::absolute(req.output.value_or(
        provision::default_image(req.config.image_dir, to_string(req.config.guest_arch))));
    if (output.extension() != ".qcow2")
        co_return fail(errc::invalid_argument,
                       fmt::format("--output {}: the image's name must end in .qcow2 (its "
                                   "manifest goes beside it as .json)",
                                   output.string()));
    auto recipe = recipe_of(req);
    if (!recipe) co_return fail(recipe.error());
    out.recipe = *recipe;
    if (req.if_changed) {
        auto existing = provision::load_manifest(output);
        if (existing && existing->recipe == *recipe) {
            out.ok = true;
            out.up_to_date = true;
            out.image = output;
            out.manifest = fs::path(output).replace_extension(".json");
            out.build_id = existing->build_id;
            out.base_source = existing->base_source;
            std::error_code size_ec;
            out.image_bytes = fs::file_size(output, size_ec);
            say(fmt::format("{} is up to date (built from this recipe): nothing to do",
                            output.string()));
            co_return out;
        }
    }
    if (auto made = ensure_private_dir(req.config.run_dir); !made) co_return fail(made.error());
    {
        std::error_code ec;
        fs::create_directories(output.parent_path(), ec);
        if (ec)
            co_return fail(
                errc::io_error,
                fmt::format("cannot create {}: {}", output.parent_path().string(), ec.message()));
    }

    settings s = req.config;
    s.name = build_instance_name(req);
    s.ram_mib = req.ram_mib;
    s.cpus = req.cpus;
    s.ready_timeout = s.provision_timeout;
    auto inst = open_instance(s);
    if (!inst) co_return fail(inst.error());
    const auto& paths = inst->paths;
    for (const auto& dir : {paths.instance_dir, paths.vm_dir, paths.socket_dir})
        if (auto made = ensure_private_dir(dir); !made) co_return fail(made.error());
    {
        // Refuse early when another build of this profile runs; start() takes the lock again.
        auto lock = try_acquire(paths.lock.string(), "build-image");
        if (!lock) co_return fail(lock.error());
    }
    std::error_code ec;
    if (fs::exists(paths.qmp_socket, ec)) {
        if (socket_has_listener(paths.qmp_socket))
            co_return fail(
                errc::busy,
                fmt::format("a provisioning VM of the {} profile is still running (kept with "
                            "--keep-on-failure, or its build-image was killed): `stackemu stop "
                            "--name {}` ends it",
                            prof.runtime.name, s.name));
        detail::remove_sockets(paths);
        say("removed the stale sockets of a provisioning VM that is gone");
    }
    remove_abandoned_partials(output.parent_path(), say);
    // A fresh overlay for every build: nothing of an earlier attempt leaks into this one.
    fs::remove(paths.disk, ec);
    fs::remove(paths.vm_dir / "overlay.json", ec);

    // 1. The base.
    say(fmt::format("base: {}", req.base));
    const auto t_base = clock_type::now();
    auto base = prepare_base(req, say);
    if (!base) co_return fail(base.error());
    out.base_source = base->source;
    out.base_cached = base->cached;
    out.phases.push_back({"base", ms_between(t_base, clock_type::now())});

    // 2. The seed and bundle ISOs, and a manifest that lets start() boot the base.
    provision::nocloud_seed seed{req.profile.meta_data, req.profile.user_data, std::nullopt};
    const fs::path seed_iso = paths.vm_dir / "seed.iso";
    if (auto w = provision::write_iso(seed_iso, std::string(provision::nocloud_label),
                                      provision::nocloud_files(seed));
        !w)
        co_return fail(w.error());
    std::vector<provision::iso_file> bundle_files;
    for (std::size_t i = 0; i < prof.bundle_files.size(); ++i) {
        provision::iso_file f;
        f.name = prof.bundle_files[i];
        f.content = req.profile.bundle_paths[i];
        struct stat st {};
        f.mode = (::stat(req.profile.bundle_paths[i].c_str(), &st) == 0 && (st.st_mode & 0111))
                     ? 0555
                     : 0444;
        bundle_files.push_back(std::move(f));
    }
    if (req.payload) bundle_files.push_back({"payload.tar", fs::absolute(*req.payload), 0444});
    const fs::path bundle_iso = paths.vm_dir / "bundle.iso";
    if (auto w =
            provision::write_iso(bundle_iso, std::string(provision::bundle_label), bundle_files);
        !w)
        co_return fail(w.error());

    provision::manifest boot;
    boot.arch = std::string(to_string(s.guest_arch));
    boot.disk = base->disk;
    boot.kernel_boot = base->kernel;
    boot.prof.name = prof.runtime.name + "-build";
    boot.prof.ready_marker = prof.provision.done_marker;
    boot.prof.failure_markers = {prof.provision.failed_marker};
    for (const auto& m : prof.runtime.failure_markers)
        if (m != prof.provision.failed_marker && m != prof.provision.done_marker)
            boot.prof.failure_markers.push_back(m);
    boot.build_id = base->key;
    const fs::path boot_manifest = paths.vm_dir / "build-base.json";
    if (auto w =
            write_file_atomically(boot_manifest, provision::to_json_text(boot, paths.vm_dir), 0600);
        !w)
        co_return fail(w.error());

    // 3. The provisioning run: done marker = "ready"; failed marker, panic, QEMU exit and
    // EMULATOR_PROVISION_TIMEOUT end it at once.
    const auto t_provision = clock_type::now();
    const auto& progress_prefix = prof.provision.progress_prefix;
    start_request sr;
    sr.inst = *inst;
    sr.image = boot_manifest;
    sr.keep_on_failure = req.keep_on_failure;
    sr.cold = true;
    sr.echo_console = true;
    sr.tail_lines = 50;
    sr.runtime_config = false;
    sr.extra_isos = {{seed_iso, "seed"}, {bundle_iso, "bundle"}};
    sr.disk_bytes = s.disk_size_bytes;
    sr.progress = [&](std::string_view line) {
        constexpr std::string_view guest = "guest: ";
        if (!line.starts_with(guest)) {
            say(line);
            return;
        }
        line.remove_prefix(guest.size());
        if (line.starts_with(progress_prefix))
            say(line.substr(progress_prefix.size()));
        else if (req.verbose)
            say(fmt::format("guest: {}", line));
    };
    say(fmt::format("provisioning with the {} profile ({} MiB, {} vCPUs, up to {} s)",
                    prof.runtime.name, s.ram_mib, s.cpus, s.provision_timeout.count()));
    auto started = co_await start(sr);
    if (!started) co_return fail(started.error());
    const auto stem = output.stem().string();
    if (!started->ready) {
        const auto t_fail = clock_type::now();
        double detected_ms = started->total_ms;
        for (const auto& p : started->phases)
            if (p.name == "failure_detected") detected_ms = p.ms;
        out.why = started->why;
        out.failure = started->failure;
        out.last_lines = started->last_lines;
        out.logs_dir = save_logs(paths, output.parent_path(), stem);
        if (!started->vm_kept) fs::remove_all(paths.instance_dir, ec);
        out.phases.push_back({"provisioning", ms_between(t_provision, t_fail)});
        out.total_ms = ms_between(t0, clock_type::now());
        out.failure_to_exit_ms =
            (started->total_ms - detected_ms) + ms_between(t_fail, clock_type::now());
        co_return out;
    }
    out.phases.push_back({"provisioning", ms_between(t_provision, clock_type::now())});

    // 4. The guest powers itself off after its done marker: wait for that (90 s), then the
    // ladder, so the disk is closed by QEMU before it is read.
    const auto t_off = clock_type::now();
    {
        auto lock = try_acquire(paths.lock.string(), "build-image");
        if (!lock) co_return fail(lock.error());
        auto vm = co_await detail::connect_vm_settled(paths, detail::qemu_binary_for(s));
        if (vm) {
            detail::ladder_inputs ladder;
            ladder.paths = paths;
            ladder.qmp = vm->qmp.get();
            ladder.process = vm->process.get();
            ladder.progress = say;
            ladder.first_rung_budget = 90s;
            ladder.await_guest_poweroff = true;
            auto stopped = co_await detail::run_ladder(ladder);
            if (stopped.rung != "guest-poweroff")
                say(fmt::format("the guest did not power itself off; QEMU was ended by {}",
                                stopped.rung));
        }
        detail::remove_sockets(paths);
        detail::update_state(paths, json{{"state", "stopped"}});
    }
    out.phases.push_back({"power-off", ms_between(t_off, clock_type::now())});

    // 5. Check, compress to a temporary name, rename; kernel files; manifest last.
    const auto t_compress = clock_type::now();
    auto check = run_tool({"qemu-img", "check", "-q", paths.disk.string()});
    if (!check) co_return fail(check.error());
    if (check->exit_code != 0)
        co_return fail(errc::process_failed,
                       fmt::format("the provisioned disk {} fails `qemu-img check`; the image was "
                                   "not written:\n{}{}",
                                   paths.disk.string(), check->out, check->err));
    const fs::path tmp = output.string() + fmt::format(".partial-{}", ::getpid());
    say(fmt::format("compressing into {}", output.string()));
    // qemu-img -p redraws "    (12.34/100%)\r" in place: each redraw is a line here.
    auto converted = provision::run_streaming(
        {"qemu-img", "convert", "-p", "-c", "-O", "qcow2", paths.disk.string(), tmp.string()},
        [&](std::string_view line) {
            const auto open = line.find('(');
            if (open == std::string_view::npos || !req.compress_progress) return;
            const std::string text(line.substr(open + 1));
            char* stop = nullptr;
            const double pct = std::strtod(text.c_str(), &stop);
            if (stop && *stop == '/') req.compress_progress(pct);
        });
    if (!converted || converted->exit_code != 0) {
        fs::remove(tmp, ec);
        if (!converted) co_return fail(converted.error());
        std::string tail;
        for (const auto& l : converted->last_lines)
            tail += "\n" + l;
        co_return fail(errc::process_failed,
                       fmt::format("qemu-img convert failed; the image was not written:{}", tail));
    }
    ::chmod(tmp.c_str(), 0644);
    auto sum = provision::sha256_of_file(tmp);
    if (!sum) {
        fs::remove(tmp, ec);
        co_return fail(sum.error());
    }
    provision::manifest m;
    m.arch = boot.arch;
    m.disk = output;
    publish_files files;
    files.disk_tmp = tmp;
    files.disk = output;
    files.temp_suffix = fmt::format(".partial-{}", ::getpid());
    if (base->kernel) {
        const fs::path kernel = output.parent_path() / (stem + ".vmlinuz");
        const fs::path initrd = output.parent_path() / (stem + ".initrd.img");
        files.copies = {{base->kernel->kernel, kernel}, {base->kernel->initrd, initrd}};
        m.kernel_boot = provision::kernel_files{kernel, initrd, base->kernel->cmdline};
    }
    m.prof = prof.runtime;
    m.base_source = base->source;
    m.base_sha256 = base->sha256;
    m.build_id = fmt::format("{}-{}", prof.runtime.name, sum->substr(0, 16));
    m.stackemu_version = "0.1.0";
    m.created = fmt::format("{:%Y-%m-%dT%H:%M:%SZ}", utc_now());
    m.recipe = *recipe;
    // The old manifest goes before the kernel files and the disk are replaced, the new one
    // comes last: a crash in between leaves no manifest naming files it does not describe.
    const fs::path manifest_path = fs::path(output).replace_extension(".json");
    files.manifest = manifest_path;
    files.manifest_text = provision::to_json_text(m, output.parent_path());
    if (auto published = publish_image(files); !published) co_return fail(published.error());
    out.phases.push_back({"compression", ms_between(t_compress, clock_type::now())});

    out.logs_dir = save_logs(paths, output.parent_path(), stem);
    fs::remove_all(paths.instance_dir, ec);
    out.ok = true;
    out.image = output;
    out.manifest = manifest_path;
    out.build_id = m.build_id;
    out.image_bytes = fs::file_size(output, ec);
    out.total_ms = ms_between(t0, clock_type::now());
    co_return out;
}

}  // namespace stackemu::lifecycle
