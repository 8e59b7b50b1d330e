// The evaluation figures of ../shared/data/README.md ("How a router is
// judged"). Means are plain sums in row order divided by the row count, the
// same code for experts, picks and the oracle, so that a router picking what
// the best expert picks gets bit-identical figures.
#include "torouter/eval.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <limits>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/policy.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

using Index = Eigen::Index;

void require_finite(const Eigen::MatrixXd& m, const char* what) {
  if (!m.allFinite()) throw Error(fmt::format("{}: every value must be finite", what));
}

// Checks that `a` and `b` are the same non-empty shape.
void require_pair(const Eigen::MatrixXd& a, const Eigen::MatrixXd& b, const char* what_a,
                  const char* what_b) {
  if (a.rows() == 0 || a.cols() == 0) {
    throw Error(fmt::format("{}: needs at least one prompt and one expert", what_a));
  }
  if (a.rows() != b.rows() || a.cols() != b.cols()) {
    throw Error(fmt::format("{} is {}x{} but {} is {}x{}", what_a, a.rows(), a.cols(), what_b,
                            b.rows(), b.cols()));
  }
  require_finite(a, what_a);
  require_finite(b, what_b);
}

void require_truth(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost) {
  require_pair(quality, cost, "quality", "cost");
}

// Column `j` of `m` summed in row order and divided by the row count.
double column_mean(const Eigen::MatrixXd& m, Index j) {
  double sum = 0.0;
  for (Index i = 0; i < m.rows(); ++i) sum += m(i, j);
  return sum / static_cast<double>(m.rows());
}

// True when (quality a, cost a) beats (quality b, cost b): higher quality,
// then lower cost. The lower column wins the remaining ties by scanning order.
bool better(double quality_a, double cost_a, double quality_b, double cost_b) {
  return quality_a > quality_b || (quality_a == quality_b && cost_a < cost_b);
}

// Column of highest utility on row `i`, ties to the lower predicted cost,
// then the lower column. Each column becomes a `Candidate` ranked by the
// utility policy's own `utility_of` and `ranks_before`, so that evaluation
// cannot pick otherwise than `Router::route` on the same predictions.
Index pick_row(const Eigen::MatrixXd& pq, const Eigen::MatrixXd& pc, Index i, double lambda) {
  PolicyOptions options;
  options.lambda_cost = lambda;
  Candidate best;
  Candidate c;
  for (Index j = 0; j < pq.cols(); ++j) {
    c.expert_index = static_cast<std::size_t>(j);
    c.predicted_quality = pq(i, j);
    c.cost_usd = pc(i, j);
    c.utility = utility_of(c, options);
    if (j == 0 || ranks_before(c, best)) best = c;
  }
  return static_cast<Index>(best.expert_index);
}

// Checks one pick per row of `m`, each a column of it.
void require_picks(const Eigen::MatrixXd& m, const std::vector<std::size_t>& picks) {
  if (picks.size() != static_cast<std::size_t>(m.rows())) {
    throw Error(fmt::format("picks: {} given for {} prompts", picks.size(), m.rows()));
  }
  for (std::size_t i = 0; i < picks.size(); ++i) {
    if (picks[i] >= static_cast<std::size_t>(m.cols())) {
      throw Error(fmt::format("picks[{}]: expert {} of {}", i, picks[i], m.cols()));
    }
  }
}

// The value of each row's pick.
Eigen::VectorXd picked(const Eigen::MatrixXd& m, const std::vector<std::size_t>& picks) {
  Eigen::VectorXd out(m.rows());
  for (Index i = 0; i < m.rows(); ++i) {
    out(i) = m(i, static_cast<Index>(picks[static_cast<std::size_t>(i)]));
  }
  return out;
}

// Column a sweep ends on for row `i`: the cheapest predicted, ties to the
// higher predicted quality (what pick_row returns for any large lambda).
Index cheapest_row(const Eigen::MatrixXd& pq, const Eigen::MatrixXd& pc, Index i) {
  Index best = 0;
  for (Index j = 1; j < pq.cols(); ++j) {
    if (pc(i, j) < pc(i, best) || (pc(i, j) == pc(i, best) && pq(i, j) > pq(i, best))) best = j;
  }
  return best;
}

