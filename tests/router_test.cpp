#include "torouter/router.hpp"

#include <simdjson.h>

#include <atomic>
#include <catch2/catch.hpp>
#include <chrono>
#include <cmath>
#include <functional>
#include <limits>
#include <map>
#include <memory>
#include <string>
#include <thread>
#include <type_traits>
#include <typeinfo>
#include <utility>
#include <vector>

#include "support/test_scorer.hpp"
#include "torouter/error.hpp"

using torouter::Exclusion;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using torouter::PickReason;
using torouter::RouteDecision;
using torouter::RouteOptions;
using torouter::Router;
using torouter::testing::TableScorer;
using Catch::Matchers::Contains;

namespace {

ExpertRegistry three_experts() {
  ExpertRegistry registry;
  ExpertSpec cheap("cheap", 0.1, 0.1);
  cheap.context_window_tokens = 4096;
  ExpertSpec coder("coder", 1.0, 2.0);
  coder.tags = {"code"};
  ExpertSpec strong("strong", 10.0, 30.0);
  strong.latency.time_to_first_token_ms = 900;
  strong.latency.output_tokens_per_second = 30;
  registry.add(cheap);
  registry.add(coder);
  registry.add(strong);
  return registry;
}

// Scorer columns deliberately in another order than the registry.
std::shared_ptr<TableScorer> scorer() {
  auto s = std::make_shared<TableScorer>(std::vector<std::string>{"strong", "cheap", "coder"},
                                         std::vector<float>{0.9f, 0.6f, 0.7f});
  s->when("python", {0.8f, 0.3f, 0.85f});
  s->when("hello", {0.95f, 0.95f, 0.95f});
  s->predict_output_tokens({200, 100, 150});
  return s;
}

}  // namespace

TEST_CASE("route picks the best predicted quality at lambda 0 and records everything") {
  Router router(three_experts(), scorer());
  const RouteDecision d = router.route("Explain quantum tunnelling in detail");
  REQUIRE(d.pick() != nullptr);
  CHECK(d.pick()->name == "strong");
  CHECK(d.reason == PickReason::HighestUtility);
  CHECK(d.eligible_count() == 3);
  CHECK(d.model_version == "table-scorer-1");
  CHECK(d.policy_name == "utility");
  // 36 characters -> 9 tokens.
  CHECK(d.input_tokens == 9);
  const auto* strong = d.find("strong");
  REQUIRE(strong != nullptr);
  CHECK(strong->predicted_quality == Approx(0.9));
  CHECK(strong->predicted_output_tokens == Approx(200));
  CHECK(strong->cost_usd == Approx((9 * 10.0 + 200 * 30.0) / 1e6));
  CHECK(strong->latency_ms == Approx(900 + 200.0 / 30 * 1000));
  CHECK(d.find("cheap")->predicted_quality == Approx(0.6));
  CHECK(d.find("coder")->predicted_quality == Approx(0.7));
}

TEST_CASE("the cost weight moves the pick to cheaper experts") {
  Router router(three_experts(), scorer());
  RouteOptions options;
  options.policy.lambda_cost = 100;  // strong costs ~0.006 USD: -0.6
  CHECK(router.route("python sort a list", options).pick()->name == "coder");
  options.policy.lambda_cost = 1e5;
  CHECK(router.route("python sort a list", options).pick()->name == "cheap");
  const RouteDecision d = router.route("python sort a list", options);
  CHECK(d.policy.lambda_cost == 1e5);  // the knobs used are recorded
}

