// Evaluation figures: a toy dataset whose every figure was computed by hand
// (the arithmetic is in the comments), edge cases of the hull and AIQ, and
// the README's reference figures on the shared datasets.
#include "torouter/eval.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>
#include <vector>

#include "support/data_dir.hpp"
#include "torouter/dataset.hpp"
#include "torouter/error.hpp"

namespace {

constexpr double kTol = 1e-12;

// Toy dataset: 4 prompts (rows) x 3 experts A, B, C (columns).
//
// True quality          True cost          Predicted quality   Predicted cost
//      A    B    C          A   B   C           A    B    C         A   B   C
// p1   0   .5    1          1   2   4          .2   .6   .9         1   2   3.5
// p2   1    1    1          1   2   4          .8   .7   .9         1   2   3.5
// p3   0   .5    1          1   2   2          .1   .3   .9         1   2   3.5
// p4   0    1    0          1   2   4          .3   .8   .6         1   2   3.5
//
// The predicted cost is each expert's mean true cost, as the README's
// reference routers use it.
Eigen::MatrixXd toy_quality() {
  Eigen::MatrixXd m(4, 3);
  m << 0, .5, 1,  //
      1, 1, 1,    //
      0, .5, 1,   //
      0, 1, 0;
  return m;
}

Eigen::MatrixXd toy_cost() {
  Eigen::MatrixXd m(4, 3);
  m << 1, 2, 4,  //
      1, 2, 4,   //
      1, 2, 2,   //
      1, 2, 4;
  return m;
}

Eigen::MatrixXd toy_predicted_quality() {
  Eigen::MatrixXd m(4, 3);
  m << .2, .6, .9,  //
      .8, .7, .9,   //
      .1, .3, .9,   //
      .3, .8, .6;
  return m;
}

Eigen::MatrixXd toy_predicted_cost() {
  Eigen::MatrixXd m(4, 3);
  m << 1, 2, 3.5,  //
      1, 2, 3.5,   //
      1, 2, 3.5,   //
      1, 2, 3.5;
  return m;
}

bool same_point(const torouter::CurvePoint& p, double cost, double quality) {
  return std::abs(p.cost - cost) < kTol && std::abs(p.quality - quality) < kTol;
}

}  // namespace

