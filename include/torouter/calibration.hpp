// torouter/calibration.hpp: turns a scorer's raw output into the expected
// quality of the expert's answer.
//
// A regression of quality is near that already; a soft-label network's
// output is each expert's chance of being the best, summing to one over the
// experts, which is not. Either way the trained scorers of this library map
// each expert's raw output through a monotone function fitted on held-out
// predictions (out-of-fold, so no row is judged by a model that learned it):
// centred isotonic regression (Oron and Flournoy 2017): pool adjacent
// violators as scikit-learn's IsotonicRegression, then one knot per pooled
// block at its mean output, with linear interpolation between the knots
// and the map held flat beyond the first and last. Strictly increasing
// between its outer knots, it keeps each expert's order of prompts there
// (flat blocks would tie many outputs), and changes what the numbers mean, so
// `lambda_cost` and a quality floor mean the same for every model.
//
//   auto calibration = torouter::IsotonicCalibration::fit(raw, quality, present);
//   float expected = calibration.apply(expert, raw_output);
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <vector>

#include "torouter/scorer.hpp"

namespace torouter {

class IsotonicCalibration {
 public:
  /// No calibration: `apply` returns its input.
  IsotonicCalibration() = default;
  /// From knots: per expert, ascending x and non-decreasing y of equal size.
  /// Throws `Error` when they are not.
  IsotonicCalibration(std::vector<std::vector<float>> x, std::vector<std::vector<float>> y);

  /// Fits one map per column: `raw` are held-out predictions, `quality` the
  /// true qualities, `present` 1 where the row has an outcome for the expert
  /// (rows x experts each). A column without outcomes maps to itself.
  static IsotonicCalibration fit(const Eigen::MatrixXf& raw, const Eigen::MatrixXf& quality,
                                 const Eigen::MatrixXf& present);

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

}  // namespace torouter
