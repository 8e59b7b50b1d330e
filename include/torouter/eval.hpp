// torouter/eval.hpp: the figures a router is judged by, as pure functions
// over matrices whose rows are prompts and whose columns are experts.
//
// The definitions are those of the shared datasets' README
// (../shared/data/README.md, "How a router is judged"): best expert (Q*, C*),
// oracle, random, a router's cost-quality curve as its cost weight lambda is
// swept, AIQ (RouterBench's area under the curve's upper convex hull), Q@C*,
// Q@x%, C@Q* and the share of the oracle's lead won back ("gap won").
//
//   Eigen::MatrixXd quality = ..., cost = ...;            // truth, prompts x experts
//   Eigen::MatrixXd predicted_quality = ..., predicted_cost = ...;  // the router's view
//   auto report = torouter::evaluate(names, quality, cost, predicted_quality, predicted_cost);
//   double aiq = report.router->aiq;
//   std::optional<double> pct = report.router->cost_at_best_quality_pct;  // nullopt: not reached
//   std::optional<double> ece = report.router->ece;  // picks at lambda = 0, 10 bins
//
// A trained router's view, exactly as it routes (columns in registry order):
//
//   torouter::RouterPredictions view = torouter::router_predictions(router, prompts);
//   auto report = torouter::evaluate(names, quality, cost, view.quality, view.cost);
//
// Means over prompts are summed in row order, so a router that picks the
// best expert on every prompt has exactly C* and Q*, and comparisons with
// budgets are exact (no tolerance).
//
// Calibration: `expected_calibration_error` and `reliability_bins` judge
// whether a predicted quality means the expected quality of the answer; the
// report's `router->ece` is that of the picks at lambda = 0.
//
// Evaluation picks as the router does. `pick_by_utility` ranks each row's
// experts with the utility policy's own `utility_of` and `ranks_before`
// (policy.hpp), and `router_predictions` reads a `Router`'s predicted quality
// and cost from `Router::route` itself (its clamping of quality to [0, 1],
// its CostModel, its registry order for ties). So for every prompt and every
// lambda, the pick of `pick_by_utility(router_predictions(router, prompts),
// lambda)` is the expert `router.route(prompt)` picks with that lambda_cost,
// no latency weight and no constraint; tests/eval_router_test.cpp checks it
// over whole sweeps.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <optional>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

class Router;

/// A mean quality and a mean cost (USD per query) over the evaluated prompts.
struct OperatingPoint {
  double quality = 0.0;
  double cost = 0.0;
};

/// One point of a router's cost-quality curve: its figures at one lambda.
struct CurvePoint {
  double lambda = 0.0;
  double quality = 0.0;
  double cost = 0.0;
};

/// The single expert with the highest mean quality (ties to the cheaper).
struct BestExpert {
  /// Column of the expert.
  std::size_t index = 0;
  /// Its mean quality, Q*.
  double quality = 0.0;
  /// Its mean cost, C*.
  double cost = 0.0;
};

/// How the lambda sweep of `cost_quality_curve` is laid out.
struct CurveOptions {
  /// Log-spaced lambda values after lambda = 0 (at least 2; the README asks
  /// for at least 100 in reported figures).
  std::size_t steps = 200;
};

/// Each expert alone: column means of `quality` and `cost`.
std::vector<OperatingPoint> expert_points(const Eigen::MatrixXd& quality,
                                          const Eigen::MatrixXd& cost);

/// The expert with the highest mean quality, ties to the lower mean cost,
/// then to the lower column.
BestExpert best_expert(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost);

/// Per prompt the highest quality, ties to the cheapest (then the lower column).
OperatingPoint oracle_point(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost);

/// Expected figures of a uniformly random pick: per prompt the mean over experts.
OperatingPoint random_point(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost);

/// Mean true quality and cost of one pick (a column) per prompt.
OperatingPoint evaluate_picks(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost,
                              const std::vector<std::size_t>& picks);

/// Per prompt the column of highest utility predicted_quality − lambda ×
/// predicted_cost, ties to the lower predicted cost, then to the lower column:
/// `UtilityPolicy`'s ranking (the same `utility_of` and `ranks_before`), the
/// column standing for the expert's registry index.
std::vector<std::size_t> pick_by_utility(const Eigen::MatrixXd& predicted_quality,
                                         const Eigen::MatrixXd& predicted_cost, double lambda);

