// The Debian base recipe: its key, the tools' argv, the files written into the root file system
// and the checks on what debootstrap produced.
#include <catch2/catch.hpp>

#include "provision/debian_base.hpp"

using namespace stackemu;
using namespace stackemu::provision;

namespace {

debian_base_recipe demo_recipe() {
    debian_base_recipe r;
    r.extra_packages = {"redis-server", "postgresql", "python3-psycopg2"};
    return r;
}

const rootfs_entry* find_entry(const std::vector<rootfs_entry>& entries, std::string_view path) {
    for (const auto& e : entries)
        if (e.path == path) return &e;
    return nullptr;
}

}  // namespace

TEST_CASE("debian base: debootstrap installs minbase plus the sorted package list", "[debian]") {
    const auto argv = debootstrap_argv(demo_recipe(), "/c/.tmp-x/rootfs", "/c/debs/bookworm-amd64");
    CHECK(argv == std::vector<std::string>{
                      "debootstrap",
                      "--variant=minbase",
                      "--arch=amd64",
                      "--components=main",
                      "--keyring=/usr/share/keyrings/debian-archive-keyring.gpg",
                      "--include=ca-certificates,cloud-init,dbus,initramfs-tools,iproute2,"
                      "linux-image-amd64,postgresql,python3-cffi-backend,python3-psycopg2,"
                      "qemu-guest-agent,redis-server,systemd-sysv,udev,zstd",
                      "--cache-dir=/c/debs/bookworm-amd64",
                      "bookworm",
                      "/c/.tmp-x/rootfs",
                      "http://deb.debian.org/debian",
                  });
}

TEST_CASE("debian base: extra packages already in the fixed list appear once", "[debian]") {
    debian_base_recipe r;
    r.extra_packages = {"udev", "cloud-init", "udev"};
    const auto packages = debian_base_packages(r);
    CHECK(std::ranges::count(packages, "udev") == 1);
    CHECK(packages == debian_base_packages(debian_base_recipe{}));
}

TEST_CASE("debian base: mke2fs fills a labelled ext4 image from the folder", "[debian]") {
    CHECK(mke2fs_argv("/b/rootfs", "/b/root.raw") ==
          std::vector<std::string>{"mke2fs", "-t", "ext4", "-d", "/b/rootfs", "-L", "stackroot",
                                   "-E", "lazy_itable_init=0,lazy_journal_init=0", "-F",
                                   "/b/root.raw"});
}

TEST_CASE("debian base: qemu-img converts and the initrd is remade and listed", "[debian]") {
    CHECK(qemu_img_convert_argv("/b/root.raw", "/b/base.qcow2") ==
          std::vector<std::string>{"qemu-img", "convert", "-f", "raw", "-O", "qcow2", "/b/root.raw",
                                   "/b/base.qcow2"});
    CHECK(update_initramfs_argv("/b/rootfs", "6.1.0-9-amd64") ==
          std::vector<std::string>{"chroot", "/b/rootfs", "/usr/sbin/update-initramfs", "-u", "-k",
                                   "6.1.0-9-amd64"});
    CHECK(lsinitramfs_argv("/r/boot/initrd.img-6.1.0-9-amd64") ==
          std::vector<std::string>{"lsinitramfs", "/r/boot/initrd.img-6.1.0-9-amd64"});
}

TEST_CASE("debian base: systemctl runs inside the root file system to enable and mask",
          "[debian]") {
    const auto argvs = systemctl_argvs("/b/rootfs");
    REQUIRE(argvs.size() == 2);
    CHECK(argvs[0] == std::vector<std::string>{"chroot", "/b/rootfs", "/usr/bin/systemctl",
                                               "enable", "systemd-networkd.service"});
    CHECK(argvs[1] == std::vector<std::string>{"chroot", "/b/rootfs", "/usr/bin/systemctl", "mask",
                                               "apt-daily.timer", "apt-daily-upgrade.timer",
                                               "dpkg-db-backup.timer", "e2scrub_all.timer",
                                               "e2scrub_reap.service", "fstrim.timer",
                                               "modprobe@drm.service", "modprobe@dm_mod.service",
                                               "modprobe@fuse.service", "modprobe@loop.service"});
}

