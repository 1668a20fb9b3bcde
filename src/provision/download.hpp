// Downloading a prebuilt image (`stackemu pull`): libcurl's easy interface in a blocking loop,
// resumable through a NAME.part file, verified with SHA-256 before it is renamed into place.
#pragma once

#include <chrono>
#include <cstdint>
#include <filesystem>
#include <functional>
#include <optional>
#include <string>
#include <string_view>

#include "common/error.hpp"

namespace stackemu::provision {

struct transfer_progress {
    std::uint64_t done = 0;  // bytes in the file so far, resumed bytes included
    std::optional<std::uint64_t> total;
    std::uint64_t resumed_from = 0;  // bytes that were already there when this run began
};
using progress_callback = std::function<void(const transfer_progress&)>;
// One line for people ("resuming at 12.0 MiB", "verifying the checksum"), no newline.
using note_callback = std::function<void(std::string_view)>;

struct download_options {
    progress_callback progress;  // called as bytes arrive (the caller throttles its display)
    note_callback note;
    std::chrono::seconds connect_timeout{30};
    // A transfer that moves no byte for this long is abandoned (the .part is kept).
    std::chrono::seconds stall_timeout{60};
};

// Only http:// and https:// URLs with a host.
result<void> check_download_url(std::string_view url);
// The manifest beside an image: the URL's path ends in ".qcow2", which becomes ".json" (a query
// or fragment is kept). Any other URL needs the manifest URL spelled out.
result<std::string> manifest_url_for(std::string_view image_url);
// 64 hexadecimal digits, returned in lowercase.
result<std::string> parse_sha256_hex(std::string_view text);
// The SHA-256 of `bytes` in lowercase hex (OpenSSL EVP).
std::string sha256_hex(std::string_view bytes);
// The file's SHA-256 in lowercase hex (OpenSSL EVP).
result<std::string> sha256_of_file(const std::filesystem::path& path);

// GET `url` into memory; errors beyond `max_bytes`, on HTTP errors and on transport failures.
result<std::string> fetch_text(const std::string& url, std::size_t max_bytes,
                               const download_options& options = {});

struct part_outcome {
    std::uint64_t size = 0;          // of the complete file
    std::uint64_t resumed_from = 0;  // 0: downloaded from the start
    bool restarted = false;          // a partial file existed but the server ignored the range
};
// GET `url` into `part`, continuing after the bytes it already holds with a Range request. A
// server that answers 200 instead of 206 gets the file rewritten from its first byte; a 416 for
// a part that already has the whole length counts as complete. An interrupted transfer leaves
// the part in place for the next call (errc::io_error, saying so); HTTP 404 is errc::not_found.
result<part_outcome> download_to_part(const std::string& url, const std::filesystem::path& part,
                                      const download_options& options = {});

struct pull_request {
    std::string url;           // the qcow2, http(s)
    std::string manifest_url;  // empty: manifest_url_for(url)
    std::string sha256;        // of the qcow2 as served: required
    std::filesystem::path image_dir;
    std::string arch;  // amd64 | arm64: the image is installed as stack-emulator-<arch>.qcow2
    download_options transfer;
};

struct pull_result {
    std::filesystem::path image;
    std::filesystem::path manifest;
    std::string sha256;
    std::uint64_t bytes = 0;
    std::uint64_t resumed_from = 0;
    bool restarted = false;
    std::string build_id;
    std::string profile;
};

// Fetches and checks the manifest first (parse_manifest, arch, firmware boot), then downloads
// the qcow2 to <image_dir>/stack-emulator-<arch>.qcow2.part (resuming), verifies its SHA-256
// and qcow2 header, renames it into place and writes the manifest last, its "disk" naming the
// installed file. A checksum mismatch removes the part (errc::checksum_mismatch, expected and
// got); nothing is installed unless everything checked out.
result<pull_result> pull_image(const pull_request& request);

}  // namespace stackemu::provision
