#include "cli/output.hpp"

#include <fmt/format.h>

#include <cstdio>

namespace stackemu::cli {

int report(std::string_view command, const error& e) {
    fmt::print(stderr, "stackemu {}: {}\n", command, e.what());
    return exit_error;
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