TEST_CASE("debian base: the kernel command line boots the whole virtio disk read-write",
          "[debian]") {
    CHECK(debian_base_cmdline() ==
          "root=/dev/vda rootfstype=ext4 rw console=ttyS0 quiet noresume tsc=unstable "
          "no_timer_check cryptomgr.notests=1");
}

TEST_CASE("debian base: the files written into the root file system", "[debian]") {
    const auto files = debian_base_rootfs_files(demo_recipe());
    std::vector<std::string> paths;
    for (const auto& f : files)
        paths.push_back(f.path);
    CHECK(paths == std::vector<std::string>{
                       "etc/fstab", "etc/hostname", "etc/hosts", "etc/resolv.conf",
                       "etc/machine-id", "etc/systemd/network/80-stackemu-dhcp.network",
                       "etc/modprobe.d/stackemu.conf", "etc/systemd/journald.conf.d/stackemu.conf",
                       "etc/cloud/cloud.cfg.d/90-stackemu.cfg",
                       "etc/initramfs-tools/conf.d/stackemu", "etc/initramfs-tools/modules"});
    for (const auto& f : files) {
        INFO(f.path);
        CHECK_FALSE(f.symlink);
        CHECK(f.mode == (f.path == "etc/machine-id" ? 0444 : 0644));
    }
    CHECK(find_entry(files, "etc/fstab")->content ==
          "# The whole virtio disk is the root file system (no partition table).\n"
          "/dev/vda / ext4 rw,noatime,errors=remount-ro 0 1\n");
    CHECK(find_entry(files, "etc/hostname")->content == "stackemu\n");
    CHECK(find_entry(files, "etc/resolv.conf")->content == "nameserver 10.0.2.3\n");
    CHECK(find_entry(files, "etc/machine-id")->content.empty());
    CHECK(find_entry(files, "etc/systemd/network/80-stackemu-dhcp.network")->content ==
          "[Match]\nType=ether\n\n[Network]\nDHCP=ipv4\nLinkLocalAddressing=no\nIPv6AcceptRA="
          "no\n");
    CHECK_THAT(find_entry(files, "etc/modprobe.d/stackemu.conf")->content,
               Catch::EndsWith("\nblacklist cfg80211\n"));
    CHECK(find_entry(files, "etc/systemd/journald.conf.d/stackemu.conf")->content ==
          "[Journal]\nStorage=volatile\nRuntimeMaxUse=32M\n");
    const auto& cloud = find_entry(files, "etc/cloud/cloud.cfg.d/90-stackemu.cfg")->content;
    CHECK_THAT(cloud, Catch::Contains("\ndatasource_list: [NoCloud, None]\n"));
    CHECK_THAT(cloud, Catch::Contains("\nnetwork: {config: disabled}\n"));
    CHECK_THAT(cloud,
               Catch::Contains("\ncloud_config_modules: [apt-configure, timezone, runcmd]\n"));
    CHECK_THAT(cloud, Catch::Contains("scripts-user,\n  final-message, power-state-change]\n"));
    CHECK(find_entry(files, "etc/initramfs-tools/conf.d/stackemu")->content ==
          "MODULES=list\nRESUME=none\nFSTYPE=ext4\n");
    CHECK(find_entry(files, "etc/initramfs-tools/modules")->content ==
          "# stackemu: the root file system is ext4 on a virtio disk.\n"
          "virtio_pci\nvirtio_blk\next4\ncrc32c_generic\n");
    CHECK(debian_base_cleaned_dirs() ==
          std::vector<std::string>{"var/lib/apt/lists", "var/cache/apt"});
}

TEST_CASE("debian base: root's password becomes locked and empty, other lines unchanged",
          "[debian]") {
    auto locked = lock_root_password(
        "root:*:19700:0:99999:7:::\n"
        "daemon:*:19700:0:99999:7:::\n"
        "rooty:$6$x:19700:0:99999:7:::\n");
    REQUIRE(locked);
    CHECK(*locked ==
          "root:!*:19700:0:99999:7:::\n"
          "daemon:*:19700:0:99999:7:::\n"
          "rooty:$6$x:19700:0:99999:7:::\n");
    auto hashed = lock_root_password("root:$6$salt$hash:19700::::::");
    REQUIRE(hashed);
    CHECK(*hashed == "root:!*:19700::::::\n");
    auto none = lock_root_password("daemon:*:19700:0:99999:7:::\n");
    REQUIRE_FALSE(none);
    CHECK_THAT(none.error().message, Catch::Contains("no root line"));
}

