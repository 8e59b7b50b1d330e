// off_policy.hpp: what another model would have done on logged traffic
// (issue 14, item 5), from a decision log with feedback
// (torouter/decision_log.hpp).
//
// The logged calls are the ones with a verdict: each has the expert that
// was picked, the probability it was picked with (exploration), the
// verdict on its answer and what it cost. For a target model that would
// pick `target` on the same prompt:
//   inverse propensity (IPS):  mean over calls of  1[target = logged] / p * y
//   doubly robust (DR):        mean of  q(target) + 1[target = logged] / p * (y - q(logged))
// where y is the logged quality (or cost) and q the target model's own
// prediction of it. Each comes with a 95% interval (normal, from the spread
// of the per-call terms) and with how many calls support it (those where
// the target picks what was logged).
#pragma once

#include <cstddef>
#include <string>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// One logged call that has feedback.
struct LoggedCall {
  std::string id;
  std::string prompt;
  /// The expert picked and called (calls that failed over are left out).
  std::string expert;
  /// The probability the pick was made with.
  double propensity = 1.0;
  /// The feedback on the answer, in [0, 1] (the last one for the id).
  double quality = 0.0;
  /// USD the call cost.
  double cost_usd = 0.0;
  /// The routing knobs it was made with.
  double lambda_cost = 0.0;
  /// Output tokens billed for the answer.
  std::size_t output_tokens = 0;
};

/// The calls of a decision log that can be evaluated, and what was left out.
struct DecisionLogReading {
  std::vector<LoggedCall> calls;
  /// Every expert the decisions list as a candidate, in order of first
  /// appearance (the first decision's ranking, then any new ones): the
  /// experts of the registry the log was written with, not its order.
  std::vector<std::string> experts;
  std::size_t decisions = 0;         ///< decision lines read
  std::size_t without_feedback = 0;  ///< left out: no feedback line
  std::size_t redacted = 0;          ///< left out: the prompt was not logged
  std::size_t not_answered = 0;      ///< left out: failed, or answered by a failover
  std::size_t pinned = 0;            ///< left out: the caller named the expert
};

/// Reads a decision log (the file, not its rotated parts): decision lines
/// joined with the last feedback line of their id. Throws `Error` naming
/// the file and line of a line that is not JSON, lacks a field, or gives a
/// quality outside [0, 1].
DecisionLogReading read_decision_log(const std::string& path);

/// What the target model says about one logged call.
struct TargetPrediction {
  std::string pick;              ///< the expert it would call
  double quality_of_pick = 0;    ///< its predicted quality of that expert
  double quality_of_logged = 0;  ///< its predicted quality of the logged expert
  double cost_of_pick = 0;       ///< its predicted cost of its pick
  double cost_of_logged = 0;     ///< its predicted cost of the logged expert
};

/// An estimate and its 95% interval.
struct Estimate {
  double value = 0;
  double low = 0;
  double high = 0;
};

struct OffPolicyReport {
  std::size_t calls = 0;     ///< logged calls used
  std::size_t matching = 0;  ///< calls where the target picks what was logged
  Estimate ips_quality, dr_quality, ips_cost, dr_cost;
};

/// The estimates for `target[i]` on `calls[i]`; throws `Error` when the two
/// differ in length, no call is given, or a propensity is not in (0, 1].
OffPolicyReport estimate_off_policy(const std::vector<LoggedCall>& calls,
                                    const std::vector<TargetPrediction>& target);

TOROUTER_END_NAMESPACE
