// The crash-safe order in which a built image, its kernel files and its manifest are put in place.
#include "lifecycle/image_publish.hpp"

#include <fmt/format.h>

#include "lifecycle/files.hpp"

namespace stackemu::lifecycle {

namespace fs = std::filesystem;

std::vector<publish_step> publish_plan(const publish_files& files) {
    using kind = publish_step::kind;
    std::vector<publish_step> plan;
    plan.push_back({kind::remove, {}, files.manifest, {}, 0});
    for (const auto& [source, target] : files.copies) {
        const fs::path temp = target.string() + files.temp_suffix;
        plan.push_back({kind::copy, source, temp, {}, 0644});
        plan.push_back({kind::rename, temp, target, {}, 0});
    }
    plan.push_back({kind::rename, files.disk_tmp, files.disk, {}, 0});
    plan.push_back({kind::write, {}, files.manifest, files.manifest_text, 0644});
    return plan;
}

result<void> run_publish_step(const publish_step& step) {
    std::error_code ec;
    switch (step.what) {
        case publish_step::kind::remove:
            fs::remove(step.to, ec);
            if (ec)
                return fail(errc::io_error,
                            fmt::format("cannot remove {}: {}", step.to.string(), ec.message()));
            return {};
        case publish_step::kind::copy:
            fs::copy_file(step.from, step.to, fs::copy_options::overwrite_existing, ec);
            if (!ec) fs::permissions(step.to, static_cast<fs::perms>(step.mode), ec);
            if (ec)
                return fail(errc::io_error,
                            fmt::format("cannot copy {} to {}: {}", step.from.string(),
                                        step.to.string(), ec.message()));
            return {};
        case publish_step::kind::rename:
            fs::rename(step.from, step.to, ec);
            if (ec)
                return fail(errc::io_error, fmt::format("cannot put {} in place: {}",
                                                        step.to.string(), ec.message()));
            return {};
        case publish_step::kind::write:
            return write_file_atomically(step.to.string(), step.text, step.mode);
    }
    return fail(errc::internal, "unknown publish step");
}

result<void> publish_image(const publish_files& files) {
    for (const auto& step : publish_plan(files)) {
        if (auto done = run_publish_step(step); !done) {
            std::error_code ignored;
            fs::remove(files.disk_tmp, ignored);
            for (const auto& [source, target] : files.copies)
                fs::remove(target.string() + files.temp_suffix, ignored);
            return fail(done.error().code,
                        fmt::format("the image was not put in place: {}", done.error().what()));
        }
    }
    return {};
}

}  // namespace stackemu::lifecycle