TEST_CASE("debian base: the kernel is the one version with both vmlinuz and initrd", "[debian]") {
    auto v = pick_kernel_version({"System.map-6.1.0-9-amd64", "config-6.1.0-9-amd64",
                                  "initrd.img-6.1.0-9-amd64", "vmlinuz-6.1.0-9-amd64"});
    REQUIRE(v);
    CHECK(*v == "6.1.0-9-amd64");

    auto no_initrd = pick_kernel_version({"vmlinuz-6.1.0-9-amd64"});
    REQUIRE_FALSE(no_initrd);
    CHECK(no_initrd.error().code == errc::not_found);
    CHECK_THAT(no_initrd.error().message,
               Catch::Contains("no kernel with its initrd") && Catch::Contains("vmlinuz-6.1.0-9"));

    auto two = pick_kernel_version({"vmlinuz-6.1.0-9-amd64", "initrd.img-6.1.0-9-amd64",
                                    "vmlinuz-6.1.0-10-amd64", "initrd.img-6.1.0-10-amd64"});
    REQUIRE_FALSE(two);
    CHECK_THAT(two.error().message, Catch::Contains("6.1.0-10-amd64 6.1.0-9-amd64"));
}

TEST_CASE("debian base: the initrd must hold virtio_blk and ext4 or the kernel must", "[debian]") {
    const std::string listing =
        "usr/lib/modules/6.1.0-9-amd64/kernel/drivers/block/virtio_blk.ko\n"
        "usr/lib/modules/6.1.0-9-amd64/kernel/fs/ext4/ext4.ko\n";
    CHECK(check_initrd_listing(listing, ""));

    auto missing = check_initrd_listing("usr/lib/modules/v/kernel/fs/ext4/ext4.ko\n", "");
    REQUIRE_FALSE(missing);
    CHECK_THAT(missing.error().message, Catch::Contains("lacks virtio_blk"));

    // Names that only start with the module's name do not count.
    auto lookalike =
        check_initrd_listing("x/virtio_blk_extra.ko\nx/ext4.ko\nx/ext4_helper.ko.xz\n", "");
    REQUIRE_FALSE(lookalike);
    CHECK_THAT(lookalike.error().message, Catch::Contains("lacks virtio_blk"));

    auto nothing = check_initrd_listing("", "");
    REQUIRE_FALSE(nothing);
    CHECK_THAT(nothing.error().message, Catch::Contains("lacks virtio_blk and ext4"));

    CHECK(check_initrd_listing("x/ext4.ko.zst\n", "kernel/drivers/block/virtio_blk.ko\n"));
}

TEST_CASE("debian base: the key covers every input but not the package order", "[debian]") {
    const auto base = recipe_key(demo_recipe());
    CHECK(base.size() == 64);
    CHECK(base.find_first_not_of("0123456789abcdef") == std::string::npos);

    auto reordered = demo_recipe();
    std::ranges::reverse(reordered.extra_packages);
    reordered.extra_packages.push_back("postgresql");
    CHECK(recipe_key(reordered) == base);

    auto changed = [&](auto&& mutate) {
        auto r = demo_recipe();
        mutate(r);
        return recipe_key(r) != base;
    };
    CHECK(changed([](auto& r) { r.suite = "trixie"; }));
    CHECK(changed([](auto& r) { r.arch = "arm64"; }));
    CHECK(changed([](auto& r) { r.mirror = "http://ftp.de.debian.org/debian"; }));
    CHECK(changed([](auto& r) { r.extra_packages.push_back("curl"); }));
    CHECK(changed([](auto& r) { r.disk_bytes = 4ull << 30; }));

    CHECK(debian_base_entry_name(demo_recipe()) == "debian-bookworm-amd64-" + base.substr(0, 16));
}

