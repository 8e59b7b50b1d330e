// Internal: the one rule for waiting before calling an expert again, shared
// by the router's invoke (src/invoke.cpp) and collect (src/collect.cpp).
#pragma once

#include <chrono>
#include <optional>

#include "torouter/abi.hpp"
#include "torouter/transport.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// True when the expert said when to call again (a rate limit with a
/// `retry_after`); the backoff then neither applies nor grows.
inline bool said_when_to_retry(const Response& last) {
  return last.failure == FailureKind::RateLimited && last.retry_after.count() > 0;
}

/// How long to wait before the next call to an expert whose last call
/// failed retryably. A rate-limited answer with a `retry_after` is waited
/// out exactly when it is within `max_retry_after`; past it, nothing is
/// waited (nullopt): the router fails over to another expert, collect
/// records the pair as failed for a later run (`retry_failed`). Any other
/// failure waits `backoff`, which the caller grows after each retry.
inline std::optional<std::chrono::milliseconds> retry_wait(
    const Response& last, std::chrono::milliseconds backoff,
    std::chrono::milliseconds max_retry_after) {
  if (said_when_to_retry(last)) {
    if (last.retry_after > max_retry_after) return std::nullopt;
    return last.retry_after;
  }
  return backoff;
}

}  // namespace detail
TOROUTER_END_NAMESPACE
