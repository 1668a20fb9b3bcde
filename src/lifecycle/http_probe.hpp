// Event-driven HTTP readiness probes: plain HTTP/1.1 GETs on Asio, no threads.
#pragma once

#include <asio/any_io_executor.hpp>
#include <asio/awaitable.hpp>
#include <chrono>
#include <cstddef>
#include <memory>
#include <string>

#include "common/error.hpp"

namespace stackemu::lifecycle {

inline constexpr std::size_t max_probe_body = 4096;  // bytes of the body kept for diagnostics

// One answer to a GET, whatever its status.
struct probe_outcome {
    int status = 0;                          // the HTTP status code
    std::chrono::microseconds total_time{};  // from the start (resolve, connect) to the last byte
    std::string body;                        // the first max_probe_body bytes
    bool body_truncated = false;             // the body was longer; the rest was not read
};

// How wait_healthy() paces its attempts: the pause starts at `initial` and doubles up to `max`.
struct probe_backoff {
    std::chrono::milliseconds initial{25};
    std::chrono::milliseconds max{500};
    // Each GET is bounded by this and by the time left before the deadline, but gets at
    // least 100 ms (or attempt_timeout if smaller): the answer may come that much late.
    std::chrono::milliseconds attempt_timeout{2000};
};

namespace detail {
class prober_state;
}

// Drives many concurrent GETs on one executor, each a coroutine with its own connection.
// The executor must not run handlers concurrently (one-threaded io_context or a strand), and
// callers must await on it. Requests go straight to the host (no proxy), follow no redirects
// and speak plain http only (probes reach the guest through loopback port forwards; an
// https URL is invalid_argument). Destroy the prober before its io_context.
class http_prober {
  public:
    explicit http_prober(asio::any_io_executor executor);
    http_prober(http_prober&&) noexcept;
    http_prober& operator=(http_prober&&) noexcept;
    http_prober(const http_prober&) = delete;
    http_prober& operator=(const http_prober&) = delete;
    // Removes and frees every transfer; their awaiting get() calls end with errc::cancelled.
    ~http_prober();

    // One GET of `url` within `timeout`. Any status is a success; failures to get an answer
    // name the URL: errc::connect_failed (refused, unreachable, unresolvable), errc::timeout,
    // errc::io_error (reset, closed without answer), errc::invalid_argument (bad URL or
    // scheme), errc::cancelled (the caller's cancellation or the prober's destruction).
    // If the awaiting coroutine is destroyed the transfer is removed and freed.
    asio::awaitable<result<probe_outcome>> get(std::string url, std::chrono::milliseconds timeout);

    // Repeats get() until it answers 2xx or 3xx, pausing between attempts per `backoff`.
    // At the deadline: errc::timeout carrying the last failure and the attempt count, e.g.
    // "http://127.0.0.1:26701/health: connection refused (last of 37 attempts)".
    asio::awaitable<result<void>> wait_healthy(std::string url,
                                               std::chrono::steady_clock::time_point deadline,
                                               probe_backoff backoff = {});

    // Transfers in progress (diagnostics and tests).
    std::size_t in_flight() const;
    asio::any_io_executor get_executor() const;

  private:
    std::shared_ptr<detail::prober_state> state_;
};

}  // namespace stackemu::lifecycle
