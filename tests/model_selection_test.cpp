// Cross-validation, calibration on held-out folds, and the choice of a scorer.
#include "torouter/model_selection.hpp"

#include <fmt/format.h>

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <string>
#include <vector>

#include "scorers.hpp"
#include "sparse_projection.hpp"
#include "support/data_dir.hpp"
#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"

using Catch::Matchers::Contains;
using torouter::CandidateScorer;
using torouter::Loss;
using torouter::ScoreMatrix;

namespace {

torouter::RoutingDataset synthetic_dataset() {
  const auto dir = torouter::testing::process_temp_dir("model_selection_test") / "synthetic";
  torouter::testing::write_synthetic_dataset(dir, 120, 40);
  return torouter::load_routing_dataset(dir.string());
}

}  // namespace

TEST_CASE("cross_validate predicts every row from a model that did not see it") {
  const auto data = synthetic_dataset();
  const auto set = torouter::make_training_set(data.experts, data.train, "synthetic");
  const auto oof = torouter::cross_validate({"knn:5", Loss::Bce}, set, {}, 4);
  REQUIRE(oof.quality.rows() == static_cast<Eigen::Index>(set.rows()));
  for (Eigen::Index r = 0; r < oof.quality.rows(); ++r) {
    const bool code = r % 2 == 0;  // the synthetic rows alternate code and history
    CHECK((oof.quality(r, 0) > oof.quality(r, 1)) == code);
  }
  CHECK_THROWS_WITH(torouter::cross_validate({"knn:5", Loss::Bce}, set, {}, 1), Contains("folds"));
}

TEST_CASE("train_best picks by cross-validated AIQ, calibrated and recorded") {
  const auto data = synthetic_dataset();
  torouter::SelectionOptions selection;
  // kNN over every training row predicts each expert's mean everywhere: it
  // cannot route, so the 5-NN must win.
  selection.candidates = {{"knn:1000", Loss::Bce}, {"knn:5", Loss::Bce}};
  selection.folds = 3;
  std::vector<std::string> seen;
  selection.on_candidate = [&](const torouter::CandidateFigures& c) { seen.push_back(c.name); };
  auto scorer = torouter::train_best(data, data.registry, {}, selection);
  // Each candidate, then the stack of the two (the better first).
  CHECK(seen == std::vector<std::string>{"knn:1000", "knn:5", "stack:knn:5+knn:1000"});
  const auto& record = scorer->training().selection;
  REQUIRE(record.candidates.size() == 3);
  CHECK(record.candidates[1].aiq > record.candidates[0].aiq);
  CHECK(record.chosen != 0);
  // The one-standard-error rule, paired by fold (tested on its own below).
  for (const auto& c : record.candidates) {
    CHECK(c.fold_aiq.size() == 3);
    for (const double a : c.fold_aiq) CHECK(std::isfinite(a));
  }
  // The choice is the best, or within one paired standard error of it with
  // fewer members (the stack has two, the others one).
  std::size_t best = 0;
  for (std::size_t i = 1; i < record.candidates.size(); ++i) {
    if (record.candidates[i].aiq > record.candidates[best].aiq) best = i;
  }
  if (record.chosen != best) {
    const auto gap =
        torouter::detail::paired_gap(record.candidates[best], record.candidates[record.chosen]);
    CHECK(gap.known);
    CHECK(gap.mean <= gap.standard_error);
    CHECK(best == 2);
  }
  CHECK(scorer->spec() == record.candidates[record.chosen].name);
  CHECK(record.candidates[1].ece < 0.1);
  CHECK_FALSE(scorer->calibration().empty());
  const torouter::Calibration two_maps({{0.0f, 1.0f}, {0.0f, 1.0f}}, {{0.0f, 1.0f}, {0.0f, 1.0f}});
  CHECK_THROWS_WITH(scorer->set_pick_calibration(two_maps), Contains("one map, not 2"));

  const auto path =
      (torouter::testing::process_temp_dir("model_selection_test") / "m.tormodel").string();
  torouter::save_model(*scorer, path, &data.registry);
  const auto loaded = torouter::load_model(path);
  const auto& again = loaded.scorer->training().selection;
  CHECK(again.folds == 3);
  CHECK(again.chosen == record.chosen);
  CHECK(again.candidates[0].name == "knn:1000");
  CHECK(again.candidates[1].aiq == Approx(record.candidates[1].aiq));
  CHECK(again.candidates[2].fold_aiq == record.candidates[2].fold_aiq);
}

