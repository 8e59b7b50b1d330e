#include "torouter/policy.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <limits>
#include <string>
#include <utility>
#include <vector>

using torouter::Candidate;
using torouter::Exclusion;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::PickReason;
using torouter::PolicyOptions;

namespace {

// Three experts: cheap/weak, mid, dear/strong; the registry owns the names.
struct Fixture {
  ExpertRegistry registry;
  std::vector<Candidate> candidates;

  Fixture() {
    registry.add(ExpertSpec("cheap", 0.1, 0.1));
    registry.add(ExpertSpec("mid", 1, 1));
    registry.add(ExpertSpec("dear", 10, 10));
    const double quality[] = {0.5, 0.7, 0.8};
    const double cost[] = {0.0001, 0.001, 0.01};
    const double latency[] = {300, 800, 2000};
    for (std::size_t i = 0; i < 3; ++i) {
      Candidate c;
      c.expert_index = i;
      c.name = registry[i].name;
      c.predicted_quality = quality[i];
      c.cost_usd = cost[i];
      c.latency_ms = latency[i];
      c.input_tokens = 100;
      c.predicted_output_tokens = 100;
      candidates.push_back(c);
    }
  }
  std::vector<std::string> order() const {
    std::vector<std::string> names;
    for (const auto& c : candidates) names.emplace_back(c.name);
    return names;
  }
};

using Names = std::vector<std::string>;

}  // namespace

TEST_CASE("utility policy at lambda 0 ranks by predicted quality") {
  Fixture f;
  const PickReason reason = torouter::UtilityPolicy().rank(f.candidates, PolicyOptions{});
  CHECK(reason == PickReason::HighestUtility);
  CHECK(f.order() == Names{"dear", "mid", "cheap"});
  CHECK(f.candidates[0].utility == Approx(0.8));
}

TEST_CASE("utility policy trades quality for cost and latency") {
  Fixture f;
  PolicyOptions options;
  SECTION("a moderate cost weight picks the middle expert") {
    // utilities at lambda 100: cheap 0.5 - 0.01 = 0.49, mid 0.7 - 0.1 = 0.6, dear 0.8 - 1.0 = -0.2
    options.lambda_cost = 100;
    torouter::UtilityPolicy().rank(f.candidates, options);
    CHECK(f.order() == Names{"mid", "cheap", "dear"});
    CHECK(f.candidates[0].utility == Approx(0.6));
  }
  SECTION("a large cost weight picks the cheapest") {
    options.lambda_cost = 1e6;
    torouter::UtilityPolicy().rank(f.candidates, options);
    CHECK(f.order()[0] == "cheap");
  }
  SECTION("a latency weight counts seconds") {
    // cheap 0.5 - 0.3*0.2 = 0.44, mid 0.7 - 0.8*0.2 = 0.54, dear 0.8 - 2*0.2 = 0.4
    options.lambda_latency = 0.2;
    torouter::UtilityPolicy().rank(f.candidates, options);
    CHECK(f.order() == Names{"mid", "cheap", "dear"});
    CHECK(f.candidates[0].utility == Approx(0.54));
  }
}

TEST_CASE("ties go to the cheaper expert, then the one registered first") {
  Fixture f;
  for (auto& c : f.candidates) c.predicted_quality = 0.6;
  torouter::UtilityPolicy().rank(f.candidates, PolicyOptions{});
  CHECK(f.order() == Names{"cheap", "mid", "dear"});

  Fixture same_cost;
  for (auto& c : same_cost.candidates) {
    c.predicted_quality = 0.6;
    c.cost_usd = 0.001;
  }
  std::swap(same_cost.candidates[0], same_cost.candidates[2]);
  torouter::UtilityPolicy().rank(same_cost.candidates, PolicyOptions{});
  CHECK(same_cost.order() == Names{"cheap", "mid", "dear"});
}

