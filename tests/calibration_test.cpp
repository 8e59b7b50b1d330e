// Linear and isotonic calibration, and calibrated scorers in model files.
#include "torouter/calibration.hpp"

#include <catch2/catch.hpp>
#include <cmath>

#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/trainable_scorer.hpp"

using Catch::Matchers::Contains;
using torouter::Calibration;
using torouter::CalibrationMethod;

TEST_CASE("isotonic calibration pools adjacent violators and interpolates between block centres") {
  Eigen::MatrixXf raw(5, 1), quality(5, 1), present = Eigen::MatrixXf::Ones(5, 1);
  raw << 0.1f, 0.2f, 0.3f, 0.4f, 0.9f;
  quality << 0.0f, 1.0f, 0.0f, 1.0f, 0.3f;
  present(4, 0) = 0;  // no outcome: not counted
  const auto calibration = Calibration::fit(CalibrationMethod::Isotonic, raw, quality, present);
  // Blocks: {0.1} -> 0, {0.2, 0.3} -> 0.5 (centre 0.25), {0.4} -> 1.
  REQUIRE(calibration.knots_x(0).size() == 3);
  CHECK(calibration.knots_x(0)[1] == Approx(0.25f));
  CHECK(calibration.knots_y(0) == std::vector<float>{0.0f, 0.5f, 1.0f});
  CHECK(calibration.apply(0, 0.05f) == 0.0f);  // flat before the first knot
  CHECK(calibration.apply(0, 0.15f) == Approx(0.5f / 3));
  CHECK(calibration.apply(0, 0.25f) == Approx(0.5f));
  CHECK(calibration.apply(0, 0.2f) < calibration.apply(0, 0.3f));  // no flat block
  CHECK(calibration.apply(0, 0.35f) == Approx(0.5f + 0.5f * 2 / 3));
  CHECK(calibration.apply(0, 2.0f) == 1.0f);  // flat after the last
  CHECK(calibration.apply(0, std::nanf("")) == 0.0f);
}

TEST_CASE(
    "isotonic calibration gives equal raw outputs one value and maps an unseen expert to itself") {
  Eigen::MatrixXf raw(4, 2), quality(4, 2), present(4, 2);
  raw << 0.5f, 0.1f, 0.5f, 0.2f, 0.5f, 0.3f, 0.7f, 0.4f;
  quality << 1.0f, 0, 0.0f, 0, 0.5f, 0, 0.2f, 0;
  present << 1, 0, 1, 0, 1, 0, 1, 0;
  const auto calibration = Calibration::fit(CalibrationMethod::Isotonic, raw, quality, present);
  // 0.5 three times with mean 0.5, then 0.7 -> 0.2 violates: pooled to 0.425.
  CHECK(calibration.apply(0, 0.5f) == Approx(0.425f));
  CHECK(calibration.apply(0, 0.7f) == Approx(0.425f));
  CHECK(calibration.apply(1, 0.3f) == Approx(0.3f));
}

TEST_CASE("linear calibration is the least-squares line, clipped exactly to [0, 1]") {
  Eigen::MatrixXf raw(5, 1), quality(5, 1), present = Eigen::MatrixXf::Ones(5, 1);
  // quality = 2 * raw - 0.5 exactly, over raw in [0, 1]: the line leaves
  // [0, 1] at raw 0.25 and 0.75, which become knots.
  raw << 0.0f, 0.3f, 0.5f, 0.7f, 1.0f;
  quality << -0.5f, 0.1f, 0.5f, 0.9f, 1.5f;
  const auto calibration = Calibration::fit(CalibrationMethod::Linear, raw, quality, present);
  REQUIRE(calibration.knots_x(0).size() == 4);
  CHECK(calibration.knots_x(0)[1] == Approx(0.25f));
  CHECK(calibration.knots_x(0)[2] == Approx(0.75f));
  CHECK(calibration.apply(0, 0.1f) == 0.0f);
  CHECK(calibration.apply(0, 0.4f) == Approx(0.3f));
  CHECK(calibration.apply(0, 0.6f) == Approx(0.7f));
  CHECK(calibration.apply(0, 0.9f) == 1.0f);
  CHECK(calibration.apply(0, 5.0f) == 1.0f);
}

