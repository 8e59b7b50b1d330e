// A workspace made before its scorer was trained (or trained or loaded
// again): the scorer may now predict for more experts, from more tasks,
// with other members, so each kind must size (or renew) what it keeps in
// the workspace before it writes there.
#include <catch2/catch.hpp>
#include <string>
#include <string_view>
#include <vector>

#include "support/synthetic_data.hpp"
#include "torouter/dataset.hpp"
#include "torouter/train.hpp"
#include "torouter/trainable_scorer.hpp"

namespace {

// `count` rows over `experts` experts and `tasks` tasks: expert t % experts
// answers task t's prompts well, the others poorly.
torouter::TrainingSet wide_set(std::size_t count, std::size_t experts, std::size_t tasks) {
  std::vector<std::string> names;
  for (std::size_t e = 0; e < experts; ++e) names.push_back("expert" + std::to_string(e));
  std::vector<torouter::DatasetRow> rows;
  for (std::size_t i = 0; i < count; ++i) {
    const std::size_t t = i % tasks;
    torouter::DatasetRow row;
    row.id = "wide." + std::to_string(i);
    row.task = "task" + std::to_string(t);
    row.prompt = "question about topic" + std::to_string(t) + " number " + std::to_string(i);
    for (std::size_t e = 0; e < experts; ++e) {
      row.outcomes.push_back({true, e == t % experts ? 1.0 : 0.1, std::nullopt, 100u});
    }
    rows.push_back(row);
  }
  return torouter::make_training_set(names, rows, "wide");
}

// One scorer of each kind, small enough to train in a test: small tables,
// as the workspaces' sizes do not depend on them (the default tables took
// over a minute under ASan).
const std::vector<std::string_view> kEveryKind{
    "linear,buckets=1024", "task,buckets=1024",   "knn:5,buckets=1024",
    "gbt,buckets=1024",    "mlp:16,buckets=1024", "stack:task,buckets=1024+knn:5,buckets=1024"};

const std::vector<std::string_view> kPrompts{"question about topic3 number 1", "explain rome"};

}  // namespace

TEST_CASE("a workspace made before the scorer was trained again scores like a new one") {
  const auto small = torouter::make_training_set(torouter::testing::synthetic_experts(),
                                                 torouter::testing::synthetic_rows(60, 1), "small");
  const auto wide = wide_set(120, 7, 5);
  for (const std::string_view spec : kEveryKind) {
    INFO(spec);
    auto scorer = torouter::make_scorer(spec);
    scorer->train(small, {});
    const auto stale = scorer->make_workspace();
    scorer->train(wide, {});
    const auto fresh = scorer->make_workspace();
    torouter::ScoreBatch with_stale, with_fresh;
    scorer->score(kPrompts.data(), kPrompts.size(), with_stale, stale.get());
    scorer->score(kPrompts.data(), kPrompts.size(), with_fresh, fresh.get());
    REQUIRE(with_stale.quality.cols() == 7);
    CHECK(with_stale.quality.isApprox(with_fresh.quality));
    // And back: a workspace sized for the wider model, on the smaller one.
    scorer->train(small, {});
    scorer->score(kPrompts.data(), kPrompts.size(), with_stale, fresh.get());
    scorer->score(kPrompts.data(), kPrompts.size(), with_fresh, nullptr);
    REQUIRE(with_stale.quality.cols() == 3);
    CHECK(with_stale.quality.isApprox(with_fresh.quality));
  }
}

TEST_CASE("a workspace made before the scorer was first trained scores like a new one") {
  // The stack's case: made with no members, it holds no member workspaces.
  const auto wide = wide_set(120, 7, 5);
  for (const std::string_view spec : kEveryKind) {
    INFO(spec);
    auto scorer = torouter::make_scorer(spec);
    const auto early = scorer->make_workspace();
    scorer->train(wide, {});
    torouter::ScoreBatch with_early, with_fresh;
    scorer->score(kPrompts.data(), kPrompts.size(), with_early, early.get());
    scorer->score(kPrompts.data(), kPrompts.size(), with_fresh, nullptr);
    REQUIRE(with_early.quality.cols() == 7);
    CHECK(with_early.quality.isApprox(with_fresh.quality));
  }
}