// Value at `x` of the non-decreasing hull: 0 left of it, linear inside,
// its last quality right of it.
double hull_value(const std::vector<OperatingPoint>& hull, double x) {
  if (x < hull.front().cost) return 0.0;
  if (x >= hull.back().cost) return hull.back().quality;
  for (std::size_t k = 1; k < hull.size(); ++k) {
    if (x <= hull[k].cost) {
      const OperatingPoint& a = hull[k - 1];
      const OperatingPoint& b = hull[k];
      return a.quality + (b.quality - a.quality) * (x - a.cost) / (b.cost - a.cost);
    }
  }
  return hull.back().quality;
}

}  // namespace

std::vector<OperatingPoint> expert_points(const Eigen::MatrixXd& quality,
                                          const Eigen::MatrixXd& cost) {
  require_truth(quality, cost);
  std::vector<OperatingPoint> out;
  for (Index j = 0; j < quality.cols(); ++j) {
    out.push_back({column_mean(quality, j), column_mean(cost, j)});
  }
  return out;
}

BestExpert best_expert(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost) {
  const auto points = expert_points(quality, cost);
  std::size_t best = 0;
  for (std::size_t j = 1; j < points.size(); ++j) {
    if (better(points[j].quality, points[j].cost, points[best].quality, points[best].cost)) {
      best = j;
    }
  }
  return {best, points[best].quality, points[best].cost};
}

OperatingPoint oracle_point(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost) {
  require_truth(quality, cost);
  // The oracle is pick_row on the truth at lambda = 0: highest quality, ties
  // to the cheapest.
  std::vector<std::size_t> picks(static_cast<std::size_t>(quality.rows()));
  for (Index i = 0; i < quality.rows(); ++i) {
    picks[static_cast<std::size_t>(i)] = static_cast<std::size_t>(pick_row(quality, cost, i, 0.0));
  }
  return evaluate_picks(quality, cost, picks);
}

OperatingPoint random_point(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost) {
  require_truth(quality, cost);
  double quality_sum = 0.0;
  double cost_sum = 0.0;
  const auto experts = static_cast<double>(quality.cols());
  for (Index i = 0; i < quality.rows(); ++i) {
    double row_quality = 0.0;
    double row_cost = 0.0;
    for (Index j = 0; j < quality.cols(); ++j) {
      row_quality += quality(i, j);
      row_cost += cost(i, j);
    }
    quality_sum += row_quality / experts;
    cost_sum += row_cost / experts;
  }
  const auto rows = static_cast<double>(quality.rows());
  return {quality_sum / rows, cost_sum / rows};
}

OperatingPoint evaluate_picks(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost,
                              const std::vector<std::size_t>& picks) {
  require_truth(quality, cost);
  require_picks(quality, picks);
  double quality_sum = 0.0;
  double cost_sum = 0.0;
  for (Index i = 0; i < quality.rows(); ++i) {
    const auto j = static_cast<Index>(picks[static_cast<std::size_t>(i)]);
    quality_sum += quality(i, j);
    cost_sum += cost(i, j);
  }
  const auto rows = static_cast<double>(quality.rows());
  return {quality_sum / rows, cost_sum / rows};
}

std::vector<std::size_t> pick_by_utility(const Eigen::MatrixXd& predicted_quality,
                                         const Eigen::MatrixXd& predicted_cost, double lambda) {
  require_pair(predicted_quality, predicted_cost, "predicted_quality", "predicted_cost");
  std::vector<std::size_t> picks(static_cast<std::size_t>(predicted_quality.rows()));
  for (Index i = 0; i < predicted_quality.rows(); ++i) {
    picks[static_cast<std::size_t>(i)] =
        static_cast<std::size_t>(pick_row(predicted_quality, predicted_cost, i, lambda));
  }
  return picks;
}

