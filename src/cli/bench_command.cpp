// `stackemu bench`: N cold starts to ready and N stops, each split into phases, with
// min/p50/p95/max (upstream printed one whole-second sample: defect 7).
#include <fmt/format.h>

#include <CLI/CLI.hpp>
#include <algorithm>
#include <asio.hpp>
#include <cmath>
#include <iostream>
#include <map>

#include "cli/instance_options.hpp"
#include "cli/output.hpp"
#include "cli/subcommands.hpp"
#include "lifecycle/controller.hpp"
#include "lifecycle/exit_codes.hpp"

namespace stackemu::cli {
namespace {

using namespace stackemu::lifecycle;
using nlohmann::json;
namespace fs = std::filesystem;

json summary(std::vector<double> samples) {
    if (samples.empty()) return json::object();
    std::sort(samples.begin(), samples.end());
    auto at = [&](double q) {
        const auto i =
            static_cast<std::size_t>(std::lround(q * static_cast<double>(samples.size() - 1)));
        return samples[std::min(i, samples.size() - 1)];
    };
    return {{"n", samples.size()},
            {"min_ms", samples.front()},
            {"p50_ms", at(0.5)},
            {"p95_ms", at(0.95)},
            {"max_ms", samples.back()}};
}

}  // namespace

void add_bench_command(CLI::App& app, std::function<int()>& action) {
    auto* cmd = app.add_subcommand(
        "bench", "N cold starts (and N warm ones when a ready state is saved) and stops, by phase");
    auto o = add_instance_options(cmd, option_set::runtime);
    struct extra {
        int runs = 5;
        std::string image;
    };
    auto x = std::make_shared<extra>();
    cmd->add_option("-n,--runs", x->runs, "how many start/stop cycles")
        ->check(CLI::Range(1, 1000))
        ->capture_default_str();
    cmd->add_option("--image", x->image, "image to start (default: the built image)");
    cmd->callback([o, x, &action] {
        action = [o, x]() -> int {
            auto inst = resolve_instance(*o);
            if (!inst) {
                report("bench", inst.error());
                return exit_code::usage;
            }
            // Start from a stopped instance, as a cold start must.
            stop_request first_stop;
            first_stop.inst = *inst;
            auto pre = run_on_context(stop(first_stop));
            if (!pre) return report("bench", pre.error());

            std::map<std::string, std::vector<double>> start_phases;
            std::map<std::string, std::vector<double>> stop_rungs;
            std::vector<double> start_total;
            std::vector<double> stop_total;
            std::vector<double> after_shutdown;
            std::vector<double> warm_total;
            std::string accel;
            // Cold and warm side by side: odd runs boot cold, even runs restore the saved ready
            // state when there is one that fits (the warm column stays empty otherwise).
            for (int i = 0; i < 2 * x->runs; ++i) {
                const bool cold_run = i % 2 == 0;
                start_request req;
                req.inst = *inst;
                req.cold = cold_run;
                if (!x->image.empty()) req.image = fs::absolute(x->image);
                auto started = run_on_context(start(req));
                if (!started) return report("bench", started.error());
                if (!started->ready) {
                    report("bench",
                           make_error(errc::guest_failed, "start " + std::to_string(i + 1) +
                                                              " failed: " + started->failure));
                    return exit_code::failed;
                }
                accel = started->accel_reason;
                if (cold_run) {
                    start_total.push_back(started->total_ms);
                    for (const auto& p : started->phases)
                        start_phases[p.name].push_back(p.ms);
                } else if (started->warm) {
                    warm_total.push_back(started->total_ms);
                }
                stop_request sreq;
                sreq.inst = *inst;
                auto stopped = run_on_context(stop(sreq));
                if (!stopped) return report("bench", stopped.error());
                stop_total.push_back(stopped->total_ms);
                for (const auto& r : stopped->rungs)
                    stop_rungs[r.name].push_back(r.ms);
                if (stopped->exit_after_shutdown_ms)
                    after_shutdown.push_back(*stopped->exit_after_shutdown_ms);
                if (!o->json)
                    fmt::print(stderr, "run {} ({}): ready {:.0f} ms, stop {:.0f} ms ({})\n",
                               i / 2 + 1, started->warm ? "warm" : "cold", started->total_ms,
                               stopped->total_ms, stopped->rung);
            }
            json phases = json::object();
            for (auto& [name, v] : start_phases)
                phases[name] = summary(v);
            json rungs = json::object();
            for (auto& [name, v] : stop_rungs)
                rungs[name] = summary(v);
            json out = {{"benchmark", "stackemu bench"},
                        {"runs", x->runs},
                        {"accelerator", accel},
                        {"start_to_ready", summary(start_total)},
                        {"warm_start_to_ready", summary(warm_total)},
                        {"start_phases_since_start", phases},
                        {"stop", summary(stop_total)},
                        {"stop_rungs", rungs},
                        {"stop_exit_after_guest_shutdown", summary(after_shutdown)},
                        {"peak_rss_kib", peak_rss_kib()}};
            if (o->json) {
                std::cout << out.dump(2) << std::endl;
            } else {
                const auto& s = out["start_to_ready"];
                const auto& t = out["stop"];
                fmt::print("start to ready: min {:.0f} / p50 {:.0f} / p95 {:.0f} / max {:.0f} ms\n",
                           s["min_ms"].get<double>(), s["p50_ms"].get<double>(),
                           s["p95_ms"].get<double>(), s["max_ms"].get<double>());
                for (const auto& [name, v] : phases.items())
                    fmt::print("  {:<20} p50 {:.0f} ms\n", name, v["p50_ms"].get<double>());
                fmt::print("stop:           min {:.0f} / p50 {:.0f} / p95 {:.0f} / max {:.0f} ms\n",
                           t["min_ms"].get<double>(), t["p50_ms"].get<double>(),
                           t["p95_ms"].get<double>(), t["max_ms"].get<double>());
                if (!warm_total.empty())
                    fmt::print("warm start:     p50 {:.0f} ms (from the saved ready state)\n",
                               out["warm_start_to_ready"]["p50_ms"].get<double>());
                fmt::print("accelerator: {}\n", accel);
            }
            return exit_code::ok;
        };
    });
}

}  // namespace stackemu::cli