TEST_CASE(
    "a top pick's expected quality is the scorer's top_pick_quality, any other pick's its own") {
  auto s = scorer();
  s->set_top_pick_shortfall(0.05);
  Router router(three_experts(), s);
  // The top of the predictions: lowered by the scorer's map.
  const RouteDecision top = router.route("python sort a list");
  CHECK(top.pick()->name == "coder");
  CHECK(top.expected_quality == Approx(0.85 - 0.05));
  // Picked for its price over a better predicted expert: its own prediction.
  RouteOptions options;
  options.policy.lambda_cost = 1e5;
  const RouteDecision cheap = router.route("python sort a list", options);
  CHECK(cheap.pick()->name == "cheap");
  CHECK(cheap.expected_quality == Approx(0.3));
  // The best predicted of those eligible is a top pick.
  router.set_enabled("coder", false);
  const RouteDecision second = router.route("python sort a list");
  CHECK(second.pick()->name == "strong");
  CHECK(second.expected_quality == Approx(0.8 - 0.05));
  // A map that leaves [0, 1] is clamped into it; no pick has none.
  s->set_top_pick_shortfall(2.0);
  CHECK(router.route("python sort a list").expected_quality == 0.0);
  options.policy.required_tags = {"no-such-tag"};
  CHECK(std::isnan(router.route("python sort a list", options).expected_quality));
}

TEST_CASE("equal predicted quality goes to the cheapest expert") {
  Router router(three_experts(), scorer());
  CHECK(router.route("hello there").pick()->name == "cheap");
}

TEST_CASE("route applies tags, limits, context window and disabled experts") {
  Router router(three_experts(), scorer());
  RouteOptions options;
  SECTION("required tag") {
    options.policy.required_tags = {"code"};
    const RouteDecision d = router.route("Explain tunnelling", options);
    CHECK(d.pick()->name == "coder");
    CHECK(d.reason == PickReason::OnlyEligible);
    CHECK(d.find("strong")->exclusion == Exclusion::MissingTag);
  }
  SECTION("caller-given input tokens beyond a context window") {
    options.input_tokens = 5000;
    const RouteDecision d = router.route("short", options);
    CHECK(d.find("cheap")->exclusion == Exclusion::ContextWindow);
    CHECK(d.input_tokens == 5000);
  }
  SECTION("disabled at run time, then enabled again") {
    router.set_enabled("strong", false);
    RouteDecision d = router.route("Explain tunnelling");
    CHECK(d.pick()->name == "coder");
    CHECK(d.find("strong")->exclusion == Exclusion::Disabled);
    CHECK_FALSE(router.status("strong").enabled);
    router.set_enabled("strong", true);
    CHECK(router.route("Explain tunnelling").pick()->name == "strong");
  }
  SECTION("disabled in the registry") {
    ExpertRegistry registry = three_experts();
    ExpertRegistry with_disabled;
    for (auto spec : registry.experts()) {
      spec.enabled = spec.name != "strong";
      with_disabled.add(spec);
    }
    Router r(with_disabled, scorer());
    CHECK(r.route("Explain tunnelling").pick()->name == "coder");
  }
  SECTION("no expert left") {
    options.policy.max_cost_usd = 0;
    const RouteDecision d = router.route("anything", options);
    CHECK(d.pick() == nullptr);
    CHECK(d.reason == PickReason::NoneEligible);
    CHECK(d.eligible_count() == 0);
  }
}

TEST_CASE("a quality floor routes to the cheapest expert predicted to reach it") {
  Router router(three_experts(), scorer());  // strong 0.9, coder 0.7, cheap 0.6
  RouteOptions options;
  options.policy.quality_floor = 0.65;
  RouteDecision d = router.route("Explain tunnelling", options);
  CHECK(d.pick()->name == "coder");
  CHECK(d.reason == PickReason::CheapestAboveFloor);
  REQUIRE(d.policy.quality_floor.has_value());
  CHECK(*d.policy.quality_floor == 0.65);   // the floor is recorded
  CHECK(d.candidates[1].name == "strong");  // next above the floor
  CHECK(d.candidates[2].name == "cheap");

  options.policy.quality_floor = 0.95;
  d = router.route("Explain tunnelling", options);
  CHECK(d.pick()->name == "strong");
  CHECK(d.reason == PickReason::FloorNotReached);

  options.policy.quality_floor = 1.5;
  CHECK_THROWS_WITH(router.route("x", options),
                    Contains("RouteOptions.policy.quality_floor") && Contains("1.5"));
}