TEST_CASE("a pick calibration is kept only where it lowers the held-out top picks' error") {
  // Three experts; the first is every row's top pick, predicted p in
  // [0.5, 0.9]. Where its quality is p exactly, the picks' ECE is 0 and no
  // map can lower it: none is kept. Where it is p - 0.15, a map is kept and
  // takes the 0.15 back.
  const int n = 1000, folds = 5;
  torouter::TrainingSet set;
  set.experts = {"a", "b", "c"};
  set.prompts.assign(n, "x");
  set.quality.resize(n, 3);
  set.present = Eigen::MatrixXf::Ones(n, 3);
  set.output_tokens = Eigen::MatrixXf::Constant(n, 3, std::nanf(""));
  Eigen::MatrixXf calibrated(n, 3);
  std::vector<int> fold(n);
  for (int r = 0; r < n; ++r) {
    const float p = 0.5f + 0.4f * static_cast<float>(r % 97) / 96.0f;
    calibrated.row(r) << p, 0.2f, 0.1f;
    set.quality.row(r) << p, 0.2f, 0.1f;
    fold[static_cast<std::size_t>(r)] = r % folds;
  }
  CHECK(torouter::detail::pick_calibration_if_it_helps(calibrated, set, fold, folds).empty());
  set.quality.col(0).array() -= 0.15f;
  const auto map = torouter::detail::pick_calibration_if_it_helps(calibrated, set, fold, folds);
  REQUIRE(map.experts() == 1);
  for (const float p : {0.55f, 0.7f, 0.85f})
    CHECK(map.apply(0, p) == Approx(p - 0.15f).margin(0.01));
}

namespace {

torouter::CandidateFigures figures(const char* name, std::vector<double> fold_aiq) {
  torouter::CandidateFigures c;
  c.name = name;
  c.fold_aiq = std::move(fold_aiq);
  double sum = 0;
  for (const double a : c.fold_aiq) sum += a;
  c.aiq = sum / static_cast<double>(c.fold_aiq.size());  // pooled AIQ, near the folds' mean
  return c;
}

}  // namespace