std::vector<double> lambda_sweep(const Eigen::MatrixXd& predicted_quality,
                                 const Eigen::MatrixXd& predicted_cost,
                                 const CurveOptions& options) {
  const auto& pq = predicted_quality;
  const auto& pc = predicted_cost;
  require_pair(pq, pc, "predicted_quality", "predicted_cost");
  if (options.steps < 2) throw Error("CurveOptions::steps must be at least 2");

  // Per prompt: the pick at lambda = 0 (a) first yields to a cheaper expert j
  // at (pq_a - pq_j) / (pc_a - pc_j); the cheapest (c) has beaten every
  // dearer expert j once lambda >= (pq_j - pq_c) / (pc_j - pc_c).
  double lowest = std::numeric_limits<double>::infinity();
  double highest = 0.0;
  for (Index i = 0; i < pq.rows(); ++i) {
    const Index a = pick_row(pq, pc, i, 0.0);
    const Index c = cheapest_row(pq, pc, i);
    if (a == c) continue;
    for (Index j = 0; j < pq.cols(); ++j) {
      if (pc(i, j) < pc(i, a)) {
        lowest = std::min(lowest, (pq(i, a) - pq(i, j)) / (pc(i, a) - pc(i, j)));
      }
      if (pc(i, j) > pc(i, c)) {
        highest = std::max(highest, (pq(i, j) - pq(i, c)) / (pc(i, j) - pc(i, c)));
      }
    }
  }
  std::vector<double> lambdas{0.0};
  if (!(highest > 0.0) || !std::isfinite(lowest)) return lambdas;  // lambda = 0 is cheapest
  highest *= 1.01;
  lowest = std::min(lowest, highest);
  const double ratio = std::log(highest / lowest);
  const auto last = static_cast<double>(options.steps - 1);
  for (std::size_t k = 0; k < options.steps; ++k) {
    lambdas.push_back(lowest * std::exp(ratio * static_cast<double>(k) / last));
  }
  return lambdas;
}

std::vector<CurvePoint> cost_quality_curve(const Eigen::MatrixXd& quality,
                                           const Eigen::MatrixXd& cost,
                                           const Eigen::MatrixXd& predicted_quality,
                                           const Eigen::MatrixXd& predicted_cost,
                                           const CurveOptions& options) {
  require_truth(quality, cost);
  require_pair(quality, predicted_quality, "quality", "predicted_quality");
  const auto lambdas = lambda_sweep(predicted_quality, predicted_cost, options);
  std::vector<CurvePoint> curve;
  curve.reserve(lambdas.size());
  for (double lambda : lambdas) {
    const auto point =
        evaluate_picks(quality, cost, pick_by_utility(predicted_quality, predicted_cost, lambda));
    curve.push_back({lambda, point.quality, point.cost});
  }
  return curve;
}

std::vector<OperatingPoint> curve_points(const std::vector<CurvePoint>& curve) {
  std::vector<OperatingPoint> out;
  out.reserve(curve.size());
  for (const auto& p : curve) out.push_back({p.quality, p.cost});
  return out;
}

std::vector<OperatingPoint> upper_hull(std::vector<OperatingPoint> points) {
  // By cost, and at equal cost best first, so that only the best is kept.
  std::sort(points.begin(), points.end(), [](const OperatingPoint& a, const OperatingPoint& b) {
    return a.cost < b.cost || (a.cost == b.cost && a.quality > b.quality);
  });
  std::vector<OperatingPoint> hull;
  for (const auto& p : points) {
    if (!hull.empty() && hull.back().cost == p.cost) continue;
    // Drop the last point while it lies on or below the segment from the
    // one before it to p (Andrew's monotone chain, upper half).
    while (hull.size() >= 2) {
      const OperatingPoint& a = hull[hull.size() - 2];
      const OperatingPoint& b = hull.back();
      const double cross =
          (b.cost - a.cost) * (p.quality - a.quality) - (b.quality - a.quality) * (p.cost - a.cost);
      if (cross < 0.0) break;
      hull.pop_back();
    }
    hull.push_back(p);
  }
  // An upper hull rises then falls; spending more for less is never chosen,
  // so the falling part goes.
  std::size_t top = 0;
  for (std::size_t k = 1; k < hull.size(); ++k) {
    if (hull[k].quality > hull[top].quality) top = k;
  }
  hull.resize(std::min(hull.size(), top + 1));
  return hull;
}

