// Internal: the router's per-expert state in this process, read by routing
// (router.cpp) and changed by invokes (invoke.cpp).
#pragma once

#include <atomic>
#include <chrono>
#include <cstdint>
#include <memory>
#include <mutex>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

using Clock = std::chrono::steady_clock;

inline std::int64_t to_ns(Clock::time_point t) {
  return std::chrono::duration_cast<std::chrono::nanoseconds>(t.time_since_epoch()).count();
}

}  // namespace detail

struct Router::ExpertState {
  std::atomic<bool> enabled{true};
  // This router's calls in flight (a shared store counts the fleet's).
  std::atomic<int> in_flight{0};
  std::atomic<int> consecutive_failures{0};
  std::atomic<std::int64_t> cooldown_until_ns{0};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> failures{0};
};

// A scorer and what belongs to it alone: routing reads them together, and
// replace_scorer swaps them as one.
struct Router::LoadedScorer {
  std::shared_ptr<const Scorer> scorer;
  // Registry index -> column of the scorer's output.
  std::vector<std::size_t> score_column;
  // Working memory not in use, for routes into fresh decisions (a
  // transformer-lite's is megabytes: making it per call would dominate).
  mutable std::mutex idle_mutex;
  mutable std::vector<std::unique_ptr<ScorerWorkspace>> idle_workspaces;
};

TOROUTER_END_NAMESPACE