TEST_CASE("hard constraints exclude candidates, each with its reason") {
  Fixture f;
  PolicyOptions options;
  SECTION("context window") {
    ExpertRegistry small_window;
    ExpertSpec spec("cheap", 0.1, 0.1);
    spec.context_window_tokens = 150;  // 100 in + 100 predicted out does not fit
    small_window.add(spec);
    small_window.add(ExpertSpec("mid", 1, 1));
    small_window.add(ExpertSpec("dear", 10, 10));
    torouter::apply_constraints(f.candidates, small_window, options);
    CHECK(f.candidates[0].exclusion == Exclusion::ContextWindow);
    CHECK(f.candidates[1].eligible());
  }
  SECTION("required tags") {
    ExpertRegistry tagged;
    ExpertSpec code("cheap", 0.1, 0.1);
    code.tags = {"code", "chat"};
    tagged.add(code);
    tagged.add(ExpertSpec("mid", 1, 1));
    ExpertSpec dear("dear", 10, 10);
    dear.tags = {"code"};
    tagged.add(dear);
    options.required_tags = {"code", "chat"};
    torouter::apply_constraints(f.candidates, tagged, options);
    CHECK(f.candidates[0].eligible());
    CHECK(f.candidates[1].exclusion == Exclusion::MissingTag);
    CHECK(f.candidates[2].exclusion == Exclusion::MissingTag);
  }
  SECTION("maximum cost") {
    options.max_cost_usd = 0.005;
    torouter::apply_constraints(f.candidates, f.registry, options);
    CHECK(f.candidates[2].exclusion == Exclusion::OverCostLimit);
    CHECK(f.candidates[1].eligible());
  }
  SECTION("maximum latency") {
    options.max_latency_ms = 500;
    torouter::apply_constraints(f.candidates, f.registry, options);
    CHECK(f.candidates[0].eligible());
    CHECK(f.candidates[1].exclusion == Exclusion::OverLatencyLimit);
    CHECK(f.candidates[2].exclusion == Exclusion::OverLatencyLimit);
  }
  SECTION("an earlier exclusion is kept") {
    f.candidates[2].exclusion = Exclusion::CoolingDown;
    options.max_latency_ms = 500;
    torouter::apply_constraints(f.candidates, f.registry, options);
    CHECK(f.candidates[2].exclusion == Exclusion::CoolingDown);
  }
  SECTION("excluded candidates rank last and one eligible is 'only eligible'") {
    options.max_cost_usd = 0.0005;
    torouter::apply_constraints(f.candidates, f.registry, options);
    const PickReason reason = torouter::UtilityPolicy().rank(f.candidates, options);
    CHECK(reason == PickReason::OnlyEligible);
    CHECK(f.order()[0] == "cheap");
    CHECK_FALSE(f.candidates[1].eligible());
  }
  SECTION("nothing eligible") {
    options.max_cost_usd = 0;
    torouter::apply_constraints(f.candidates, f.registry, options);
    CHECK(torouter::UtilityPolicy().rank(f.candidates, options) == PickReason::NoneEligible);
  }
}

TEST_CASE("threshold policy picks the strong expert only past the threshold") {
  const torouter::ThresholdPolicy policy("dear", "cheap", 0.25);
  SECTION("lead 0.3 > 0.25: strong") {
    Fixture f;
    CHECK(policy.rank(f.candidates, PolicyOptions{}) == PickReason::ThresholdStrong);
    CHECK(f.order()[0] == "dear");
    CHECK(f.candidates[1].name == "cheap");
    CHECK(f.candidates[2].exclusion == Exclusion::NotInPolicy);  // "mid"
  }
  SECTION("lead 0.2 <= 0.25: weak") {
    Fixture f;
    f.candidates[0].predicted_quality = 0.6;
    CHECK(policy.rank(f.candidates, PolicyOptions{}) == PickReason::ThresholdWeak);
    CHECK(f.order()[0] == "cheap");
  }
  SECTION("lead exactly at the threshold: the cheaper (weak) one") {
    Fixture f;
    f.candidates[0].predicted_quality = 0.55;
    CHECK(policy.rank(f.candidates, PolicyOptions{}) == PickReason::ThresholdWeak);
  }
  SECTION("strong excluded: weak is the only one") {
    Fixture f;
    f.candidates[2].exclusion = Exclusion::Disabled;
    CHECK(policy.rank(f.candidates, PolicyOptions{}) == PickReason::OnlyEligible);
    CHECK(f.order()[0] == "cheap");
  }
}

