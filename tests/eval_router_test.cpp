// Evaluation picks as the router does (issue 15, item 8): for every prompt
// and every lambda of the sweep, the expert `pick_by_utility` picks from
// `router_predictions` is the expert `Router::route` picks with that
// lambda_cost. Checked with a hashing scorer built to hit every corner
// (quality outside [0, 1] and NaN, absent output tokens, exact ties of
// quality and of cost) and with trained kNN and MLP models.
#include <catch2/catch.hpp>
#include <cmath>
#include <functional>
#include <limits>
#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "support/data_dir.hpp"
#include "support/synthetic_data.hpp"
#include "torouter/dataset.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"
#include "torouter/router.hpp"
#include "torouter/train.hpp"
#include "torouter/trainable_scorer.hpp"

namespace {

using torouter::ExpertRegistry;
using torouter::ExpertSpec;

// Quality per (prompt, expert) from a hash, on a grid of sixteenths from
// -0.125 to 1.125 so that ties are common and some values need clamping;
// one pair in 23 is NaN. Output tokens are predicted for "a" only; the rest
// take the cost model's default, so experts of equal prices cost the same.
class HashScorer : public torouter::Scorer {
 public:
  explicit HashScorer(std::vector<std::string> experts) : experts_(std::move(experts)) {}
  const std::vector<std::string>& expert_names() const override { return experts_; }
  std::string_view version() const override { return "hash-scorer-1"; }
  void score(const std::string_view* prompts, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace* /*workspace*/) const override {
    out.resize(count, experts_.size());
    out.clear_output_tokens();
    for (std::size_t i = 0; i < count; ++i) {
      const std::size_t h = std::hash<std::string_view>{}(prompts[i]);
      for (std::size_t e = 0; e < experts_.size(); ++e) {
        const std::size_t mix = (h >> (3 * e)) ^ (h * (e + 7));
        const auto row = static_cast<Eigen::Index>(i);
        const auto col = static_cast<Eigen::Index>(e);
        out.quality(row, col) = mix % 23 == 0 ? std::numeric_limits<float>::quiet_NaN()
                                              : static_cast<float>(mix % 21) / 16.0f - 0.125f;
        if (experts_[e] == "a") out.output_tokens(row, col) = static_cast<float>(mix % 5 * 100);
      }
    }
  }

 private:
  std::vector<std::string> experts_;
};

// Prompts of many lengths, so input tokens (and so costs) vary.
std::vector<std::string> varied_prompts(std::size_t count) {
  std::vector<std::string> out;
  for (std::size_t i = 0; i < count; ++i) {
    out.push_back("prompt " + std::to_string(i) + std::string(i * 7 % 300, 'x'));
  }
  return out;
}

std::vector<std::string_view> views(const std::vector<std::string>& prompts) {
  return {prompts.begin(), prompts.end()};
}

// For every lambda of the sweep over the router's own predictions, the
// prompts where Router::route and pick_by_utility pick differently: empty
// when they agree everywhere, else how many and the first.
std::string disagreements(const torouter::Router& router, const std::vector<std::string>& prompts) {
  const auto predicted = torouter::router_predictions(router, views(prompts));
  const auto lambdas = torouter::lambda_sweep(predicted.quality, predicted.cost);
  REQUIRE(lambdas.size() > 2);  // the sweep moves picks: the check is not vacuous
  std::size_t differ = 0;
  std::string first;
  torouter::RouteDecision decision;
  torouter::RouteOptions options;
  for (double lambda : lambdas) {
    const auto picks = torouter::pick_by_utility(predicted.quality, predicted.cost, lambda);
    options.policy.lambda_cost = lambda;
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      router.route(prompts[i], options, decision);
      const torouter::Candidate* pick = decision.pick();
      if (pick && pick->expert_index == picks[i]) continue;
      if (++differ == 1) {
        first = "lambda " + std::to_string(lambda) + ", prompt " + std::to_string(i) + ": route " +
                (pick ? std::string(pick->name) : "none") + ", eval " +
                router.experts()[picks[i]].name;
      }
    }
  }
  return differ == 0 ? "" : std::to_string(differ) + " disagreements; first at " + first;
}

ExpertRegistry hash_registry() {
  ExpertRegistry experts;
  // Equal prices for "b" and "c", and for "d" and "e": cost ties on every prompt.
  experts.add(ExpertSpec("a", 3.0, 15.0));
  experts.add(ExpertSpec("b", 0.5, 1.5));
  experts.add(ExpertSpec("c", 0.5, 1.5));
  experts.add(ExpertSpec("d", 0.1, 0.2));
  experts.add(ExpertSpec("e", 0.1, 0.2));
  return experts;
}

