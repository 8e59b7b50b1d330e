// Internal: the router's shared per-expert state and budget, read by routing
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
  std::atomic<int> in_flight{0};
  std::atomic<int> consecutive_failures{0};
  std::atomic<std::int64_t> cooldown_until_ns{0};
  std::atomic<std::uint64_t> calls{0};
  std::atomic<std::uint64_t> failures{0};
};

// Spend is settled under a mutex: invoke is not the allocation-free hot path
// (route is), and a reservation must be checked and taken as one step so
// concurrent invokes cannot overspend a hard budget.
struct Router::Budget {
  std::mutex mutex;
  double limit = 0;
  double spent = 0;
  double reserved = 0;

  bool try_reserve(double amount) {
    std::lock_guard<std::mutex> lock(mutex);
    if (spent + reserved + amount > limit) return false;
    reserved += amount;
    return true;
  }
  void force_reserve(double amount) {
    std::lock_guard<std::mutex> lock(mutex);
    reserved += amount;
  }
  void settle(double reservation, double actual) {
    std::lock_guard<std::mutex> lock(mutex);
    reserved -= reservation;
    spent += actual;
  }
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
