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
// A copy of the model file at `path` with `from` replaced by `to`, resealed
// so that only the change is wrong; returns the copy's path.
std::string damaged_copy(const std::string& path, const std::string& from, const std::string& to) {
  std::ifstream in(path, std::ios::binary);
  std::string copy((std::istreambuf_iterator<char>(in)), std::istreambuf_iterator<char>());
  const std::size_t at = copy.find(from);
  REQUIRE(at != std::string::npos);
  copy.replace(at, from.size(), to);
  const std::string where = path + ".damaged";
  std::ofstream(where, std::ios::binary) << torouter::testing::resealed(copy);
  return where;
}

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
  const auto damaged = [&](const std::string& from, const std::string& to) {
    return damaged_copy(path, from, to);
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

namespace {

// The synthetic rows (tasks "code" and "history" alternating) with the
// coder failing every fourth code prompt: its mean on code is 3/4, where
// each row's own outcome is 0 or 1.
torouter::TrainingSet noisy_task_set(std::size_t rows) {
  auto set = synthetic_set(rows);
  for (Eigen::Index r = 0; r < static_cast<Eigen::Index>(rows); r += 8) set.quality(r, 0) = 0.0f;
  return set;
}

// Each task's mean quality per expert, with one more row at the expert's
// mean over every row (the scorer's prior), written out plainly.
double expected_task_mean(const torouter::TrainingSet& set, const std::string& task,
                          Eigen::Index expert) {
  double sum = 0, count = 0, all_sum = 0;
  for (std::size_t r = 0; r < set.rows(); ++r) {
    const double q = set.quality(static_cast<Eigen::Index>(r), expert);
    all_sum += q;
    if (set.tasks[r] == task) {
      sum += q;
      count += 1;
    }
  }
  return (sum + all_sum / static_cast<double>(set.rows())) / (count + 1);
}

}  // namespace

TEST_CASE("the task scorer predicts the mean quality of the tasks a prompt belongs to") {
  const auto set = noisy_task_set(80);
  const auto scorer = trained_on_every_row("task,buckets=256", set);
  CHECK(scorer->kind() == "task");
  const std::vector<std::string> prompts{"python function loop bug array json",
                                         "king empire war treaty battle rome"};
  const auto scores = scorer->score_all(prompts);
  const std::vector<std::string> tasks{"code", "history"};
  for (Eigen::Index r = 0; r < 2; ++r) {
    for (Eigen::Index e = 0; e < 3; ++e) {
      INFO("prompt " << r << ", expert " << e);
      // Each prompt is plainly of one task: its probability is all but 1.
      CHECK(scores.quality(r, e) ==
            Approx(expected_task_mean(set, tasks[static_cast<std::size_t>(r)], e)).margin(1e-3));
    }
  }
  // The coder's mean on code, not any one row's 0 or 1.
  CHECK(scores.quality(0, 0) > 0.7f);
  CHECK(scores.quality(0, 0) < 0.8f);
  // Lengths are still learnt per expert, as the linear scorer's.
  CHECK(scores.output_tokens(0, 0) > scores.output_tokens(1, 0));
  // A prompt with words of both tasks gets a mixture of their means.
  const auto mixed = scorer->score_all({"python function loop king empire war"});
  CHECK(mixed.quality(0, 0) < scores.quality(0, 0) - 0.01f);
  CHECK(mixed.quality(0, 0) > scores.quality(1, 0) + 0.1f);
}

TEST_CASE("the task scorer's temperature is chosen on the validation rows") {
  auto scorer = torouter::make_scorer("task,buckets=256");
  torouter::TrainOptions options;
  options.validation_fraction = 0.25;
  const auto report = scorer->train(noisy_task_set(120), options);
  CHECK(report.validation_rows == 30);
  CHECK(report.validation_quality > 0.8);
  const auto path = (torouter::testing::process_temp_dir("linear_test") / "t.tormodel").string();
  torouter::save_model(*scorer, path);
  // The tasks are told apart without error, so the sharpest wins.
  CHECK(torouter::ModelReader::open(path).number("task.temperature") == Approx(0.02));
}

TEST_CASE("the task scorer needs rows labelled with two tasks or more") {
  auto set = noisy_task_set(40);
  auto scorer = torouter::make_scorer("task");
  set.tasks.assign(set.rows(), "");
  CHECK_THROWS_WITH(scorer->train(set, {}), Contains("two tasks or more") && Contains("have 0"));
  set.tasks.assign(set.rows(), "code");
  CHECK_THROWS_WITH(scorer->train(set, {}), Contains("have 1"));
  set.tasks.resize(3);
  CHECK_THROWS_WITH(scorer->train(set, {}), Contains("3 task labels for 40 rows"));
  CHECK(torouter::make_scorer("task,alpha=1,buckets=4096")->spec() == "task,buckets=4096");
  CHECK(torouter::make_scorer("task,alpha=10")->spec() == "task,alpha=10");
  CHECK_THROWS_WITH(torouter::make_scorer("task:3"), Contains("task takes options only"));
}

TEST_CASE("a task model survives its model file, and a damaged one is refused") {
  const auto scorer = trained_on_every_row("task,buckets=512", noisy_task_set(60));
  const auto path = (torouter::testing::process_temp_dir("linear_test") / "task.tormodel").string();
  torouter::save_model(*scorer, path);
  const auto loaded = torouter::load_model(path);
  CHECK(loaded.scorer->spec() == "task,buckets=512");
  const std::vector<std::string> prompts{"python function loop", "dynasty battle"};
  CHECK(loaded.scorer->score_all(prompts).quality == scorer->score_all(prompts).quality);
  CHECK(torouter::ModelReader::open(path).texts("task.names") ==
        std::vector<std::string>{"code", "history"});
  const auto damaged = [&](const std::string& from, const std::string& to) {
    return damaged_copy(path, from, to);
  };
  CHECK_THROWS_WITH(
      torouter::load_model(damaged("[\"code\", \"history\"]", "[\"code\", \"code\"]   ")),
      Contains("task.names"));
  CHECK_THROWS_WITH(
      torouter::load_model(damaged("\"task.temperature\": 0.1", "\"task.temperature\": 0  ")),
      Contains("task.temperature"));
  CHECK_THROWS_WITH(torouter::load_model(damaged("\"task.classifier.alpha\": [1, 1]",
                                                 "\"task.classifier.alpha\": [1]   ")),
                    Contains("one value per task"));
}