TEST_CASE("route excludes experts that lack a capability the request needs") {
  const ExpertRegistry plain = three_experts();
  ExpertRegistry registry;
  for (auto spec : plain.experts()) {
    if (spec.name == "cheap") spec.capabilities = torouter::Capabilities{};  // text only
    if (spec.name == "strong") {
      spec.capabilities = torouter::Capabilities{};
      spec.capabilities->images = true;
    }
    registry.add(spec);  // coder declares nothing
  }
  Router router(registry, scorer());
  RouteOptions options;
  options.policy.required_capabilities.images = true;
  RouteDecision d = router.route("Describe this picture", options);
  CHECK(d.pick()->name == "strong");
  CHECK(d.find("cheap")->exclusion == Exclusion::MissingImages);
  CHECK(d.find("coder")->eligible());
  options.policy.required_capabilities.tools = true;
  d = router.route("Describe this picture", options);
  CHECK(d.pick()->name == "coder");
  CHECK(d.find("strong")->exclusion == Exclusion::MissingTools);
}

TEST_CASE("invoke counts max_output_tokens against the context window") {
  Router router(three_experts(), scorer());  // cheap's window: 4096 tokens
  for (const char* name : {"cheap", "coder", "strong"}) {
    router.set_transport(name, torouter::Transport::sync([](const torouter::Request&) {
                           return torouter::Response::answer("ok", 1, 1);
                         }));
  }
  torouter::InvokeOptions options;
  options.route.policy.lambda_cost = 1e6;  // the cheapest that fits
  CHECK(router.invoke("hello", options).expert == "cheap");
  options.max_output_tokens = 5000;
  const torouter::InvokeResult r = router.invoke("hello", options);
  CHECK(r.expert == "coder");
  CHECK(r.decision.find("cheap")->exclusion == Exclusion::ContextWindow);
  CHECK(r.decision.policy.max_output_tokens == 5000);
}

TEST_CASE("a threshold policy routes between two experts") {
  auto policy = std::make_shared<torouter::ThresholdPolicy>("strong", "cheap", 0.2);
  Router router(three_experts(), scorer(), policy);
  // default: strong 0.9 vs cheap 0.6, lead 0.3 > 0.2
  RouteDecision d = router.route("Explain tunnelling");
  CHECK(d.pick()->name == "strong");
  CHECK(d.reason == PickReason::ThresholdStrong);
  CHECK(d.policy_name == "threshold");
  CHECK(d.find("coder")->exclusion == Exclusion::NotInPolicy);
  // "hello": equal qualities, lead 0 -> weak
  d = router.route("hello");
  CHECK(d.pick()->name == "cheap");
  CHECK(d.reason == PickReason::ThresholdWeak);
}

TEST_CASE("a router refuses experts its scorer does not know") {
  ExpertRegistry registry = three_experts();
  registry.add(ExpertSpec("mystery", 1, 1));
  CHECK_THROWS_WITH(Router(registry, scorer()),
                    Contains("no predictions for expert \"mystery\"") && Contains("table-scorer-1"));
  CHECK_THROWS_WITH(Router(three_experts(), nullptr), Contains("scorer is null"));
  Router router(three_experts(), scorer());
  CHECK_THROWS_WITH(router.set_enabled("nobody", false), Contains("unknown expert \"nobody\""));
  CHECK_THROWS_WITH(router.set_transport("cheap", torouter::Transport{}),
                    Contains("exactly one"));
}

