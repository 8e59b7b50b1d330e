// torouter/policy.hpp: how the router turns predictions into a ranking.
//
// Each expert becomes a `Candidate` with its predicted quality, cost and
// latency. Hard constraints (capabilities the request needs, context window,
// required tags, cost and latency caps, and the router's own: disabled,
// cooling down) exclude candidates; a `Policy` then gives each a utility and
// orders them, best first. The router calls the first and fails over down
// the list.
//
//   torouter::PolicyOptions knobs;
//   knobs.lambda_cost = 2000;          // give up 0.002 quality to save $0.000001
//   knobs.required_tags = {"code"};
//   knobs.max_cost_usd = 0.01;
//   auto decision = router.route(prompt, {knobs});
//
// `UtilityPolicy` (the default): utility = quality - lambda_cost * cost_usd -
// lambda_latency * latency_s, ties to the cheaper expert. With a quality
// floor (`knobs.quality_floor = 0.8`) it picks the cheapest expert predicted
// to reach the floor instead, else the best predicted.
// `ThresholdPolicy`: RouteLLM's two-expert rule: the strong expert when its
// predicted lead over the weak one exceeds a threshold.
#pragma once

#include <cstddef>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/expert.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Why a candidate cannot be picked; `None` when it can.
enum class Exclusion {
  None,
  Disabled,           ///< The expert is disabled.
  CoolingDown,        ///< The expert failed too often in a row and rests.
  MissingTools,       ///< The request needs tools (function calling); it takes none.
  MissingImages,      ///< The request has images; it takes none.
  MissingJsonOutput,  ///< The request needs JSON output; it cannot promise it.
  ContextWindow,      ///< Prompt plus answer (max_tokens or predicted) exceed its context window.
  MissingTag,         ///< It lacks a tag the request requires.
  OverCostLimit,      ///< Predicted cost above the request's `max_cost_usd`.
  OverLatencyLimit,   ///< Predicted latency above the request's `max_latency_ms`.
  NotInPolicy,        ///< The policy does not consider this expert.
};

/// A short, stable name for `exclusion` ("cooling_down", ...).
constexpr std::string_view to_string(Exclusion exclusion) {
  switch (exclusion) {
    case Exclusion::None: return "none";
    case Exclusion::Disabled: return "disabled";
    case Exclusion::CoolingDown: return "cooling_down";
    case Exclusion::MissingTools: return "missing_tools";
    case Exclusion::MissingImages: return "missing_images";
    case Exclusion::MissingJsonOutput: return "missing_json_output";
    case Exclusion::ContextWindow: return "context_window";
    case Exclusion::MissingTag: return "missing_tag";
    case Exclusion::OverCostLimit: return "over_cost_limit";
    case Exclusion::OverLatencyLimit: return "over_latency_limit";
    case Exclusion::NotInPolicy: return "not_in_policy";
  }
  return "unknown";
}

/// One expert's predictions for one prompt, and its standing.
struct Candidate {
  /// Position of the expert in the router's registry.
  std::size_t expert_index = 0;
  /// The expert's name (points into the router's registry, which the
  /// `RouteDecision` holding this candidate keeps alive).
  std::string_view name;
  /// Predicted quality in [0, 1].
  double predicted_quality = 0.0;
  /// Predicted output tokens (the cost model's default where none was predicted).
  double predicted_output_tokens = 0.0;
  /// Prompt tokens (estimated or given).
  double input_tokens = 0.0;
  /// Predicted USD of the query.
  double cost_usd = 0.0;
  /// Predicted milliseconds to the full answer.
  double latency_ms = 0.0;
  /// The policy's score; higher is better. Meaningful only when eligible.
  double utility = 0.0;
  /// Why it cannot be picked, or `None`.
  Exclusion exclusion = Exclusion::None;

  bool eligible() const { return exclusion == Exclusion::None; }
};

/// The knobs of one routing call; every field has a default that maximises
/// predicted quality with no constraint.
struct PolicyOptions {
  /// Quality given up per USD of predicted cost. 0 picks the best predicted
  /// quality whatever it costs; large values pick the cheapest.
  double lambda_cost = 0.0;
  /// Quality given up per second of predicted latency.
  double lambda_latency = 0.0;
  /// Tags the expert must have (all of them).
  std::vector<std::string> required_tags;
  /// Largest predicted cost accepted, USD.
  double max_cost_usd = std::numeric_limits<double>::infinity();
  /// Largest predicted latency accepted, milliseconds.
  double max_latency_ms = std::numeric_limits<double>::infinity();
  /// What the request needs of an expert besides text (tools, images, JSON
  /// output); experts that do not take it are excluded.
  Capabilities required_capabilities;
  /// Output tokens the request reserves (its `max_tokens`); 0 when it sets
  /// none. When set, the context window must hold the prompt plus these, as
  /// upstreams check; otherwise the prompt plus the predicted answer.
  std::size_t max_output_tokens = 0;
  /// When set, `UtilityPolicy` picks the cheapest eligible expert whose
  /// predicted quality reaches it, else the best predicted, and ignores the
  /// lambdas. A finite number in [0, 1].
  std::optional<double> quality_floor;
};