TEST_CASE("the choice is the fewest members within one paired standard error of the best") {
  using torouter::detail::one_standard_error_choice;
  const std::vector<std::vector<std::size_t>> members{{}, {}, {0, 1}, {0, 1, 3}, {}};
  SECTION("a stack that wins on every fold by a steady margin is kept") {
    const std::vector<torouter::CandidateFigures> c{
        figures("a", {0.60, 0.70, 0.62, 0.66}), figures("b", {0.59, 0.69, 0.61, 0.65}),
        figures("stack:a+b", {0.610, 0.712, 0.629, 0.671}),
        figures("stack:a+b+e", {0.613, 0.709, 0.631, 0.670}),
        figures("e", {0.50, 0.50, 0.50, 0.50})};
    // The three-member stack is best by 0.0003, within its paired error of
    // the two-member one, which beats "a" on every fold by about 0.01.
    CHECK(one_standard_error_choice(c, members) == 2);
  }
  SECTION("a stack whose gain is one fold's luck gives way to the single scorer") {
    const std::vector<torouter::CandidateFigures> c{
        figures("a", {0.60, 0.70, 0.62, 0.66}), figures("b", {0.55, 0.69, 0.61, 0.65}),
        figures("stack:a+b", {0.64, 0.69, 0.61, 0.66}),
        figures("stack:a+b+e", {0.50, 0.50, 0.50, 0.50}), figures("e", {0.5, 0.5, 0.5, 0.5})};
    CHECK(one_standard_error_choice(c, members) == 0);
  }
  SECTION("among equally simple candidates within the error, the higher AIQ") {
    const std::vector<torouter::CandidateFigures> c{
        figures("a", {0.60, 0.70, 0.62, 0.66}), figures("b", {0.61, 0.70, 0.62, 0.66}),
        figures("stack:a+b", {0.50, 0.50, 0.50, 0.50}),
        figures("stack:a+b+e", {0.50, 0.50, 0.50, 0.50}), figures("e", {0.3, 0.3, 0.3, 0.3})};
    CHECK(one_standard_error_choice(c, members) == 1);
  }
  SECTION("without fold figures (an older record) the best AIQ") {
    std::vector<torouter::CandidateFigures> c(5);
    const double aiq[] = {0.60, 0.58, 0.61, 0.40, 0.50};
    for (std::size_t i = 0; i < c.size(); ++i) c[i].aiq = aiq[i];
    CHECK(one_standard_error_choice(c, members) == 2);
  }
  SECTION("a fold without a figure is left out of the pairing") {
    std::vector<torouter::CandidateFigures> c{figures("a", {0.60, 0.70, 0.62, 0.66}),
                                              figures("stack:a+b", {0.61, 0.712, 0.629, 0.671})};
    c[0].fold_aiq[1] = std::nan("");
    const auto gap = torouter::detail::paired_gap(c[1], c[0]);
    CHECK(gap.known);
    CHECK(gap.mean == Approx((0.01 + 0.009 + 0.011) / 3));
  }
}

TEST_CASE("a stack scores as the calibrated mean of its members, sharing what they share or not") {
  const auto data = synthetic_dataset();
  const auto set = torouter::make_training_set(data.experts, data.train, "synthetic");
  const std::vector<std::string> prompts{"python function loop bug", "king empire war treaty",
                                         "a question about both: python kings"};
  // Equal buckets: one featurization serves both members; else each its
  // own. A dense kNN and a gbt of one width also fit equal projections, so
  // the stack projects each prompt once for both.
  const std::vector<std::vector<CandidateScorer>> stacks{
      {{"knn:5,buckets=1024", Loss::Bce}, {"mlp:16,buckets=1024", Loss::Soft}},
      {{"knn:5", Loss::Bce}, {"mlp:16,buckets=1024", Loss::Soft}},
      {{"knn:5,dims=4,buckets=1024", Loss::Bce},
       {"gbt,dims=4,buckets=1024,rounds=20,leaf=1", Loss::Bce}}};
  for (const auto& members : stacks) {
    auto stack = torouter::make_scorer(torouter::detail::stack_spec(members));
    const torouter::TrainOptions options;
    stack->train(set, options);
    // Each member alone, trained and calibrated as the stack does (5 folds).
    ScoreMatrix mean = ScoreMatrix::Zero(3, static_cast<Eigen::Index>(set.experts.size()));
    std::vector<const torouter::detail::SparseProjection*> projections;
    std::vector<std::unique_ptr<torouter::TrainableScorer>> alone;
    for (const auto& member : members) {
      alone.push_back(torouter::train_calibrated(member, set, options, 5));
      mean += alone.back()->score_all(prompts).quality / 2.0f;
      const auto* featurized =
          dynamic_cast<const torouter::detail::FeaturizedScorer*>(alone.back().get());
      projections.push_back(featurized ? featurized->projection() : nullptr);
    }
    if (members[1].spec.rfind("gbt", 0) == 0) {
      REQUIRE(projections[0] != nullptr);
      REQUIRE(projections[1] != nullptr);
      CHECK(*projections[0] == *projections[1]);
    }
    stack->calibration().apply(mean);
    const auto scores = stack->score_all(prompts).quality;
    for (Eigen::Index i = 0; i < mean.size(); ++i) {
      CHECK(scores.data()[i] == Approx(mean.data()[i]).margin(1e-6));
    }
    // Loaded, the members find what they share again.
    const auto path = (torouter::testing::process_temp_dir("model_selection_test") /
                       fmt::format("stack{}.tormodel", &members - stacks.data()))
                          .string();
    torouter::save_model(*stack, path);
    CHECK(torouter::load_model(path).scorer->score_all(prompts).quality == scores);
  }
}