TEST_CASE("a router refuses options it cannot honour, naming the field") {
  using Opts = torouter::RouterOptions;
  using std::chrono::milliseconds;
  const double nan = std::nan("");
  const double inf = std::numeric_limits<double>::infinity();
  const std::vector<std::pair<std::function<void(Opts&)>, std::string>> cases = {
      {[](Opts& o) { o.max_attempts_per_expert = 0; }, "max_attempts_per_expert must be >= 1"},
      {[](Opts& o) { o.max_experts_tried = 0; }, "max_experts_tried must be >= 1"},
      {[](Opts& o) { o.failures_before_cooldown = 0; }, "failures_before_cooldown must be >= 1"},
      {[&](Opts& o) { o.backoff_multiplier = nan; },
       "backoff_multiplier must be a finite number >= 1"},
      {[&](Opts& o) { o.backoff_multiplier = inf; },
       "backoff_multiplier must be a finite number >= 1"},
      {[](Opts& o) { o.backoff_multiplier = 0.5; },
       "backoff_multiplier must be a finite number >= 1"},
      {[](Opts& o) { o.initial_backoff = milliseconds(-1); },
       "initial_backoff must not be negative"},
      {[](Opts& o) { o.max_backoff = milliseconds(-1); }, "max_backoff must not be negative"},
      {[](Opts& o) { o.max_retry_after = milliseconds(-1); },
       "max_retry_after must not be negative"},
      {[](Opts& o) { o.stream_timeout = milliseconds(-1); }, "stream_timeout must not be negative"},
      {[](Opts& o) { o.cooldown = milliseconds(-1); }, "cooldown must not be negative"},
      {[](Opts& o) { o.capacity_wait = milliseconds(-1); }, "capacity_wait must not be negative"},
      {[](Opts& o) { o.attempt_timeout = milliseconds(0); }, "attempt_timeout must be above 0"},
      {[](Opts& o) { o.invoke_timeout = milliseconds(0); }, "invoke_timeout must be above 0"},
      {[&](Opts& o) { o.budget_usd = nan; }, "budget_usd must be >= 0"},
      {[](Opts& o) { o.budget_usd = -1; }, "budget_usd must be >= 0"},
      {[&](Opts& o) { o.cost_model.default_output_tokens = nan; },
       "cost_model.default_output_tokens must be a finite number >= 0"},
  };
  for (const auto& [spoil, message] : cases) {
    Opts options;
    CHECK(torouter::validate_router_options(options).empty());
    spoil(options);
    INFO(message);
    CHECK_THROWS_WITH(Router(three_experts(), scorer(), nullptr, options),
                      Contains("RouterOptions." + message));
  }
  // A program can tell misuse from bad input and from an incompatible model.
  auto code_of = [](const std::function<void()>& build) {
    try {
      build();
    } catch (const torouter::Error& e) {
      return e.code();
    }
    return torouter::ErrorCode::InvalidInput;
  };
  Opts zero;
  zero.max_experts_tried = 0;
  CHECK(code_of([&] { Router(three_experts(), scorer(), nullptr, zero); }) ==
        torouter::ErrorCode::Misuse);
  ExpertRegistry unknown = three_experts();
  unknown.add(ExpertSpec("mystery", 1, 1));
  CHECK(code_of([&] { Router(unknown, scorer()); }) == torouter::ErrorCode::IncompatibleModel);
  Opts unlimited;  // infinity is a meaning: no budget
  unlimited.budget_usd = inf;
  CHECK_NOTHROW(Router(three_experts(), scorer(), nullptr, unlimited));
}

TEST_CASE("a scorer's NaN or out-of-range quality is clamped, never picked over real scores") {
  auto s = std::make_shared<TableScorer>(std::vector<std::string>{"strong", "cheap", "coder"},
                                         std::vector<float>{std::nanf(""), 0.4f, 1.7f});
  Router router(three_experts(), s);
  const RouteDecision d = router.route("x");
  CHECK(d.find("strong")->predicted_quality == 0.0);
  CHECK(d.find("coder")->predicted_quality == 1.0);
  CHECK(d.pick()->name == "coder");
}

