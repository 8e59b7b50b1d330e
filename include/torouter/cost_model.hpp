// torouter/cost_model.hpp: what one query to an expert costs and how long it
// takes, from the prompt's tokens, the predicted output tokens and the
// expert's prices and latency prior.
//
// Tokens are estimated from text by the rule the routing datasets use
// (../shared/data/README.md): ceil(characters / 4), characters counted as
// Unicode code points. A caller who knows the real count passes it instead.
//
//   torouter::CostModel model;
//   double tokens = torouter::estimate_tokens("What is 2 + 2?");     // 4
//   double usd = model.cost_usd(spec, tokens, 20);                     // prices x tokens
//   double ms = model.latency_ms(spec, 20);                            // ttft + 20 / speed
#pragma once

#include <cmath>
#include <cstddef>
#include <string_view>

#include "torouter/abi.hpp"
#include "torouter/expert.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Number of Unicode code points in UTF-8 text: bytes that do not continue a
/// multi-byte sequence. Invalid UTF-8 still gives a count, never an error.
inline std::size_t count_characters(std::string_view utf8) {
  std::size_t count = 0;
  for (unsigned char c : utf8) {
    if ((c & 0xC0u) != 0x80u) ++count;
  }
  return count;
}

/// ceil(characters / 4): the datasets' token estimate.
inline std::size_t estimate_tokens_from_characters(std::size_t characters) {
  return (characters + 3) / 4;
}

/// Estimated tokens of a text: ceil(count_characters(text) / 4).
inline std::size_t estimate_tokens(std::string_view text) {
  return estimate_tokens_from_characters(count_characters(text));
}

/// Settings of the cost model.
struct CostModelOptions {
  /// Output tokens assumed when the scorer predicts none (NaN).
  double default_output_tokens = 256.0;
};

/// Per-expert cost (USD) and latency (ms) of one query: prices times
/// tokens, and the expert's latency prior. The router's default; to price
/// otherwise (a flat fee, cached-input discounts, measured latency), derive
/// from it, override what differs and give the router yours (`Router`'s
/// `cost_model` argument). Calls may come from any thread at once.
class CostModel {
 public:
  CostModel() = default;
  explicit CostModel(CostModelOptions options) : options_(options) {}
  virtual ~CostModel() = default;

  /// USD for `input_tokens` in and `output_tokens` out at the expert's prices.
  virtual double cost_usd(const ExpertSpec& expert, double input_tokens,
                          double output_tokens) const {
    return (input_tokens * expert.input_usd_per_mtok +
            output_tokens * expert.output_usd_per_mtok) / 1e6;
  }

  /// Milliseconds to the full answer: time to first token plus output
  /// tokens at the expert's speed.
  virtual double latency_ms(const ExpertSpec& expert, double output_tokens) const {
    const double speed = expert.latency.output_tokens_per_second;
    const double generation_ms = speed > 0 ? output_tokens / speed * 1000.0 : 0.0;
    return expert.latency.time_to_first_token_ms + generation_ms;
  }

  /// The scorer's prediction when it made one (finite, >= 0), else the default.
  virtual double output_tokens_or_default(float predicted) const {
    return std::isfinite(predicted) && predicted >= 0 ? static_cast<double>(predicted)
                                                      : options_.default_output_tokens;
  }

  const CostModelOptions& options() const { return options_; }

 private:
  CostModelOptions options_;
};

TOROUTER_END_NAMESPACE
