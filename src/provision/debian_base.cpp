// Building the Debian base image: the pure recipe (argv, files, checks) and the build around it.
#include "provision/debian_base.hpp"

#include <fmt/format.h>
#include <sys/utsname.h>

#include <algorithm>
#include <array>
#include <iterator>
#include <set>

#include "provision/download.hpp"

namespace stackemu::provision {

namespace fs = std::filesystem;

namespace {

constexpr std::string_view keyring = "/usr/share/keyrings/debian-archive-keyring.gpg";
constexpr std::string_view root_label = "stackroot";
constexpr std::uint64_t min_disk_bytes = 1ull << 30;

bool is_lower_alnum(char c) {
    return (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9');
}

// Debian Policy 5.6.1: at least two characters of [a-z0-9+.-], starting with a letter or digit.
bool is_package_name(std::string_view name) {
    if (name.size() < 2 || !is_lower_alnum(name.front())) return false;
    return std::ranges::all_of(
        name, [](char c) { return is_lower_alnum(c) || c == '+' || c == '-' || c == '.'; });
}

bool is_suite_name(std::string_view suite) {
    if (suite.empty() || !is_lower_alnum(suite.front())) return false;
    return std::ranges::all_of(suite,
                               [](char c) { return is_lower_alnum(c) || c == '-' || c == '.'; });
}

// http(s)://host[/path] of URL characters; no spaces or commas (debootstrap splits on them).
bool is_mirror_url(std::string_view url) {
    std::string_view rest;
    if (url.starts_with("http://"))
        rest = url.substr(7);
    else if (url.starts_with("https://"))
        rest = url.substr(8);
    else
        return false;
    if (rest.empty() || rest.front() == '/') return false;
    return std::ranges::all_of(rest, [](char c) {
        return (c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || (c >= '0' && c <= '9') ||
               std::string_view("-._~:/@%+[]").find(c) != std::string_view::npos;
    });
}

std::string join(const std::vector<std::string>& parts, std::string_view sep) {
    std::string out;
    for (const auto& p : parts) {
        if (!out.empty()) out += sep;
        out += p;
    }
    return out;
}

std::vector<std::string_view> lines_of(std::string_view text) {
    std::vector<std::string_view> lines;
    while (!text.empty()) {
        const auto nl = text.find('\n');
        lines.push_back(text.substr(0, nl));
        if (nl == std::string_view::npos) break;
        text.remove_prefix(nl + 1);
    }
    return lines;
}

// mountinfo escapes space, tab, newline and backslash as \ooo.
std::string decode_mountinfo_path(std::string_view field) {
    std::string out;
    for (std::size_t i = 0; i < field.size(); ++i) {
        if (field[i] == '\\' && i + 3 < field.size()) {
            const auto oct = field.substr(i + 1, 3);
            if (std::ranges::all_of(oct, [](char c) { return c >= '0' && c <= '7'; })) {
                out.push_back(
                    static_cast<char>((oct[0] - '0') * 64 + (oct[1] - '0') * 8 + (oct[2] - '0')));
                i += 3;
                continue;
            }
        }
        out.push_back(field[i]);
    }
    return out;
}

}  // namespace

// ---- The recipe --------------------------------------------------------------------------

std::vector<std::string> debian_base_fixed_packages(std::string_view arch) {
    return {
        // init and devices: minbase has neither
        "systemd-sysv",
        "udev",
        // The system bus: without it there is no systemd-logind, and so nothing turns the ACPI
        // power button (QMP system_powerdown) into a clean shutdown.
        "dbus",
        fmt::format("linux-image-{}", arch),
        "initramfs-tools",
        // initramfs-tools compresses with zstd; without it (a Recommends) it falls back to gzip
        "zstd",
        "cloud-init",
        // cloud-init needs it, and debootstrap's resolver misses it (environment.md)
        "python3-cffi-backend",
        "qemu-guest-agent",
        // the network comes from systemd-networkd; `ip` is for people and scripts
        "iproute2",
        "ca-certificates",
    };
}

std::vector<std::string> debian_base_packages(const debian_base_recipe& recipe) {
    std::set<std::string> all;
    for (auto& p : debian_base_fixed_packages(recipe.arch))
        all.insert(std::move(p));
    all.insert(recipe.extra_packages.begin(), recipe.extra_packages.end());
    return {all.begin(), all.end()};
}

std::string host_debian_arch() {
    utsname u{};
    if (::uname(&u) != 0) return {};
    const std::string_view machine = u.machine;
    if (machine == "x86_64") return "amd64";
    if (machine == "aarch64") return "arm64";
    return {};
}

result<void> check_recipe(const debian_base_recipe& recipe, std::string_view host_arch) {
    if (recipe.arch != "amd64" && recipe.arch != "arm64")
        return fail(errc::invalid_argument,
                    fmt::format("unknown architecture '{}': use amd64 or arm64", recipe.arch));
    if (recipe.arch != host_arch)
        return fail(
            errc::invalid_argument,
            fmt::format("cannot build an {} Debian base on this {} machine: debootstrap runs the "
                        "guest's package scripts on the host, so only the host's architecture "
                        "({}) can be built; build the {} image on an {} machine",
                        recipe.arch, host_arch.empty() ? "unknown" : host_arch,
                        host_arch.empty() ? "none known" : host_arch, recipe.arch, recipe.arch));
    if (!is_suite_name(recipe.suite))
        return fail(errc::invalid_argument,
                    fmt::format("'{}' is not a Debian suite name (e.g. bookworm): lowercase "
                                "letters, digits, '-' and '.'",
                                recipe.suite));
    if (!is_mirror_url(recipe.mirror))
        return fail(errc::invalid_argument,
                    fmt::format("'{}' is not a Debian mirror URL: use http:// or https:// and a "
                                "host, e.g. http://deb.debian.org/debian",
                                recipe.mirror));
    for (const auto& p : recipe.extra_packages)
        if (!is_package_name(p))
            return fail(errc::invalid_argument,
                        fmt::format("'{}' in base_packages is not a Debian package name: two or "
                                    "more of a-z, 0-9, '+', '-', '.', starting with a letter or "
                                    "digit (no versions or architectures)",
                                    p));
    if (recipe.disk_bytes < min_disk_bytes || recipe.disk_bytes % 4096 != 0)
        return fail(errc::invalid_argument,
                    fmt::format("the base disk size {} bytes is not usable: give at least 1 GiB, "
                                "a multiple of 4096 bytes",
                                recipe.disk_bytes));
    return {};
}

std::string recipe_key(const debian_base_recipe& recipe) {
    // One field per line; valid recipes cannot contain newlines (check_recipe), so the text
    // identifies the inputs.
    std::string text = fmt::format("stackemu debian base recipe {}\n", debian_base_recipe_version);
    text += fmt::format("suite={}\narch={}\nmirror={}\ndisk_bytes={}\n", recipe.suite, recipe.arch,
                        recipe.mirror, recipe.disk_bytes);
    for (const auto& p : debian_base_packages(recipe))
        text += fmt::format("package={}\n", p);
    return sha256_hex(text);
}

std::string debian_base_entry_name(const debian_base_recipe& recipe) {
    return fmt::format("debian-{}-{}-{}", recipe.suite, recipe.arch,
                       recipe_key(recipe).substr(0, 16));
}

result<fs::path> default_base_cache_root(std::string_view xdg_cache_home, std::string_view home) {
    // XDG Base Directory: a relative XDG_CACHE_HOME is invalid and ignored.
    if (!xdg_cache_home.empty() && xdg_cache_home.front() == '/')
        return fs::path(xdg_cache_home) / "stackemu" / "bases";
    if (!home.empty() && home.front() == '/')
        return fs::path(home) / ".cache" / "stackemu" / "bases";
    return fail(errc::invalid_argument,
                "cannot find a cache directory for base images: set HOME or XDG_CACHE_HOME to an "
                "absolute path");
}

std::string debian_base_cmdline() {
    // rw: no remount later. noresume: never wait for a swap partition that an initramfs made in
    // a chroot may name. tsc=unstable: under TCG on a busy host the kernel calibrates the TSC
    // wrongly (seen: 602 MHz for 2594 MHz) and the guest clock then runs 4x fast; the HPET keeps
    // true time, and an unstable TSC also skips the slow TSC sync check of the second CPU.
    // no_timer_check: the kernel's test of the timer interrupt through the IO-APIC fails on a
    // busy host ("8254 timer not connected to IO-APIC", then a hang: seen here); virtual
    // machines do not need it. cryptomgr.notests: skip the crypto self-tests.
    return "root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet noresume tsc=unstable "
           "no_timer_check cryptomgr.notests=1";
}

// ---- Tools -------------------------------------------------------------------------------

std::vector<std::string> debootstrap_argv(const debian_base_recipe& recipe, const fs::path& rootfs,
                                          const fs::path& deb_cache) {
    // minbase: Essential packages and apt only, so the guest starts few services; everything
    // it runs is named in --include. The explicit keyring makes a missing keyring an error
    // instead of an unverified download.
    return {"debootstrap",
            "--variant=minbase",
            fmt::format("--arch={}", recipe.arch),
            "--components=main",
            fmt::format("--keyring={}", keyring),
            fmt::format("--include={}", join(debian_base_packages(recipe), ",")),
            fmt::format("--cache-dir={}", deb_cache.string()),
            recipe.suite,
            rootfs.string(),
            recipe.mirror};
}

std::vector<std::string> mke2fs_argv(const fs::path& rootfs, const fs::path& raw_image) {
    // Inode tables and journal are written now: with lazy init the guest's kernel would zero
    // them in the background at every first boot of a copy, slowly under TCG.
    return {"mke2fs",
            "-t",
            "ext4",
            "-d",
            rootfs.string(),
            "-L",
            std::string(root_label),
            "-E",
            "lazy_itable_init=0,lazy_journal_init=0",
            "-F",
            raw_image.string()};
}

std::vector<std::string> qemu_img_convert_argv(const fs::path& raw_image, const fs::path& qcow2) {
    return {"qemu-img", "convert", "-f", "raw", "-O", "qcow2", raw_image.string(), qcow2.string()};
}

std::vector<std::string> update_initramfs_argv(const fs::path& rootfs,
                                               std::string_view kernel_version) {
    return {"chroot",
            rootfs.string(),
            "/usr/sbin/update-initramfs",
            "-u",
            "-k",
            std::string(kernel_version)};
}

std::vector<std::string> lsinitramfs_argv(const fs::path& initrd) {
    return {"lsinitramfs", initrd.string()};
}

std::vector<std::vector<std::string>> systemctl_argvs(const fs::path& rootfs) {
    const std::string root = rootfs.string();
    return {
        {"chroot", root, "/usr/bin/systemctl", "enable", "systemd-networkd.service"},
        // Nothing in a throwaway development VM needs these, and each costs boot time under TCG
        // or runs apt in the background. The modprobe@ units preload modules that the kernel
        // loads by itself when /dev/loop-control, /dev/fuse or /dev/mapper/control is opened;
        // there is no display for drm.
        {"chroot", root, "/usr/bin/systemctl", "mask", "apt-daily.timer", "apt-daily-upgrade.timer",
         "dpkg-db-backup.timer", "e2scrub_all.timer", "e2scrub_reap.service", "fstrim.timer",
         "modprobe@drm.service", "modprobe@dm_mod.service", "modprobe@fuse.service",
         "modprobe@loop.service"},
    };
}

// ---- Files in the root file system --------------------------------------------------------

std::vector<rootfs_entry> debian_base_rootfs_files(const debian_base_recipe&) {
    return {
        {"etc/fstab",
         "# The whole virtio disk is the root file system (no partition table).\n"
         "/dev/vda / ext4 rw,noatime,errors=remount-ro 0 1\n"},
        {"etc/hostname", "stackemu\n"},
        {"etc/hosts",
         "127.0.0.1 localhost\n"
         "127.0.1.1 stackemu\n"
         "::1 localhost ip6-localhost ip6-loopback\n"},
        // QEMU's user networking answers DNS at 10.0.2.3; stackemu always uses it. (The host's
        // resolv.conf that debootstrap copied names servers the guest cannot reach.)
        {"etc/resolv.conf", "nameserver 10.0.2.3\n"},
        // Empty: systemd makes a new machine id at the first boot of the image.
        {"etc/machine-id", "", 0444},
        // DHCP on every Ethernet link through systemd-networkd (part of systemd): no ifupdown or
        // dhclient, and no dependence on the interface name or MAC address.
        {"etc/systemd/network/80-stackemu-dhcp.network",
         "[Match]\n"
         "Type=ether\n"
         "\n"
         "[Network]\n"
         "DHCP=ipv4\n"
         "LinkLocalAddressing=no\n"
         "IPv6AcceptRA=no\n"},
        // systemd-networkd asks for the nl80211 netlink family when it starts, which loads
        // cfg80211 and looks for wireless firmware: seconds under TCG, for a VM without radio.
        {"etc/modprobe.d/stackemu.conf",
         "# stackemu: no wireless in this VM (systemd-networkd would load cfg80211 at boot).\n"
         "blacklist cfg80211\n"},
        // A journal in RAM: no flush to disk at boot, no journal files growing in the image.
        {"etc/systemd/journald.conf.d/stackemu.conf",
         "[Journal]\n"
         "Storage=volatile\n"
         "RuntimeMaxUse=32M\n"},
        {"etc/cloud/cloud.cfg.d/90-stackemu.cfg",
         "# stackemu: the only data source is the NoCloud seed ISO (label cidata); never probe\n"
         "# cloud metadata services, which costs minutes when they are absent.\n"
         "datasource_list: [NoCloud, None]\n"
         "# The image configures its network itself (systemd-networkd, DHCP on every Ethernet\n"
         "# link), so a copy with another MAC address or PCI slot still gets its network.\n"
         "network: {config: disabled}\n"
         "# Only the modules a stackemu provisioning run can use: each one costs Python time "
         "under\n"
         "# TCG, and those for SSH, users and passwords, locales, snaps, config management and\n"
         "# cloud vendors have nothing to do here (no SSH server, no accounts: the guest agent).\n"
         "cloud_init_modules: [seed_random, bootcmd, write-files, growpart, resizefs, mounts,\n"
         "  set_hostname, update_hostname, update_etc_hosts, ca-certs]\n"
         "cloud_config_modules: [apt-configure, timezone, runcmd]\n"
         "cloud_final_modules: [package-update-upgrade-install, write-files-deferred,\n"
         "  scripts-vendor, scripts-per-once, scripts-per-boot, scripts-per-instance, "
         "scripts-user,\n"
         "  final-message, power-state-change]\n"},
        // A small initrd: only what mounts the root file system (the real root has every module
        // for udev to load later). The default, MODULES=most, is 30 MiB that the kernel unpacks
        // and probes at every boot; also no waiting for a resume device that a chroot may name.
        // FSTYPE: the root's type is known; otherwise mkinitramfs probes /dev/vda, which in the
        // chroot is missing (or, where /dev is the host's, is some host disk).
        {"etc/initramfs-tools/conf.d/stackemu", "MODULES=list\nRESUME=none\nFSTYPE=ext4\n"},
        {"etc/initramfs-tools/modules",
         "# stackemu: the root file system is ext4 on a virtio disk.\n"
         "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n"},
    };
}

std::vector<std::string> debian_base_cleaned_dirs() {
    return {"var/lib/apt/lists", "var/cache/apt"};
}

result<std::string> lock_root_password(std::string_view shadow) {
    std::string out;
    bool found = false;
    for (auto line : lines_of(shadow)) {
        if (line.starts_with("root:")) {
            const auto rest = line.substr(5);
            const auto colon = rest.find(':');
            out += "root:!*";
            if (colon != std::string_view::npos) out += rest.substr(colon);
            found = true;
        } else {
            out += line;
        }
        out += '\n';
    }
    if (!found) return fail(errc::internal, "the root file system's /etc/shadow has no root line");
    return out;
}

result<std::string> pick_kernel_version(const std::vector<std::string>& boot_names) {
    std::set<std::string> kernels;
    std::set<std::string> initrds;
    for (const auto& n : boot_names) {
        if (n.starts_with("vmlinuz-")) kernels.insert(n.substr(8));
        if (n.starts_with("initrd.img-")) initrds.insert(n.substr(11));
    }
    std::vector<std::string> both;
    std::ranges::set_intersection(kernels, initrds, std::back_inserter(both));
    if (both.empty())
        return fail(
            errc::not_found,
            fmt::format("no kernel with its initrd in the root file system's /boot (found: "
                        "{}): did the linux-image package install?",
                        boot_names.empty() ? std::string("nothing") : join(boot_names, " ")));
    if (both.size() > 1)
        return fail(
            errc::internal,
            fmt::format("several kernels in /boot ({}): the base must have one", join(both, " ")));
    return both.front();
}

result<void> check_initrd_listing(std::string_view lsinitramfs_output,
                                  std::string_view modules_builtin) {
    std::vector<std::string> missing;
    for (const std::string_view module : {"virtio_blk", "ext4"}) {
        auto is_module = [&](std::string_view line) {
            const auto slash = line.rfind('/');
            auto file = slash == std::string_view::npos ? line : line.substr(slash + 1);
            if (!file.starts_with(module)) return false;
            file.remove_prefix(module.size());
            return file == ".ko" || file == ".ko.xz" || file == ".ko.zst" || file == ".ko.gz";
        };
        const bool present = std::ranges::any_of(lines_of(lsinitramfs_output), is_module) ||
                             std::ranges::any_of(lines_of(modules_builtin), is_module);
        if (!present) missing.emplace_back(module);
    }
    if (!missing.empty())
        return fail(errc::internal,
                    fmt::format("the initrd lacks {}: the kernel could not mount the root file "
                                "system from the virtio disk",
                                join(missing, " and ")));
    return {};
}

std::vector<std::string> mounts_under(std::string_view mountinfo, const fs::path& dir) {
    const std::string base = dir.lexically_normal().string();
    std::vector<std::string> found;
    for (auto line : lines_of(mountinfo)) {
        // Fields: id parent major:minor root mount-point ...
        std::size_t field = 0;
        std::size_t pos = 0;
        std::string_view mount_point;
        while (pos <= line.size() && field <= 4) {
            const auto space = line.find(' ', pos);
            const auto f =
                line.substr(pos, space == std::string_view::npos ? line.size() - pos : space - pos);
            if (field == 4) mount_point = f;
            ++field;
            if (space == std::string_view::npos) break;
            pos = space + 1;
        }
        if (mount_point.empty()) continue;
        auto decoded = decode_mountinfo_path(mount_point);
        if (decoded == base || (decoded.size() > base.size() && decoded.starts_with(base) &&
                                (base.ends_with('/') || decoded[base.size()] == '/')))
            found.push_back(std::move(decoded));
    }
    std::ranges::reverse(found);
    return found;
}

}  // namespace stackemu::provision