TEST_CASE("a decision converts to JSON that parses and says why") {
  Router router(three_experts(), scorer());
  RouteOptions options;
  options.policy.required_tags = {"code"};
  options.policy.lambda_cost = 3.5;
  const std::string json = torouter::to_json(router.route("sort \"this\"\n list", options));
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  REQUIRE(parser.parse(json).get(root) == simdjson::SUCCESS);
  CHECK(std::string_view(root["pick"]) == "coder");
  CHECK(std::string_view(root["reason"]) == "only_eligible");
  CHECK(std::string_view(root["model_version"]) == "table-scorer-1");
  CHECK(double(root["expected_quality"]) == Approx(0.7));  // coder, the only one eligible
  CHECK(double(root["knobs"]["lambda_cost"]) == 3.5);
  CHECK(root["knobs"]["max_cost_usd"].is_null());  // infinity has no JSON form
  CHECK(std::string_view(root["knobs"]["required_tags"].at(0)) == "code");
  CHECK(root["knobs"]["quality_floor"].is_null());
  CHECK(root["knobs"]["max_output_tokens"].is_null());
  CHECK(simdjson::dom::array(root["knobs"]["required_capabilities"]).size() == 0);
  simdjson::dom::array candidates = root["candidates"];
  CHECK(candidates.size() == 3);
  CHECK(std::string_view(candidates.at(0)["expert"]) == "coder");
  CHECK(bool(candidates.at(0)["eligible"]));
  CHECK(std::string_view(candidates.at(1)["excluded_because"]) == "missing_tag");
}

TEST_CASE("a decision's JSON records the floor and the needed capabilities") {
  Router router(three_experts(), scorer());
  RouteOptions options;
  options.policy.quality_floor = 0.65;
  options.policy.required_capabilities.tools = true;
  options.policy.required_capabilities.json_output = true;
  options.policy.max_output_tokens = 300;
  const std::string json = torouter::to_json(router.route("x", options));
  simdjson::dom::parser parser;
  simdjson::dom::element root;
  REQUIRE(parser.parse(json).get(root) == simdjson::SUCCESS);
  CHECK(std::string_view(root["reason"]) == "cheapest_above_floor");
  CHECK(double(root["knobs"]["quality_floor"]) == 0.65);
  CHECK(uint64_t(root["knobs"]["max_output_tokens"]) == 300);
  simdjson::dom::array needs = root["knobs"]["required_capabilities"];
  REQUIRE(needs.size() == 2);
  CHECK(std::string_view(needs.at(0)) == "tools");
  CHECK(std::string_view(needs.at(1)) == "json_output");
}

namespace {

// Counts the working memory it is asked for, and notices two calls sharing one.
class CountingScorer : public TableScorer {
 public:
  struct Workspace : torouter::ScorerWorkspace {
    std::atomic<bool> in_use{false};
  };
  using TableScorer::TableScorer;

  std::unique_ptr<torouter::ScorerWorkspace> make_workspace() const override {
    ++made;
    return std::make_unique<Workspace>();
  }
  void score(const std::string_view* prompts, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace* workspace) const override {
    auto* w = dynamic_cast<Workspace*>(workspace);
    if (w == nullptr || w->in_use.exchange(true)) ++misused;
    TableScorer::score(prompts, count, out, workspace);
    if (w != nullptr) w->in_use = false;
  }

  mutable std::atomic<int> made{0};
  mutable std::atomic<int> misused{0};
};

}  // namespace

TEST_CASE("fresh decisions borrow the scorer's working memory from the router's pool") {
  auto counting = std::make_shared<CountingScorer>(
      std::vector<std::string>{"strong", "cheap", "coder"}, std::vector<float>{0.9f, 0.6f, 0.7f});
  Router router(three_experts(), counting);
  router.set_transport("strong", torouter::Transport::sync([](const torouter::Request&) {
                         return torouter::Response::answer("ok", 1, 1);
                       }));
  for (int i = 0; i < 50; ++i) {
    CHECK(router.route("a prompt").pick()->name == "strong");
    CHECK(router.invoke("a prompt").ok());
  }
  CHECK(counting->made == 1);  // one workspace, lent again and again

  RouteDecision kept;
  for (int i = 0; i < 5; ++i) router.route("a prompt", {}, kept);
  CHECK(counting->made == 2);  // a reused decision keeps its own

  std::vector<std::thread> threads;
  for (int t = 0; t < 8; ++t) {
    threads.emplace_back([&router] {
      for (int i = 0; i < 300; ++i) router.route("a prompt");
    });
  }
  for (auto& thread : threads) thread.join();
  CHECK(counting->made <= 2 + 8);  // at most one per route in flight
  CHECK(counting->misused == 0);   // never two routes on one workspace
}

