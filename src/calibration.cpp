// Isotonic calibration by pool adjacent violators; see torouter/calibration.hpp.
#include "torouter/calibration.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "torouter/error.hpp"

namespace torouter {
namespace {

// A run of sorted predictions pooled to one fitted value.
struct Block {
  double sum = 0.0;
  double weight = 0.0;
  double sum_x = 0.0;
  float last_x = 0.0f;
  double mean() const { return sum / weight; }
  double center() const { return sum_x / weight; }
};

// Pool adjacent violators over (x, y) pairs sorted by x; pairs of equal x
// are pooled first, so equal raw outputs get one calibrated value.
std::vector<Block> pool_adjacent_violators(const std::vector<std::pair<float, float>>& pairs) {
  std::vector<Block> blocks;
  for (const auto& [x, y] : pairs) {
    if (!blocks.empty() && blocks.back().last_x == x) {
      blocks.back().sum += y;
      blocks.back().sum_x += x;
      blocks.back().weight += 1.0;
    } else {
      blocks.push_back(Block{y, 1.0, x, x});
    }
    while (blocks.size() >= 2 && blocks[blocks.size() - 2].mean() >= blocks.back().mean()) {
      Block top = blocks.back();
      blocks.pop_back();
      Block& below = blocks.back();
      below.sum += top.sum;
      below.sum_x += top.sum_x;
      below.weight += top.weight;
      below.last_x = top.last_x;
    }
  }
  return blocks;
}

}  // namespace

IsotonicCalibration::IsotonicCalibration(std::vector<std::vector<float>> x,
                                         std::vector<std::vector<float>> y)
    : x_(std::move(x)), y_(std::move(y)) {
  if (x_.size() != y_.size()) throw Error("calibration: one set of knots per expert expected");
  for (std::size_t e = 0; e < x_.size(); ++e) {
    if (x_[e].size() != y_[e].size() || x_[e].empty()) {
      throw Error(
          fmt::format("calibration of expert {}: knots need as many x as y, at least one", e));
    }
    for (std::size_t i = 1; i < x_[e].size(); ++i) {
      if (!(x_[e][i] > x_[e][i - 1]) || !(y_[e][i] >= y_[e][i - 1])) {
        throw Error(
            fmt::format("calibration of expert {}: knot {} breaks ascending x or "
                        "non-decreasing y",
                        e, i));
      }
    }
  }
}

IsotonicCalibration IsotonicCalibration::fit(const Eigen::MatrixXf& raw,
                                             const Eigen::MatrixXf& quality,
                                             const Eigen::MatrixXf& present) {
  if (quality.rows() != raw.rows() || quality.cols() != raw.cols() ||
      present.rows() != raw.rows() || present.cols() != raw.cols()) {
    throw Error("calibration: raw, quality and present must have the same shape");
  }
  std::vector<std::vector<float>> xs(static_cast<std::size_t>(raw.cols()));
  std::vector<std::vector<float>> ys(xs.size());
  std::vector<std::pair<float, float>> pairs;
  for (Eigen::Index e = 0; e < raw.cols(); ++e) {
    pairs.clear();
    for (Eigen::Index r = 0; r < raw.rows(); ++r) {
      // A non-finite output (a diverged model) says nothing to learn from,
      // and would break the sort's ordering.
      if (present(r, e) != 0 && std::isfinite(raw(r, e))) {
        pairs.emplace_back(raw(r, e), quality(r, e));
      }
    }
    std::vector<float>& x = xs[static_cast<std::size_t>(e)];
    std::vector<float>& y = ys[static_cast<std::size_t>(e)];
    if (pairs.empty()) {  // nothing to learn from: the identity on [0, 1]
      x = {0.0f, 1.0f};
      y = {0.0f, 1.0f};
      continue;
    }
    std::sort(pairs.begin(), pairs.end());
    for (const Block& b : pool_adjacent_violators(pairs)) {
      // One knot per block, at its mean output: between blocks the map
      // rises linearly, so it is strictly increasing over the knots' range
      // and keeps each expert's order of prompts (sklearn's flat blocks
      // would tie many outputs, and ties between experts then go to the
      // cheaper one whatever the scorer saw).
      const auto center = static_cast<float>(b.center());
      if (!x.empty() && !(center > x.back())) continue;  // float rounding
      x.push_back(center);
      y.push_back(static_cast<float>(b.mean()));
    }
  }
  return IsotonicCalibration(std::move(xs), std::move(ys));
}

float IsotonicCalibration::apply(std::size_t expert, float value) const {
  if (empty()) return value;
  const std::vector<float>& x = x_[expert];
  const std::vector<float>& y = y_[expert];
  if (!(value > x.front())) return y.front();  // NaN lands here too
  if (value >= x.back()) return y.back();
  const std::size_t hi =
      static_cast<std::size_t>(std::upper_bound(x.begin(), x.end(), value) - x.begin());
  const std::size_t lo = hi - 1;
  const float t = (value - x[lo]) / (x[hi] - x[lo]);
  return y[lo] + t * (y[hi] - y[lo]);
}

void IsotonicCalibration::apply(ScoreMatrix& quality) const {
  if (empty()) return;
  for (Eigen::Index r = 0; r < quality.rows(); ++r) {
    for (Eigen::Index e = 0; e < quality.cols(); ++e) {
      quality(r, e) = apply(static_cast<std::size_t>(e), quality(r, e));
    }
  }
}

}  // namespace torouter
