// What a shared Redis store adds to a call (issue 13): invokes through a
// router whose transport answers at once, with the in-process store and
// with the Redis store (one round trip before the call, one after), one
// call at a time and many at once on a two-thread loop. Run by
// benchmarks/state_store.sh, which starts the redis-server; never by ctest.
//
//   state_store_bench --redis redis://127.0.0.1:PORT/0 [--calls N] [--rounds R]
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdlib>
#include <future>
#include <memory>
#include <string>
#include <thread>
#include <vector>

#include "torouter/redis/redis_store.hpp"
#include "torouter/router.hpp"
#include "torouter/scorer.hpp"

namespace {

using Clock = std::chrono::steady_clock;

// Predicts fixed qualities: routing costs next to nothing, so the figures
// are the invoke's and the store's.
class FixedScorer final : public torouter::Scorer {
 public:
  explicit FixedScorer(std::vector<std::string> experts) : experts_(std::move(experts)) {}
  const std::vector<std::string>& expert_names() const override { return experts_; }
  std::string_view version() const override { return "fixed"; }
  void score(const std::string_view*, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace*) const override {
    out.resize(count, experts_.size());
    out.clear_output_tokens();
    for (std::size_t i = 0; i < count; ++i) {
      for (std::size_t e = 0; e < experts_.size(); ++e) {
        out.quality(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(e)) =
            0.5f + 0.1f * static_cast<float>(e);
      }
    }
  }

 private:
  std::vector<std::string> experts_;
};

std::unique_ptr<torouter::Router> make_router(std::shared_ptr<torouter::StateStore> store) {
  torouter::ExpertRegistry experts;
  for (const char* name : {"small", "large"}) {
    torouter::ExpertSpec spec(name, 1.0, 2.0);
    spec.max_concurrent_calls = 64;
    experts.add(spec);
  }
  torouter::RouterOptions options;
  options.budget_usd = 1e9;
  options.budgets.push_back(torouter::BudgetRule(1e9, torouter::BudgetWindow::Day));
  options.state_store = std::move(store);
  auto router = std::make_unique<torouter::Router>(
      experts, std::make_shared<FixedScorer>(std::vector<std::string>{"small", "large"}), nullptr,
      options);
  for (const char* name : {"small", "large"}) {
    router->set_transport(name, torouter::Transport::async([](const torouter::Request&,
                                                              torouter::CompletionCallback done) {
                            done(torouter::Response::answer("ok", 10, 10));
                          }));
  }
  return router;
}

double percentile(std::vector<double> v, double q) {
  std::sort(v.begin(), v.end());
  return v[static_cast<std::size_t>(q * static_cast<double>(v.size() - 1))];
}

struct Figures {
  double p50_us = 0, p99_us = 0, calls_per_second = 0;
};

// `calls` invokes, `concurrent` at a time, on a loop of two threads; each
// timed from invoke_async to on_done.
Figures measure(torouter::Router& router, int calls, int concurrent) {
  auto loop = std::make_shared<torouter::RunLoop>();
  std::vector<std::thread> threads;
  for (int i = 0; i < 2; ++i) threads.emplace_back([loop] { loop->run(); });
  std::vector<double> latencies(static_cast<std::size_t>(calls));
  const auto start = Clock::now();
  for (int first = 0; first < calls; first += concurrent) {
    const int n = std::min(concurrent, calls - first);
    std::vector<std::promise<void>> done(static_cast<std::size_t>(n));
    for (int k = 0; k < n; ++k) {
      const auto began = Clock::now();
      auto* slot = &latencies[static_cast<std::size_t>(first + k)];
      auto* finished = &done[static_cast<std::size_t>(k)];
      router.invoke_async("hello", {}, loop, [slot, finished, began](torouter::InvokeResult r) {
        if (!r.ok()) std::abort();
        *slot = std::chrono::duration<double, std::micro>(Clock::now() - began).count();
        finished->set_value();
      });
    }
    for (auto& d : done) d.get_future().wait();
  }
  const double seconds = std::chrono::duration<double>(Clock::now() - start).count();
  loop->stop();
  for (auto& t : threads) t.join();
  return {percentile(latencies, 0.5), percentile(latencies, 0.99), calls / seconds};
}

std::string argument(int argc, char** argv, const std::string& name, const std::string& fallback) {
  for (int i = 1; i + 1 < argc; ++i) {
    if (argv[i] == "--" + name) return argv[i + 1];
  }
  return fallback;
}

}  // namespace

int main(int argc, char** argv) {
  const std::string url = argument(argc, argv, "redis", "");
  if (url.empty()) {
    std::fprintf(stderr,
                 "usage: state_store_bench --redis redis://host:port/0 [--calls N] "
                 "[--rounds R]\n");
    return 2;
  }
  const int calls = std::atoi(argument(argc, argv, "calls", "5000").c_str());
  const int rounds = std::atoi(argument(argc, argv, "rounds", "3").c_str());
  torouter::RedisStoreOptions redis;
  redis.url = url;
  redis.key_prefix = "bench";
  auto shared = std::make_shared<torouter::RedisStateStore>(redis);
  auto local = make_router(nullptr);
  auto fleet = make_router(shared);
  std::printf(
      "| store | calls at once | p50 us | p99 us | calls/s | round trips per call |\n"
      "| --- | --- | --- | --- | --- | --- |\n");
  for (const int concurrent : {1, 32}) {
    for (const bool use_redis : {false, true}) {
      auto& router = use_redis ? *fleet : *local;
      measure(router, calls / 10, concurrent);  // warm-up
      std::vector<Figures> runs;
      const auto trips_before = shared->counters().round_trips;
      for (int r = 0; r < rounds; ++r) runs.push_back(measure(router, calls, concurrent));
      const double trips = static_cast<double>(shared->counters().round_trips - trips_before);
      auto median = [&](double Figures::*field) {
        std::vector<double> v;
        for (const auto& f : runs) v.push_back(f.*field);
        return percentile(v, 0.5);
      };
      std::printf("| %s | %d | %.0f | %.0f | %.0f | %s |\n",
                  use_redis ? "Redis (loopback)" : "in-process", concurrent,
                  median(&Figures::p50_us), median(&Figures::p99_us),
                  median(&Figures::calls_per_second),
                  use_redis ? fmt::format("{:.2f}", trips / (calls * rounds)).c_str() : "0");
    }
  }
  return 0;
}
