// The pure helpers of `stackemu pull`: URLs, the manifest beside the image, SHA-256 text.
#include <catch2/catch.hpp>

#include "provision/download.hpp"

using namespace stackemu;
using namespace stackemu::provision;

TEST_CASE("download: only http and https URLs with a host", "[download]") {
    CHECK(check_download_url("http://example.org/a.qcow2"));
    CHECK(check_download_url("HTTPS://example.org/a.qcow2"));
    CHECK(check_download_url("http://127.0.0.1:8080/x"));
    for (const auto& bad :
         {"ftp://example.org/a.qcow2", "file:///tmp/a.qcow2", "/tmp/a.qcow2", "example.org/a.qcow2",
          "http://", "http:///path", "http://a b/c", "https://host/with\nnewline"}) {
        INFO(bad);
        auto r = check_download_url(bad);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == errc::invalid_argument);
    }
}

TEST_CASE("download: the manifest URL sits beside the image", "[download]") {
    CHECK(manifest_url_for("https://h/images/stack-emulator-amd64.qcow2").value_or("") ==
          "https://h/images/stack-emulator-amd64.json");
    CHECK(manifest_url_for("https://h/a.QCOW2?sig=abc&x=1.qcow2").value_or("") ==
          "https://h/a.json?sig=abc&x=1.qcow2");
    CHECK(manifest_url_for("http://h/a.qcow2#frag").value_or("") == "http://h/a.json#frag");
    auto none = manifest_url_for("https://h/a.img");
    REQUIRE_FALSE(none);
    CHECK_THAT(none.error().message, Catch::Contains("--manifest-url"));
    CHECK_FALSE(manifest_url_for("https://h/.qcow2x"));
    CHECK_FALSE(manifest_url_for("ftp://h/a.qcow2"));
}

TEST_CASE("download: a SHA-256 is 64 hex digits", "[download]") {
    const std::string upper(64, 'A');
    CHECK(parse_sha256_hex(upper).value_or("") == std::string(64, 'a'));
    CHECK(parse_sha256_hex(std::string(64, '0')));
    auto short_one = parse_sha256_hex("abc");
    REQUIRE_FALSE(short_one);
    CHECK_THAT(short_one.error().message, Catch::Contains("64 hexadecimal digits"));
    auto not_hex = parse_sha256_hex(std::string(63, 'a') + "g");
    REQUIRE_FALSE(not_hex);
    CHECK_THAT(not_hex.error().message, Catch::Contains("not hexadecimal"));
}
