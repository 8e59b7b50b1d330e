// Off-policy estimates (torouter/off_policy.hpp): on simulated traffic whose
// true values are known, and reading a decision log.
#include "torouter/off_policy.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <filesystem>
#include <fstream>
#include <memory>
#include <string>
#include <vector>

#include "support/synthetic_data.hpp"
#include "support/temp_dir.hpp"
#include "support/test_scorer.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

using Catch::Matchers::Contains;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::LoggedCall;
using torouter::RouteDecision;
using torouter::RouteOptions;
using torouter::Router;
using torouter::TargetPrediction;
using torouter::testing::TableScorer;

namespace {

// The synthetic experts: coder answers code prompts (quality 1, else 0),
// historian history prompts, generalist both at 0.5.
ExpertRegistry synthetic_registry() {
  ExpertRegistry registry;
  registry.add(ExpertSpec("coder", 1.0, 2.0));
  registry.add(ExpertSpec("historian", 1.0, 1.0));
  registry.add(ExpertSpec("generalist", 0.2, 0.2));
  return registry;
}

bool covers(const torouter::Estimate& e, double truth) { return e.low <= truth && truth <= e.high; }

}  // namespace

TEST_CASE("off-policy estimates cover the true value on simulated traffic") {
  const auto& experts = torouter::testing::synthetic_experts();
  const auto rows = torouter::testing::synthetic_rows(4000, 5);
  // The logging router prefers the generalist and explores half the time.
  auto logging_scorer =
      std::make_shared<TableScorer>(experts, std::vector<float>{0.5f, 0.5f, 0.6f});
  Router logging(synthetic_registry(), logging_scorer);
  RouteOptions explore;
  explore.exploration.epsilon = 0.5;
  explore.exploration.seed = 11;
  // The target would send everything to the coder, and predicts its
  // quality badly (0.9 everywhere), which the doubly robust estimate
  // must correct.
  auto target_scorer = std::make_shared<TableScorer>(experts, std::vector<float>{0.9f, 0.3f, 0.5f});
  Router target(synthetic_registry(), target_scorer);

  std::vector<LoggedCall> calls;
  std::vector<TargetPrediction> predictions;
  double true_quality = 0, true_cost = 0;
  RouteDecision logged, wanted;
  for (const auto& row : rows) {
    logging.route(row.prompt, explore, logged);
    target.route(row.prompt, {}, wanted);
    const auto* pick = logged.pick();
    const auto* target_pick = wanted.pick();
    const auto index = [&](std::string_view name) {
      return static_cast<std::size_t>(std::find(experts.begin(), experts.end(), name) -
                                      experts.begin());
    };
    LoggedCall call;
    call.id = row.id;
    call.prompt = row.prompt;
    call.expert = std::string(pick->name);
    call.propensity = logged.propensity;
    call.quality = row.outcomes[index(pick->name)].quality;
    call.cost_usd = logged.find(pick->name)->cost_usd;
    calls.push_back(call);
    TargetPrediction t;
    t.pick = std::string(target_pick->name);
    t.quality_of_pick = target_pick->predicted_quality;
    t.quality_of_logged = wanted.find(pick->name)->predicted_quality;
    t.cost_of_pick = target_pick->cost_usd;
    t.cost_of_logged = wanted.find(pick->name)->cost_usd;
    predictions.push_back(t);
    true_quality += row.outcomes[index(target_pick->name)].quality;
    true_cost += target_pick->cost_usd;
  }
  true_quality /= static_cast<double>(rows.size());
  true_cost /= static_cast<double>(rows.size());
  REQUIRE(true_quality == Approx(0.5).margin(0.05));  // the coder is right on code prompts only

  const auto report = torouter::estimate_off_policy(calls, predictions);
  CHECK(report.calls == rows.size());
  CHECK(report.matching > 0);
  CHECK(report.matching < rows.size());
  INFO("truth " << true_quality << ", IPS " << report.ips_quality.value << " ["
                << report.ips_quality.low << ", " << report.ips_quality.high << "], DR "
                << report.dr_quality.value << " [" << report.dr_quality.low << ", "
                << report.dr_quality.high << "]");
  CHECK(covers(report.ips_quality, true_quality));
  CHECK(covers(report.dr_quality, true_quality));
  CHECK(covers(report.ips_cost, true_cost));
  CHECK(covers(report.dr_cost, true_cost));
  // The direct method alone (the target's own 0.9) would be far off.
  CHECK(std::abs(0.9 - true_quality) > report.dr_quality.high - report.dr_quality.low);

  CHECK_THROWS_WITH(torouter::estimate_off_policy({}, {}), Contains("no logged call"));
  calls.front().propensity = 0;
  CHECK_THROWS_WITH(torouter::estimate_off_policy(calls, predictions), Contains("propensity"));
}