TEST_CASE("a quality floor picks the cheapest expert predicted to reach it") {
  Fixture f;  // cheap 0.5 / $0.0001, mid 0.7 / $0.001, dear 0.8 / $0.01
  PolicyOptions options;
  options.quality_floor = 0.6;
  options.lambda_cost = 1e6;  // ignored under a floor
  CHECK(torouter::UtilityPolicy().rank(f.candidates, options) == PickReason::CheapestAboveFloor);
  // Failover order: the rest above the floor by cost, then the others by quality.
  CHECK(f.order() == Names{"mid", "dear", "cheap"});

  Fixture zero;
  options.quality_floor = 0.0;
  torouter::UtilityPolicy().rank(zero.candidates, options);
  CHECK(zero.order() == Names{"cheap", "mid", "dear"});

  Fixture exact;
  options.quality_floor = 0.8;  // reaching means >=
  CHECK(torouter::UtilityPolicy().rank(exact.candidates, options) ==
        PickReason::CheapestAboveFloor);
  CHECK(exact.order()[0] == "dear");
}

TEST_CASE("a quality floor nobody reaches falls back to the best predicted") {
  Fixture f;
  PolicyOptions options;
  options.quality_floor = 0.9;
  CHECK(torouter::UtilityPolicy().rank(f.candidates, options) == PickReason::FloorNotReached);
  CHECK(f.order() == Names{"dear", "mid", "cheap"});

  SECTION("the floor's reason holds for one eligible expert too") {
    Fixture one;
    one.candidates[1].exclusion = Exclusion::Disabled;
    one.candidates[2].exclusion = Exclusion::Disabled;
    CHECK(torouter::UtilityPolicy().rank(one.candidates, options) == PickReason::FloorNotReached);
    CHECK(one.order()[0] == "cheap");
  }
  SECTION("an excluded expert above the floor is not picked") {
    Fixture excluded;
    excluded.candidates[2].exclusion = Exclusion::CoolingDown;
    options.quality_floor = 0.75;
    CHECK(torouter::UtilityPolicy().rank(excluded.candidates, options) ==
          PickReason::FloorNotReached);
    CHECK(excluded.order() == Names{"mid", "cheap", "dear"});
  }
  SECTION("nothing eligible") {
    Fixture none;
    for (auto& c : none.candidates) c.exclusion = Exclusion::Disabled;
    CHECK(torouter::UtilityPolicy().rank(none.candidates, options) == PickReason::NoneEligible);
  }
}

TEST_CASE("a quality floor breaks ties above it by quality, below it by cost") {
  Fixture above;
  above.candidates[0].cost_usd = 0.001;  // cheap now costs as much as mid
  PolicyOptions options;
  options.quality_floor = 0.4;
  torouter::UtilityPolicy().rank(above.candidates, options);
  CHECK(above.order() == Names{"mid", "cheap", "dear"});

  Fixture below;
  for (auto& c : below.candidates) c.predicted_quality = 0.3;
  torouter::UtilityPolicy().rank(below.candidates, options);
  CHECK(below.order() == Names{"cheap", "mid", "dear"});
}

TEST_CASE("a quality floor must be a finite number in [0, 1]") {
  PolicyOptions options;
  CHECK(torouter::validate_policy_options(options).empty());
  for (double good : {0.0, 0.5, 1.0}) {
    options.quality_floor = good;
    CHECK(torouter::validate_policy_options(options).empty());
  }
  for (double bad : {-0.1, 1.5, std::nan(""), std::numeric_limits<double>::infinity()}) {
    options.quality_floor = bad;
    const std::string problem = torouter::validate_policy_options(options);
    INFO(bad);
    CHECK_THAT(problem,
               Catch::Matchers::Contains("quality_floor") && Catch::Matchers::Contains("[0, 1]"));
  }
}

