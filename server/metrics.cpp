#include "metrics.hpp"

#include <fmt/format.h>

namespace torouter::server {

namespace {

// Routing takes tens of microseconds; upstream calls take up to minutes.
std::vector<double> route_bounds() {
  return {25e-6, 50e-6, 100e-6, 250e-6, 500e-6, 1e-3, 2.5e-3, 5e-3, 10e-3, 25e-3, 100e-3};
}
std::vector<double> upstream_bounds() {
  return {0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30, 60, 120};
}

constexpr FailureKind kAllKinds[] = {FailureKind::None,           FailureKind::Timeout,
                                     FailureKind::RateLimited,    FailureKind::ServerError,
                                     FailureKind::BadRequest,     FailureKind::ContextTooLong,
                                     FailureKind::TransportError};

std::size_t kind_index(FailureKind kind) {
  for (std::size_t i = 0; i < std::size(kAllKinds); ++i) {
    if (kAllKinds[i] == kind) return i;
  }
  return 0;
}

// An expert's name as a Prometheus label value.
std::string label(std::string_view value) {
  std::string out;
  for (char c : value) {
    if (c == '\\' || c == '"') out.push_back('\\');
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out.push_back(c);
  }
  return out;
}

}  // namespace

Histogram::Histogram(std::vector<double> bounds)
    : bounds_(std::move(bounds)),
      buckets_(std::make_unique<std::atomic<std::uint64_t>[]>(bounds_.size() + 1)) {}

void Histogram::observe(double seconds) {
  std::size_t i = 0;
  while (i < bounds_.size() && seconds > bounds_[i]) ++i;
  buckets_[i].fetch_add(1, std::memory_order_relaxed);
  count_.fetch_add(1, std::memory_order_relaxed);
  sum_ns_.fetch_add(static_cast<std::uint64_t>(seconds * 1e9), std::memory_order_relaxed);
}

void Histogram::write(std::string& out, std::string_view name, std::string_view labels) const {
  const std::string sep = labels.empty() ? "" : ",";
  std::uint64_t cumulative = 0;
  for (std::size_t i = 0; i <= bounds_.size(); ++i) {
    cumulative += buckets_[i].load(std::memory_order_relaxed);
    const std::string le = i < bounds_.size() ? fmt::format("{}", bounds_[i]) : "+Inf";
    out += fmt::format("{}_bucket{{{}{}le=\"{}\"}} {}\n", name, labels, sep, le, cumulative);
  }
  const std::string braces = labels.empty() ? "" : fmt::format("{{{}}}", labels);
  out += fmt::format("{}_sum{} {}\n", name, braces,
                     static_cast<double>(sum_ns_.load(std::memory_order_relaxed)) / 1e9);
  out += fmt::format("{}_count{} {}\n", name, braces, count_.load(std::memory_order_relaxed));
}

ServerMetrics::PerExpert::PerExpert() : latency(upstream_bounds()) {}

ServerMetrics::ServerMetrics(std::vector<std::string> experts)
    : experts_(std::move(experts)),
      per_expert_(std::make_unique<PerExpert[]>(experts_.size())),
      route_latency_(route_bounds()) {}

void ServerMetrics::count_chat_request(bool bypass) {
  (bypass ? bypass_requests_ : routed_requests_).fetch_add(1, std::memory_order_relaxed);
}

void ServerMetrics::count_response(int status) {
  std::size_t i = 0;
  while (i < kCodes.size() && kCodes[i] != status) ++i;
  responses_[i].fetch_add(1, std::memory_order_relaxed);
}

void ServerMetrics::count_answer(std::size_t expert) {
  per_expert_[expert].answers.fetch_add(1, std::memory_order_relaxed);
}

void ServerMetrics::count_stream_broken() { streams_broken_.fetch_add(1); }

void ServerMetrics::observe_route(double seconds) { route_latency_.observe(seconds); }

void ServerMetrics::observe_upstream(std::size_t expert, double seconds, FailureKind failure) {
  PerExpert& e = per_expert_[expert];
  e.calls.fetch_add(1, std::memory_order_relaxed);
  if (failure != FailureKind::None) {
    e.failures[kind_index(failure)].fetch_add(1, std::memory_order_relaxed);
  }
  e.latency.observe(seconds);
}

std::string ServerMetrics::render(std::string_view extra) const {
  std::string out;
  out.reserve(16384);
  out += "# HELP torouter_chat_requests_total Chat completion requests, by mode.\n"
         "# TYPE torouter_chat_requests_total counter\n";
  out += fmt::format("torouter_chat_requests_total{{mode=\"router\"}} {}\n",
                     routed_requests_.load());
  out += fmt::format("torouter_chat_requests_total{{mode=\"bypass\"}} {}\n",
                     bypass_requests_.load());
  out += "# HELP torouter_http_responses_total HTTP responses of every endpoint, by status.\n"
         "# TYPE torouter_http_responses_total counter\n";
  for (std::size_t i = 0; i <= kCodes.size(); ++i) {
    const std::string code = i < kCodes.size() ? std::to_string(kCodes[i]) : "other";
    out += fmt::format("torouter_http_responses_total{{code=\"{}\"}} {}\n", code,
                       responses_[i].load());
  }
  out += "# HELP torouter_expert_requests_total Upstream calls, per expert.\n"
         "# TYPE torouter_expert_requests_total counter\n";
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    out += fmt::format("torouter_expert_requests_total{{expert=\"{}\"}} {}\n", label(experts_[e]),
                       per_expert_[e].calls.load());
  }
  out += "# HELP torouter_expert_failures_total Failed upstream calls, per expert and kind.\n"
         "# TYPE torouter_expert_failures_total counter\n";
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    for (std::size_t k = 1; k < kKinds; ++k) {
      out += fmt::format("torouter_expert_failures_total{{expert=\"{}\",kind=\"{}\"}} {}\n",
                         label(experts_[e]), to_string(kAllKinds[k]),
                         per_expert_[e].failures[k].load());
    }
  }
  out += "# HELP torouter_expert_answers_total Answers sent to clients, per expert.\n"
         "# TYPE torouter_expert_answers_total counter\n";
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    out += fmt::format("torouter_expert_answers_total{{expert=\"{}\"}} {}\n", label(experts_[e]),
                       per_expert_[e].answers.load());
  }
  out += "# HELP torouter_stream_broken_total Streams that failed after their first chunk.\n"
         "# TYPE torouter_stream_broken_total counter\n";
  out += fmt::format("torouter_stream_broken_total {}\n", streams_broken_.load());
  out += "# HELP torouter_route_latency_seconds Time to route one request.\n"
         "# TYPE torouter_route_latency_seconds histogram\n";
  route_latency_.write(out, "torouter_route_latency_seconds", "");
  out += "# HELP torouter_upstream_latency_seconds Duration of upstream calls, per expert.\n"
         "# TYPE torouter_upstream_latency_seconds histogram\n";
  for (std::size_t e = 0; e < experts_.size(); ++e) {
    per_expert_[e].latency.write(out, "torouter_upstream_latency_seconds",
                                 fmt::format("expert=\"{}\"", label(experts_[e])));
  }
  out.append(extra);
  return out;
}

}  // namespace torouter::server
