// A warm kNN `score` with a workspace allocates nothing, in sparse and dense
// mode, nor does gbt's, linear's or a stack's (whose members share one featurization):
// global operator new is replaced by a counting one, so this test is a
// binary of its own.
#include <atomic>
#include <catch2/catch.hpp>
#include <cstdlib>
#include <new>
#include <string>
#include <string_view>
#include <vector>

#include "support/counting_new.hpp"
#include "torouter/trainable_scorer.hpp"

namespace {

torouter::TrainingSet small_set() {
  const std::vector<std::string> prompts{
      "Write a Python function that sorts a list of integers",
      "Fix the compile error in this C++ class constructor",
      "How do I parse a JSON array in Python with a loop",
      "Who won the battle of Hastings in 1066",
      "Why did the Roman empire fall in the fifth century",
      "What treaty ended the Thirty Years War in Europe",
  };
  std::vector<torouter::DatasetRow> rows;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    torouter::DatasetRow row;
    row.prompt = prompts[i];
    torouter::Outcome a, b;
    a.present = b.present = true;
    a.quality = i < 3 ? 0.9 : 0.2;
    b.quality = i < 3 ? 0.3 : 0.8;
    a.output_chars = 100 + 10 * i;
    row.outcomes = {a, b};
    rows.push_back(row);
  }
  return torouter::make_training_set({"coder", "historian"}, rows, "allocation");
}

}  // namespace

TEST_CASE("a warm kNN, gbt, linear or stack score with a workspace allocates nothing",
          "[knn][allocation]") {
  const std::string spec = GENERATE(
      as<std::string>{}, "knn:3", "knn:2,weighting=uniform", "knn:3,dims=4",
      "knn:2,dims=16,weighting=uniform", "gbt,dims=4,buckets=1024,rounds=20,leaf=1",
      "linear,buckets=1024", "stack:knn:3,dims=4,buckets=1024+linear,buckets=1024",
      "stack:knn:3,dims=4,buckets=1024+gbt,dims=4,buckets=1024,rounds=20,leaf=1+mlp:8,buckets=1024",
      "stack:knn:3+mlp:8,buckets=1024");
  auto scorer = torouter::make_scorer(spec);
  torouter::TrainOptions options;
  options.validation_fraction = 0;
  scorer->train(small_set(), options);

  const std::string long_prompt =
      "Write a Python function that parses a JSON array, then explain why the Roman empire "
      "fell; compare the battle of Hastings in 1066 with the Thirty Years War. Écris aussi "
      "une conclusion en français. 最后用中文总结一下。";
  const std::vector<std::string_view> prompts{long_prompt, "How do I sort a list in Python?", "",
                                              "Who ruled Europe in 1066?"};
  auto workspace = scorer->make_workspace();
  torouter::ScoreBatch batch;
  scorer->score(prompts.data(), prompts.size(), batch, workspace.get());  // warms everything
  torouter::ScoreBatch one;
  scorer->score(prompts.data(), 1, one, workspace.get());

  const long before = g_allocations.load();
  for (int round = 0; round < 5; ++round) {
    scorer->score(prompts.data(), prompts.size(), batch, workspace.get());
    for (std::size_t i = 0; i < prompts.size(); ++i)
      scorer->score(&prompts[i], 1, one, workspace.get());
  }
  const long after = g_allocations.load();
  REQUIRE(after - before == 0);
  if (spec.rfind("knn", 0) == 0) CHECK(batch.quality(1, 0) > batch.quality(1, 1));

  // The counter does count: scoring without a workspace allocates.
  scorer->score(prompts.data(), 1, one, nullptr);
  REQUIRE(g_allocations.load() > after);
}
