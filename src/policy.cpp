#include "torouter/policy.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <array>
#include <cmath>
#include <utility>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace {

bool has_all_tags(const ExpertSpec& expert, const std::vector<std::string>& tags) {
  for (const auto& tag : tags) {
    if (!expert.has_tag(tag)) return false;
  }
  return true;
}

// -1 when `a` ranks before `b`, 1 when after, 0 when tied; a NaN (a scorer's
// or a price's) ranks after every number, so sorting stays a strict weak
// ordering whatever the values.
int compare_nan_last(double a, double b, bool higher_first) {
  const bool a_nan = std::isnan(a);
  const bool b_nan = std::isnan(b);
  if (a_nan || b_nan) return a_nan == b_nan ? 0 : (a_nan ? 1 : -1);
  if (a == b) return 0;
  return (a > b) == higher_first ? -1 : 1;
}

// The quality floor's order: eligible first; then those predicted to reach
// the floor, cheapest first (ties to the better); then the rest, best first
// (ties to the cheaper); then the expert registered first.
struct FloorOrder {
  double floor;

  bool operator()(const Candidate& a, const Candidate& b) const {
    if (a.eligible() != b.eligible()) return a.eligible();
    const bool a_reaches = a.predicted_quality >= floor;
    const bool b_reaches = b.predicted_quality >= floor;
    if (a_reaches != b_reaches) return a_reaches;
    const int cheaper = compare_nan_last(a.cost_usd, b.cost_usd, /*higher_first=*/false);
    const int better = compare_nan_last(a.predicted_quality, b.predicted_quality, true);
    for (const int o : a_reaches ? std::array{cheaper, better} : std::array{better, cheaper}) {
      if (o != 0) return o < 0;
    }
    return a.expert_index < b.expert_index;
  }
};

// Why `expert` cannot take what the request needs, or None when it can.
Exclusion missing_capability(const ExpertSpec& expert, const Capabilities& needed) {
  if (expert.can_take(needed)) return Exclusion::None;
  const Capabilities& has = *expert.capabilities;
  if (needed.tools && !has.tools) return Exclusion::MissingTools;
  if (needed.images && !has.images) return Exclusion::MissingImages;
  return Exclusion::MissingJsonOutput;
}

std::size_t count_eligible(const std::vector<Candidate>& candidates) {
  return static_cast<std::size_t>(std::count_if(
      candidates.begin(), candidates.end(), [](const Candidate& c) { return c.eligible(); }));
}

}  // namespace

double utility_of(const Candidate& candidate, const PolicyOptions& options) {
  // A free (or instant) expert pays nothing even at an infinite weight,
  // where infinity times zero would be NaN.
  auto penalty = [](double weight, double amount) { return amount == 0.0 ? 0.0 : weight * amount; };
  return candidate.predicted_quality - penalty(options.lambda_cost, candidate.cost_usd) -
         penalty(options.lambda_latency, candidate.latency_ms / 1000.0);
}

bool ranks_before(const Candidate& a, const Candidate& b) {
  if (a.eligible() != b.eligible()) return a.eligible();
  if (const int o = compare_nan_last(a.utility, b.utility, /*higher_first=*/true)) return o < 0;
  if (const int o = compare_nan_last(a.cost_usd, b.cost_usd, /*higher_first=*/false)) return o < 0;
  return a.expert_index < b.expert_index;
}

std::string validate_policy_options(const PolicyOptions& options) {
  // Infinity is a meaning (cost or latency above all else; no limit); NaN
  // is not, and would make every comparison false.
  for (const auto& [name, value] : {std::pair{"lambda_cost", options.lambda_cost},
                                    std::pair{"lambda_latency", options.lambda_latency}}) {
    if (!(value >= 0.0)) return fmt::format("{} must be a number >= 0, got {}", name, value);
  }
  for (const auto& [name, value] : {std::pair{"max_cost_usd", options.max_cost_usd},
                                    std::pair{"max_latency_ms", options.max_latency_ms}}) {
    if (std::isnan(value)) return fmt::format("{} must be a number, got NaN", name);
  }
  if (options.quality_floor) {
    const double floor = *options.quality_floor;
    if (!std::isfinite(floor) || floor < 0.0 || floor > 1.0) {
      return fmt::format("quality_floor must be a finite number in [0, 1], got {}", floor);
    }
  }
  return {};
}

