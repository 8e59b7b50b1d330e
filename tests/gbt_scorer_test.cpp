// The boosted trees (src/gbdt.hpp) and the gbt scorer built on them.
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <iterator>
#include <random>

#include "gbdt.hpp"
#include "sparse_projection.hpp"
#include "support/model_bytes.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/trainable_scorer.hpp"

using Catch::Matchers::Contains;
using torouter::detail::BoostOptions;
using torouter::detail::FeatureMatrix;
using torouter::detail::Forest;

namespace {

// y = 1 where x0 > 0.5 and x1 > 0.25, else 0; x2 is noise.
void step_data(std::size_t rows, FeatureMatrix& x, Eigen::MatrixXf& y) {
  std::mt19937 rng(7);
  std::uniform_real_distribution<float> u(0.0f, 1.0f);
  x.resize(static_cast<Eigen::Index>(rows), 3);
  y.resize(static_cast<Eigen::Index>(rows), 1);
  for (Eigen::Index r = 0; r < x.rows(); ++r) {
    for (Eigen::Index c = 0; c < 3; ++c) x(r, c) = u(rng);
    y(r, 0) = x(r, 0) > 0.5f && x(r, 1) > 0.25f ? 1.0f : 0.0f;
  }
}

std::vector<std::size_t> range(std::size_t begin, std::size_t end) {
  std::vector<std::size_t> rows;
  for (std::size_t r = begin; r < end; ++r) rows.push_back(r);
  return rows;
}

torouter::TrainingSet synthetic_set(std::size_t rows) {
  return torouter::make_training_set(torouter::testing::synthetic_experts(),
                                     torouter::testing::synthetic_rows(rows, 1), "synthetic");
}

}  // namespace

TEST_CASE("bin_features cuts at quantiles and bins by the first edge at or above a value") {
  FeatureMatrix x(6, 1);
  x << 1, 2, 2, 3, 4, 5;
  const auto binned = torouter::detail::bin_features(x, range(0, 6), 3);
  REQUIRE(binned.edges[0].size() == 2);
  REQUIRE(binned.edges[0][0] < binned.edges[0][1]);
  for (Eigen::Index r = 0; r < 6; ++r) {
    const std::uint8_t bin = binned.bins[static_cast<std::size_t>(r)];
    if (bin < binned.edges[0].size()) CHECK(x(r, 0) <= binned.edges[0][bin]);
    if (bin > 0) CHECK(x(r, 0) > binned.edges[0][bin - 1u]);
  }
}

TEST_CASE("boosted trees learn an interaction and predict from raw features as in training") {
  FeatureMatrix x;
  Eigen::MatrixXf y;
  step_data(1200, x, y);
  BoostOptions options;
  options.max_depth = 3;
  options.learning_rate = 0.2;
  options.min_rows_per_leaf = 5;
  const auto binned = torouter::detail::bin_features(x, range(0, 1000), options.max_bins);
  std::vector<torouter::detail::ForestReport> reports;
  const auto forests = torouter::detail::train_forests(binned, y, range(0, 1000), range(1000, 1200),
                                                       options, &reports);
  REQUIRE(forests.size() == 1);
  CHECK(reports[0].rounds_kept > 0);
  CHECK(reports[0].rounds_kept < reports[0].rounds_run);  // early stopping stopped it
  CHECK(static_cast<int>(forests[0].trees()) == reports[0].rounds_kept);
  CHECK(reports[0].validation_mse < 0.01);
  double squared = 0;
  for (Eigen::Index r = 1000; r < 1200; ++r) {
    const double diff = forests[0].predict(x.row(r).data()) - y(r, 0);
    squared += diff * diff;
  }
  CHECK(squared / 200 == Approx(reports[0].validation_mse).margin(1e-5));
}

TEST_CASE("boosted trees skip rows without a target and are the same whatever the threads") {
  FeatureMatrix x;
  Eigen::MatrixXf y;
  step_data(400, x, y);
  Eigen::MatrixXf targets(400, 2);
  targets.col(0) = y.col(0);
  targets.col(1) = 1.0f - y.col(0).array();
  for (Eigen::Index r = 0; r < 400; r += 3) targets(r, 1) = std::nanf("");
  BoostOptions options;
  options.max_rounds = 30;
  const auto binned = torouter::detail::bin_features(x, range(0, 400), options.max_bins);
  options.threads = 1;
  const auto one = torouter::detail::train_forests(binned, targets, range(0, 400), {}, options);
  options.threads = 2;
  const auto two = torouter::detail::train_forests(binned, targets, range(0, 400), {}, options);
  REQUIRE(one.size() == 2);
  CHECK(one[1].trees() == 30);  // no held-out rows: every round is kept
  for (std::size_t t = 0; t < 2; ++t) {
    CHECK(one[t].leaf == two[t].leaf);
    CHECK(one[t].feature == two[t].feature);
    CHECK(one[t].threshold == two[t].threshold);
  }
  CHECK(std::isfinite(one[1].base));
}

