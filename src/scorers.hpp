// Internal: the scorer kinds the factory knows, and the parsed spec string
// each is built from.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "torouter/trainable_scorer.hpp"

namespace torouter::detail {

/// A parsed spec "kind[:argument][,key=value]...", e.g. "mlp:256x128,buckets=16384".
struct ScorerSpec {
  std::string text;
  std::string kind;
  std::string argument;
  std::map<std::string, std::string> options;

  /// Option `key` as a whole number in [minimum, maximum], or `fallback` when
  /// absent; throws `Error` naming the spec otherwise. Marks the key used.
  long long integer_option(const std::string& key, long long fallback, long long minimum,
                           long long maximum) const;
  /// Option `key` as a number, or `fallback`.
  double number_option(const std::string& key, double fallback) const;
  /// Option `key` as text, or `fallback`.
  std::string text_option(const std::string& key, const std::string& fallback) const;
  /// Throws `Error` naming any option no getter asked for.
  void reject_unused_options() const;

 private:
  mutable std::map<std::string, bool> used_;
};

ScorerSpec parse_scorer_spec(std::string_view text);

/// Parses a whole number in [minimum, maximum]; throws naming `what`.
long long parse_integer(const std::string& text, long long minimum, long long maximum,
                        const std::string& what);

std::unique_ptr<TrainableScorer> make_mlp_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_tlite_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_knn_scorer(const ScorerSpec& spec);

}  // namespace torouter::detail
