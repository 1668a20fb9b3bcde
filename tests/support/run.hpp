// Runs a coroutine to completion on an io_context with a generous ceiling against hangs.
#pragma once

#include <asio.hpp>
#include <chrono>
#include <exception>
#include <optional>
#include <stdexcept>

namespace stackemu::test {

// Runs `task` on `ctx` until it completes. A hang past `ceiling` throws (the test fails);
// exceptions from the coroutine are rethrown. Timing is never asserted otherwise.
template <typename T>
T run(asio::io_context& ctx, asio::awaitable<T> task,
      std::chrono::steady_clock::duration ceiling = std::chrono::seconds(60)) {
    std::optional<T> value;
    std::exception_ptr failure;
    bool done = false;
    asio::co_spawn(ctx, std::move(task), [&](std::exception_ptr e, T v) {
        failure = e;
        if (!e) value.emplace(std::move(v));
        done = true;
    });
    const auto deadline = std::chrono::steady_clock::now() + ceiling;
    ctx.restart();
    while (!done && std::chrono::steady_clock::now() < deadline) {
        if (ctx.run_one_until(deadline) == 0 && ctx.stopped() && !done)
            throw std::runtime_error("test coroutine is waiting on nothing (no work left)");
    }
    if (!done) throw std::runtime_error("test coroutine did not finish before its ceiling (hang)");
    if (failure) std::rethrow_exception(failure);
    return std::move(*value);
}

inline void run(asio::io_context& ctx, asio::awaitable<void> task,
                std::chrono::steady_clock::duration ceiling = std::chrono::seconds(60)) {
    run(
        ctx,
        [](asio::awaitable<void> t) -> asio::awaitable<bool> {
            co_await std::move(t);
            co_return true;
        }(std::move(task)),
        ceiling);
}

// True when every operation on `ctx` finished within `ceiling`: no reader loop, timer or
// socket was left behind by the code under test.
inline bool drains(asio::io_context& ctx,
                   std::chrono::steady_clock::duration ceiling = std::chrono::seconds(10)) {
    ctx.restart();
    ctx.run_for(ceiling);
    return ctx.stopped();
}

}  // namespace stackemu::test
