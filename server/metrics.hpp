// torouter-server's counters and histograms, written in the Prometheus text
// format for GET /metrics. Lock-free: every counter is an atomic, so the
// request path never waits on a scrape.
//
//   ServerMetrics metrics({"small", "large"});
//   metrics.observe_upstream(1, 0.42, torouter::FailureKind::None);
//   std::string text = metrics.render(extra_lines);
#pragma once

#include <array>
#include <atomic>
#include <cstddef>
#include <cstdint>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/transport.hpp"

namespace torouter::server {

/// A Prometheus histogram with fixed upper bounds (seconds).
class Histogram {
 public:
  explicit Histogram(std::vector<double> bounds);
  void observe(double seconds);
  /// Appends `name_bucket`, `name_sum` and `name_count` lines with `labels`
  /// (`expert="x"`, or empty).
  void write(std::string& out, std::string_view name, std::string_view labels) const;

 private:
  std::vector<double> bounds_;
  std::unique_ptr<std::atomic<std::uint64_t>[]> buckets_;  // one per bound, then +Inf
  std::atomic<std::uint64_t> count_{0};
  std::atomic<std::uint64_t> sum_ns_{0};
};

/// Every counter torouter-server exports.
class ServerMetrics {
 public:
  /// Counters for `experts`, indexed as given.
  explicit ServerMetrics(std::vector<std::string> experts);

  /// A chat completion request, by mode ("router" or "bypass").
  void count_chat_request(bool bypass);
  /// An HTTP response of any endpoint, by status code.
  void count_response(int status);
  /// An answer that reached the client from expert `expert`.
  void count_answer(std::size_t expert);
  /// A stream that broke after its first chunk.
  void count_stream_broken();
  /// Time from the start of an invoke to its routing decision.
  void observe_route(double seconds);
  /// One upstream call of expert `expert`, its duration and outcome.
  void observe_upstream(std::size_t expert, double seconds, FailureKind failure);

  /// The metrics as Prometheus text; `extra` (gauges read from the router)
  /// is appended as it is.
  std::string render(std::string_view extra) const;

  const std::vector<std::string>& experts() const { return experts_; }

 private:
  // 499: a client that left before its answer (nginx's "client closed request").
  static constexpr std::array<int, 20> kCodes{200, 400, 401, 403, 404, 405, 408, 409, 413, 414,
                                              422, 429, 431, 499, 500, 501, 502, 503, 504, 505};
  static constexpr std::size_t kKinds = 7;  // FailureKind values, None included

  struct PerExpert {
    PerExpert();
    std::atomic<std::uint64_t> calls{0};
    std::atomic<std::uint64_t> answers{0};
    std::array<std::atomic<std::uint64_t>, kKinds> failures{};
    Histogram latency;
  };

  std::vector<std::string> experts_;
  std::unique_ptr<PerExpert[]> per_expert_;
  std::array<std::atomic<std::uint64_t>, kCodes.size() + 1> responses_{};  // last: other
  std::atomic<std::uint64_t> routed_requests_{0};
  std::atomic<std::uint64_t> bypass_requests_{0};
  std::atomic<std::uint64_t> streams_broken_{0};
  Histogram route_latency_;
};

}  // namespace torouter::server
