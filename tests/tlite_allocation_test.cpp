// A warm transformer-lite `score` (and a warm route over it) allocates
// nothing, for every prompt length up to max_tokens and beyond: global
// operator new is replaced by a counting one, so this test is a binary of
// its own.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <new>
#include <string>
#include <vector>

#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

#include "support/counting_new.hpp"

namespace {

// A few rows are enough: the weights' values do not matter here, only that
// the scorer is trained.
torouter::TrainingSet tiny_set() {
  torouter::TrainingSet set;
  set.experts = {"small", "large"};
  set.prompts = {
      "write python code",  "a poem", "the capital of france", "fix this bug", "tell me a story",
      "sort a list in c++", "hello",  "what is two plus two"};
  const auto rows = static_cast<Eigen::Index>(set.prompts.size());
  set.quality = Eigen::MatrixXf::Constant(rows, 2, 0.5f);
  set.quality.col(0).setLinSpaced(0.0f, 1.0f);
  set.present = Eigen::MatrixXf::Ones(rows, 2);
  set.output_tokens = Eigen::MatrixXf::Constant(rows, 2, 100.0f);
  set.fingerprint = "00000000";
  return set;
}

// Prompts of 0, 1, 2, ... words, past max_tokens.
std::vector<std::string> prompts_of_every_length(int words) {
  std::vector<std::string> out{""};
  std::string text;
  for (int i = 1; i <= words; ++i) {
    text += (i % 3 == 0 ? "code " : i % 3 == 1 ? "Écris " : "数学 ");
    out.push_back(text);
  }
  return out;
}

long allocations_since(long before) { return g_allocations.load() - before; }

}  // namespace

TEST_CASE("a warm tlite score allocates nothing for any prompt length", "[tlite][allocation]") {
  // The default shape (d=64, 4 heads, ff 256, 64 tokens), trained for one
  // epoch.
  std::shared_ptr<torouter::TrainableScorer> scorer = torouter::make_scorer("tlite");
  torouter::TrainOptions options;
  options.max_epochs = 1;
  scorer->train(tiny_set(), options);

  const auto prompts = prompts_of_every_length(80);
  auto workspace = scorer->make_workspace();
  torouter::ScoreBatch batch;
  const std::string_view first = prompts[0];
  scorer->score(&first, 1, batch, workspace.get());  // sizes the batch

  const long before = g_allocations.load();
  for (int round = 0; round < 2; ++round) {
    for (const auto& p : prompts) {
      const std::string_view view = p;
      scorer->score(&view, 1, batch, workspace.get());
    }
  }
  CHECK(allocations_since(before) == 0);
  CHECK(batch.quality.allFinite());

  // The same through a router.
  torouter::ExpertRegistry registry;
  registry.add(torouter::ExpertSpec("small", 0.1, 0.2));
  registry.add(torouter::ExpertSpec("large", 3, 15));
  torouter::Router router(registry, scorer);
  torouter::RouteDecision decision;
  router.route("warm up", {}, decision);
  const long before_route = g_allocations.load();
  for (const auto& p : prompts) router.route(p, {}, decision);
  CHECK(allocations_since(before_route) == 0);
  CHECK(decision.pick() != nullptr);

  // The counter does count: a score without a workspace allocates.
  const long before_cold = g_allocations.load();
  scorer->score(&first, 1, batch, nullptr);
  CHECK(allocations_since(before_cold) > 0);
}
