// The linear scorer (src/linear_scorer.cpp): ridge regression per expert on
// the prompt's TF-IDF, solved by conjugate gradients.
#include <Eigen/Cholesky>
#include <catch2/catch.hpp>
#include <cmath>
#include <fstream>
#include <iterator>

#include "sparse_projection.hpp"
#include "support/model_bytes.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/model_io.hpp"
#include "torouter/trainable_scorer.hpp"

using Catch::Matchers::Contains;

namespace {

torouter::TrainingSet synthetic_set(std::size_t rows, unsigned seed = 1) {
  return torouter::make_training_set(torouter::testing::synthetic_experts(),
                                     torouter::testing::synthetic_rows(rows, seed), "synthetic");
}

// The ridge solution written out densely, apart from the scorer's code:
// the TF-IDF rows centred, the numeric features standardised, an
// unpenalised intercept; per column of `target` (NaN where unknown),
// (F_c^T F_c + alpha P) w = F_c^T y_c by Cholesky, F_c the rows it knows.
Eigen::MatrixXd closed_form_ridge(const torouter::TrainingSet& set, const Eigen::MatrixXf& target,
                                  std::uint32_t buckets, double alpha,
                                  const std::vector<std::string>& prompts) {
  torouter::FeaturizerOptions options;
  options.num_buckets = buckets;
  const torouter::Featurizer featurizer(options);
  const auto featurize = [&](const std::vector<std::string>& texts) {
    std::vector<torouter::SparseFeatures> rows(texts.size());
    for (std::size_t i = 0; i < texts.size(); ++i) featurizer.featurize(texts[i], rows[i]);
    return rows;
  };
  const auto train_rows = featurize(set.prompts);
  const auto idf = torouter::detail::inverse_document_frequency(train_rows, buckets);
  constexpr auto kNumeric = static_cast<Eigen::Index>(torouter::kDenseFeatureCount);
  const auto design = [&](const std::vector<torouter::SparseFeatures>& rows) {
    const Eigen::MatrixXd x =
        Eigen::MatrixXf(torouter::detail::tfidf_rows(rows, idf, 0)).cast<double>();
    Eigen::MatrixXd f(x.rows(), x.cols() + kNumeric + 1);
    f.leftCols(x.cols()) = x;
    for (Eigen::Index r = 0; r < x.rows(); ++r) {
      for (Eigen::Index k = 0; k < kNumeric; ++k) {
        f(r, x.cols() + k) = rows[static_cast<std::size_t>(r)].dense[static_cast<std::size_t>(k)];
      }
    }
    f.col(f.cols() - 1).setOnes();
    return f;
  };
  Eigen::MatrixXd f = design(train_rows), g = design(featurize(prompts));
  // Centre every column but the intercept on the training rows; hold the
  // numeric ones to the training rows' range and scale them to unit
  // variance (a constant one stays 0).
  const Eigen::Index width = f.cols() - 1, numeric_from = width - kNumeric;
  for (Eigen::Index c = numeric_from; c < width; ++c) {
    g.col(c) = g.col(c).cwiseMax(f.col(c).minCoeff()).cwiseMin(f.col(c).maxCoeff());
  }
  for (Eigen::Index c = 0; c < width; ++c) {
    const double mean = f.col(c).mean();
    f.col(c).array() -= mean;
    g.col(c).array() -= mean;
    if (c < numeric_from) continue;
    const double sd = std::sqrt(f.col(c).squaredNorm() / static_cast<double>(f.rows()));
    const double scale = sd > 1e-6 ? sd : 1.0;
    f.col(c) /= scale;
    g.col(c) /= scale;
  }
  Eigen::MatrixXd w(f.cols(), target.cols());
  for (Eigen::Index c = 0; c < target.cols(); ++c) {
    const Eigen::VectorXd known = target.col(c).array().isFinite().cast<double>();
    const Eigen::VectorXd y = known.cwiseProduct(target.col(c).cast<double>().unaryExpr(
        [](double v) { return std::isfinite(v) ? v : 0.0; }));
    Eigen::MatrixXd a = f.transpose() * known.asDiagonal() * f;
    a.diagonal().head(width).array() += alpha;
    w.col(c) = a.ldlt().solve(f.transpose() * y);
  }
  return g * w;
}

// A scorer of `spec` trained on every row of `set`, none held out.
std::unique_ptr<torouter::TrainableScorer> trained_on_every_row(const std::string& spec,
                                                                const torouter::TrainingSet& set) {
  auto scorer = torouter::make_scorer(spec);
  torouter::TrainOptions options;
  options.validation_fraction = 0;
  scorer->train(set, options);
  return scorer;
}

}  // namespace