TEST_CASE("toy: experts alone, best expert, oracle, random", "[eval]") {
  const auto q = toy_quality();
  const auto c = toy_cost();

  // Column means. A: quality (0+1+0+0)/4 = .25, cost 4/4 = 1.
  // B: quality (.5+1+.5+1)/4 = .75, cost 8/4 = 2.
  // C: quality (1+1+1+0)/4 = .75, cost (4+4+2+4)/4 = 3.5.
  const auto experts = torouter::expert_points(q, c);
  REQUIRE(experts.size() == 3);
  CHECK(experts[0].quality == Approx(.25).margin(kTol));
  CHECK(experts[0].cost == Approx(1.0).margin(kTol));
  CHECK(experts[1].quality == Approx(.75).margin(kTol));
  CHECK(experts[1].cost == Approx(2.0).margin(kTol));
  CHECK(experts[2].quality == Approx(.75).margin(kTol));
  CHECK(experts[2].cost == Approx(3.5).margin(kTol));

  // B and C tie at .75: the cheaper, B, is the best expert. Q* = .75, C* = 2.
  const auto best = torouter::best_expert(q, c);
  CHECK(best.index == 1);
  CHECK(best.quality == Approx(.75).margin(kTol));
  CHECK(best.cost == Approx(2.0).margin(kTol));

  // Oracle: p1 C (1, cost 4); p2 A, B and C all 1, the cheapest is A (cost 1);
  // p3 C (1, cost 2); p4 B (1, cost 2). Quality 4/4 = 1, cost 9/4 = 2.25.
  const auto oracle = torouter::oracle_point(q, c);
  CHECK(oracle.quality == Approx(1.0).margin(kTol));
  CHECK(oracle.cost == Approx(2.25).margin(kTol));

  // Random: per-prompt mean quality .5, 1, .5, 1/3 -> (7/3)/4 = 7/12;
  // per-prompt mean cost 7/3, 7/3, 5/3, 7/3 -> (26/3)/4 = 13/6.
  const auto random = torouter::random_point(q, c);
  CHECK(random.quality == Approx(7.0 / 12.0).margin(kTol));
  CHECK(random.cost == Approx(13.0 / 6.0).margin(kTol));

  // Picks of B everywhere are the best expert, bit for bit.
  const auto all_b = torouter::evaluate_picks(q, c, {1, 1, 1, 1});
  CHECK(all_b.quality == best.quality);
  CHECK(all_b.cost == best.cost);
  // Picks C, A, C, B (the oracle's): quality 1, cost (4+1+2+2)/4 = 2.25.
  const auto oracle_picks = torouter::evaluate_picks(q, c, {2, 0, 2, 1});
  CHECK(oracle_picks.quality == Approx(1.0).margin(kTol));
  CHECK(oracle_picks.cost == Approx(2.25).margin(kTol));

  // Experts alone: points (1, .25), (2, .75), (3.5, .75). B lies above the
  // chord from A to C (.25 + .5 * 1/2.5 = .45 at cost 2), so the upper hull is
  // A, B, C; made non-decreasing it stops at B (C adds no quality).
  // AIQ over [c_min, c_max] = [1, 3.5]:
  //   [1, 2]   trapezoid (.25 + .75) / 2 * 1 = .5
  //   [2, 3.5] flat .75 * 1.5               = 1.125
  //   (.5 + 1.125) / 2.5 = .65
  const auto baselines = torouter::compute_baselines(q, c);
  CHECK(baselines.c_min == 1.0);
  CHECK(baselines.c_max == 3.5);
  CHECK(baselines.experts_aiq == Approx(.65).margin(kTol));
  const auto hull = torouter::upper_hull(experts);
  REQUIRE(hull.size() == 2);
  CHECK(hull[0].cost == 1.0);
  CHECK(hull[1].cost == 2.0);
}

TEST_CASE("toy: the router's picks along lambda", "[eval]") {
  const auto pq = toy_predicted_quality();
  const auto pc = toy_predicted_cost();
  // Utilities u = pq - lambda * pc; each prompt's picks change at:
  //   p1: C (.9-3.5l) meets B (.6-2l) at .3/1.5 = .2; B meets A (.2-l) at .4/1 = .4.
  //   p2: C meets A (.8-l) at .1/2.5 = .04 (B, .7-2l, never beats A).
  //   p3: C meets A (.1-l) at .8/2.5 = .32, before B (.3-2l; C meets B at .4).
  //   p4: B (.8-2l) meets A (.3-l) at .5/1 = .5 (C, .6-3.5l, never wins).
  using Picks = std::vector<std::size_t>;
  CHECK(torouter::pick_by_utility(pq, pc, 0.0) == Picks{2, 2, 2, 1});
  CHECK(torouter::pick_by_utility(pq, pc, 0.1) == Picks{2, 0, 2, 1});
  CHECK(torouter::pick_by_utility(pq, pc, 0.25) == Picks{1, 0, 2, 1});
  CHECK(torouter::pick_by_utility(pq, pc, 0.35) == Picks{1, 0, 0, 1});
  CHECK(torouter::pick_by_utility(pq, pc, 0.45) == Picks{0, 0, 0, 1});
  CHECK(torouter::pick_by_utility(pq, pc, 0.6) == Picks{0, 0, 0, 0});

  // Equal utilities go to the lower predicted cost.
  Eigen::MatrixXd tie_q(1, 2);
  Eigen::MatrixXd tie_c(1, 2);
  tie_q << .5, .5;
  tie_c << 2, 1;
  CHECK(torouter::pick_by_utility(tie_q, tie_c, 0.0) == Picks{1});
}

