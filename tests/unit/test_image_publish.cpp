// build-image's last step killed after each of its file-system steps: whatever it leaves, a
// manifest (the file `start` trusts) describes exactly the disk and kernel files beside it, or
// there is no manifest at all. A kill -9 leaves the file system as the steps so far made it,
// so running a prefix of the plan is the crash.
#include <unistd.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <filesystem>
#include <fstream>
#include <nlohmann/json.hpp>
#include <sstream>
#include <string>

#include "lifecycle/image_publish.hpp"

using stackemu::lifecycle::publish_files;
using stackemu::lifecycle::publish_plan;
using stackemu::lifecycle::publish_step;
using stackemu::lifecycle::run_publish_step;
namespace fs = std::filesystem;

namespace {

std::string slurp(const fs::path& p) {
    std::ifstream in(p, std::ios::binary);
    std::stringstream ss;
    ss << in.rdbuf();
    return ss.str();
}

void put(const fs::path& p, const std::string& text) {
    std::ofstream(p, std::ios::binary) << text;
}

// An image directory holding the "old" build, and the "new" build's files waiting beside it.
struct image_dir {
    fs::path dir;
    publish_files files;

    explicit image_dir(int n) {
        dir = fs::temp_directory_path() /
              ("stackemu-publish-" + std::to_string(::getpid()) + "-" + std::to_string(n));
        fs::remove_all(dir);
        fs::create_directories(dir / "base");
        files.disk = dir / "image.qcow2";
        files.disk_tmp = dir / "image.qcow2.partial-1";
        files.manifest = dir / "image.json";
        files.temp_suffix = ".partial-1";
        files.copies = {{dir / "base" / "vmlinuz", dir / "image.vmlinuz"},
                        {dir / "base" / "initrd.img", dir / "image.initrd.img"}};
        files.manifest_text = nlohmann::json{{"generation", "new"}}.dump();
        // The old build, complete.
        put(files.disk, "old disk");
        put(dir / "image.vmlinuz", "old kernel");
        put(dir / "image.initrd.img", "old initrd");
        put(files.manifest, nlohmann::json{{"generation", "old"}}.dump());
        // The new one, ready to go in.
        put(files.disk_tmp, "new disk");
        put(dir / "base" / "vmlinuz", "new kernel");
        put(dir / "base" / "initrd.img", "new initrd");
    }
    ~image_dir() {
        std::error_code ignored;
        fs::remove_all(dir, ignored);
    }
    image_dir(const image_dir&) = delete;
    image_dir& operator=(const image_dir&) = delete;

    // "" when the directory is consistent: no manifest, or one whose generation every file it
    // names has. Otherwise what is wrong.
    std::string inconsistency() const {
        if (!fs::exists(files.manifest)) return {};
        const auto j = nlohmann::json::parse(slurp(files.manifest), nullptr, false);
        if (!j.is_object()) return "the manifest does not parse";
        const std::string gen = j.value("generation", "");
        if (slurp(files.disk) != gen + " disk") return "the manifest names another disk";
        if (slurp(dir / "image.vmlinuz") != gen + " kernel")
            return "the manifest names another kernel";
        if (slurp(dir / "image.initrd.img") != gen + " initrd")
            return "the manifest names another initrd";
        return {};
    }
};

// Runs the first `n` steps of `plan`, as a controller killed after step n would have.
void run_prefix(const std::vector<publish_step>& plan, std::size_t n) {
    for (std::size_t i = 0; i < n; ++i)
        REQUIRE(run_publish_step(plan[i]));
}

}  // namespace

TEST_CASE("image publish: a kill after any step leaves no manifest describing other files",
          "[build-image][crash]") {
    int n = 0;
    image_dir probe(++n);
    const auto steps = publish_plan(probe.files).size();
    REQUIRE(steps == 7);  // remove, 2 x (copy, rename), rename, write
    for (std::size_t killed_after = 0; killed_after <= steps; ++killed_after) {
        image_dir d(++n);
        run_prefix(publish_plan(d.files), killed_after);
        INFO("killed after step " << killed_after);
        CHECK(d.inconsistency().empty());
        if (killed_after == 0) CHECK(slurp(d.files.manifest).find("old") != std::string::npos);
        if (killed_after > 0 && killed_after < steps) CHECK_FALSE(fs::exists(d.files.manifest));
    }
    image_dir done(++n);
    REQUIRE(stackemu::lifecycle::publish_image(done.files));
    CHECK(slurp(done.files.manifest).find("new") != std::string::npos);
    CHECK(done.inconsistency().empty());
    // Nothing temporary is left behind.
    CHECK_FALSE(fs::exists(done.files.disk_tmp));
    for (const auto& entry : fs::directory_iterator(done.dir))
        CHECK(entry.path().string().find(".partial-") == std::string::npos);
}

TEST_CASE("image publish: the check catches the order that replaced kernels first",
          "[build-image][crash]") {
    // The order build-image used before: kernel files renamed while the old manifest still
    // named them. A kill right after the first kernel went in left an old manifest describing
    // a new kernel.
    image_dir d(100);
    auto plan = publish_plan(d.files);
    std::rotate(plan.begin(), plan.begin() + 1, plan.begin() + 5);  // the remove after the copies
    run_prefix(plan, 2);
    CHECK(d.inconsistency() == "the manifest names another kernel");
}

TEST_CASE("image publish: a failed step removes the temporary files", "[build-image][crash]") {
    image_dir d(200);
    d.files.copies.front().first = d.dir / "base" / "missing-kernel";
    auto published = stackemu::lifecycle::publish_image(d.files);
    REQUIRE_FALSE(published);
    CHECK(published.error().what().find("missing-kernel") != std::string::npos);
    CHECK_FALSE(fs::exists(d.files.disk_tmp));
    CHECK(d.inconsistency().empty());  // no manifest: `start` refuses the image, never boots it
    CHECK_FALSE(fs::exists(d.files.manifest));
}
