#include "cli/output.hpp"

#include <fmt/format.h>

#include <charconv>
#include <cmath>
#include <cstdio>

namespace stackemu::cli {

int report(std::string_view command, const error& e) {
    fmt::print(stderr, "stackemu {}: {}\n", command, e.what());
    return exit_error;
}

CLI::Validator seconds_within(double min, double max) {
    return CLI::Validator(
        [min, max](std::string& text) -> std::string {
            double value = 0;
            const auto [end, ec] = std::from_chars(text.data(), text.data() + text.size(), value);
            if (ec == std::errc{} && end == text.data() + text.size() && std::isfinite(value) &&
                value >= min && value <= max)
                return {};
            return fmt::format("must be a number of seconds from {} to {} (got '{}')", min, max,
                               text);
        },
        fmt::format("SECONDS in [{} - {}]", min, max));
}

long peak_rss_kib() {
    std::FILE* f = std::fopen("/proc/self/status", "r");
    if (!f) return -1;
    char line[256];
    long kib = -1;
    while (std::fgets(line, sizeof line, f))
        if (std::sscanf(line, "VmHWM: %ld kB", &kib) == 1) break;
    std::fclose(f);
    return kib;
}

}  // namespace stackemu::cli