/// The lambdas of a curve: 0 first, then `options.steps` values log-spaced
/// (geometric) from lambda_lo to lambda_hi, both included, where
/// - lambda_lo is the smallest lambda at which some prompt's pick differs
///   from its pick at lambda = 0 (below it every pick is the lambda = 0 one),
/// - lambda_hi is 1.01 × the smallest lambda from which every prompt picks
///   its cheapest predicted expert (beyond it nothing changes; the 1% margin
///   keeps rounding from leaving a prompt on the tie).
/// Both are exact breakpoints of the piecewise-constant picks, computed per
/// prompt from pairs of experts. When lambda = 0 already picks the cheapest
/// everywhere the sweep is {0} alone.
std::vector<double> lambda_sweep(const Eigen::MatrixXd& predicted_quality,
                                 const Eigen::MatrixXd& predicted_cost,
                                 const CurveOptions& options = {});

/// The router's curve: at every lambda of `lambda_sweep`, the true mean
/// quality and cost of `pick_by_utility`'s picks.
std::vector<CurvePoint> cost_quality_curve(const Eigen::MatrixXd& quality,
                                           const Eigen::MatrixXd& cost,
                                           const Eigen::MatrixXd& predicted_quality,
                                           const Eigen::MatrixXd& predicted_cost,
                                           const CurveOptions& options = {});

/// The (cost, quality) of each curve point.
std::vector<OperatingPoint> curve_points(const std::vector<CurvePoint>& curve);

/// Upper convex hull of `points`, by increasing cost, cut after its highest
/// quality so that it is non-decreasing. Of points with equal cost only the
/// best counts; points on a hull edge are dropped.
std::vector<OperatingPoint> upper_hull(std::vector<OperatingPoint> points);

/// RouterBench's AIQ: the area under `upper_hull(points)` over [c_min, c_max]
/// divided by c_max − c_min, the hull counting 0 left of its cheapest point,
/// linear between its points and its dearest point's quality right of it.
/// When c_max == c_min it is the hull's value at c_min. Throws `Error` for no
/// points or c_max < c_min.
double aiq(const std::vector<OperatingPoint>& points, double c_min, double c_max);

/// Highest quality of a curve point whose cost is at most `budget`; nullopt
/// when every point costs more.
std::optional<double> quality_at_cost(const std::vector<CurvePoint>& curve, double budget);

/// Lowest cost of a curve point whose quality is at least `target`; nullopt
/// when no point reaches it.
std::optional<double> cost_at_quality(const std::vector<CurvePoint>& curve, double target);

/// One bin of a reliability diagram: the prompts whose predicted quality p
/// falls in [lower, upper) (the last bin also takes p = 1).
struct ReliabilityBin {
  double lower = 0.0;
  double upper = 0.0;
  /// Prompts in the bin.
  std::size_t count = 0;
  /// Mean predicted quality p and mean true quality q of those prompts; 0
  /// when the bin is empty.
  double mean_predicted = 0.0;
  double mean_observed = 0.0;
};

/// Reliability diagram of predictions `predicted` against outcomes
/// `observed` (one per prompt): `bins` equal-width bins over [0, 1], p in
/// bin floor(p × bins), p = 1 in the last. A p outside [0, 1] is refused
/// (`Error`), not clamped: it is no expected quality, and clamping would
/// hide a scorer's bug behind a plausible figure. Also throws for no
/// prompts, sizes that differ, a non-finite value or `bins` = 0.
std::vector<ReliabilityBin> reliability_bins(const Eigen::VectorXd& predicted,
                                             const Eigen::VectorXd& observed,
                                             std::size_t bins = 10);

/// The same for one pick (a column) per prompt: p = predicted_quality and
/// q = quality at the picked column of each row.
std::vector<ReliabilityBin> reliability_bins(const Eigen::MatrixXd& quality,
                                             const Eigen::MatrixXd& predicted_quality,
                                             const std::vector<std::size_t>& picks,
                                             std::size_t bins = 10);

/// ECE of a reliability diagram: the sum over bins of (count / n) ×
/// |mean_predicted − mean_observed|, n the prompts in all bins. 0 is
/// perfectly calibrated. Throws `Error` when every bin is empty.
double expected_calibration_error(const std::vector<ReliabilityBin>& bins);

/// ECE as the shared README defines it: `picks` are the router's picks at
/// lambda = 0, binned by their predicted quality into `bins` (10 there)
/// equal-width bins. Throws as `reliability_bins` does.
double expected_calibration_error(const Eigen::MatrixXd& quality,
                                  const Eigen::MatrixXd& predicted_quality,
                                  const std::vector<std::size_t>& picks, std::size_t bins = 10);