TEST_CASE("read_decision_log joins decisions with their last feedback") {
  const auto dir = torouter::testing::process_temp_dir("off_policy_log");
  const std::string path = (dir / "calls.jsonl").string();
  auto decision = [](const std::string& id, const std::string& prompt, const std::string& pick,
                     const std::string& expert) {
    return R"({"type": "decision", "id": ")" + id + R"(", "prompt": )" + prompt +
           R"(, "propensity": 0.25, "cost_usd": 0.002, "output_tokens": 12, "expert": )" + expert +
           R"(, "decision": {"pick": ")" + pick +
           R"(", "knobs": {"lambda_cost": 3}, "candidates": [{"expert": "historian"}, )" +
           R"({"expert": ")" + pick + R"("}]}})";
  };
  {
    std::ofstream out(path);
    out << decision("a", "\"code this\"", "coder", "\"coder\"") << "\n"
        << decision("b", "\"no verdict\"", "coder", "\"coder\"") << "\n"
        << decision("c", "null", "coder", "\"coder\"") << "\n"
        << decision("d", "\"failed over\"", "coder", "\"historian\"") << "\n"
        << R"({"type": "decision", "id": "e", "prompt": "named", "propensity": 1, )"
           R"("pinned_expert": "coder", "cost_usd": 0.002, "output_tokens": 12, )"
           R"("expert": "coder", "decision": {"pick": "coder", "knobs": {"lambda_cost": 3}, )"
           R"("candidates": [{"expert": "coder"}]}})"
        << "\n"
        << "\n"
        << R"({"type": "feedback", "id": "a", "quality": 0.2})"
        << "\n"
        << R"({"type": "feedback", "id": "a", "quality": 0.9})"
        << "\n"
        << R"({"type": "feedback", "id": "c", "quality": 1})"
        << "\n"
        << R"({"type": "feedback", "id": "d", "quality": 1})"
        << "\n"
        << R"({"type": "feedback", "id": "e", "quality": 1})"
        << "\n";
  }
  const auto reading = torouter::read_decision_log(path);
  CHECK(reading.decisions == 5);
  CHECK(reading.without_feedback == 1);
  CHECK(reading.redacted == 1);
  CHECK(reading.not_answered == 1);
  CHECK(reading.pinned == 1);  // the caller chose: no evidence of the router's policy
  REQUIRE(reading.calls.size() == 1);
  const LoggedCall& a = reading.calls.front();
  CHECK(a.id == "a");
  CHECK(a.prompt == "code this");
  CHECK(a.expert == "coder");
  CHECK(a.propensity == 0.25);
  CHECK(a.quality == 0.9);  // the last verdict
  CHECK(a.cost_usd == 0.002);
  CHECK(a.output_tokens == 12);
  CHECK(a.lambda_cost == 3);
  CHECK(reading.experts == std::vector<std::string>{"historian", "coder"});

  std::ofstream(path, std::ios::app) << R"({"type": "decision", "id": "f"})"
                                     << "\n";
  CHECK_THROWS_WITH(torouter::read_decision_log(path),
                    Contains("calls.jsonl:12") && Contains("prompt"));
  std::ofstream(path) << R"({"type": "feedback", "id": "a", "quality": 1.5})"
                      << "\n";
  CHECK_THROWS_WITH(torouter::read_decision_log(path),
                    Contains("calls.jsonl:1") && Contains("quality must be in [0, 1]"));
  std::ofstream(path) << R"({"type": "decision", "id": "e", "prompt": "p", "propensity": 1, )"
                      << R"("cost_usd": 0, "decision": {"knobs": {"lambda_cost": 0}}})"
                      << "\n";
  CHECK_THROWS_WITH(torouter::read_decision_log(path),
                    Contains("calls.jsonl:1") && Contains("output_tokens"));
  CHECK_THROWS_WITH(torouter::read_decision_log((dir / "absent.jsonl").string()),
                    Contains("absent.jsonl"));
  std::filesystem::remove_all(dir);
}