TEST_CASE("toy: the lambda sweep", "[eval]") {
  const auto pq = toy_predicted_quality();
  const auto pc = toy_predicted_cost();
  // lambda_lo: the first change of any prompt's lambda = 0 pick:
  //   min(p1 .2, p2 .04, p3 .32, p4 .5) = .04.
  // lambda_hi: from where every prompt picks A, its cheapest:
  //   p1 max(B .4/1, C .7/2.5) = .4; p2 max(B -.1, C .1/2.5) = .04;
  //   p3 max(B .2/1, C .8/2.5) = .32; p4 max(B .5/1, C .3/2.5) = .5
  //   -> .5, times 1.01 = .505.
  const auto lambdas = torouter::lambda_sweep(pq, pc);
  REQUIRE(lambdas.size() == 201);  // 0, then 200 log-spaced
  CHECK(lambdas[0] == 0.0);
  CHECK(lambdas[1] == Approx(.04).epsilon(1e-12));
  CHECK(lambdas[200] == Approx(.505).epsilon(1e-12));
  const double step = std::log(.505 / .04) / 199.0;
  for (std::size_t k = 2; k < lambdas.size(); ++k) {
    CHECK(std::log(lambdas[k] / lambdas[k - 1]) == Approx(step).epsilon(1e-9));
  }

  torouter::CurveOptions options;
  options.steps = 100;
  CHECK(torouter::lambda_sweep(pq, pc, options).size() == 101);
  options.steps = 1;
  CHECK_THROWS_AS(torouter::lambda_sweep(pq, pc, options), torouter::Error);

  // A router whose most accurate pick is already the cheapest sweeps nothing.
  Eigen::MatrixXd q(1, 2);
  Eigen::MatrixXd c(1, 2);
  q << .9, .5;
  c << 1, 2;
  CHECK(torouter::lambda_sweep(q, c) == std::vector<double>{0.0});
}