double aiq(const std::vector<OperatingPoint>& points, double c_min, double c_max) {
  if (points.empty()) throw Error("aiq: no points");
  if (!(c_max >= c_min)) throw Error(fmt::format("aiq: c_max {} < c_min {}", c_max, c_min));
  const auto hull = upper_hull(points);
  if (c_max == c_min) return hull_value(hull, c_min);

  // Exact integral of the piecewise-linear hull: trapezoids between the
  // hull's points inside [c_min, c_max], then its last quality to the right.
  double area = 0.0;
  const double from = std::max(c_min, hull.front().cost);
  const double to = std::min(c_max, hull.back().cost);
  if (from < to) {
    double x = from;
    double y = hull_value(hull, from);
    for (const auto& p : hull) {
      if (p.cost <= from) continue;
      const double next_x = std::min(p.cost, to);
      const double next_y = hull_value(hull, next_x);
      area += (y + next_y) / 2.0 * (next_x - x);
      x = next_x;
      y = next_y;
      if (next_x >= to) break;
    }
  }
  const double flat_from = std::max(c_min, hull.back().cost);
  if (flat_from < c_max) area += hull.back().quality * (c_max - flat_from);
  return area / (c_max - c_min);
}

std::optional<double> quality_at_cost(const std::vector<CurvePoint>& curve, double budget) {
  std::optional<double> best;
  for (const auto& p : curve) {
    if (p.cost <= budget && (!best || p.quality > *best)) best = p.quality;
  }
  return best;
}

std::optional<double> cost_at_quality(const std::vector<CurvePoint>& curve, double target) {
  std::optional<double> best;
  for (const auto& p : curve) {
    if (p.quality >= target && (!best || p.cost < *best)) best = p.cost;
  }
  return best;
}

std::vector<ReliabilityBin> reliability_bins(const Eigen::VectorXd& predicted,
                                             const Eigen::VectorXd& observed, std::size_t bins) {
  if (bins == 0) throw Error("reliability_bins: needs at least one bin");
  if (predicted.size() == 0) throw Error("reliability_bins: no prompts");
  if (predicted.size() != observed.size()) {
    throw Error(fmt::format("reliability_bins: {} predictions for {} outcomes", predicted.size(),
                            observed.size()));
  }
  const auto width = static_cast<double>(bins);
  std::vector<ReliabilityBin> out(bins);
  for (std::size_t k = 0; k < bins; ++k) {
    out[k].lower = static_cast<double>(k) / width;
    out[k].upper = static_cast<double>(k + 1) / width;
  }
  // Sums first, means after: mean_* hold sums until the last loop.
  for (Index i = 0; i < predicted.size(); ++i) {
    const double p = predicted(i);
    if (!(p >= 0.0 && p <= 1.0)) {  // NaN fails too
      throw Error(fmt::format(
          "reliability_bins: predicted quality {} of prompt {} is outside [0, 1]", p, i));
    }
    if (!std::isfinite(observed(i))) {
      throw Error(fmt::format("reliability_bins: quality of prompt {} is not finite", i));
    }
    ReliabilityBin& bin = out[std::min(bins - 1, static_cast<std::size_t>(p * width))];
    ++bin.count;
    bin.mean_predicted += p;
    bin.mean_observed += observed(i);
  }
  for (auto& bin : out) {
    if (bin.count == 0) continue;
    bin.mean_predicted /= static_cast<double>(bin.count);
    bin.mean_observed /= static_cast<double>(bin.count);
  }
  return out;
}

std::vector<ReliabilityBin> reliability_bins(const Eigen::MatrixXd& quality,
                                             const Eigen::MatrixXd& predicted_quality,
                                             const std::vector<std::size_t>& picks,
                                             std::size_t bins) {
  require_pair(quality, predicted_quality, "quality", "predicted_quality");
  require_picks(quality, picks);
  return reliability_bins(picked(predicted_quality, picks), picked(quality, picks), bins);
}

double expected_calibration_error(const std::vector<ReliabilityBin>& bins) {
  std::size_t n = 0;
  for (const auto& bin : bins) n += bin.count;
  if (n == 0) throw Error("expected_calibration_error: every bin is empty");
  double ece = 0.0;
  for (const auto& bin : bins) {
    const double share = static_cast<double>(bin.count) / static_cast<double>(n);
    ece += share * std::abs(bin.mean_predicted - bin.mean_observed);
  }
  return ece;
}