TEST_CASE("a scorer subclass that overrides score still has the vector convenience") {
  // TableScorer overrides the virtual `score`; `score_all`, a name of its
  // own, is not hidden by it (an overload of `score` would be).
  const std::shared_ptr<TableScorer> table = scorer();
  const torouter::ScoreBatch batch = table->score_all({"python please", "hello"});
  REQUIRE(batch.quality.rows() == 2);
  CHECK(batch.quality(0, 2) == Approx(0.85f));
  CHECK(batch.quality(1, 0) == Approx(0.95f));
}

TEST_CASE("a decision's text stays valid after its router is gone") {
  RouteDecision kept;
  {
    Router router(three_experts(), scorer());
    kept = router.route("python please");
    RouteDecision reused;  // a reused decision too, before and after a pooled route
    router.route("hello", {}, reused);
    router.route("python please", {}, reused);
    CHECK(reused.pick()->name == kept.pick()->name);
  }
  // Only the decision holds the registry, the policy and the scorer now
  // (AddressSanitizer would see a read of freed names).
  REQUIRE(kept.pick() != nullptr);
  CHECK(std::string(kept.pick()->name) == "coder");
  CHECK(kept.find("strong") != nullptr);
  CHECK(std::string(kept.policy_name) == "utility");
  CHECK(std::string(kept.model_version) == "table-scorer-1");
}

TEST_CASE("a router takes the caller's cost model") {
  // A flat fee per call: "strong" is free, the others cost a dollar, so a
  // heavy cost weight that would pick the cheapest by tokens picks "strong".
  struct FlatFee : torouter::CostModel {
    double cost_usd(const ExpertSpec& expert, double, double) const override {
      return expert.name == "strong" ? 0.0 : 1.0;
    }
  };
  RouteOptions options;
  options.policy.lambda_cost = 1000;
  Router by_tokens(three_experts(), scorer());
  CHECK(by_tokens.route("hello", options).pick()->name == "cheap");
  Router flat(three_experts(), scorer(), nullptr, {}, std::make_shared<FlatFee>());
  const RouteDecision decision = flat.route("hello", options);
  CHECK(decision.pick()->name == "strong");
  CHECK(decision.find("cheap")->cost_usd == 1.0);
  CHECK(&flat.cost_model() != &by_tokens.cost_model());
}

TEST_CASE("torouter's names live in a versioned inline namespace") {
  // Two builds of different ABI versions in one process cannot link together.
  static_assert(std::is_same_v<torouter::Router, torouter::TOROUTER_ABI_NAMESPACE::Router>);
  CHECK_THAT(std::string(typeid(torouter::Router).name()), Contains("v0"));
}

TEST_CASE("replace_scorer swaps the model and keeps the experts' state") {
  Router router(three_experts(), scorer());
  router.set_enabled("coder", false);
  RouteDecision reused;
  router.route("Explain quantum tunnelling", {}, reused);
  const RouteDecision before = router.route("Explain quantum tunnelling");
  REQUIRE(reused.pick()->name == "strong");

  // The new model rates the cheap expert best.
  auto cheap_best = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "coder", "strong"},
                                                  std::vector<float>{0.9f, 0.8f, 0.5f});
  cheap_best->set_version("table-scorer-2");
  router.replace_scorer(cheap_best);
  CHECK(router.current_scorer()->version() == "table-scorer-2");
  router.route("Explain quantum tunnelling", {}, reused);  // its workspace was the old scorer's
  CHECK(reused.pick()->name == "cheap");
  CHECK(reused.model_version == "table-scorer-2");
  CHECK(reused.find("coder")->exclusion == Exclusion::Disabled);  // state kept
  CHECK(router.route("hello").model_version == "table-scorer-2");
  // A decision made before the swap still reads its own model.
  CHECK(before.model_version == "table-scorer-1");
  CHECK(before.pick()->name == "strong");

  // A scorer that lacks an expert is refused; the current one stays.
  auto partial = std::make_shared<TableScorer>(std::vector<std::string>{"cheap", "strong"},
                                               std::vector<float>{0.5f, 0.5f});
  CHECK_THROWS_WITH(router.replace_scorer(partial), Contains("\"coder\""));
  CHECK_THROWS(router.replace_scorer(nullptr));
  CHECK(router.current_scorer()->version() == "table-scorer-2");
  CHECK(router.route("Explain quantum tunnelling").pick()->name == "cheap");
}