torouter::TrainingSet synthetic_set() {
  return torouter::make_training_set(torouter::testing::synthetic_experts(),
                                     torouter::testing::synthetic_rows(300, 1));
}

ExpertRegistry synthetic_registry() {
  ExpertRegistry experts;
  experts.add(ExpertSpec("coder", 1.0, 2.0));
  experts.add(ExpertSpec("historian", 0.5, 1.0));
  experts.add(ExpertSpec("generalist", 0.1, 0.1));
  return experts;
}

std::vector<std::string> synthetic_prompts() {
  std::vector<std::string> out;
  for (const auto& row : torouter::testing::synthetic_rows(60, 2)) out.push_back(row.prompt);
  return out;
}

}  // namespace

TEST_CASE("eval picks what Router::route picks, at every lambda, for a hashing scorer",
          "[eval][router]") {
  const ExpertRegistry experts = hash_registry();
  const torouter::Router router(
      experts, std::make_shared<HashScorer>(std::vector<std::string>{"e", "d", "c", "b", "a"}));
  const auto prompts = varied_prompts(300);
  CHECK(disagreements(router, prompts) == "");

  // The predictions are the router's: clamped quality, its cost model.
  const auto predicted = torouter::router_predictions(router, views(prompts));
  CHECK(predicted.quality.minCoeff() >= 0.0);
  CHECK(predicted.quality.maxCoeff() <= 1.0);
  torouter::RouteDecision decision = router.route(prompts[5]);
  for (const auto& c : decision.candidates) {
    CHECK(predicted.quality(5, static_cast<Eigen::Index>(c.expert_index)) == c.predicted_quality);
    CHECK(predicted.cost(5, static_cast<Eigen::Index>(c.expert_index)) == c.cost_usd);
  }
}

TEST_CASE("eval picks what Router::route picks, at every lambda, for trained models",
          "[eval][router]") {
  const auto set = synthetic_set();
  torouter::TrainOptions options;
  options.max_epochs = 4;
  for (const char* spec : {"knn:5", "mlp:16,buckets=1024"}) {
    INFO(spec);
    std::shared_ptr<torouter::TrainableScorer> scorer = torouter::make_scorer(spec);
    scorer->train(set, options);
    const torouter::Router router(synthetic_registry(), scorer);
    CHECK(disagreements(router, synthetic_prompts()) == "");
  }
}

TEST_CASE("eval picks what Router::route picks for the default router on llmrouter14's test split",
          "[eval][router][data]") {
  TOROUTER_SHARED_DATA_OR_SKIP(root_dir);
  const auto data = torouter::load_routing_dataset((root_dir / "llmrouter14").string());
  const auto model = torouter::load_model(std::string(TOROUTER_SOURCE_DIR) +
                                          "/examples/default_router/llmrouter14.tormodel");
  // As `torouter eval` builds it: the model's experts in the dataset's order.
  ExpertRegistry experts;
  for (const auto& name : data.experts) experts.add(*model.experts.find(name));
  const torouter::Router router(experts, model.scorer);
  std::vector<std::string> prompts;
  for (const auto& row : torouter::complete_rows(data.test)) prompts.push_back(row.prompt);
  REQUIRE(prompts.size() == 500);
  CHECK(disagreements(router, prompts) == "");
}

TEST_CASE("router_predictions refuses what evaluation cannot mirror", "[eval][router]") {
  auto scorer = std::make_shared<HashScorer>(std::vector<std::string>{"a", "b", "c", "d", "e"});
  const std::vector<std::string_view> prompts{"hello"};
  const torouter::Router threshold(hash_registry(), scorer,
                                   std::make_shared<torouter::ThresholdPolicy>("a", "d", 0.1));
  CHECK_THROWS_AS(torouter::router_predictions(threshold, prompts), torouter::Error);
  torouter::Router disabled(hash_registry(), scorer);
  disabled.set_enabled("c", false);
  CHECK_THROWS_WITH(torouter::router_predictions(disabled, prompts),
                    Catch::Matchers::Contains("\"c\" (disabled)"));
  const torouter::Router router(hash_registry(), scorer);
  const auto predicted = torouter::router_predictions(router, prompts);
  CHECK(predicted.quality.rows() == 1);
  CHECK(predicted.quality.cols() == 5);
}