TEST_CASE("toy: the router's curve and figures", "[eval]") {
  const auto q = toy_quality();
  const auto c = toy_cost();
  const auto pq = toy_predicted_quality();
  const auto pc = toy_predicted_cost();

  // Picks per lambda range (previous test case) and their true figures:
  //   [0, .04)   C C C B: quality (1+1+1+1)/4 = 1,      cost (4+4+2+2)/4 = 3
  //   [.04, .2)  C A C B: quality (1+1+1+1)/4 = 1,      cost (4+1+2+2)/4 = 2.25
  //   [.2, .32)  B A C B: quality (.5+1+1+1)/4 = .875,  cost (2+1+2+2)/4 = 1.75
  //   [.32, .4)  B A A B: quality (.5+1+0+1)/4 = .625,  cost (2+1+1+2)/4 = 1.5
  //   [.4, .5)   A A A B: quality (0+1+0+1)/4 = .5,     cost (1+1+1+2)/4 = 1.25
  //   [.5, ...)  A A A A: quality (0+1+0+0)/4 = .25,    cost 4/4 = 1
  const auto curve = torouter::cost_quality_curve(q, c, pq, pc);
  REQUIRE(curve.size() == 201);
  CHECK(curve[0].lambda == 0.0);
  CHECK(same_point(curve[0], 3.0, 1.0));
  // The distinct points in sweep order. (At lambda_lo itself p2's C and A tie
  // up to rounding, so which side curve[1] falls on is not asserted.)
  std::vector<torouter::CurvePoint> distinct{curve[0]};
  for (const auto& p : curve) {
    if (!same_point(p, distinct.back().cost, distinct.back().quality)) distinct.push_back(p);
  }
  REQUIRE(distinct.size() == 6);
  CHECK(same_point(distinct[1], 2.25, 1.0));
  CHECK(same_point(distinct[2], 1.75, .875));
  CHECK(same_point(distinct[3], 1.5, .625));
  CHECK(same_point(distinct[4], 1.25, .5));
  CHECK(same_point(distinct[5], 1.0, .25));
  CHECK(same_point(curve.back(), 1.0, .25));

  const auto report = torouter::evaluate({"A", "B", "C"}, q, c, pq, pc, torouter::CurveOptions{});
  CHECK(report.rows == 4);
  CHECK(report.experts == std::vector<std::string>{"A", "B", "C"});
  CHECK(report.baselines.best.index == 1);
  CHECK(report.baselines.oracle.quality == Approx(1.0).margin(kTol));
  REQUIRE(report.router);
  const auto& r = *report.router;
  CHECK(r.curve.size() == 201);
  CHECK(r.at_lambda0.quality == Approx(1.0).margin(kTol));
  CHECK(r.at_lambda0.cost == Approx(3.0).margin(kTol));

  // AIQ. Points by cost: (1, .25) (1.25, .5) (1.5, .625) (1.75, .875)
  // (2.25, 1) (3, 1). Upper hull: (1.25, .5) is above the chord from
  // (1, .25) to (1.75, .875) (.25 + .625 * .25/.75 = .4583); (1.5, .625) is
  // below the chord from (1.25, .5) to (1.75, .875) (.6875 at 1.5), dropped;
  // (3, 1) adds no quality after (2.25, 1), dropped. Hull:
  // (1, .25) (1.25, .5) (1.75, .875) (2.25, 1). Over [1, 3.5]:
  //   [1, 1.25]     (.25 + .5) / 2 * .25  = .09375
  //   [1.25, 1.75]  (.5 + .875) / 2 * .5  = .34375
  //   [1.75, 2.25]  (.875 + 1) / 2 * .5   = .46875
  //   [2.25, 3.5]   1 * 1.25              = 1.25
  //   2.15625 / 2.5 = .8625
  CHECK(r.aiq == Approx(.8625).margin(kTol));

  // Q@C*: best quality at cost <= C* = 2: (1.75, .875) -> .875.
  REQUIRE(r.quality_at_best_cost);
  CHECK(*r.quality_at_best_cost == Approx(.875).margin(kTol));
  // C@Q*: cheapest point with quality >= .75: (1.75, .875) -> 1.75 / 2 = 87.5%.
  REQUIRE(r.cost_at_best_quality_pct);
  CHECK(*r.cost_at_best_quality_pct == Approx(87.5).margin(1e-9));
  // Gap won: (.875 - .75) / (1 - .75) = .5.
  REQUIRE(r.gap_won);
  CHECK(*r.gap_won == Approx(.5).margin(kTol));
  // Q@10%: cost <= .2, Q@30%: cost <= .6: no point is that cheap (the
  // cheapest costs 1). Q@70%: cost <= 1.4: (1.25, .5) and (1, .25) -> .5.
  CHECK_FALSE(r.quality_at_10pct);
  CHECK_FALSE(r.quality_at_30pct);
  REQUIRE(r.quality_at_70pct);
  CHECK(*r.quality_at_70pct == Approx(.5).margin(kTol));

  // The baselines-only report has no router.
  CHECK_FALSE(torouter::evaluate({"A", "B", "C"}, q, c).router);
}

TEST_CASE("C@Q* not reached and gap won undefined", "[eval]") {
  torouter::Baselines b;
  b.best = {0, .8, 2.0};
  b.oracle = {.8, 2.0};  // the oracle does not beat the best expert
  b.c_min = 1.0;
  b.c_max = 2.0;
  // Points (1, .5) and (3, .7): none reaches .8; only (1, .5) costs <= 2.
  const std::vector<torouter::CurvePoint> curve{{0.0, .7, 3.0}, {1.0, .5, 1.0}};
  const auto r = torouter::router_figures(curve, b);
  CHECK_FALSE(r.cost_at_best_quality_pct);
  REQUIRE(r.quality_at_best_cost);
  CHECK(*r.quality_at_best_cost == .5);
  CHECK_FALSE(r.gap_won);
  CHECK_THROWS_AS(torouter::router_figures({}, b), torouter::Error);
}