double expected_calibration_error(const Eigen::MatrixXd& quality,
                                  const Eigen::MatrixXd& predicted_quality,
                                  const std::vector<std::size_t>& picks, std::size_t bins) {
  return expected_calibration_error(reliability_bins(quality, predicted_quality, picks, bins));
}

Baselines compute_baselines(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost) {
  Baselines b;
  b.experts = expert_points(quality, cost);
  b.best = best_expert(quality, cost);
  b.oracle = oracle_point(quality, cost);
  b.random = random_point(quality, cost);
  b.c_min = b.experts.front().cost;
  b.c_max = b.experts.front().cost;
  for (const auto& e : b.experts) {
    b.c_min = std::min(b.c_min, e.cost);
    b.c_max = std::max(b.c_max, e.cost);
  }
  b.experts_aiq = aiq(b.experts, b.c_min, b.c_max);
  return b;
}

RouterFigures router_figures(std::vector<CurvePoint> curve, const Baselines& baselines) {
  if (curve.empty()) throw Error("router_figures: empty curve");
  RouterFigures f;
  f.at_lambda0 = curve.front();
  f.aiq = aiq(curve_points(curve), baselines.c_min, baselines.c_max);
  const double q_star = baselines.best.quality;
  const double c_star = baselines.best.cost;
  f.quality_at_best_cost = quality_at_cost(curve, c_star);
  if (const auto c = cost_at_quality(curve, q_star); c && c_star > 0.0) {
    f.cost_at_best_quality_pct = *c / c_star * 100.0;
  }
  if (f.quality_at_best_cost && baselines.oracle.quality > q_star) {
    f.gap_won = (*f.quality_at_best_cost - q_star) / (baselines.oracle.quality - q_star);
  }
  f.quality_at_10pct = quality_at_cost(curve, 0.10 * c_star);
  f.quality_at_30pct = quality_at_cost(curve, 0.30 * c_star);
  f.quality_at_70pct = quality_at_cost(curve, 0.70 * c_star);
  f.curve = std::move(curve);
  return f;
}

EvalReport evaluate(const std::vector<std::string>& experts, const Eigen::MatrixXd& quality,
                    const Eigen::MatrixXd& cost) {
  require_truth(quality, cost);
  if (experts.size() != static_cast<std::size_t>(quality.cols())) {
    throw Error(
        fmt::format("evaluate: {} expert names for {} columns", experts.size(), quality.cols()));
  }
  EvalReport report;
  report.experts = experts;
  report.rows = static_cast<std::size_t>(quality.rows());
  report.baselines = compute_baselines(quality, cost);
  return report;
}

EvalReport evaluate(const std::vector<std::string>& experts, const Eigen::MatrixXd& quality,
                    const Eigen::MatrixXd& cost, const Eigen::MatrixXd& predicted_quality,
                    const Eigen::MatrixXd& predicted_cost, const CurveOptions& options,
                    const Eigen::VectorXd* pick_quality) {
  EvalReport report = evaluate(experts, quality, cost);
  report.router =
      router_figures(cost_quality_curve(quality, cost, predicted_quality, predicted_cost, options),
                     report.baselines);
  // Calibration of the picks at lambda = 0, the curve's first point. A
  // prediction outside [0, 1] has no ECE; the rest of the report stands.
  const auto picks = pick_by_utility(predicted_quality, predicted_cost, 0.0);
  if (pick_quality != nullptr && pick_quality->size() != quality.rows()) {
    throw Error(fmt::format("pick_quality: {} values for {} prompts", pick_quality->size(),
                            quality.rows()));
  }
  const Eigen::VectorXd p = pick_quality ? *pick_quality : picked(predicted_quality, picks);
  if (p.allFinite() && p.minCoeff() >= 0.0 && p.maxCoeff() <= 1.0) {
    report.router->reliability = reliability_bins(p, picked(quality, picks));
    report.router->ece = expected_calibration_error(report.router->reliability);
  }
  return report;
}

TOROUTER_END_NAMESPACE
