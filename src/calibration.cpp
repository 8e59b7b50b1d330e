// Linear and isotonic calibration; see torouter/calibration.hpp.
#include "torouter/calibration.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
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

// The knots of one expert's map.
struct Knots {
  std::vector<float> x, y;
};

// The (raw output, quality) pairs of one expert, sorted by output. A
// non-finite output (a diverged model) says nothing to learn from, and
// would break the sort's ordering.
std::vector<std::pair<float, float>> sorted_pairs(const Eigen::MatrixXf& raw,
                                                  const Eigen::MatrixXf& quality,
                                                  const Eigen::MatrixXf& present, Eigen::Index e) {
  std::vector<std::pair<float, float>> pairs;
  for (Eigen::Index r = 0; r < raw.rows(); ++r) {
    if (present(r, e) != 0 && std::isfinite(raw(r, e)))
      pairs.emplace_back(raw(r, e), quality(r, e));
  }
  std::sort(pairs.begin(), pairs.end());
  return pairs;
}

Knots isotonic_knots(const std::vector<std::pair<float, float>>& pairs) {
  Knots k;
  for (const Block& b : pool_adjacent_violators(pairs)) {
    // One knot per block, at its mean output: between blocks the map
    // rises linearly, so it is strictly increasing over the knots' range
    // and keeps each expert's order of prompts (sklearn's flat blocks
    // would tie many outputs, and ties between experts then go to the
    // cheaper one whatever the scorer saw).
    const auto center = static_cast<float>(b.center());
    if (!k.x.empty() && !(center > k.x.back())) continue;  // float rounding
    k.x.push_back(center);
    k.y.push_back(static_cast<float>(b.mean()));
  }
  return k;
}

// The least-squares line of quality on output, slope >= 0 (a falling line
// would reverse the scorer's order: then the mean quality, flat), clipped
// to [0, 1]: knots at the smallest and largest output and where the line
// crosses 0 and 1 between them.
Knots linear_knots(const std::vector<std::pair<float, float>>& pairs) {
  double sum_x = 0, sum_y = 0;
  for (const auto& [x, y] : pairs) {
    sum_x += x;
    sum_y += y;
  }
  const auto n = static_cast<double>(pairs.size());
  const double mean_x = sum_x / n, mean_y = sum_y / n;
  double sxx = 0, sxy = 0;
  for (const auto& [x, y] : pairs) {
    sxx += (x - mean_x) * (x - mean_x);
    sxy += (x - mean_x) * (y - mean_y);
  }
  const double slope = sxx > 0 ? std::max(0.0, sxy / sxx) : 0.0;
  const auto at = [&](float x) {
    return static_cast<float>(std::clamp(mean_y + slope * (x - mean_x), 0.0, 1.0));
  };
  const float lo = pairs.front().first, hi = pairs.back().first;
  Knots k{{lo}, {at(lo)}};
  if (slope > 0) {  // knots where the line leaves [0, 1], so clipping is exact
    for (const double level : {0.0, 1.0}) {
      const auto x = static_cast<float>(mean_x + (level - mean_y) / slope);
      if (x > k.x.back() && x < hi) {
        k.x.push_back(x);
        k.y.push_back(at(x));
      }
    }
  }
  if (hi > k.x.back()) {
    k.x.push_back(hi);
    k.y.push_back(at(hi));
  }
  return k;
}

}  // namespace

Calibration::Calibration(std::vector<std::vector<float>> x, std::vector<std::vector<float>> y)
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

CalibrationMethod parse_calibration_method(std::string_view text) {
  if (text == "linear") return CalibrationMethod::Linear;
  if (text == "isotonic") return CalibrationMethod::Isotonic;
  throw Error(fmt::format("calibration: expected linear or isotonic, got \"{}\"", text));
}

const char* calibration_method_name(CalibrationMethod method) {
  return method == CalibrationMethod::Linear ? "linear" : "isotonic";
}

Calibration Calibration::fit(CalibrationMethod method, const Eigen::MatrixXf& raw,
                             const Eigen::MatrixXf& quality, const Eigen::MatrixXf& present) {
  if (quality.rows() != raw.rows() || quality.cols() != raw.cols() ||
      present.rows() != raw.rows() || present.cols() != raw.cols()) {
    throw Error("calibration: raw, quality and present must have the same shape");
  }
  std::vector<std::vector<float>> xs, ys;
  for (Eigen::Index e = 0; e < raw.cols(); ++e) {
    const std::vector<std::pair<float, float>> pairs = sorted_pairs(raw, quality, present, e);
    Knots k{{0.0f, 1.0f}, {0.0f, 1.0f}};  // nothing to learn from: the identity on [0, 1]
    if (!pairs.empty()) {
      k = method == CalibrationMethod::Linear ? linear_knots(pairs) : isotonic_knots(pairs);
    }
    xs.push_back(std::move(k.x));
    ys.push_back(std::move(k.y));
  }
  return Calibration(std::move(xs), std::move(ys));
}

float Calibration::apply(std::size_t expert, float value) const {
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

void Calibration::apply(ScoreMatrix& quality) const {
  if (empty()) return;
  for (Eigen::Index r = 0; r < quality.rows(); ++r) {
    for (Eigen::Index e = 0; e < quality.cols(); ++e) {
      quality(r, e) = apply(static_cast<std::size_t>(e), quality(r, e));
    }
  }
}

TOROUTER_END_NAMESPACE