TEST_CASE("AIQ: zero left of the hull, flat right of it, clipped to the range", "[eval]") {
  using P = torouter::OperatingPoint;
  // Hull (2, .5) (5, .9) over [1, 4]: [1, 2] counts 0; at 4 the hull is
  // .5 + .4 * 2/3 = 2.3/3; [2, 4] trapezoid (1.5/3 + 2.3/3) / 2 * 2 = 3.8/3;
  // divided by 3: 3.8/9.
  CHECK(torouter::aiq({P{.5, 2.0}, P{.9, 5.0}}, 1.0, 4.0) == Approx(3.8 / 9.0).margin(kTol));
  // Hull (0, .2) (1, .6) over [.5, 3]: at .5 it is .4; [.5, 1] (.4 + .6) / 2 * .5 = .25;
  // [1, 3] flat .6 * 2 = 1.2; 1.45 / 2.5 = .58.
  CHECK(torouter::aiq({P{.2, 0.0}, P{.6, 1.0}}, .5, 3.0) == Approx(.58).margin(kTol));
  // At equal cost only the best point counts: hull (1, .6) (2, .8) -> (.6 + .8) / 2.
  CHECK(torouter::aiq({P{.2, 1.0}, P{.6, 1.0}, P{.8, 2.0}}, 1.0, 2.0) == Approx(.7).margin(kTol));
  // A collinear middle point changes nothing.
  CHECK(torouter::upper_hull({P{.2, 1.0}, P{.5, 2.0}, P{.8, 3.0}}).size() == 2);
  // c_min == c_max: the hull's value there.
  CHECK(torouter::aiq({P{.2, 1.0}, P{.6, 3.0}}, 2.0, 2.0) == Approx(.4).margin(kTol));
  CHECK_THROWS_AS(torouter::aiq({}, 0.0, 1.0), torouter::Error);
  CHECK_THROWS_AS(torouter::aiq({P{.5, 1.0}}, 2.0, 1.0), torouter::Error);
}

TEST_CASE("bad matrices are refused", "[eval]") {
  const auto q = toy_quality();
  const auto c = toy_cost();
  CHECK_THROWS_AS(torouter::best_expert(q, Eigen::MatrixXd(3, 3)), torouter::Error);
  CHECK_THROWS_AS(torouter::best_expert(Eigen::MatrixXd(0, 3), Eigen::MatrixXd(0, 3)),
                  torouter::Error);
  Eigen::MatrixXd nan_q = q;
  nan_q(1, 1) = std::nan("");
  CHECK_THROWS_AS(torouter::oracle_point(nan_q, c), torouter::Error);
  CHECK_THROWS_AS(torouter::evaluate_picks(q, c, {0, 1}), torouter::Error);
  CHECK_THROWS_AS(torouter::evaluate_picks(q, c, {0, 1, 2, 3}), torouter::Error);
  CHECK_THROWS_AS(torouter::evaluate({"A", "B"}, q, c), torouter::Error);
}