TEST_CASE("the sparse projection keeps the main directions of the training rows") {
  torouter::Featurizer featurizer;
  std::vector<torouter::SparseFeatures> rows(60);
  const auto data = torouter::testing::synthetic_rows(60, 3);
  for (std::size_t i = 0; i < rows.size(); ++i) featurizer.featurize(data[i].prompt, rows[i]);
  const auto projection = torouter::detail::SparseProjection::fit(rows, 1u << 18, 4, 1);
  REQUIRE(projection.dims() == 4);
  // Code and history prompts share no topic word: some direction separates
  // them, so the two groups' mean projections differ.
  std::vector<float> code(4, 0.0f), history(4, 0.0f), out(4);
  for (std::size_t i = 0; i < rows.size(); ++i) {
    projection.project(rows[i], out.data());
    for (std::size_t d = 0; d < 4; ++d) (i % 2 == 0 ? code : history)[d] += out[d] / 30.0f;
  }
  double distance = 0;
  for (std::size_t d = 0; d < 4; ++d) distance += std::abs(code[d] - history[d]);
  CHECK(distance > 0.2);
}

TEST_CASE("the gbt scorer learns which expert answers which prompts and survives its model file") {
  // Words and characters in one vector, and in two blocks.
  const std::string spec = GENERATE(as<std::string>{}, "gbt,dims=8,rounds=200",
                                    "gbt,dims=8,buckets=4096,blocks=2,rounds=200");
  const auto set = synthetic_set(300);
  auto scorer = torouter::make_scorer(spec);
  CHECK(scorer->spec() == spec);
  torouter::TrainOptions options;
  options.threads = 2;
  scorer->train(set, options);
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome"};
  const auto scores = scorer->score_all(prompts);
  CHECK(scores.quality(0, 0) > 0.8f);  // coder on code
  CHECK(scores.quality(0, 1) < 0.2f);
  CHECK(scores.quality(1, 1) > 0.8f);  // historian on history
  CHECK(scores.quality(0, 2) == Approx(0.5).margin(0.05));
  CHECK(scores.output_tokens(0, 0) > scores.output_tokens(1, 0));  // the coder writes more on code

  const auto path =
      (torouter::testing::process_temp_dir("gbt_test") /
       (spec.find("blocks") == std::string::npos ? "gbt.tormodel" : "blocks.tormodel"))
          .string();
  torouter::save_model(*scorer, path);
  const auto loaded = torouter::load_model(path);
  CHECK(loaded.scorer->kind() == "gbt");
  CHECK(loaded.scorer->spec() == spec);
  if (spec.find("blocks") != std::string::npos) {
    // Blocks of any other size than the spec's halves are refused.
    std::ifstream in(path, std::ios::binary);
    std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
    const std::string field = "\"featurizer.word_buckets\": 2048";
    const std::size_t at = bytes.find(field);
    REQUIRE(at != std::string::npos);
    bytes.replace(at, field.size(), "\"featurizer.word_buckets\": 1000");
    const std::string damaged = path + ".damaged";
    std::ofstream(damaged, std::ios::binary) << torouter::testing::resealed(bytes);
    CHECK_THROWS_WITH(torouter::load_model(damaged), Contains("featurizer.word_buckets"));
  }
  const auto again = loaded.scorer->score_all(prompts);
  CHECK(again.quality == scores.quality);
  CHECK(again.output_tokens == scores.output_tokens);
}

TEST_CASE("gbt specs are checked and written in canonical form") {
  CHECK(torouter::make_scorer("gbt")->spec() == "gbt");
  CHECK(torouter::make_scorer("gbt,depth=4,dims=32")->spec() == "gbt");
  CHECK(torouter::make_scorer("gbt,depth=6,eta=0.1")->spec() == "gbt,depth=6,eta=0.1");
  CHECK_THROWS_WITH(torouter::make_scorer("gbt,eta=0"), Contains("eta"));
  CHECK_THROWS_WITH(torouter::make_scorer("gbt,depth=11"), Contains("depth"));
  CHECK_THROWS_WITH(torouter::make_scorer("gbt,trees=5"), Contains("unknown option \"trees\""));
  CHECK_THROWS_WITH(torouter::make_scorer("gbt:5"), Contains("options only"));
  CHECK_THROWS_WITH(torouter::make_scorer("gbt,buckets=16"),
                    Contains("dims (32) cannot exceed buckets (16)"));
  CHECK(torouter::make_scorer("gbt,blocks=1")->spec() == "gbt");
  CHECK(torouter::make_scorer("gbt,blocks=2,buckets=32768")->spec() ==
        "gbt,buckets=32768,blocks=2");
  CHECK_THROWS_WITH(torouter::make_scorer("gbt,blocks=3"), Contains("option blocks"));
}