TEST_CASE("train_calibrated fits the calibration method its options name") {
  const auto data = synthetic_dataset();
  const auto set = torouter::make_training_set(data.experts, data.train, "s");
  const torouter::CandidateScorer candidate{"knn:5", Loss::Bce};
  torouter::TrainOptions options;
  for (const auto method :
       {torouter::CalibrationMethod::Linear, torouter::CalibrationMethod::Isotonic}) {
    options.calibration = method;
    const auto scorer = torouter::train_calibrated(candidate, set, options, 3);
    const auto oof = torouter::cross_validate(candidate, set, options, 3);
    const auto expected = torouter::Calibration::fit(method, oof.quality, set.quality, set.present);
    const auto& calibration = scorer->calibration();
    REQUIRE(calibration.experts() == set.experts.size());
    for (std::size_t e = 0; e < calibration.experts(); ++e) {
      CHECK(calibration.knots_x(e) == expected.knots_x(e));
      CHECK(calibration.knots_y(e) == expected.knots_y(e));
    }
  }
}

TEST_CASE("train_best refuses no candidate and bad folds") {
  const auto data = synthetic_dataset();
  torouter::SelectionOptions none;
  none.candidates.clear();
  CHECK_THROWS_WITH(torouter::train_best(data, data.registry, {}, none), Contains("no candidate"));
  torouter::SelectionOptions one_fold;
  one_fold.folds = 1;
  CHECK_THROWS_WITH(torouter::train_best(data, data.registry, {}, one_fold), Contains("folds"));
}

TEST_CASE("predicted_costs weighs estimated input and predicted output tokens at the prices") {
  torouter::ExpertRegistry prices;
  prices.add(torouter::ExpertSpec("a", 1.0, 2.0));
  const std::vector<std::string_view> prompts{"12345678"};  // 8 characters: 2 tokens
  Eigen::MatrixXf tokens(1, 1);
  tokens << 10.0f;
  CHECK(torouter::predicted_costs(prompts, tokens, {"a"}, prices)(0, 0) == Approx(22e-6));
  tokens << std::nanf("");  // not predicted: the cost model's default of 256
  CHECK(torouter::predicted_costs(prompts, tokens, {"a"}, prices)(0, 0) == Approx(514e-6));
  CHECK_THROWS_WITH(torouter::predicted_costs(prompts, tokens, {"b"}, prices), Contains("\"b\""));
}

TEST_CASE("a stack averages its calibrated members and survives its model file") {
  const auto data = synthetic_dataset();
  const auto set = torouter::make_training_set(data.experts, data.train, "synthetic");
  auto stack = torouter::make_scorer("stack:knn:5+mlp:16,buckets=1024/soft");
  CHECK(stack->kind() == "stack");
  CHECK(stack->spec() == "stack:knn:5+mlp:16,buckets=1024/soft");
  stack->train(set, {});
  CHECK_FALSE(stack->calibration().empty());  // trained alone, it calibrates itself
  const std::vector<std::string> prompts{"python function loop bug", "king empire war treaty"};
  const auto scores = stack->score_all(prompts);
  CHECK(scores.quality(0, 0) > scores.quality(0, 1));
  CHECK(scores.quality(1, 1) > scores.quality(1, 0));
  const auto path =
      (torouter::testing::process_temp_dir("model_selection_test") / "s.tormodel").string();
  torouter::save_model(*stack, path, &data.registry);
  const auto loaded = torouter::load_model(path);
  CHECK(loaded.scorer->score_all(prompts).quality == scores.quality);

  CHECK_THROWS_WITH(torouter::make_scorer("stack:knn:5"), Contains("at least two members"));
  CHECK_THROWS_WITH(torouter::make_scorer("stack:knn:5+mlp/adam"), Contains("bce or soft"));
  CHECK_THROWS_WITH(torouter::make_scorer("stack:knn:5+stack:knn:3+knn:4"), Contains("stack"));
}