TEST_CASE("debian base: the cache root follows XDG_CACHE_HOME, then HOME", "[debian]") {
    CHECK(*default_base_cache_root("/x/cache", "/home/u") == "/x/cache/stackemu/bases");
    CHECK(*default_base_cache_root("", "/home/u") == "/home/u/.cache/stackemu/bases");
    CHECK(*default_base_cache_root("relative", "/home/u") == "/home/u/.cache/stackemu/bases");
    auto none = default_base_cache_root("", "");
    REQUIRE_FALSE(none);
    CHECK_THAT(none.error().message, Catch::Contains("set HOME or XDG_CACHE_HOME"));
}

TEST_CASE("debian base: recipes that cannot be built are refused with what to change", "[debian]") {
    CHECK(check_recipe(demo_recipe(), "amd64"));

    auto foreign = demo_recipe();
    foreign.arch = "arm64";
    auto r = check_recipe(foreign, "amd64");
    REQUIRE_FALSE(r);
    CHECK(r.error().code == errc::invalid_argument);
    CHECK_THAT(r.error().message,
               Catch::Contains("cannot build an arm64 Debian base on this amd64") &&
                   Catch::Contains("build the arm64 image on an arm64 machine"));

    auto unknown = demo_recipe();
    unknown.arch = "mips";
    CHECK_THAT(check_recipe(unknown, "amd64").error().message,
               Catch::Contains("unknown architecture 'mips': use amd64 or arm64"));

    for (const auto& bad :
         {"Postgresql", "a", "redis,server", "curl=7.88", "bash:amd64", "-x", ""}) {
        auto recipe = demo_recipe();
        recipe.extra_packages.push_back(bad);
        INFO(bad);
        auto e = check_recipe(recipe, "amd64");
        REQUIRE_FALSE(e);
        CHECK_THAT(e.error().message, Catch::Contains("is not a Debian package name"));
    }
    auto plus = demo_recipe();
    plus.extra_packages = {"g++", "libstdc++6", "python3.11"};
    CHECK(check_recipe(plus, "amd64"));

    for (const auto& bad : {"ftp://deb.debian.org/debian", "http://", "http://a b/debian",
                            "http://x/debian,http://y", "deb.debian.org"}) {
        auto recipe = demo_recipe();
        recipe.mirror = bad;
        INFO(bad);
        auto e = check_recipe(recipe, "amd64");
        REQUIRE_FALSE(e);
        CHECK_THAT(e.error().message, Catch::Contains("is not a Debian mirror URL"));
    }
    auto https = demo_recipe();
    https.mirror = "https://deb.debian.org/debian";
    CHECK(check_recipe(https, "amd64"));

    auto suite = demo_recipe();
    suite.suite = "Bookworm";
    CHECK_THAT(check_recipe(suite, "amd64").error().message,
               Catch::Contains("is not a Debian suite name"));

    for (const std::uint64_t bytes :
         std::vector<std::uint64_t>{0, (1ull << 30) - 4096, (8ull << 30) + 1}) {
        auto recipe = demo_recipe();
        recipe.disk_bytes = bytes;
        INFO(bytes);
        auto e = check_recipe(recipe, "amd64");
        REQUIRE_FALSE(e);
        CHECK_THAT(e.error().message, Catch::Contains("at least 1 GiB, a multiple of 4096"));
    }
}

TEST_CASE("debian base: mounts left under the build directory are found, last mounted first",
          "[debian]") {
    const std::string mountinfo =
        "22 1 0:21 / /proc rw,nosuid - proc proc rw\n"
        "80 60 0:50 / /c/.tmp-x/rootfs/proc rw - proc proc rw\n"
        "81 60 0:51 / /c/.tmp-x/rootfs/sys rw - sysfs sysfs rw\n"
        "82 60 0:52 / /c/.tmp-xy/rootfs/proc rw - proc proc rw\n"
        "83 60 0:53 / /c/.tmp-x/with\\040space rw - tmpfs tmpfs rw\n";
    CHECK(mounts_under(mountinfo, "/c/.tmp-x") ==
          std::vector<std::string>{"/c/.tmp-x/with space", "/c/.tmp-x/rootfs/sys",
                                   "/c/.tmp-x/rootfs/proc"});
    CHECK(mounts_under(mountinfo, "/c/.tmp-x/rootfs/proc") ==
          std::vector<std::string>{"/c/.tmp-x/rootfs/proc"});
    CHECK(mounts_under(mountinfo, "/elsewhere").empty());
}