TEST_CASE("the linear scorer predicts what ridge regression predicts") {
  const auto set = synthetic_set(80);
  const auto scorer = trained_on_every_row("linear,buckets=256,alpha=2", set);
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome", "hello there", ""};
  const auto scores = scorer->score_all(prompts);
  const Eigen::MatrixXd expected = closed_form_ridge(set, set.quality, 256, 2.0, prompts);
  for (Eigen::Index r = 0; r < expected.rows(); ++r) {
    for (Eigen::Index e = 0; e < expected.cols(); ++e) {
      INFO("prompt " << r << ", expert " << e);
      CHECK(scores.quality(r, e) == Approx(std::clamp(expected(r, e), 0.0, 1.0)).margin(0.01));
    }
  }
}

TEST_CASE("each expert's ridge uses only its own outcomes, for quality and for length") {
  auto set = synthetic_set(80);
  // Expert 0 lacks an outcome on every third row and expert 1 on the first
  // half, where their recorded quality is the opposite of the truth (a
  // scorer reading it would learn it); the answer lengths are known on
  // other rows than the outcomes.
  for (Eigen::Index r = 0; r < set.quality.rows(); ++r) {
    for (const Eigen::Index e : {Eigen::Index{0}, Eigen::Index{1}}) {
      if (e == 0 ? r % 3 == 0 : r < 40) {
        set.present(r, e) = 0;
        set.quality(r, e) = 1.0f - set.quality(r, e);
      }
    }
    for (Eigen::Index e = 0; e < set.output_tokens.cols(); ++e) {
      const bool known = (r + e) % 4 != 0;
      set.output_tokens(r, e) = known ? static_cast<float>(20 + 7 * ((r * (e + 2)) % 13))
                                      : std::numeric_limits<float>::quiet_NaN();
    }
  }
  Eigen::MatrixXf quality = set.quality;
  for (Eigen::Index i = 0; i < quality.size(); ++i) {
    if (set.present.data()[i] == 0) quality.data()[i] = std::numeric_limits<float>::quiet_NaN();
  }
  const auto scorer = trained_on_every_row("linear,buckets=256,alpha=2", set);
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome", "hello there"};
  const auto scores = scorer->score_all(prompts);
  const Eigen::MatrixXd expected_quality = closed_form_ridge(set, quality, 256, 2.0, prompts);
  const Eigen::MatrixXd expected_log_tokens =
      closed_form_ridge(set, set.output_tokens.array().log1p().matrix(), 256, 2.0, prompts);
  for (Eigen::Index r = 0; r < expected_quality.rows(); ++r) {
    for (Eigen::Index e = 0; e < expected_quality.cols(); ++e) {
      INFO("prompt " << r << ", expert " << e);
      CHECK(scores.quality(r, e) ==
            Approx(std::clamp(expected_quality(r, e), 0.0, 1.0)).margin(0.01));
      const double tokens = std::max(0.0, std::expm1(expected_log_tokens(r, e)));
      CHECK(scores.output_tokens(r, e) == Approx(tokens).epsilon(0.02));
    }
  }
}

TEST_CASE(
    "the linear scorer learns which expert answers which prompts and survives its model file") {
  const std::string spec =
      GENERATE(as<std::string>{}, "linear", "linear,alpha=auto", "linear,buckets=4096,blocks=2");
  const auto set = synthetic_set(300);
  auto scorer = torouter::make_scorer(spec);
  CHECK(scorer->spec() == spec);
  torouter::TrainOptions options;
  options.threads = 2;
  const auto report = scorer->train(set, options);
  CHECK(report.validation_rows == 30);
  CHECK(report.validation_quality > 0.8);
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome"};
  const auto scores = scorer->score_all(prompts);
  CHECK(scores.quality(0, 0) > 0.8f);  // coder on code
  CHECK(scores.quality(0, 1) < 0.3f);
  CHECK(scores.quality(1, 1) > 0.8f);  // historian on history
  CHECK(scores.quality(0, 2) == Approx(0.5).margin(0.1));
  CHECK(scores.output_tokens(0, 0) > scores.output_tokens(1, 0));  // the coder writes more on code

  const auto path = (torouter::testing::process_temp_dir("linear_test") /
                     (std::to_string(spec.size()) + ".tormodel"))
                        .string();
  torouter::save_model(*scorer, path);
  // With alpha=auto each expert's penalty is chosen from the path; else 10.
  const auto in = torouter::ModelReader::open(path);
  const bool chosen = spec.find("auto") != std::string::npos;
  for (const double alpha : in.numbers("linear.quality.alpha")) {
    if (chosen) {
      CHECK((alpha == 100 || alpha == 30 || alpha == 10 || alpha == 3));
    } else {
      CHECK(alpha == 10);
    }
  }
  const auto loaded = torouter::load_model(path);
  CHECK(loaded.scorer->kind() == "linear");
  CHECK(loaded.scorer->spec() == spec);
  const auto again = loaded.scorer->score_all(prompts);
  CHECK(again.quality == scores.quality);
  CHECK(again.output_tokens == scores.output_tokens);
}

