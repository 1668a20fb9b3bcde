// The Debian base image (`build-image --base debian`): a Debian 12 root file system made from
// Debian packages with debootstrap, configured for stackemu, written into a sparse ext4 image
// with `mke2fs -d` (nothing is mounted) and converted to qcow2, plus the kernel and initrd taken
// out of it for direct kernel boot. Cached by a key over every input.
#pragma once

#include <sys/types.h>

#include <cstdint>
#include <filesystem>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "common/error.hpp"
#include "provision/tool_stream.hpp"

namespace stackemu::provision {

// Bumped whenever the build changes what it produces (packages, files, tool options), so that
// cached bases built by an older stackemu are not reused.
inline constexpr int debian_base_recipe_version = 4;

struct debian_base_recipe {
    std::string suite = "bookworm";
    std::string arch = "amd64";  // only the host's architecture can be built
    std::string mirror = "http://deb.debian.org/debian";
    std::vector<std::string> extra_packages;  // the profile's base_packages
    std::uint64_t disk_bytes = 8ull << 30;    // size of the sparse ext4 root file system
};

// Packages every base has, whatever the profile adds (the kernel package names the arch).
std::vector<std::string> debian_base_fixed_packages(std::string_view arch);
// The fixed packages and the recipe's extras, sorted, each once: what debootstrap installs.
std::vector<std::string> debian_base_packages(const debian_base_recipe& recipe);

// "amd64" or "arm64" for this machine; empty for others.
std::string host_debian_arch();
// Refuses what cannot be built, saying what to change: an architecture other than the host's
// (debootstrap runs the guest's package scripts here), malformed suite, mirror or package
// names, a disk under 1 GiB or not a whole number of 4 KiB blocks.
result<void> check_recipe(const debian_base_recipe& recipe, std::string_view host_arch);

// Lowercase hex SHA-256 over the recipe version and every input, with the package list
// normalised (order and duplicates do not change the key).
std::string recipe_key(const debian_base_recipe& recipe);
// The cache entry's directory name: debian-<suite>-<arch>-<first 16 hex digits of the key>.
std::string debian_base_entry_name(const debian_base_recipe& recipe);
// ${XDG_CACHE_HOME:-$HOME/.cache}/stackemu/bases, from the values of those two variables
// (empty when unset). Errors when neither is usable.
result<std::filesystem::path> default_base_cache_root(std::string_view xdg_cache_home,
                                                      std::string_view home);

// The kernel command line for the base: the whole virtio disk is the ext4 root.
std::string debian_base_cmdline();

// --- The tools' argv (exact; tested) ------------------------------------------------------

std::vector<std::string> debootstrap_argv(const debian_base_recipe& recipe,
                                          const std::filesystem::path& rootfs,
                                          const std::filesystem::path& deb_cache);
std::vector<std::string> mke2fs_argv(const std::filesystem::path& rootfs,
                                     const std::filesystem::path& raw_image);
std::vector<std::string> qemu_img_convert_argv(const std::filesystem::path& raw_image,
                                               const std::filesystem::path& qcow2);
// Rebuilds the initrd inside the root file system with the configuration written into it.
std::vector<std::string> update_initramfs_argv(const std::filesystem::path& rootfs,
                                               std::string_view kernel_version);
std::vector<std::string> lsinitramfs_argv(const std::filesystem::path& initrd);
// `systemctl enable/mask` run with the guest's own systemctl inside the root file system (it
// works offline: it only writes symlinks under /etc).
std::vector<std::vector<std::string>> systemctl_argvs(const std::filesystem::path& rootfs);

// --- The configuration written into the root file system ----------------------------------

struct rootfs_entry {
    std::string path;     // relative to the root file system, e.g. "etc/fstab"
    std::string content;  // the file's bytes, or a symlink's target
    mode_t mode = 0644;
    bool symlink = false;
};
std::vector<rootfs_entry> debian_base_rootfs_files(const debian_base_recipe& recipe);
// Directories (relative) whose contents are removed before the image is made: apt's package
// lists and caches, which are stale by the time anyone uses the image.
std::vector<std::string> debian_base_cleaned_dirs();

// /etc/shadow with root's password field set to "!*": locked, and no password at all. Errors
// when there is no root line.
result<std::string> lock_root_password(std::string_view shadow);

// The kernel version whose vmlinuz-V and initrd.img-V are both in /boot (the names listed).
// Errors when there is none, or more than one (which one would boot is then a guess).
result<std::string> pick_kernel_version(const std::vector<std::string>& boot_names);

// Checks that the initrd can mount the root file system: virtio_blk and ext4 are in
// lsinitramfs's listing, or built into the kernel (its modules.builtin text).
result<void> check_initrd_listing(std::string_view lsinitramfs_output,
                                  std::string_view modules_builtin);

// Mount points at or under `dir` in /proc/self/mountinfo's text, the last mounted first (octal
// escapes decoded). The build removes its temporary directory only once nothing is mounted there.
std::vector<std::string> mounts_under(std::string_view mountinfo, const std::filesystem::path& dir);

// --- Building -----------------------------------------------------------------------------

struct step_timing {
    std::string step;  // debootstrap, configure, initrd-check, mke2fs, convert, checksum
    double seconds = 0;
};

struct debian_base {
    std::filesystem::path qcow2, kernel, initrd;  // absolute
    std::string cmdline;
    std::string key;     // recipe_key()
    std::string sha256;  // of the qcow2 file
    std::string source;  // "debian:bookworm/amd64 (debootstrap, key 0123abcd...)"
    std::string kernel_version;
    std::filesystem::path dir;         // the cache entry
    bool built = false;                // false: an existing cache entry was reused
    std::vector<step_timing> timings;  // of the build that made it (from base.json when reused)
};

// Reads the cache entry `dir` (base.json and the files it names); errors when it is missing,
// incomplete or made for another key.
result<debian_base> load_debian_base(const std::filesystem::path& dir, std::string_view key);

// The base for `recipe`, cached under cache_root/<debian_base_entry_name>/ (base.qcow2, vmlinuz,
// initrd.img, base.json). Reuses a complete entry unless `force`. Otherwise builds it in a
// temporary directory beside the entry and renames that into place, holding cache_root/.lock
// meanwhile (a second caller waits, then finds the entry). Debian packages are kept in
// cache_root/debs/<suite>-<arch>/ so a rebuild downloads only what changed. Every line the tools
// print goes to `progress`, with a line per step. On failure nothing is left behind but the
// package cache, and the error names the step and shows the tool's last lines.
result<debian_base> ensure_debian_base(const debian_base_recipe& recipe,
                                       const std::filesystem::path& cache_root, line_sink progress,
                                       bool force = false);

}  // namespace stackemu::provision