/// Checks the knobs whose values have a valid range (today the quality
/// floor); returns an empty string when valid, otherwise what is wrong,
/// naming the field.
std::string validate_policy_options(const PolicyOptions& options);

/// Why the router picked what it picked.
enum class PickReason {
  HighestUtility,      ///< Best utility among several eligible experts.
  OnlyEligible,        ///< The one eligible expert.
  ThresholdStrong,     ///< Threshold policy: the strong expert's lead exceeds the threshold.
  ThresholdWeak,       ///< Threshold policy: the lead does not exceed it.
  CheapestAboveFloor,  ///< Quality floor: the cheapest expert predicted to reach it.
  FloorNotReached,     ///< Quality floor: none is predicted to reach it; the best predicted.
  NoneEligible,        ///< No expert passes the constraints: nothing picked.
  Explored,            ///< Exploration picked another eligible expert (ExplorationOptions).
};

/// A short, stable name for `reason` ("highest_utility", ...).
constexpr std::string_view to_string(PickReason reason) {
  switch (reason) {
    case PickReason::HighestUtility: return "highest_utility";
    case PickReason::OnlyEligible: return "only_eligible";
    case PickReason::ThresholdStrong: return "threshold_strong";
    case PickReason::ThresholdWeak: return "threshold_weak";
    case PickReason::Explored: return "explored";
    case PickReason::CheapestAboveFloor: return "cheapest_above_floor";
    case PickReason::FloorNotReached: return "floor_not_reached";
    case PickReason::NoneEligible: return "none_eligible";
  }
  return "unknown";
}

/// Marks candidates that break the request's hard constraints (needed
/// capabilities, context window, tags, cost and latency caps, checked in
/// that order). Candidates already excluded keep their reason. `experts` is
/// indexed by `Candidate::expert_index`.
void apply_constraints(std::vector<Candidate>& candidates, const ExpertRegistry& experts,
                       const PolicyOptions& options);

/// The utility policy's score of `candidate`: predicted_quality −
/// lambda_cost × cost_usd − lambda_latency × latency in seconds.
double utility_of(const Candidate& candidate, const PolicyOptions& options);

/// The order every policy sorts candidates by: eligible first, then higher
/// utility, then lower predicted cost, then the expert registered first, so
/// equal inputs always give the same order. Evaluation (`pick_by_utility` in
/// eval.hpp) picks with `utility_of` and this order too: one definition of
/// "best", so `torouter eval` and `Router::route` cannot diverge.
bool ranks_before(const Candidate& a, const Candidate& b);

/// Orders candidates. Implementations must not allocate in `rank`, and must
/// allow concurrent calls.
class Policy {
 public:
  virtual ~Policy() = default;
  /// Sets each candidate's utility and sorts: eligible candidates first,
  /// best first; returns why the first was picked (`NoneEligible` if none is).
  virtual PickReason rank(std::vector<Candidate>& candidates,
                          const PolicyOptions& options) const = 0;
  /// A short name recorded in route decisions ("utility", "threshold").
  virtual std::string_view name() const = 0;
};

/// utility = quality - lambda_cost * cost_usd - lambda_latency * latency_s;
/// ties go to the cheaper expert, then to the one registered first.
///
/// With `PolicyOptions::quality_floor` set, the order is the floor's instead
/// (utilities are still computed, for the record): first the eligible
/// experts predicted to reach the floor, cheapest first (ties to the higher
/// quality); then the rest, best predicted first (ties to the cheaper). So
/// the pick is the cheapest expert good enough, failover goes to the next
/// cheapest good enough, and when none is, to the most likely to do well.
/// The reason is `CheapestAboveFloor` or `FloorNotReached`, even for one
/// eligible expert, so the caller can tell whether the floor held.
class UtilityPolicy : public Policy {
 public:
  PickReason rank(std::vector<Candidate>& candidates,
                  const PolicyOptions& options) const override;
  std::string_view name() const override { return "utility"; }
};

/// RouteLLM's rule for two experts: pick `strong` when its predicted quality
/// exceeds `weak`'s by more than `threshold`, else `weak`. Other experts are
/// excluded (`NotInPolicy`); if one of the two is excluded, the other is picked.
/// It has its own rule, so it ignores the lambdas and the quality floor.
class ThresholdPolicy : public Policy {
 public:
  ThresholdPolicy(std::string strong, std::string weak, double threshold);
  PickReason rank(std::vector<Candidate>& candidates,
                  const PolicyOptions& options) const override;
  std::string_view name() const override { return "threshold"; }

  double threshold() const { return threshold_; }

 private:
  std::string strong_;
  std::string weak_;
  double threshold_;
};

TOROUTER_END_NAMESPACE