void apply_constraints(std::vector<Candidate>& candidates, const ExpertRegistry& experts,
                       const PolicyOptions& options) {
  for (auto& c : candidates) {
    if (!c.eligible()) continue;
    const ExpertSpec& expert = experts[c.expert_index];
    // Upstreams reserve the request's max_tokens in the window, whatever the
    // answer's length turns out to be.
    const double output_tokens = options.max_output_tokens > 0
                                     ? static_cast<double>(options.max_output_tokens)
                                     : c.predicted_output_tokens;
    const double tokens_needed = c.input_tokens + output_tokens;
    if (const Exclusion missing = missing_capability(expert, options.required_capabilities);
        missing != Exclusion::None) {
      c.exclusion = missing;
    } else if (tokens_needed > static_cast<double>(expert.context_window_tokens)) {
      c.exclusion = Exclusion::ContextWindow;
    } else if (!has_all_tags(expert, options.required_tags)) {
      c.exclusion = Exclusion::MissingTag;
    } else if (c.cost_usd > options.max_cost_usd) {
      c.exclusion = Exclusion::OverCostLimit;
    } else if (c.latency_ms > options.max_latency_ms) {
      c.exclusion = Exclusion::OverLatencyLimit;
    }
  }
}

PickReason UtilityPolicy::rank(std::vector<Candidate>& candidates,
                               const PolicyOptions& options) const {
  for (auto& c : candidates) c.utility = utility_of(c, options);
  if (options.quality_floor) {
    const double floor = *options.quality_floor;
    std::sort(candidates.begin(), candidates.end(), FloorOrder{floor});
    if (count_eligible(candidates) == 0) return PickReason::NoneEligible;
    return candidates.front().predicted_quality >= floor ? PickReason::CheapestAboveFloor
                                                         : PickReason::FloorNotReached;
  }
  std::sort(candidates.begin(), candidates.end(), ranks_before);
  const std::size_t eligible = count_eligible(candidates);
  if (eligible == 0) return PickReason::NoneEligible;
  return eligible == 1 ? PickReason::OnlyEligible : PickReason::HighestUtility;
}

ThresholdPolicy::ThresholdPolicy(std::string strong, std::string weak, double threshold)
    : strong_(std::move(strong)), weak_(std::move(weak)), threshold_(threshold) {}

PickReason ThresholdPolicy::rank(std::vector<Candidate>& candidates,
                                 const PolicyOptions& /*options*/) const {
  Candidate* strong = nullptr;
  Candidate* weak = nullptr;
  for (auto& c : candidates) {
    if (c.name == strong_) {
      strong = &c;
    } else if (c.name == weak_) {
      weak = &c;
    } else if (c.eligible()) {
      c.exclusion = Exclusion::NotInPolicy;
    }
  }
  // Utilities relative to the weak expert: the strong one ranks first exactly
  // when its lead exceeds the threshold; at equality the tie goes to the
  // cheaper, as everywhere else.
  const double lead = strong && weak ? strong->predicted_quality - weak->predicted_quality : 0.0;
  if (strong) strong->utility = lead - threshold_;
  if (weak) weak->utility = 0.0;
  std::sort(candidates.begin(), candidates.end(), ranks_before);

  const std::size_t eligible = count_eligible(candidates);
  if (eligible == 0) return PickReason::NoneEligible;
  if (eligible == 1) return PickReason::OnlyEligible;
  return candidates.front().name == strong_ ? PickReason::ThresholdStrong
                                            : PickReason::ThresholdWeak;
}

TOROUTER_END_NAMESPACE