TEST_CASE("linear calibration never reverses a scorer's order, and learns from outcomes only") {
  Eigen::MatrixXf raw(4, 2), quality(4, 2), present(4, 2);
  raw << 0.1f, 0.1f, 0.2f, 0.2f, 0.3f, 0.3f, 0.4f, 0.4f;
  // Expert 0: quality falls as raw rises: flat at the mean, never reversed.
  // Expert 1: one row has no outcome; the others lie on quality = raw / 2.
  quality << 0.9f, 0.05f, 0.6f, 0.1f, 0.3f, 0.15f, 0.2f, 1.0f;
  present << 1, 1, 1, 1, 1, 1, 1, 0;
  const auto calibration = Calibration::fit(CalibrationMethod::Linear, raw, quality, present);
  CHECK(calibration.apply(0, 0.1f) == Approx(0.5f));
  CHECK(calibration.apply(0, 0.4f) == Approx(0.5f));
  CHECK(calibration.apply(1, 0.25f) == Approx(0.125f));
  CHECK(calibration.apply(1, 0.9f) == Approx(0.15f));  // flat past the last output seen
}

TEST_CASE("calibration methods are named linear and isotonic") {
  CHECK(torouter::parse_calibration_method("linear") == CalibrationMethod::Linear);
  CHECK(torouter::parse_calibration_method("isotonic") == CalibrationMethod::Isotonic);
  CHECK(std::string(torouter::calibration_method_name(CalibrationMethod::Isotonic)) == "isotonic");
  CHECK_THROWS_WITH(torouter::parse_calibration_method("platt"),
                    Contains("expected linear or isotonic") && Contains("platt"));
}

TEST_CASE("isotonic calibration refuses knots that are not monotone") {
  CHECK_THROWS_WITH(Calibration({{0.1f, 0.1f}}, {{0.0f, 1.0f}}), Contains("ascending x"));
  CHECK_THROWS_WITH(Calibration({{0.1f, 0.2f}}, {{1.0f, 0.0f}}),
                    Contains("non-decreasing"));
  CHECK_THROWS_WITH(Calibration({{0.1f}}, {{0.0f, 1.0f}}), Contains("as many x as y"));
}

TEST_CASE("a calibrated scorer scores through its calibration, in memory and from its file") {
  const auto set = torouter::make_training_set(torouter::testing::synthetic_experts(),
                                               torouter::testing::synthetic_rows(60, 1), "s");
  auto scorer = torouter::make_scorer("knn:5");
  scorer->train(set, {});
  const std::vector<std::string> prompts{"python function loop", "king empire war"};
  const auto raw = scorer->score_all(prompts);
  // Halves every expert's quality (knots from 0 to 1).
  std::vector<std::vector<float>> x(3, {0.0f, 1.0f}), y(3, {0.0f, 0.5f});
  scorer->set_calibration(Calibration(x, y));
  const auto calibrated = scorer->score_all(prompts);
  for (Eigen::Index i = 0; i < raw.quality.size(); ++i) {
    CHECK(calibrated.quality.data()[i] == Approx(raw.quality.data()[i] / 2));
  }
  const auto path =
      (torouter::testing::process_temp_dir("calibration_test") / "m.tormodel").string();
  torouter::save_model(*scorer, path);
  const auto loaded = torouter::load_model(path);
  CHECK(loaded.scorer->calibration().experts() == 3);
  CHECK(loaded.scorer->score_all(prompts).quality == calibrated.quality);

  CHECK_THROWS_WITH(scorer->set_calibration(Calibration({{0.0f, 1.0f}}, {{0.0f, 1.0f}})),
                    Contains("1 experts cannot serve a scorer of 3"));
  scorer->train(set, {});  // training again drops the old calibration
  CHECK(scorer->calibration().empty());
}