TEST_CASE("policy weights must be numbers; infinity and NaN rank in a defined order") {
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  for (const auto& [field, spoil] :
       std::vector<std::pair<std::string, void (*)(PolicyOptions&, double)>>{
           {"lambda_cost", [](PolicyOptions&o, double v) { o.lambda_cost = v; }},
           {"lambda_latency", [](PolicyOptions&o, double v) { o.lambda_latency = v; }},
           {"max_cost_usd", [](PolicyOptions&o, double v) { o.max_cost_usd = v; }},
           {"max_latency_ms", [](PolicyOptions&o, double v) { o.max_latency_ms = v; }}}) {
    PolicyOptions options;
    spoil(options, nan);
    INFO(field);
    CHECK_THAT(torouter::validate_policy_options(options), Catch::Matchers::Contains(field));
    spoil(options, inf);  // a weight or a limit of infinity means something
    CHECK(torouter::validate_policy_options(options).empty());
  }
  PolicyOptions negative;
  negative.lambda_cost = -1;
  CHECK_THAT(torouter::validate_policy_options(negative),
             Catch::Matchers::Contains("lambda_cost must be a number >= 0"));

  // An infinite cost weight with a free expert: the free one is picked and
  // no utility is NaN (infinity times zero).
  Fixture f;
  f.candidates[1].cost_usd = 0.0;  // "mid" is free
  PolicyOptions cheapest;
  cheapest.lambda_cost = inf;
  torouter::UtilityPolicy().rank(f.candidates, cheapest);
  CHECK(f.candidates[0].name == "mid");
  for (const auto& c : f.candidates) CHECK_FALSE(std::isnan(c.utility));

  // NaN predictions (from a policy used without the router's clamping) rank
  // after every number, in a consistent order, with and without a floor.
  for (const bool with_floor : {false, true}) {
    Fixture g;
    g.candidates[2].predicted_quality = nan;
    g.candidates[0].cost_usd = nan;
    PolicyOptions options;
    if (with_floor) options.quality_floor = 0.6;
    torouter::UtilityPolicy().rank(g.candidates, options);
    INFO(with_floor);
    CHECK(g.order() ==
          (with_floor ? Names{"mid", "cheap", "dear"} : Names{"mid", "dear", "cheap"}));
  }
}

TEST_CASE("a needed capability excludes experts that declare they lack it") {
  Fixture f;
  ExpertRegistry declared;
  ExpertSpec text_only("cheap", 0.1, 0.1);
  text_only.capabilities = torouter::Capabilities{};
  ExpertSpec tools_only("mid", 1, 1);
  tools_only.capabilities = torouter::Capabilities{};
  tools_only.capabilities->tools = true;
  declared.add(text_only);
  declared.add(tools_only);
  declared.add(ExpertSpec("dear", 10, 10));  // declares nothing: takes everything
  PolicyOptions options;
  SECTION("plain text needs nothing") {
    torouter::apply_constraints(f.candidates, declared, options);
    for (const auto& c : f.candidates) CHECK(c.eligible());
  }
  SECTION("tools") {
    options.required_capabilities.tools = true;
    torouter::apply_constraints(f.candidates, declared, options);
    CHECK(f.candidates[0].exclusion == Exclusion::MissingTools);
    CHECK(f.candidates[1].eligible());
    CHECK(f.candidates[2].eligible());
  }
  SECTION("images") {
    options.required_capabilities.images = true;
    torouter::apply_constraints(f.candidates, declared, options);
    CHECK(f.candidates[0].exclusion == Exclusion::MissingImages);
    CHECK(f.candidates[1].exclusion == Exclusion::MissingImages);
    CHECK(f.candidates[2].eligible());
  }
  SECTION("JSON output") {
    options.required_capabilities.json_output = true;
    torouter::apply_constraints(f.candidates, declared, options);
    CHECK(f.candidates[1].exclusion == Exclusion::MissingJsonOutput);
    CHECK(to_string(f.candidates[1].exclusion) == "missing_json_output");
  }
  SECTION("tools and images: the first missing one is the reason") {
    options.required_capabilities.tools = true;
    options.required_capabilities.images = true;
    torouter::apply_constraints(f.candidates, declared, options);
    CHECK(f.candidates[0].exclusion == Exclusion::MissingTools);
    CHECK(f.candidates[1].exclusion == Exclusion::MissingImages);
  }
}

TEST_CASE("a request's max_tokens must fit the context window with the prompt") {
  Fixture f;  // 100 input tokens, 100 predicted output tokens
  ExpertRegistry windows;
  ExpertSpec small("cheap", 0.1, 0.1);
  small.context_window_tokens = 300;
  windows.add(small);
  windows.add(ExpertSpec("mid", 1, 1));
  windows.add(ExpertSpec("dear", 10, 10));
  PolicyOptions options;
  torouter::apply_constraints(f.candidates, windows, options);
  CHECK(f.candidates[0].eligible());  // 100 + 100 predicted fit in 300
  options.max_output_tokens = 250;    // 100 + 250 reserved do not
  torouter::apply_constraints(f.candidates, windows, options);
  CHECK(f.candidates[0].exclusion == Exclusion::ContextWindow);
  CHECK(f.candidates[1].eligible());
}