TEST_CASE("ECE and reliability bins, worked by hand", "[eval][ece]") {
  // p:  .05  .15  .12  1    .95  .5
  // q:  0    1    0    1    0    1
  // bin 0 [0, .1):  .05 -> p .05,  q 0,   |.05|
  // bin 1 [.1, .2): .15 .12 -> p .135, q .5, |.365|
  // bin 5 [.5, .6): .5 -> p .5, q 1, |.5|
  // bin 9 [.9, 1]:  1 (p = 1 goes in the last bin) .95 -> p .975, q .5, |.475|
  // ECE = (1 × .05 + 2 × .365 + 1 × .5 + 2 × .475) / 6 = 2.23 / 6.
  Eigen::VectorXd p(6), q(6);
  p << .05, .15, .12, 1.0, .95, .5;
  q << 0, 1, 0, 1, 0, 1;
  const auto bins = torouter::reliability_bins(p, q);
  REQUIRE(bins.size() == 10);
  const std::size_t counts[] = {1, 2, 0, 0, 0, 1, 0, 0, 0, 2};
  for (std::size_t k = 0; k < 10; ++k) {
    INFO("bin " << k);
    CHECK(bins[k].count == counts[k]);
    CHECK(bins[k].lower == Approx(k / 10.0).margin(kTol));
    CHECK(bins[k].upper == Approx((k + 1) / 10.0).margin(kTol));
    if (counts[k] == 0) {  // empty bins: means 0, weight 0
      CHECK(bins[k].mean_predicted == 0.0);
      CHECK(bins[k].mean_observed == 0.0);
    }
  }
  CHECK(bins[1].mean_predicted == Approx(.135).margin(kTol));
  CHECK(bins[1].mean_observed == Approx(.5).margin(kTol));
  CHECK(bins[9].mean_predicted == Approx(.975).margin(kTol));
  CHECK(bins[9].mean_observed == Approx(.5).margin(kTol));
  CHECK(torouter::expected_calibration_error(bins) == Approx(2.23 / 6).margin(kTol));

  // Bin edges: 0 in the first bin, .1 in the second, just below 1 in the last.
  Eigen::VectorXd edges(3), zeros = Eigen::VectorXd::Zero(3);
  edges << 0.0, .1, .99;
  const auto edge_bins = torouter::reliability_bins(edges, zeros);
  CHECK(edge_bins[0].count == 1);
  CHECK(edge_bins[1].count == 1);
  CHECK(edge_bins[9].count == 1);
  // Five bins of width .2: .05 .15 .12 in [0, .2), .5 in [.4, .6), 1 .95 in [.8, 1].
  // ECE = (3 × |.10667 - .33333| + 1 × .5 + 2 × .475) / 6 = (.68 + .5 + .95) / 6.
  CHECK(torouter::reliability_bins(p, q, 5)[0].count == 3);
  CHECK(torouter::expected_calibration_error(torouter::reliability_bins(p, q, 5)) ==
        Approx(2.13 / 6).margin(kTol));

  // Calibrated: four prompts at p = .25, one in four answered well.
  Eigen::VectorXd quarter = Eigen::VectorXd::Constant(4, .25), one_in_four(4);
  one_in_four << 0, 0, 1, 0;
  CHECK(torouter::expected_calibration_error(torouter::reliability_bins(quarter, one_in_four)) ==
        Approx(0.0).margin(kTol));
}

TEST_CASE("ECE refuses a prediction outside [0, 1] rather than clamp it", "[eval][ece]") {
  Eigen::VectorXd q = Eigen::VectorXd::Zero(2);
  for (double bad : {-0.01, 1.0001, std::nan("")}) {
    INFO(bad);
    Eigen::VectorXd p(2);
    p << .5, bad;
    CHECK_THROWS_AS(torouter::reliability_bins(p, q), torouter::Error);
  }
  Eigen::VectorXd p = Eigen::VectorXd::Constant(2, .5);
  CHECK_THROWS_AS(torouter::reliability_bins(p, q, 0), torouter::Error);
  CHECK_THROWS_AS(torouter::reliability_bins(p, Eigen::VectorXd::Zero(3)), torouter::Error);
  CHECK_THROWS_AS(torouter::reliability_bins(Eigen::VectorXd(0), Eigen::VectorXd(0)),
                  torouter::Error);
  CHECK_THROWS_AS(torouter::expected_calibration_error(std::vector<torouter::ReliabilityBin>(10)),
                  torouter::Error);
}