TEST_CASE("exploration picks others with the propensities it records") {
  Router router(three_experts(), scorer());
  RouteOptions off;
  const RouteDecision plain = router.route("Explain quantum tunnelling", off);
  CHECK(plain.propensity == 1.0);

  RouteOptions options;
  options.exploration.epsilon = 0.3;
  options.exploration.seed = 7;
  std::map<std::string, int> picks;
  std::map<std::string, double> propensity;
  const int routes = 30000;
  RouteDecision d;
  for (int i = 0; i < routes; ++i) {
    router.route("Explain quantum tunnelling", options, d);
    const std::string name(d.pick()->name);
    ++picks[name];
    if (propensity.count(name) > 0) CHECK(propensity[name] == d.propensity);
    propensity[name] = d.propensity;
    if (name != "strong") CHECK(d.reason == PickReason::Explored);
    // The rest keep their ranked order behind the pick.
    CHECK(d.eligible_count() == 3);
  }
  REQUIRE(propensity.size() == 3);
  CHECK(propensity["strong"] == Approx(1 - 0.3 + 0.1));
  CHECK(propensity["coder"] == Approx(0.1));
  double sum = 0;
  for (const auto& [name, p] : propensity) {
    sum += p;
    CHECK(static_cast<double>(picks[name]) / routes == Approx(p).margin(0.01));
  }
  CHECK(sum == Approx(1.0));

  // A cost bound: with a large cost weight "cheap" is the pick, and at most
  // 50 times its cost leaves "coder" (about 28 times) but not "strong".
  options.policy.lambda_cost = 1e6;
  options.exploration.max_cost_ratio = 50;
  std::map<std::string, int> bounded;
  for (int i = 0; i < 2000; ++i) {
    router.route("Explain quantum tunnelling", options, d);
    ++bounded[std::string(d.pick()->name)];
    CHECK(d.propensity == Approx(d.pick()->name == "cheap" ? 1 - 0.3 + 0.15 : 0.15));
  }
  CHECK(bounded.count("strong") == 0);
  CHECK(bounded["coder"] > 0);

  // A free best expert still leaves the others to explore without a bound.
  ExpertRegistry with_free = three_experts();
  ExpertSpec free_expert("free", 0, 0);
  with_free.add(free_expert);
  auto free_best = std::make_shared<TableScorer>(
      std::vector<std::string>{"strong", "cheap", "coder", "free"},
      std::vector<float>{0.5f, 0.5f, 0.5f, 0.9f});
  Router free_router(with_free, free_best);
  RouteOptions unbounded;
  unbounded.exploration.epsilon = 1.0;
  unbounded.exploration.seed = 3;
  std::map<std::string, int> spread;
  for (int i = 0; i < 400; ++i) ++spread[std::string(free_router.route("x", unbounded).pick()->name)];
  CHECK(spread.size() == 4);

  options.exploration.epsilon = 1.5;
  CHECK_THROWS_WITH(router.route("x", options), Contains("exploration.epsilon"));
  options.exploration.epsilon = 0.1;
  options.exploration.max_cost_ratio = 0.5;
  CHECK_THROWS_WITH(router.route("x", options), Contains("max_cost_ratio"));
}
