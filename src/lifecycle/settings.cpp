// Parsing and validation of the EMULATOR_* settings (upstream.md, "Settings").
#include "lifecycle/settings.hpp"

#include <fmt/format.h>
#include <unistd.h>

#include <algorithm>
#include <array>
#include <charconv>
#include <cstdlib>
#include <thread>
#include <utility>

namespace stackemu::lifecycle {

namespace {

bool is_digit(char c) {
    return c >= '0' && c <= '9';
}

bool is_name_char(char c, bool first) {
    if ((c >= 'A' && c <= 'Z') || (c >= 'a' && c <= 'z') || is_digit(c)) return true;
    return !first && (c == '_' || c == '.' || c == '-');
}

// Reads a variable that must not be blank when set: an empty value is almost always a
// mistake in a script (`EMULATOR_RAM= cmd`), so say how to get the default instead.
result<std::optional<std::string>> read_nonempty(const env_lookup& env, std::string_view var) {
    auto value = env(var);
    if (value && value->empty()) {
        return fail(errc::invalid_argument,
                    fmt::format("{} is set but empty; unset it to use the default", var));
    }
    return value;
}

result<void> read_number(const env_lookup& env, std::string_view var, std::uint64_t min,
                         std::uint64_t max, std::uint64_t& out) {
    auto value = read_nonempty(env, var);
    if (!value) return fail(value.error());
    if (!*value) return {};
    auto parsed = parse_decimal(**value, var, min, max);
    if (!parsed) return fail(parsed.error());
    out = *parsed;
    return {};
}

template <typename T>
result<void> read_into(const env_lookup& env, std::string_view var, std::uint64_t min,
                       std::uint64_t max, T& field) {
    auto value = static_cast<std::uint64_t>(field);
    if (auto r = read_number(env, var, min, max, value); !r) return r;
    field = static_cast<T>(value);
    return {};
}

result<void> read_seconds(const env_lookup& env, std::string_view var,
                          std::chrono::seconds& field) {
    auto value = static_cast<std::uint64_t>(field.count());
    if (auto r = read_number(env, var, 1, max_timeout_seconds, value); !r) return r;
    field = std::chrono::seconds(static_cast<std::chrono::seconds::rep>(value));
    return {};
}

// RAM has two spellings (the README documents EMULATOR_RAM_MB, the script reads EMULATOR_RAM);
// both are accepted, and a conflict is an error rather than a silent pick.
result<void> read_ram(const env_lookup& env, std::uint32_t& field) {
    std::optional<std::uint64_t> ram;
    std::optional<std::uint64_t> ram_mb;
    for (auto [var, slot] : {std::pair{std::string_view("EMULATOR_RAM"), &ram},
                             std::pair{std::string_view("EMULATOR_RAM_MB"), &ram_mb}}) {
        auto text = read_nonempty(env, var);
        if (!text) return fail(text.error());
        if (!*text) continue;
        auto value = parse_decimal(**text, var, min_ram_mib, max_ram_mib);
        if (!value) return fail(value.error());
        *slot = *value;
    }
    if (ram && ram_mb && *ram != *ram_mb) {
        return fail(errc::invalid_argument,
                    fmt::format("EMULATOR_RAM={} and EMULATOR_RAM_MB={} disagree; set only one of "
                                "them (both mean guest RAM in MiB)",
                                *ram, *ram_mb));
    }
    if (ram) field = static_cast<std::uint32_t>(*ram);
    if (ram_mb) field = static_cast<std::uint32_t>(*ram_mb);
    return {};
}

result<void> read_path(const env_lookup& env, std::string_view var, std::string_view fallback,
                       const std::optional<std::string>& home, std::filesystem::path& field) {
    auto value = read_nonempty(env, var);
    if (!value) return fail(value.error());
    if (*value) {
        auto expanded = expand_path(**value, var, home);
        if (!expanded) return fail(expanded.error());
        field = std::move(*expanded);
        return {};
    }
    if (!home || home->empty() || home->front() != '/') {
        return fail(errc::invalid_argument,
                    fmt::format("HOME is not set to an absolute path, so the default {} cannot be "
                                "found; set {} to an absolute path",
                                fallback, var));
    }
    auto expanded = expand_path(fallback, var, home);
    if (!expanded) return fail(expanded.error());
    field = std::move(*expanded);
    return {};
}

result<void> check_range(std::uint64_t value, std::uint64_t min, std::uint64_t max,
                         std::string_view what, std::string_view unit) {
    if (value >= min && value <= max) return {};
    return fail(errc::invalid_argument, fmt::format("{} must be between {} and {}{} (got {})", what,
                                                    min, max, unit, value));
}

}  // namespace

std::string_view to_string(architecture a) {
    switch (a) {
        case architecture::amd64:
            return "amd64";
        case architecture::arm64:
            return "arm64";
    }
    return "unknown";
}

std::string_view to_string(accel_mode m) {
    switch (m) {
        case accel_mode::automatic:
            return "auto";
        case accel_mode::kvm:
            return "kvm";
        case accel_mode::hvf:
            return "hvf";
        case accel_mode::tcg:
            return "tcg";
    }
    return "unknown";
}

result<architecture> parse_architecture(std::string_view text) {
    if (text == "amd64" || text == "x86_64") return architecture::amd64;
    if (text == "arm64" || text == "aarch64") return architecture::arm64;
    return fail(errc::invalid_argument,
                fmt::format("unknown architecture '{}'; use amd64 or arm64", text));
}

result<accel_mode> parse_accel_mode(std::string_view text) {
    if (text == "auto") return accel_mode::automatic;
    if (text == "kvm") return accel_mode::kvm;
    if (text == "hvf") return accel_mode::hvf;
    if (text == "tcg") return accel_mode::tcg;
    return fail(errc::invalid_argument,
                fmt::format("unknown accelerator '{}'; use auto, kvm, hvf or tcg", text));
}

env_lookup process_environment() {
    return [](std::string_view name) -> std::optional<std::string> {
        const char* value = std::getenv(std::string(name).c_str());
        if (!value) return std::nullopt;
        return std::string(value);
    };
}

host_facts host_facts::current() {
    host_facts facts;
#if defined(__x86_64__)
    facts.arch = architecture::amd64;
#elif defined(__aarch64__)
    facts.arch = architecture::arm64;
#endif
    facts.cores = std::max(1u, std::thread::hardware_concurrency());
    const long pages = ::sysconf(_SC_PHYS_PAGES);
    const long page_size = ::sysconf(_SC_PAGE_SIZE);
    if (pages > 0 && page_size > 0)
        facts.ram_mib = static_cast<std::uint64_t>(pages) * static_cast<std::uint64_t>(page_size) /
                        (1024 * 1024);
    return facts;
}

result<void> check_ram_fits_host(std::uint64_t ram_mib, std::string_view what,
                                 const host_facts& host) {
    if (host.ram_mib == 0 || ram_mib <= host.ram_mib) return {};
    return fail(errc::invalid_argument,
                fmt::format("{} {} MiB is more than this host's memory ({} MiB, {:.1f} GiB): "
                            "give the guest at most {} MiB, and leave some for the host",
                            what, ram_mib, host.ram_mib, static_cast<double>(host.ram_mib) / 1024,
                            host.ram_mib));
}

result<void> check_cpus_fit_host(std::uint64_t cpus, std::string_view what,
                                 const host_facts& host) {
    if (host.cores == 0 || cpus <= host.cores) return {};
    return fail(errc::invalid_argument,
                fmt::format("{} {} is more vCPUs than this host has CPUs ({}): give the guest "
                            "at most {}",
                            what, cpus, host.cores, host.cores));
}

result<std::uint64_t> parse_decimal(std::string_view text, std::string_view what, std::uint64_t min,
                                    std::uint64_t max) {
    auto out_of_range = [&] {
        return fail(errc::invalid_argument,
                    fmt::format("{} must be between {} and {} (got {})", what, min, max, text));
    };
    bool digits_only = !text.empty();
    for (char c : text)
        digits_only = digits_only && is_digit(c);
    if (!digits_only) {
        return fail(errc::invalid_argument,
                    fmt::format("{} must be a plain decimal number between {} and {}: digits "
                                "only, without sign, unit or blanks (got '{}')",
                                what, min, max, text));
    }
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
    if (ec != std::errc{} || end != text.data() + text.size()) return out_of_range();
    if (value < min || value > max) return out_of_range();
    return value;
}

result<std::uint64_t> parse_disk_size(std::string_view text, std::string_view what) {
    auto out_of_range = [&] {
        return fail(errc::invalid_argument,
                    fmt::format("{} must be between 1G and 16T (got {})", what, text));
    };
    unsigned shift = 0;
    std::string_view digits = text;
    if (!text.empty()) {
        switch (text.back()) {
            case 'K':
            case 'k':
                shift = 10;
                break;
            case 'M':
            case 'm':
                shift = 20;
                break;
            case 'G':
            case 'g':
                shift = 30;
                break;
            case 'T':
            case 't':
                shift = 40;
                break;
            default:
                break;
        }
    }
    if (shift != 0) digits.remove_suffix(1);
    bool digits_only = !digits.empty();
    for (char c : digits)
        digits_only = digits_only && is_digit(c);
    if (!digits_only) {
        return fail(errc::invalid_argument,
                    fmt::format("{} must be a size like 12G, 512M or 1T: a whole number, then K, "
                                "M, G or T for binary units, or plain bytes (got '{}')",
                                what, text));
    }
    std::uint64_t value = 0;
    auto [end, ec] = std::from_chars(digits.data(), digits.data() + digits.size(), value);
    if (ec != std::errc{} || end != digits.data() + digits.size()) return out_of_range();
    if (value > (max_disk_bytes >> shift)) return out_of_range();
    value <<= shift;
    if (value < min_disk_bytes) return out_of_range();
    return value;
}

result<void> check_instance_name(std::string_view name, std::string_view what) {
    bool ok = !name.empty() && name.size() <= 32;
    for (std::size_t i = 0; ok && i < name.size(); ++i)
        ok = is_name_char(name[i], i == 0);
    if (ok) return {};
    return fail(errc::invalid_argument,
                fmt::format("{} '{}' is not a valid instance name; use 1 to 32 letters, digits, "
                            "'_', '.' or '-', starting with a letter or digit",
                            what, name));
}

result<std::filesystem::path> expand_path(std::string_view text, std::string_view what,
                                          const std::optional<std::string>& home) {
    std::string expanded(text);
    if (text == "~" || text.starts_with("~/")) {
        if (!home || home->empty() || home->front() != '/') {
            return fail(errc::invalid_argument,
                        fmt::format("{}='{}' starts with ~ but HOME is not an absolute path; "
                                    "write the full path",
                                    what, text));
        }
        expanded = *home + std::string(text.substr(1));
    } else if (text.starts_with("~")) {
        return fail(
            errc::invalid_argument,
            fmt::format("{}='{}': ~user is not supported; write the full path", what, text));
    }
    std::filesystem::path path(expanded);
    if (!path.is_absolute()) {
        return fail(errc::invalid_argument,
                    fmt::format("{}='{}' must be an absolute path or start with ~/", what, text));
    }
    // Lexical only: the directory may not exist yet, and symlinks are the user's business.
    path = path.lexically_normal();
    if (path.has_relative_path() && !path.has_filename()) path = path.parent_path();
    return path;
}

result<settings> from_environment(const env_lookup& env, const host_facts& host) {
    settings s;
    s.build_cpus = static_cast<std::uint32_t>(std::clamp<std::uint64_t>(host.cores, 1, max_cpus));
    const auto home = env("HOME");

    if (auto r =
            read_path(env, "EMULATOR_IMAGE_DIR", "~/.stack/emulator/images", home, s.image_dir);
        !r) {
        return fail(r.error());
    }
    if (auto r = read_path(env, "EMULATOR_RUN_DIR", "~/.stack/emulator/run", home, s.run_dir); !r) {
        return fail(r.error());
    }
    if (auto r = read_ram(env, s.ram_mib); !r) return fail(r.error());
    if (auto r = read_into(env, "EMULATOR_CPUS", min_cpus, max_cpus, s.cpus); !r) {
        return fail(r.error());
    }

    auto arch_text = read_nonempty(env, "EMULATOR_ARCH");
    if (!arch_text) return fail(arch_text.error());
    if (*arch_text) {
        auto arch = parse_architecture(**arch_text);
        if (!arch) return fail(errc::invalid_argument, "EMULATOR_ARCH: " + arch.error().message);
        s.guest_arch = *arch;
    } else if (host.arch) {
        s.guest_arch = *host.arch;
    } else {
        return fail(errc::invalid_argument,
                    "this host is neither amd64 nor arm64; set EMULATOR_ARCH=amd64 or arm64");
    }

    const std::array<std::pair<std::string_view, std::uint16_t*>, 4> ports = {{
        {"EMULATOR_DASHBOARD_PORT", &s.ports.dashboard},
        {"EMULATOR_BACKEND_PORT", &s.ports.backend},
        {"EMULATOR_MINIO_PORT", &s.ports.minio},
        {"EMULATOR_INBUCKET_PORT", &s.ports.inbucket},
    }};
    for (auto [var, field] : ports) {
        if (auto r = read_into(env, var, 1, 65535, *field); !r) return fail(r.error());
    }

    for (auto [var, field] : {std::pair{"EMULATOR_READY_TIMEOUT", &s.ready_timeout},
                              std::pair{"EMULATOR_STOP_TIMEOUT", &s.stop_timeout},
                              std::pair{"EMULATOR_PROVISION_TIMEOUT", &s.provision_timeout},
                              std::pair{"EMULATOR_REPLY_TIMEOUT", &s.reply_timeout}}) {
        if (auto r = read_seconds(env, var, *field); !r) return fail(r.error());
    }

    auto accel_text = read_nonempty(env, "EMULATOR_ACCEL");
    if (!accel_text) return fail(accel_text.error());
    if (*accel_text) {
        auto accel = parse_accel_mode(**accel_text);
        if (!accel) return fail(errc::invalid_argument, "EMULATOR_ACCEL: " + accel.error().message);
        s.accel = *accel;
    }

    // Empty means "not set" for these two: the default instance, and qemu from PATH.
    s.name = env("EMULATOR_NAME").value_or("");
    if (!s.name.empty()) {
        if (auto r = check_instance_name(s.name, "EMULATOR_NAME"); !r) return fail(r.error());
    }
    s.qemu = env("EMULATOR_QEMU").value_or("");

    auto disk_text = read_nonempty(env, "EMULATOR_DISK_SIZE");
    if (!disk_text) return fail(disk_text.error());
    if (*disk_text) {
        auto size = parse_disk_size(**disk_text, "EMULATOR_DISK_SIZE");
        if (!size) return fail(size.error());
        s.disk_size_bytes = *size;
    }

    if (auto r = read_into(env, "EMULATOR_BUILD_RAM", min_ram_mib, max_ram_mib, s.build_ram_mib);
        !r) {
        return fail(r.error());
    }
    if (auto r = read_into(env, "EMULATOR_BUILD_CPUS", min_cpus, max_cpus, s.build_cpus); !r) {
        return fail(r.error());
    }

    if (auto r = validate(s); !r) return fail(r.error());
    return s;
}

result<void> validate(const settings& s) {
    for (auto [path, what] : {std::pair{&s.image_dir, "the image directory (EMULATOR_IMAGE_DIR)"},
                              std::pair{&s.run_dir, "the run directory (EMULATOR_RUN_DIR)"}}) {
        if (!path->is_absolute()) {
            return fail(
                errc::invalid_argument,
                fmt::format("{} must be an absolute path (got '{}')", what, path->string()));
        }
    }
    if (auto r =
            check_range(s.ram_mib, min_ram_mib, max_ram_mib, "guest RAM (EMULATOR_RAM)", " MiB");
        !r) {
        return r;
    }
    if (auto r = check_range(s.cpus, min_cpus, max_cpus, "guest CPUs (EMULATOR_CPUS)", ""); !r) {
        return r;
    }
    // q35 addresses at most 255 CPUs without an interrupt-remapping IOMMU (QEMU 7.2 refuses 256).
    if (s.guest_arch == architecture::amd64 && s.cpus > max_amd64_cpus) {
        return fail(errc::invalid_argument,
                    fmt::format("an amd64 guest takes at most {} CPUs (got {}); set "
                                "EMULATOR_CPUS to {} or fewer",
                                max_amd64_cpus, s.cpus, max_amd64_cpus));
    }
    if (auto r = check_range(s.build_ram_mib, min_ram_mib, max_ram_mib,
                             "build VM RAM (EMULATOR_BUILD_RAM)", " MiB");
        !r) {
        return r;
    }
    if (auto r = check_range(s.build_cpus, min_cpus, max_cpus,
                             "build VM CPUs (EMULATOR_BUILD_CPUS)", "");
        !r) {
        return r;
    }
    for (auto [value, what] : {
             std::pair{s.ready_timeout, "the ready timeout (EMULATOR_READY_TIMEOUT)"},
             std::pair{s.stop_timeout, "the stop timeout (EMULATOR_STOP_TIMEOUT)"},
             std::pair{s.provision_timeout, "the provision timeout (EMULATOR_PROVISION_TIMEOUT)"},
             std::pair{s.reply_timeout, "the reply timeout (EMULATOR_REPLY_TIMEOUT)"},
         }) {
        if (value.count() < 1 || static_cast<std::uint64_t>(value.count()) > max_timeout_seconds) {
            return fail(errc::invalid_argument,
                        fmt::format("{} must be between 1 and {} seconds (got {})", what,
                                    max_timeout_seconds, value.count()));
        }
    }
    if (auto r = check_range(s.disk_size_bytes, min_disk_bytes, max_disk_bytes,
                             "the build disk size (EMULATOR_DISK_SIZE)", " bytes");
        !r) {
        return r;
    }

    const std::array<std::pair<std::uint16_t, std::string_view>, 4> ports = {{
        {s.ports.dashboard, "the dashboard port (EMULATOR_DASHBOARD_PORT)"},
        {s.ports.backend, "the backend port (EMULATOR_BACKEND_PORT)"},
        {s.ports.minio, "the MinIO port (EMULATOR_MINIO_PORT)"},
        {s.ports.inbucket, "the Inbucket port (EMULATOR_INBUCKET_PORT)"},
    }};
    for (std::size_t i = 0; i < ports.size(); ++i) {
        if (ports[i].first == 0) {
            return fail(errc::invalid_argument,
                        fmt::format("{} must be between 1 and 65535 (got 0)", ports[i].second));
        }
        for (std::size_t j = i + 1; j < ports.size(); ++j) {
            if (ports[i].first == ports[j].first) {
                return fail(errc::invalid_argument,
                            fmt::format("{} and {} are both {}; give each service its own port",
                                        ports[i].second, ports[j].second, ports[i].first));
            }
        }
    }

    if (!s.name.empty()) {
        if (auto r = check_instance_name(s.name, "the instance name (EMULATOR_NAME)"); !r) return r;
    }
    return {};
}

namespace {
std::chrono::milliseconds process_reply_timeout{30000};
}  // namespace

void set_reply_timeout(std::chrono::milliseconds timeout) {
    process_reply_timeout = timeout;
}

std::chrono::milliseconds reply_timeout() {
    return process_reply_timeout;
}

}  // namespace stackemu::lifecycle