TEST_CASE("training refuses options it cannot honour, naming the field") {
  using Opts = torouter::TrainOptions;
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<std::function<void(Opts&)>, std::string>> cases = {
      {[](Opts& o) { o.threads = 0; }, "TrainOptions.threads must be >= 1"},
      {[](Opts& o) { o.max_epochs = 0; }, "TrainOptions.max_epochs must be >= 1"},
      {[](Opts& o) { o.patience = -1; }, "TrainOptions.patience must be >= 0"},
      {[](Opts& o) { o.batch_size = 0; }, "TrainOptions.batch_size must be >= 1"},
      {[&](Opts& o) { o.learning_rate = nan; }, "TrainOptions.learning_rate must be a finite"},
      {[](Opts& o) { o.learning_rate = 0; }, "TrainOptions.learning_rate must be a finite"},
      {[&](Opts& o) { o.temperature = inf; }, "TrainOptions.temperature must be a finite"},
      {[&](Opts& o) { o.weight_decay = nan; }, "TrainOptions.weight_decay must be a finite"},
      {[](Opts& o) { o.weight_decay = -1; }, "TrainOptions.weight_decay must be a finite"},
      {[&](Opts& o) { o.validation_fraction = nan; }, "TrainOptions.validation_fraction"},
      {[](Opts& o) { o.validation_fraction = 1; }, "TrainOptions.validation_fraction"},
  };
  const auto data = synthetic_dataset();
  const auto set = torouter::make_training_set(data.experts, data.train, "synthetic");
  for (const auto& [spoil, message] : cases) {
    Opts options;
    spoil(options);
    CHECK(!torouter::validate_train_options(options).empty());
    // Every entry point refuses it, each kind of scorer alike, as misuse.
    for (const char* spec : {"knn:5", "gbt,rounds=5", "mlp:8,buckets=1024"}) {
      try {
        torouter::make_scorer(spec)->train(set, options);
        FAIL("trained " << spec << " with " << message);
      } catch (const torouter::Error& e) {
        CHECK_THAT(e.what(), Contains(message));
        CHECK(e.code() == torouter::ErrorCode::Misuse);
      }
    }
    CHECK_THROWS_WITH(torouter::cross_validate({"knn:5", Loss::Bce}, set, options, 2),
                      Contains(message));
    torouter::SelectionOptions selection;
    selection.candidates = {{"knn:5", Loss::Bce}};
    CHECK_THROWS_WITH(torouter::train_best(data, data.registry, options, selection),
                      Contains(message));
  }
  CHECK(torouter::validate_train_options(Opts{}).empty());
}