/// The figures that need no router, on one set of prompts.
struct Baselines {
  /// Each expert alone, by column.
  std::vector<OperatingPoint> experts;
  /// Q* and C*.
  BestExpert best;
  /// Per prompt the best answer.
  OperatingPoint oracle;
  /// Expected value of a uniformly random pick.
  OperatingPoint random;
  /// The cheapest and the dearest expert's mean cost: AIQ's cost range.
  double c_min = 0.0;
  double c_max = 0.0;
  /// AIQ of the experts alone (each expert one point of the hull).
  double experts_aiq = 0.0;
};

/// Every baseline figure of true `quality` and `cost`.
Baselines compute_baselines(const Eigen::MatrixXd& quality, const Eigen::MatrixXd& cost);

/// A router's figures, from its curve.
struct RouterFigures {
  /// The swept curve, lambda = 0 first.
  std::vector<CurvePoint> curve;
  /// The curve's first point: the router at its most accurate.
  CurvePoint at_lambda0;
  /// AIQ of the curve over the experts' cost range.
  double aiq = 0.0;
  /// Q@C*: best quality at cost <= C*; nullopt when no point is that cheap.
  std::optional<double> quality_at_best_cost;
  /// C@Q*: lowest cost reaching Q*, in percent of C*; nullopt: not reached.
  std::optional<double> cost_at_best_quality_pct;
  /// (Q@C* − Q*) / (Q_oracle − Q*); nullopt when Q@C* is absent or the
  /// oracle does not beat the best expert.
  std::optional<double> gap_won;
  /// Q@10%, Q@30%, Q@70%: best quality at cost <= x × C*.
  std::optional<double> quality_at_10pct;
  std::optional<double> quality_at_30pct;
  std::optional<double> quality_at_70pct;
  /// ECE of the lambda = 0 picks, 10 bins (`expected_calibration_error`);
  /// nullopt when a picked prediction is outside [0, 1] (never for
  /// `router_predictions`, which are clamped as the router clamps them).
  std::optional<double> ece;
  /// The 10 bins behind `ece`; empty when `ece` is nullopt.
  std::vector<ReliabilityBin> reliability;
};

/// The figures of a router whose curve is `curve` against `baselines`.
/// Throws `Error` when the curve is empty.
RouterFigures router_figures(std::vector<CurvePoint> curve, const Baselines& baselines);

/// Everything reported for one router on one set of prompts.
struct EvalReport {
  /// Expert names, by column.
  std::vector<std::string> experts;
  /// Prompts evaluated.
  std::size_t rows = 0;
  /// Experts alone, best expert, oracle, random.
  Baselines baselines;
  /// The router's figures; absent in a report of the baselines alone.
  std::optional<RouterFigures> router;
};

/// The baselines alone. Throws `Error` when the names do not match the columns.
EvalReport evaluate(const std::vector<std::string>& experts, const Eigen::MatrixXd& quality,
                    const Eigen::MatrixXd& cost);

/// The baselines and the router whose predictions are given, swept by
/// `cost_quality_curve`, with the ECE of its lambda = 0 picks: of their
/// `pick_quality` when given (one per prompt, the quality the router reports
/// for that pick, `RouterPredictions::expected_quality`), else of their
/// predicted quality. Throws `Error` when shapes differ or a value is not
/// finite.
EvalReport evaluate(const std::vector<std::string>& experts, const Eigen::MatrixXd& quality,
                    const Eigen::MatrixXd& cost, const Eigen::MatrixXd& predicted_quality,
                    const Eigen::MatrixXd& predicted_cost, const CurveOptions& options = {},
                    const Eigen::VectorXd* pick_quality = nullptr);

/// A router's own predictions for some prompts, rows x its registry's experts.
struct RouterPredictions {
  /// Predicted quality, as `Router::route` puts it in its candidates
  /// (clamped to [0, 1], a NaN counting 0).
  Eigen::MatrixXd quality;
  /// Predicted USD per query from the router's `CostModel` (estimated input
  /// tokens, predicted output tokens or its default, the registry's prices).
  Eigen::MatrixXd cost;
  /// Per prompt, the expected quality of the lambda = 0 pick
  /// (`RouteDecision::expected_quality`).
  Eigen::VectorXd expected_quality;
};

/// What `router.route` predicts for each prompt (lambda 0, no constraint),
/// column j being the expert `router.experts()[j]`. Throws `Error` when the
/// router's policy is not a `UtilityPolicy`, or when it excludes an expert
/// (disabled, cooling down, context window): evaluation lets every expert be
/// picked, so it would no longer pick as the router does.
RouterPredictions router_predictions(const Router& router,
                                     const std::vector<std::string_view>& prompts);

TOROUTER_END_NAMESPACE
