// `stackemu cp SRC DST`: which side is the guest, and what is refused before anything runs.
#include <catch2/catch.hpp>

#include "lifecycle/guest_exec.hpp"
#include "support/describe.hpp"

using namespace stackemu;
using namespace stackemu::lifecycle;

TEST_CASE("cp into the guest takes guest: on the destination") {
    auto spec = parse_copy_args("build/app.tar", "guest:/data/app.tar");
    REQUIRE_OK(spec);
    CHECK(spec->direction == copy_direction::to_guest);
    CHECK(spec->host_path == "build/app.tar");
    CHECK(spec->guest_path == "/data/app.tar");
}

TEST_CASE("cp out of the guest takes guest: on the source") {
    auto spec = parse_copy_args("guest:/var/log/app.log", "./");
    REQUIRE_OK(spec);
    CHECK(spec->direction == copy_direction::from_guest);
    CHECK(spec->guest_path == "/var/log/app.log");
    CHECK(spec->host_path == "./");
}

TEST_CASE("cp refuses two host paths and two guest paths") {
    auto neither = parse_copy_args("a", "b");
    REQUIRE_FALSE(neither.has_value());
    CHECK(neither.error().code == errc::invalid_argument);
    CHECK(neither.error().message.find("guest:/absolute/path") != std::string::npos);
    auto both = parse_copy_args("guest:/a", "guest:/b");
    REQUIRE_FALSE(both.has_value());
    CHECK(both.error().code == errc::invalid_argument);
}

TEST_CASE("cp refuses a relative guest path and a guest directory as the source") {
    auto relative = parse_copy_args("a", "guest:data/a");
    REQUIRE_FALSE(relative.has_value());
    CHECK(relative.error().message == "the guest path `data/a` is not absolute: write guest:/path");
    auto dir = parse_copy_args("guest:/data/", "out");
    REQUIRE_FALSE(dir.has_value());
    CHECK(dir.error().message == "guest:/data/ names a directory: cp copies one file");
    auto empty = parse_copy_args("guest:/data/a", "");
    REQUIRE_FALSE(empty.has_value());
}

TEST_CASE("a guest command's status is its exit code or 128 plus its signal") {
    guest_command_outcome exited;
    exited.exit_code = 3;
    CHECK(exited.status() == 3);
    guest_command_outcome killed;
    killed.signal = 9;
    CHECK(killed.status() == 137);
}

TEST_CASE("sha256_hex matches the published test vector") {
    CHECK(sha256_hex("abc") == "ba7816bf8f01cfea414140de5dae2223b00361a396177a9cb410ff61f20015ad");
    CHECK(sha256_hex("") == "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855");
}
