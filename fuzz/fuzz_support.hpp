// Shared by the fuzz targets: invariant checks that stop the run, and ways to cut an input into
// chunks (a sans-io parser must give the same result however its input is split).
#pragma once

#include <algorithm>
#include <cstddef>
#include <cstdint>
#include <cstdio>
#include <cstdlib>
#include <source_location>
#include <string_view>
#include <vector>

namespace stackemu::fuzz {

// A broken invariant aborts, so libFuzzer records the input as a finding.
inline void check(bool holds, const char* what,
                  std::source_location where = std::source_location::current()) {
    if (holds) return;
    std::fprintf(stderr, "invariant violated at %s:%u: %s\n", where.file_name(), where.line(),
                 what);
    std::abort();
}

inline std::string_view as_text(const std::uint8_t* data, std::size_t size) {
    return {reinterpret_cast<const char*>(data), size};
}

// FNV-1a: a seed that depends on every byte, so the fuzzer explores splits as it mutates.
inline std::uint64_t seed_of(std::string_view bytes) {
    std::uint64_t h = 0xcbf29ce484222325ULL;
    for (unsigned char c : bytes)
        h = (h ^ c) * 0x100000001b3ULL;
    return h;
}

// Chunks of 1 to max_chunk bytes, sizes drawn from `seed` (xorshift64).
inline std::vector<std::string_view> random_chunks(std::string_view bytes, std::uint64_t seed,
                                                   std::size_t max_chunk = 16) {
    std::vector<std::string_view> out;
    std::uint64_t x = seed | 1;
    while (!bytes.empty()) {
        x ^= x << 13;
        x ^= x >> 7;
        x ^= x << 17;
        const std::size_t n = std::min<std::size_t>(bytes.size(), 1 + x % max_chunk);
        out.push_back(bytes.substr(0, n));
        bytes.remove_prefix(n);
    }
    return out;
}

// One byte at a time: every possible cut at once.
inline std::vector<std::string_view> byte_chunks(std::string_view bytes) {
    std::vector<std::string_view> out;
    out.reserve(bytes.size());
    for (std::size_t i = 0; i < bytes.size(); ++i)
        out.push_back(bytes.substr(i, 1));
    return out;
}

}  // namespace stackemu::fuzz