TEST_CASE(
    "the projection adds the same to the bit as a plain loop, at the usual width or another") {
  // A small table: the sum's arithmetic does not depend on its height, and
  // fitting the default 2^18 rows took 46 s under ASan.
  torouter::FeaturizerOptions options;
  options.num_buckets = 1u << 12;
  const torouter::Featurizer featurizer(options);
  std::vector<torouter::SparseFeatures> rows(40);
  const auto data = torouter::testing::synthetic_rows(40, 3);
  for (std::size_t i = 0; i < rows.size(); ++i) featurizer.featurize(data[i].prompt, rows[i]);
  for (const int dims : {32, 7}) {
    const auto projection =
        torouter::detail::SparseProjection::fit(rows, options.num_buckets, dims, 1);
    // One float in: the sum need not start aligned.
    std::vector<float> out(static_cast<std::size_t>(dims) + 1);
    for (const auto& f : rows) {
      double norm = 0.0;
      for (std::size_t i = 0; i < f.indices.size(); ++i) {
        const double w = f.values[i] * projection.idf()[f.indices[i]];
        norm += w * w;
      }
      const auto scale = static_cast<float>(1.0 / std::sqrt(norm));
      Eigen::RowVectorXf expected = Eigen::RowVectorXf::Zero(dims);
      for (std::size_t i = 0; i < f.indices.size(); ++i) {
        const std::uint32_t b = f.indices[i];
        expected.noalias() +=
            (f.values[i] * projection.idf()[b] * scale) * projection.table().row(b);
      }
      projection.project(f, out.data() + 1);
      for (int d = 0; d < dims; ++d) REQUIRE(out[static_cast<std::size_t>(d) + 1] == expected[d]);
    }
  }
}

TEST_CASE("a projection of split features weighs each block alike, after its IDF") {
  torouter::FeaturizerOptions options;
  options.num_buckets = 2048;
  options.word_buckets = 1024;
  const torouter::Featurizer featurizer(options);
  std::vector<torouter::SparseFeatures> rows(40);
  const auto data = torouter::testing::synthetic_rows(40, 3);
  for (std::size_t i = 0; i < rows.size(); ++i) featurizer.featurize(data[i].prompt, rows[i]);
  const auto projection = torouter::detail::SparseProjection::fit(rows, 2048, 4, 1, 1024);
  CHECK(projection.word_buckets() == 1024);
  // By hand: IDF-weighted values, each block scaled to norm 1/sqrt(2), times
  // the table.
  const torouter::SparseFeatures& f = rows[3];
  double norms[2] = {0.0, 0.0};
  for (std::size_t i = 0; i < f.indices.size(); ++i) {
    const double w = f.values[i] * projection.idf()[f.indices[i]];
    norms[f.indices[i] < 1024 ? 0 : 1] += w * w;
  }
  REQUIRE(norms[0] > 0);
  REQUIRE(norms[1] > 0);
  Eigen::RowVectorXd expected = Eigen::RowVectorXd::Zero(4);
  for (std::size_t i = 0; i < f.indices.size(); ++i) {
    const std::uint32_t b = f.indices[i];
    const double w =
        f.values[i] * projection.idf()[b] * std::sqrt(0.5) / std::sqrt(norms[b < 1024 ? 0 : 1]);
    expected += w * projection.table().row(b).cast<double>();
  }
  std::vector<float> out(4);
  projection.project(f, out.data());
  for (Eigen::Index d = 0; d < 4; ++d) CHECK(out[d] == Approx(expected[d]).margin(1e-5));
  // Not the projection of one block-blind vector.
  const torouter::detail::SparseProjection blind(projection.idf(), projection.table());
  std::vector<float> one_vector(4);
  blind.project(f, one_vector.data());
  CHECK_FALSE(blind == projection);
  double apart = 0.0;
  for (std::size_t d = 0; d < 4; ++d) apart += std::abs(one_vector[d] - out[d]);
  CHECK(apart > 1e-3);
}

TEST_CASE("gbt trains on fewer rows than projection dimensions and survives its model file") {
  const auto set = synthetic_set(12);  // 12 rows, 32 dimensions asked for
  auto scorer = torouter::make_scorer("gbt,rounds=20");
  torouter::TrainOptions options;
  options.validation_fraction = 0.25;
  scorer->train(set, options);
  const std::vector<std::string> prompts{"python loop", "empire war"};
  const auto scores = scorer->score_all(prompts);
  const auto path = (torouter::testing::process_temp_dir("gbt_test") / "small.tormodel").string();
  torouter::save_model(*scorer, path);
  CHECK(torouter::load_model(path).scorer->score_all(prompts).quality == scores.quality);
  options.validation_fraction = 1.5;
  CHECK_THROWS_WITH(scorer->train(set, options), Contains("validation_fraction"));
}