TEST_CASE("a top pick's expected quality corrects what its prediction overstates", "[data]") {
  // The expert of highest predicted quality is, more often than not, one
  // whose prediction erred upward: calibrated per expert, its prediction
  // still overstates it (the winner's curse). Half of llmrouter14's
  // training split trains and calibrates; the other half judges. Three
  // folds, not five: the same finding, in two thirds of the time (the
  // test takes over a minute under ASan).
  TOROUTER_SHARED_DATA_OR_SKIP(root);
  const auto data = torouter::load_routing_dataset((*root_found / "llmrouter14").string());
  std::vector<torouter::DatasetRow> fit, judged;
  for (std::size_t i = 0; i < data.train.size(); ++i)
    (i % 2 == 0 ? fit : judged).push_back(data.train[i]);
  const auto set = torouter::make_training_set(data.experts, fit, "llmrouter14 half");
  torouter::TrainOptions options;
  options.threads = 2;
  const auto scorer = torouter::train_calibrated({"gbt", Loss::Bce}, set, options, 3);
  REQUIRE(scorer->pick_calibration().experts() == 1);
  const auto complete = torouter::complete_rows(judged);
  std::vector<std::string> prompts;
  for (const auto& row : complete) prompts.push_back(row.prompt);
  const auto scores = scorer->score_all(prompts);
  const auto n = static_cast<Eigen::Index>(complete.size());
  Eigen::VectorXd predicted(n), expected(n), truth(n);
  for (Eigen::Index i = 0; i < n; ++i) {
    Eigen::Index top = 0;
    predicted(i) = scores.quality.row(i).maxCoeff(&top);
    expected(i) = scorer->top_pick_quality(predicted(i));
    truth(i) =
        complete[static_cast<std::size_t>(i)].outcomes[static_cast<std::size_t>(top)].quality;
  }
  const double before =
      torouter::expected_calibration_error(torouter::reliability_bins(predicted, truth));
  const double after =
      torouter::expected_calibration_error(torouter::reliability_bins(expected, truth));
  INFO("top picks: predicted " << predicted.mean() << ", expected " << expected.mean() << ", true "
                               << truth.mean() << "; ECE " << before << " -> " << after);
  CHECK(predicted.mean() - truth.mean() > 0.01);
  CHECK(std::abs(expected.mean() - truth.mean()) < (predicted.mean() - truth.mean()) / 2);
  CHECK(after < before * 0.75);

  // The map is part of the model file.
  const auto path =
      (torouter::testing::process_temp_dir("model_selection_test") / "gbt.tormodel").string();
  torouter::save_model(*scorer, path, &data.registry);
  const auto loaded = torouter::load_model(path);
  for (const double p : {0.0, 0.3, 0.55, 0.7, 0.9, 1.0})
    CHECK(loaded.scorer->top_pick_quality(p) == scorer->top_pick_quality(p));
}

TEST_CASE("train_best tries the task scorer only where the rows carry two tasks or more") {
  auto data = synthetic_dataset();
  torouter::SelectionOptions selection;
  selection.candidates = {{"task", Loss::Bce}, {"linear", Loss::Bce}};
  selection.folds = 3;
  selection.stacks = false;
  std::vector<std::string> seen;
  selection.on_candidate = [&](const torouter::CandidateFigures& c) { seen.push_back(c.name); };
  torouter::train_best(data, data.registry, {}, selection);
  CHECK(seen == std::vector<std::string>{"task", "linear"});
  const auto defaults = torouter::default_candidates();
  CHECK(std::any_of(defaults.begin(), defaults.end(),
                    [](const CandidateScorer& c) { return c.spec == "task"; }));

  for (auto& row : data.train) row.task.clear();
  seen.clear();
  const auto scorer = torouter::train_best(data, data.registry, {}, selection);
  CHECK(seen == std::vector<std::string>{"linear"});
  CHECK(scorer->spec() == "linear");
  selection.candidates = {{"task", Loss::Bce}};
  CHECK_THROWS_WITH(torouter::train_best(data, data.registry, {}, selection),
                    Contains("needs task labels"));

  // Two tasks, but one on a single row: the fold that holds that row
  // trains on one task, so the task scorer cannot be cross-validated.
  for (auto& row : data.train) row.task = "history";
  data.train[7].task = "code";
  seen.clear();
  selection.candidates = {{"task", Loss::Bce}, {"linear", Loss::Bce}};
  CHECK(torouter::train_best(data, data.registry, {}, selection)->spec() == "linear");
  CHECK(seen == std::vector<std::string>{"linear"});
  // Cross-validating it anyway says which fold failed.
  const auto set = torouter::make_training_set(data.experts, data.train, "one code row");
  CHECK_THROWS_WITH(torouter::cross_validate({"task", Loss::Bce}, set, {}, 3),
                    Contains("cross-validation, fold") && Contains("two tasks"));
}