TEST_CASE("linear specs are checked and written in canonical form") {
  CHECK(torouter::make_scorer("linear")->spec() == "linear");
  CHECK(torouter::make_scorer("linear,buckets=16384,blocks=1")->spec() == "linear");
  CHECK(torouter::make_scorer("linear,alpha=10,buckets=4096")->spec() == "linear,buckets=4096");
  CHECK(torouter::make_scorer("linear,alpha=0.5")->spec() == "linear,alpha=0.5");
  CHECK(torouter::make_scorer("linear,alpha=auto,blocks=2")->spec() ==
        "linear,blocks=2,alpha=auto");
  CHECK_THROWS_WITH(torouter::make_scorer("linear,alpha=0"), Contains("option alpha"));
  CHECK_THROWS_WITH(torouter::make_scorer("linear,alpha=-1"), Contains("option alpha"));
  CHECK_THROWS_WITH(torouter::make_scorer("linear,alpha=x"), Contains("alpha"));
  CHECK_THROWS_WITH(torouter::make_scorer("linear:3"), Contains("options only"));
  CHECK_THROWS_WITH(torouter::make_scorer("linear,depth=3"), Contains("unknown option \"depth\""));
}

TEST_CASE("a damaged linear model file is refused, naming the field") {
  const auto scorer = trained_on_every_row("linear,buckets=512,alpha=5", synthetic_set(60));
  const auto path = (torouter::testing::process_temp_dir("linear_test") / "good.tormodel").string();
  torouter::save_model(*scorer, path);
  CHECK(torouter::ModelReader::open(path).numbers("linear.quality.alpha") ==
        std::vector<double>(3, 5.0));
  std::ifstream in(path, std::ios::binary);
  const std::string bytes((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const auto damaged = [&](const std::string& from, const std::string& to) {
    std::string copy = bytes;
    const std::size_t at = copy.find(from);
    REQUIRE(at != std::string::npos);
    copy.replace(at, from.size(), to);
    const std::string where = path + ".damaged";
    std::ofstream(where, std::ios::binary) << torouter::testing::resealed(copy);
    return where;
  };
  // Penalties that do not match the experts (the header keeps its length).
  CHECK_THROWS_WITH(torouter::load_model(damaged("\"linear.quality.alpha\": [5, 5, 5]",
                                                 "\"linear.quality.alpha\": [5, 5]   ")),
                    Contains("linear.quality.alpha"));
  // A model without its token flags.
  CHECK_THROWS_WITH(
      torouter::load_model(damaged("\"linear.tokens.known\"", "\"linear.tokens.other\"")),
      Contains("linear.tokens.known"));
}

TEST_CASE("the linear scorer trains the same model on one thread or two") {
  const auto set = synthetic_set(120, 5);
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome"};
  torouter::ScoreBatch scores[2];
  for (const int threads : {1, 2}) {
    auto scorer = torouter::make_scorer("linear,buckets=2048");
    torouter::TrainOptions options;
    options.threads = threads;
    scorer->train(set, options);
    scores[threads - 1] = scorer->score_all(prompts);
  }
  CHECK(scores[0].quality == scores[1].quality);
  CHECK(scores[0].output_tokens == scores[1].output_tokens);
}

TEST_CASE("alpha=auto keeps the default penalty for an expert with no held-out outcome") {
  auto set = synthetic_set(200);
  set.present.col(2).setZero();  // the generalist answered nothing
  auto scorer = torouter::make_scorer("linear,alpha=auto");
  const auto report = scorer->train(set, torouter::TrainOptions{});
  CHECK(std::isfinite(report.validation_loss));
  CHECK(report.validation_loss > 0);
  const auto path = (torouter::testing::process_temp_dir("linear_test") / "auto.tormodel").string();
  torouter::save_model(*scorer, path);
  const auto alpha = torouter::ModelReader::open(path).numbers("linear.quality.alpha");
  REQUIRE(alpha.size() == 3);
  CHECK(alpha[2] == 10);
}
