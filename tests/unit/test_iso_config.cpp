// The pure halves of the ISO builders: names, labels, the stack.env format and the file lists.
#include <catch2/catch.hpp>

#include "provision/iso.hpp"

using namespace stackemu;
using namespace stackemu::provision;

TEST_CASE("iso config: stack.env has the format, the instance and the ports", "[iso]") {
    runtime_config c;
    auto text = render_stack_env(c);
    REQUIRE(text);
    CHECK(*text ==
          "STACKEMU_CONFIG_FORMAT=1\n"
          "EMULATOR_NAME=default\n"
          "EMULATOR_DASHBOARD_PORT=26700\n"
          "EMULATOR_BACKEND_PORT=26701\n"
          "EMULATOR_MINIO_PORT=26702\n"
          "EMULATOR_INBUCKET_PORT=26703\n");

    c.instance_name = "qa.2";
    c.minio_port = 40000;
    c.extra = {{"STACK_URL", "http://127.0.0.1:26701/api"}, {"EMPTY", ""}};
    text = render_stack_env(c);
    REQUIRE(text);
    CHECK(*text ==
          "STACKEMU_CONFIG_FORMAT=1\n"
          "EMULATOR_NAME=qa.2\n"
          "EMULATOR_DASHBOARD_PORT=26700\n"
          "EMULATOR_BACKEND_PORT=26701\n"
          "EMULATOR_MINIO_PORT=40000\n"
          "EMULATOR_INBUCKET_PORT=26703\n"
          "STACK_URL=http://127.0.0.1:26701/api\n"
          "EMPTY=\n");
}

TEST_CASE("iso config: keys and values that would not read back unquoted are refused", "[iso]") {
    auto with = [](std::string key, std::string value) {
        runtime_config c;
        c.extra = {{std::move(key), std::move(value)}};
        return render_stack_env(c);
    };
    for (const auto& key : {"", "lower", "1ST", "A-B", "A B"}) {
        auto r = with(key, "x");
        INFO(key);
        REQUIRE_FALSE(r);
        CHECK(r.error().code == errc::invalid_argument);
        CHECK_THAT(r.error().message, Catch::Contains("keys are A-Z"));
    }
    for (const auto& value : {"a b", "$(reboot)", "x\ny", "'q'", "a;b", "`id`"}) {
        auto r = with("K", value);
        INFO(value);
        REQUIRE_FALSE(r);
        CHECK_THAT(r.error().message, Catch::Contains("setting K") && Catch::Contains("unquoted"));
    }
    auto twice = with("EMULATOR_BACKEND_PORT", "1");
    REQUIRE_FALSE(twice);
    CHECK_THAT(twice.error().message, Catch::Contains("EMULATOR_BACKEND_PORT appears twice"));

    runtime_config bad_name;
    bad_name.instance_name = "has space";
    CHECK_FALSE(runtime_config_files(bad_name));
}

TEST_CASE("iso config: the file lists of the three images", "[iso]") {
    auto seed = nocloud_files({"m", "u", std::nullopt});
    REQUIRE(seed.size() == 2);
    CHECK(seed[0].name == "meta-data");
    CHECK(std::get<std::string>(seed[0].content) == "m");
    CHECK(seed[1].name == "user-data");
    CHECK(nocloud_files({"m", "u", std::string("n")}).back().name == "network-config");

    auto cfg = runtime_config_files({});
    REQUIRE(cfg);
    REQUIRE(cfg->size() == 1);
    CHECK(cfg->front().name == "stack.env");

    bundle b;
    b.payload = "/data/payload.tar";
    b.env_files = {{"app.env", "A=1\n"}};
    auto files = bundle_files(b);
    REQUIRE(files.size() == 2);
    CHECK(files[0].name == "payload.tar");
    CHECK(std::get<std::filesystem::path>(files[0].content) == "/data/payload.tar");
    CHECK(files[1].name == "app.env");
}

TEST_CASE("iso config: labels and names", "[iso]") {
    CHECK(check_volume_label("cidata"));
    CHECK(check_volume_label("STACK_BUNDLE-2"));
    CHECK_FALSE(check_volume_label(""));
    CHECK_FALSE(check_volume_label(std::string(33, 'X')));
    CHECK_FALSE(check_volume_label("a.b"));

    CHECK(check_iso_name("user-data"));
    CHECK(check_iso_name("env/app.env"));
    CHECK(check_iso_name("a/b/c+d@e_f.tar"));
    CHECK(check_iso_name(std::string(64, 'x')));
    for (const auto& bad :
         {"", "/x", "x/", "a//b", ".", "..", "a/./b", "a/..", "sp ace", "tab\t", "uni\xc3\xa9"}) {
        INFO(bad);
        CHECK_FALSE(check_iso_name(bad));
    }
    CHECK_FALSE(check_iso_name(std::string(65, 'x')));
}
