// The ISO images stackemu writes with libisofs, read back with independent readers as oracles:
// isoinfo (genisoimage) for the volume descriptor, the Rock Ridge and Joliet names and the file
// contents, and xorriso for the names and an extraction. No QEMU involved.
#include <unistd.h>

#include <catch2/catch.hpp>
#include <chrono>
#include <filesystem>
#include <fstream>
#include <sstream>
#include <string>
#include <thread>
#include <vector>

#include "lifecycle/process.hpp"
#include "provision/download.hpp"
#include "provision/iso.hpp"

namespace fs = std::filesystem;
using namespace stackemu;
using namespace stackemu::provision;

namespace {

struct iso_temp_dir {
    fs::path path;
    iso_temp_dir() {
        std::string pattern = (fs::temp_directory_path() / "stackemu-iso-XXXXXX").string();
        REQUIRE(::mkdtemp(pattern.data()) != nullptr);
        path = pattern;
    }
    iso_temp_dir(const iso_temp_dir&) = delete;
    iso_temp_dir& operator=(const iso_temp_dir&) = delete;
    ~iso_temp_dir() {
        std::error_code ec;
        fs::remove_all(path, ec);
    }
    // The names in the directory, sorted: what a failed write left behind.
    std::vector<std::string> entries() const {
        std::vector<std::string> out;
        for (const auto& e : fs::directory_iterator(path))
            out.push_back(e.path().filename());
        std::sort(out.begin(), out.end());
        return out;
    }
};

std::string slurp_file(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

// Runs a reader; its exit must be 0 (its stderr is shown otherwise).
std::string tool(std::vector<std::string> argv) {
    const std::string shown = argv[0] + " " + argv[1];
    auto r = lifecycle::run_tool(std::move(argv));
    INFO(shown << " must be installed (scripts/setup installs genisoimage and xorriso)");
    REQUIRE(r);
    INFO(shown << " stderr: " << r->err);
    REQUIRE(r->exit_code == 0);
    return r->out;
}

std::string isoinfo(const fs::path& iso, std::vector<std::string> args) {
    std::vector<std::string> argv = {"isoinfo", "-i", iso.string()};
    argv.insert(argv.end(), args.begin(), args.end());
    return tool(std::move(argv));
}

// The file names of one directory in `isoinfo -l` output (the last column), without . and ..
std::vector<std::string> listed_names(const std::string& listing, const std::string& dir) {
    std::vector<std::string> names;
    std::istringstream in(listing);
    std::string line;
    bool inside = false;
    while (std::getline(in, line)) {
        if (line.rfind("Directory listing of ", 0) == 0) {
            inside = line == "Directory listing of " + dir;
            continue;
        }
        if (!inside || line.empty()) continue;
        const auto bracket = line.find(']');
        if (bracket == std::string::npos) continue;
        auto name = line.substr(bracket + 1);
        while (!name.empty() && name.front() == ' ')
            name.erase(0, 1);
        while (!name.empty() && name.back() == ' ')
            name.pop_back();
        if (name.empty() || name == "." || name == "..") continue;
        names.push_back(name);
    }
    std::sort(names.begin(), names.end());
    return names;
}

std::vector<std::string> xorriso_names(const fs::path& iso, const std::string& dir) {
    auto r = lifecycle::run_tool({"xorriso", "-indev", iso.string(), "-ls", dir + "/*"});
    REQUIRE(r);
    INFO("xorriso stderr: " << r->err);
    REQUIRE(r->exit_code == 0);
    std::vector<std::string> names;
    std::istringstream in(r->out);
    std::string line;
    while (std::getline(in, line)) {
        if (line.size() >= 2 && line.front() == '\'' && line.back() == '\'') {
            auto full = line.substr(1, line.size() - 2);
            names.push_back(full.substr(full.rfind('/') + 1));
        }
    }
    std::sort(names.begin(), names.end());
    return names;
}

// The `isoinfo -l` line of the entry called `name`.
std::string listing_line(const std::string& listing, const std::string& name) {
    std::istringstream in(listing);
    std::string line;
    while (std::getline(in, line)) {
        auto trimmed = line;
        while (!trimmed.empty() && trimmed.back() == ' ')
            trimmed.pop_back();
        if (trimmed.size() > name.size() &&
            trimmed.compare(trimmed.size() - name.size() - 1, std::string::npos, " " + name) == 0)
            return line;
    }
    return "<no line for " + name + ">";
}

std::string volume_line(const std::string& descriptor, const std::string& key) {
    std::istringstream in(descriptor);
    std::string line;
    while (std::getline(in, line))
        if (line.rfind(key, 0) == 0) return line.substr(key.size());
    return "<no " + key + " line>";
}

bool has_line(const std::string& text, const std::string& wanted) {
    std::istringstream in(text);
    std::string line;
    while (std::getline(in, line))
        if (line == wanted) return true;
    return false;
}

// Deterministic, incompressible-looking bytes.
void write_payload(const fs::path& p, std::size_t size) {
    std::ofstream out(p, std::ios::binary);
    std::uint64_t x = 0x9e3779b97f4a7c15ull;
    std::string chunk(1 << 16, '\0');
    for (std::size_t done = 0; done < size;) {
        for (auto& c : chunk) {
            x ^= x << 13;
            x ^= x >> 7;
            x ^= x << 17;
            c = static_cast<char>(x);
        }
        const auto n = std::min(chunk.size(), size - done);
        out.write(chunk.data(), static_cast<std::streamsize>(n));
        done += n;
    }
}

const char* const user_data = "#cloud-config\nruncmd:\n  - echo STACK_CLOUD_INIT_DONE\n";
const char* const meta_data = "instance-id: stackemu-test\nlocal-hostname: stack\n";
const char* const network_config = "version: 2\nethernets:\n  eth0:\n    dhcp4: true\n";

}  // namespace

TEST_CASE("iso: the NoCloud seed reads back with isoinfo and xorriso", "[iso]") {
    iso_temp_dir dir;
    const auto iso = dir.path / "seed.iso";
    auto files = nocloud_files({meta_data, user_data, std::string(network_config)});
    auto ok = write_iso(iso, std::string(nocloud_label), files);
    INFO((ok ? std::string() : ok.error().what()));
    REQUIRE(ok);
    CHECK(dir.entries() == std::vector<std::string>{"seed.iso"});

    const auto d = isoinfo(iso, {"-d"});
    CHECK(volume_line(d, "Volume id: ") == "cidata");
    CHECK(has_line(d, "Rock Ridge signatures version 1 found"));
    CHECK(has_line(d, "Joliet with UCS level 3 found"));

    const std::vector<std::string> expected = {"meta-data", "network-config", "user-data"};
    CHECK(listed_names(isoinfo(iso, {"-R", "-l"}), "/") == expected);
    CHECK(listed_names(isoinfo(iso, {"-J", "-l"}), "/") == expected);
    CHECK(xorriso_names(iso, "") == expected);
    // Plain ISO 9660 names are mangled; that is why Rock Ridge and Joliet are there.
    CHECK(listed_names(isoinfo(iso, {"-l"}), "/") ==
          std::vector<std::string>{"META_DATA.;1", "NETWORK_CONFIG.;1", "USER_DATA.;1"});

    CHECK(isoinfo(iso, {"-R", "-x", "/user-data"}) == user_data);
    CHECK(isoinfo(iso, {"-R", "-x", "/meta-data"}) == meta_data);
    CHECK(isoinfo(iso, {"-J", "-x", "/network-config"}) == network_config);

    // Rock Ridge attributes: read-only files owned by root, the fixed timestamp.
    const auto line = listing_line(isoinfo(iso, {"-R", "-l"}), "user-data");
    CHECK(line.rfind("-r--r--r--   1    0    0 ", 0) == 0);
    CHECK(line.find(" Jan  1 1980 ") != std::string::npos);
}

TEST_CASE("iso: the seed without network-config has two files", "[iso]") {
    iso_temp_dir dir;
    const auto iso = dir.path / "seed.iso";
    REQUIRE(write_iso(iso, "cidata", nocloud_files({meta_data, user_data, std::nullopt})));
    CHECK(listed_names(isoinfo(iso, {"-R", "-l"}), "/") ==
          std::vector<std::string>{"meta-data", "user-data"});
}

TEST_CASE("iso: the runtime config ISO carries stack.env", "[iso]") {
    iso_temp_dir dir;
    const auto iso = dir.path / "config.iso";
    runtime_config config;
    config.instance_name = "ci-1";
    config.backend_port = 31001;
    config.extra = {{"STACK_PROFILE", "demo"}};
    auto files = runtime_config_files(config);
    REQUIRE(files);
    REQUIRE(write_iso(iso, std::string(config_label), *files));
    CHECK(volume_line(isoinfo(iso, {"-d"}), "Volume id: ") == "STACKCFG");
    CHECK(listed_names(isoinfo(iso, {"-R", "-l"}), "/") == std::vector<std::string>{"stack.env"});
    CHECK(isoinfo(iso, {"-R", "-x", "/stack.env"}) ==
          "STACKEMU_CONFIG_FORMAT=1\n"
          "EMULATOR_NAME=ci-1\n"
          "EMULATOR_DASHBOARD_PORT=26700\n"
          "EMULATOR_BACKEND_PORT=31001\n"
          "EMULATOR_MINIO_PORT=26702\n"
          "EMULATOR_INBUCKET_PORT=26703\n"
          "STACK_PROFILE=demo\n");
}

TEST_CASE("iso: a 20 MiB payload is streamed into the bundle byte for byte", "[iso]") {
    iso_temp_dir dir;
    const auto payload = dir.path / "payload-source.tar";
    write_payload(payload, 20u << 20);
    const auto iso = dir.path / "bundle.iso";
    bundle b;
    b.payload = payload;
    b.env_files = {{"app.env", "APP_MODE=test\n"}, {"env/hooks.env", "HOOK=migrate\n"}};
    REQUIRE(write_iso(iso, std::string(bundle_label), bundle_files(b)));

    CHECK(volume_line(isoinfo(iso, {"-d"}), "Volume id: ") == "STACKBUNDLE");
    const auto rr = isoinfo(iso, {"-R", "-l"});
    CHECK(listed_names(rr, "/") == std::vector<std::string>{"app.env", "env", "payload.tar"});
    CHECK(listed_names(rr, "/env/") == std::vector<std::string>{"hooks.env"});
    CHECK(xorriso_names(iso, "/env") == std::vector<std::string>{"hooks.env"});
    CHECK(isoinfo(iso, {"-R", "-x", "/env/hooks.env"}) == "HOOK=migrate\n");

    // isoinfo's extraction, and xorriso's, both match the source's SHA-256.
    const auto expected = sha256_of_file(payload);
    REQUIRE(expected);
    const auto by_isoinfo = dir.path / "by-isoinfo";
    {
        std::ofstream out(by_isoinfo, std::ios::binary);
        out << isoinfo(iso, {"-R", "-x", "/payload.tar"});
    }
    CHECK(fs::file_size(by_isoinfo) == (20u << 20));
    CHECK(sha256_of_file(by_isoinfo).value_or("?") == *expected);
    const auto by_xorriso = dir.path / "by-xorriso";
    tool({"xorriso", "-osirrox", "on", "-indev", iso.string(), "-extract", "/payload.tar",
          by_xorriso.string()});
    CHECK(sha256_of_file(by_xorriso).value_or("?") == *expected);
}

TEST_CASE("iso: the same inputs give the same bytes", "[iso]") {
    iso_temp_dir dir;
    const auto payload = dir.path / "p.bin";
    write_payload(payload, 100000);
    auto files = nocloud_files({meta_data, user_data, std::nullopt});
    files.push_back({"payload.bin", payload, 0444});
    REQUIRE(write_iso(dir.path / "a.iso", "cidata", files));
    // A later second: nothing of the clock may reach the image.
    std::this_thread::sleep_for(std::chrono::milliseconds(1100));
    REQUIRE(write_iso(dir.path / "b.iso", "cidata", files));
    CHECK(slurp_file(dir.path / "a.iso") == slurp_file(dir.path / "b.iso"));
    // The label picks the volume's UUID, so two ISOs of one VM differ there.
    REQUIRE(write_iso(dir.path / "c.iso", "STACKCFG", files));
    CHECK(volume_line(isoinfo(dir.path / "c.iso", {"-d"}), "Volume id: ") == "STACKCFG");
    CHECK(slurp_file(dir.path / "a.iso") != slurp_file(dir.path / "c.iso"));
}

TEST_CASE("iso: a rebuild replaces the image in one step", "[iso]") {
    iso_temp_dir dir;
    const auto iso = dir.path / "seed.iso";
    REQUIRE(write_iso(iso, "cidata", nocloud_files({"instance-id: one\n", user_data, {}})));
    REQUIRE(write_iso(iso, "cidata", nocloud_files({"instance-id: two\n", user_data, {}})));
    CHECK(isoinfo(iso, {"-R", "-x", "/meta-data"}) == "instance-id: two\n");
    CHECK(dir.entries() == std::vector<std::string>{"seed.iso"});

    // A failing rebuild keeps the previous image as it was.
    const auto before = slurp_file(iso);
    std::vector<iso_file> bad = {{"payload.tar", dir.path / "missing.tar", 0444}};
    CHECK_FALSE(write_iso(iso, "cidata", bad));
    CHECK(slurp_file(iso) == before);
    CHECK(dir.entries() == std::vector<std::string>{"seed.iso"});
}

TEST_CASE("iso: bad input is refused with a clear error and leaves no file", "[iso]") {
    iso_temp_dir dir;
    const auto iso = dir.path / "out.iso";
    const auto seed = nocloud_files({meta_data, user_data, std::nullopt});
    auto refused = [&](std::string label, std::vector<iso_file> files) {
        auto r = write_iso(iso, std::move(label), std::move(files));
        REQUIRE_FALSE(r);
        CHECK(r.error().code == errc::invalid_argument);
        CHECK(dir.entries().empty());
        return r.error().message;
    };

    CHECK_THAT(refused("", seed), Catch::Contains("label is empty"));
    CHECK_THAT(refused(std::string(33, 'A'), seed), Catch::Contains("has 33 characters"));
    CHECK(write_iso(dir.path / "x.iso", std::string(32, 'A'), seed));  // 32 fits
    fs::remove(dir.path / "x.iso");
    CHECK_THAT(refused("ci data", seed), Catch::Contains("may only use"));

    auto with = [&](iso_file f) {
        auto files = seed;
        files.push_back(std::move(f));
        return files;
    };
    CHECK_THAT(refused("cidata", with({"a/../user-data", std::string("x"), 0444})),
               Catch::Contains("\"..\""));
    CHECK_THAT(refused("cidata", with({"../escape", std::string("x"), 0444})),
               Catch::Contains("\"..\""));
    CHECK_THAT(refused("cidata", with({"/abs", std::string("x"), 0444})),
               Catch::Contains("empty component"));
    CHECK_THAT(refused("cidata", with({"a//b", std::string("x"), 0444})),
               Catch::Contains("empty component"));
    CHECK_THAT(refused("cidata", with({"", std::string("x"), 0444})), Catch::Contains("empty"));
    CHECK_THAT(refused("cidata", with({"bad name", std::string("x"), 0444})),
               Catch::Contains("may only use"));
    CHECK_THAT(refused("cidata", with({std::string(65, 'n'), std::string("x"), 0444})),
               Catch::Contains("longer than 64"));
    CHECK_THAT(refused("cidata", with({"user-data", std::string("again"), 0444})),
               Catch::Contains("user-data is listed twice"));
    CHECK_THAT(refused("cidata", with({"user-data/inner", std::string("x"), 0444})),
               Catch::Contains("both a file and a directory"));
    CHECK_THAT(refused("cidata", with({"p", dir.path / "no-such-payload.tar", 0444})),
               Catch::Contains("no-such-payload.tar") && Catch::Contains("No such file"));
    CHECK_THAT(refused("cidata", with({"p", fs::path("/"), 0444})),
               Catch::Contains("not a regular file"));
    CHECK_THAT(refused("cidata", with({"p", std::string("x"), 010444})),
               Catch::Contains("beyond permissions"));
}

TEST_CASE("iso: an empty host file and empty content are fine", "[iso]") {
    iso_temp_dir dir;
    const auto empty = dir.path / "empty.bin";
    { std::ofstream touch(empty); }
    const auto iso = dir.path / "b.iso";
    REQUIRE(write_iso(iso, "STACKBUNDLE",
                      {{"payload.tar", empty, 0444}, {"none.env", std::string(), 0444}}));
    CHECK(listed_names(isoinfo(iso, {"-R", "-l"}), "/") ==
          std::vector<std::string>{"none.env", "payload.tar"});
    CHECK(isoinfo(iso, {"-R", "-x", "/payload.tar"}).empty());
}
