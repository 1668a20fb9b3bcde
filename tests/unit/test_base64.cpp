// Base64 against RFC 4648's test vectors, binary round trips and malformed input.
#include <catch2/catch.hpp>
#include <string>
#include <utility>
#include <vector>

#include "common/base64.hpp"
#include "support/describe.hpp"

using namespace stackemu;

TEST_CASE("base64 encodes the RFC 4648 test vectors") {
    const std::vector<std::pair<std::string, std::string>> vectors = {{"", ""},
                                                                      {"f", "Zg=="},
                                                                      {"fo", "Zm8="},
                                                                      {"foo", "Zm9v"},
                                                                      {"foob", "Zm9vYg=="},
                                                                      {"fooba", "Zm9vYmE="},
                                                                      {"foobar", "Zm9vYmFy"}};
    for (const auto& [plain, encoded] : vectors) {
        CAPTURE(plain);
        CHECK(base64_encode(plain) == encoded);
    }
}

TEST_CASE("base64 decodes the RFC 4648 test vectors") {
    const std::vector<std::pair<std::string, std::string>> vectors = {{"", ""},
                                                                      {"f", "Zg=="},
                                                                      {"fo", "Zm8="},
                                                                      {"foo", "Zm9v"},
                                                                      {"foob", "Zm9vYg=="},
                                                                      {"fooba", "Zm9vYmE="},
                                                                      {"foobar", "Zm9vYmFy"}};
    for (const auto& [plain, encoded] : vectors) {
        CAPTURE(encoded);
        auto decoded = base64_decode(encoded);
        REQUIRE_OK(decoded);
        CHECK(*decoded == plain);
    }
}

TEST_CASE("every byte value survives a base64 round trip at every length remainder") {
    std::string all;
    for (int i = 0; i < 256; ++i)
        all.push_back(static_cast<char>(i));
    for (std::size_t cut = 0; cut < 3; ++cut) {
        const std::string bytes = all.substr(cut);
        auto decoded = base64_decode(base64_encode(bytes));
        REQUIRE_OK(decoded);
        CHECK(*decoded == bytes);
    }
    CHECK(base64_encode(std::string("\xff\xfe\x00"
                                    "a",
                                    4)) == "//4AYQ==");
}

TEST_CASE("base64 rejects malformed input with invalid_argument") {
    const std::vector<std::string> malformed = {
        "Zg=",         // length not a multiple of four
        "Zg==Zm9v",    // padding before the end
        "Z===",        // too much padding
        "====",        // only padding
        "Zm9v!A==",    // a character outside the alphabet
        "Zm9v\nYmFy",  // whitespace is not skipped
        "Zh==",        // non-zero bits under the padding
        "Zm9=",        // non-zero bits under the padding
        "Zm-_",        // the URL-safe alphabet is a different encoding
    };
    for (const auto& text : malformed) {
        CAPTURE(text);
        auto decoded = base64_decode(text);
        REQUIRE_FALSE(decoded.has_value());
        CHECK(decoded.error().code == errc::invalid_argument);
    }
}
