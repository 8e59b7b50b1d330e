// torouter/calibration.hpp: turns a scorer's raw output into the expected
// quality of the expert's answer.
//
// A regression of quality is near that already; a soft-label network's
// output is each expert's chance of being the best, summing to one over the
// experts, which is not. Either way the trained scorers of this library map
// each expert's raw output through a monotone, piecewise-linear function
// fitted on held-out predictions (out-of-fold, so no row is judged by a
// model that learned it), held flat beyond its first and last knot:
//
// - linear (the default): the least-squares line of quality on the raw
//   output, its slope kept >= 0, between the smallest and largest held-out
//   output, clipped to [0, 1]. Two numbers per expert: it rescales without
//   reordering. Cross-validation favours it on routerbench3 (every
//   candidate) and finds the two level on llmrouter14 (docs/RESULTS.md):
//   a router compares experts, and a map with many knots adds its own
//   noise to every comparison.
// - isotonic: centred isotonic regression (Oron and Flournoy 2017): pool
//   adjacent violators as scikit-learn's IsotonicRegression, then one knot
//   per pooled block at its mean output, linear between knots. It fits any
//   monotone shape, at the price of that noise.
//
// Either changes what the numbers mean, not each expert's order of prompts,
// so `lambda_cost` and a quality floor mean the same for every model.
//
// Calibrated per expert, each prediction is right on average over that
// expert's prompts, yet the expert a router picks for having the highest
// prediction is more often one whose prediction erred upward (the winner's
// curse; docs/ARCHITECTURE.md, "A top pick's expected quality", has the
// figures). So a trained scorer also holds a pick
// calibration, one isotonic map fitted on held-out top picks where
// cross-validation shows it lowers their calibration error
// (`TrainableScorer::set_pick_calibration`), which gives a top pick's
// expected quality (`Scorer::top_pick_quality`, `RouteDecision::
// expected_quality`). It does not rank: candidates are compared on their
// own calibrated predictions, and a quality floor compares those.
//
//   auto calibration = torouter::Calibration::fit(torouter::CalibrationMethod::Linear,
//                                                 raw, quality, present);
//   float expected = calibration.apply(expert, raw_output);
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/scorer.hpp"

TOROUTER_BEGIN_NAMESPACE

enum class CalibrationMethod { Linear, Isotonic };

/// "linear" or "isotonic"; throws `Error` naming the text otherwise.
CalibrationMethod parse_calibration_method(std::string_view text);
const char* calibration_method_name(CalibrationMethod method);

class Calibration {
 public:
  /// No calibration: `apply` returns its input.
  Calibration() = default;
  /// From knots: per expert, ascending x and non-decreasing y of equal size.
  /// Throws `Error` when they are not.
  Calibration(std::vector<std::vector<float>> x, std::vector<std::vector<float>> y);

  /// Fits one map per column by `method`: `raw` are held-out predictions,
  /// `quality` the true qualities, `present` 1 where the row has an outcome
  /// for the expert (rows x experts each). A column without outcomes maps to
  /// itself on [0, 1]. Throws `Error` when the shapes differ.
  static Calibration fit(CalibrationMethod method, const Eigen::MatrixXf& raw,
                         const Eigen::MatrixXf& quality, const Eigen::MatrixXf& present);

  bool empty() const { return x_.empty(); }
  std::size_t experts() const { return x_.size(); }
  /// The expected quality for raw output `value` of expert `expert`.
  float apply(std::size_t expert, float value) const;
  /// Maps every entry of `quality` (prompts x experts) in place.
  void apply(ScoreMatrix& quality) const;

  const std::vector<float>& knots_x(std::size_t expert) const { return x_[expert]; }
  const std::vector<float>& knots_y(std::size_t expert) const { return y_[expert]; }

 private:
  std::vector<std::vector<float>> x_, y_;
};

TOROUTER_END_NAMESPACE