TEST_CASE("the router's ECE at lambda = 0", "[eval][ece]") {
  // Toy picks at lambda = 0: C C C B with p .9 .9 .9 .8, all answered well
  // (q = 1). Bin 9: 3 prompts, |.9 - 1|; bin 8: 1 prompt, |.8 - 1|.
  // ECE = 3/4 × .1 + 1/4 × .2 = .125.
  const auto q = toy_quality();
  const auto c = toy_cost();
  const auto pq = toy_predicted_quality();
  const auto pc = toy_predicted_cost();
  const std::vector<std::size_t> picks{2, 2, 2, 1};
  CHECK(torouter::pick_by_utility(pq, pc, 0.0) == picks);
  CHECK(torouter::expected_calibration_error(q, pq, picks) == Approx(.125).margin(kTol));
  CHECK_THROWS_AS(torouter::expected_calibration_error(q, pq, {2, 2, 2}), torouter::Error);
  CHECK_THROWS_AS(torouter::expected_calibration_error(q, pq, {2, 2, 2, 3}), torouter::Error);

  const auto report = torouter::evaluate({"A", "B", "C"}, q, c, pq, pc);
  REQUIRE(report.router);
  REQUIRE(report.router->ece);
  CHECK(*report.router->ece == Approx(.125).margin(kTol));
  REQUIRE(report.router->reliability.size() == 10);
  CHECK(report.router->reliability[8].count == 1);
  CHECK(report.router->reliability[9].count == 3);

  // A prediction outside [0, 1] at a lambda = 0 pick: no ECE, the rest stands.
  Eigen::MatrixXd raw = pq;
  raw(3, 1) = 1.2;  // p4 still picks B
  const auto unscaled = torouter::evaluate({"A", "B", "C"}, q, c, raw, pc);
  REQUIRE(unscaled.router);
  CHECK_FALSE(unscaled.router->ece);
  CHECK(unscaled.router->reliability.empty());
  CHECK(unscaled.router->at_lambda0.quality == Approx(1.0).margin(kTol));

  // The quality the router reports for each pick, when given, is what the
  // ECE weighs: .95 for every pick, each answered with q = 1, leaves .05.
  const Eigen::VectorXd reported = Eigen::VectorXd::Constant(4, 0.95);
  const auto with_expected = torouter::evaluate({"A", "B", "C"}, q, c, pq, pc, {}, &reported);
  REQUIRE(with_expected.router->ece);
  CHECK(*with_expected.router->ece == Approx(.05).margin(kTol));
  CHECK(with_expected.router->reliability[9].count == 4);
  CHECK(with_expected.router->aiq == report.router->aiq);  // the picks are the same
  const Eigen::VectorXd too_few = Eigen::VectorXd::Constant(3, 0.95);
  CHECK_THROWS_WITH(torouter::evaluate({"A", "B", "C"}, q, c, pq, pc, {}, &too_few),
                    Catch::Matchers::Contains("pick_quality: 3 values for 4 prompts"));
}

TEST_CASE("the README's reference figures on the shared datasets", "[eval][data]") {
  TOROUTER_SHARED_DATA_OR_SKIP(root_dir);
  struct Expected {
    const char* dataset;
    std::size_t rows;
    const char* best_expert;
    double q_star;
    double oracle;
    double experts_aiq;
  };
  // The README's figures, to 4 decimals: a value rounds to them when it is
  // within 5e-5.
  const Expected expected[] = {
      {"routerbench3", 945, "gpt-4-1106-preview", 0.8794, 0.9757, 0.8226},
      {"llmrouter14", 500, "llama-3.1-nemotron-51b-instruct", 0.5626, 0.7434, 0.5282},
  };
  for (const auto& e : expected) {
    INFO(e.dataset);
    const auto data = torouter::load_routing_dataset((root_dir / e.dataset).string());
    const auto rows = torouter::complete_rows(data.test);
    REQUIRE(rows.size() == e.rows);
    const auto report = torouter::evaluate(data.experts, torouter::quality_matrix(rows),
                                           torouter::cost_matrix(data, rows));
    const auto& b = report.baselines;
    CHECK(data.experts[b.best.index] == e.best_expert);
    CHECK(b.best.quality == Approx(e.q_star).margin(5e-5));
    CHECK(b.oracle.quality == Approx(e.oracle).margin(5e-5));
    CHECK(b.experts_aiq == Approx(e.experts_aiq).margin(5e-5));
  }
}
