#include <catch2/catch.hpp>

#include <filesystem>
#include <fstream>
#include <string>

#include "support/temp_dir.hpp"
#include "support/data_dir.hpp"
#include "torouter/error.hpp"
#include "torouter/expert.hpp"

using torouter::Error;
using torouter::ExpertRegistry;
using torouter::ExpertSpec;
using Catch::Matchers::Contains;

namespace {

// Writes `text` to a file in the test's temp folder and returns its path.
std::string write_file(const std::string& name, const std::string& text) {
  const auto dir = torouter::testing::process_temp_dir("torouter_registry_test");
  const auto path = (dir / name).string();
  std::ofstream(path) << text;
  return path;
}

// The message of the Error that loading `text` throws ("" if none).
std::string load_error(const std::string& name, const std::string& text) {
  const std::string path = write_file(name, text);
  try {
    torouter::load_expert_registry(path);
  } catch (const Error& e) {
    return e.what();
  }
  return "";
}

}  // namespace

TEST_CASE("a registry built in code keeps order and finds by name") {
  ExpertRegistry registry;
  ExpertSpec a;
  a.name = "a";
  a.input_usd_per_mtok = 0.2;
  ExpertSpec b;
  b.name = "b";
  b.tags = {"code"};
  registry.add(a);
  registry.add(b);
  REQUIRE(registry.size() == 2);
  CHECK(registry[0].name == "a");
  CHECK(registry.find("b")->has_tag("code"));
  CHECK_FALSE(registry.find("b")->has_tag("math"));
  CHECK(registry.find("c") == nullptr);
  CHECK(registry.index_of("b") == 1u);
  CHECK_FALSE(registry.index_of("zz").has_value());
}

TEST_CASE("adding a bad expert in code throws") {
  ExpertRegistry registry;
  ExpertSpec a;
  a.name = "a";
  registry.add(a);
  CHECK_THROWS_WITH(registry.add(a), Contains("already registered"));
  ExpertSpec unnamed;
  CHECK_THROWS_WITH(registry.add(unnamed), Contains("name must not be empty"));
  ExpertSpec negative;
  negative.name = "neg";
  negative.output_usd_per_mtok = -1;
  CHECK_THROWS_WITH(registry.add(negative), Contains("output_usd_per_mtok"));
  ExpertSpec slow;
  slow.name = "slow";
  slow.latency.output_tokens_per_second = 0;
  CHECK_THROWS_WITH(registry.add(slow), Contains("output_tokens_per_second"));
}

TEST_CASE("a full registry file loads every field") {
  const std::string path = write_file("full.json", R"({
    "source": "test",
    "experts": [
      {"name": "small", "input_usd_per_mtok": 0.1, "output_usd_per_mtok": 0.2,
       "context_window_tokens": 8192, "tags": ["chat"], "time_to_first_token_ms": 120,
       "output_tokens_per_second": 90, "max_concurrent_calls": 4, "enabled": true},
      {"name": "large", "input_usd_per_mtok": 3, "output_usd_per_mtok": 15,
       "tags": ["code", "math"], "enabled": false, "description": "the big one"}
    ]})");
  const ExpertRegistry registry = torouter::load_expert_registry(path);
  REQUIRE(registry.size() == 2);
  const ExpertSpec& small = registry[0];
  CHECK(small.input_usd_per_mtok == 0.1);
  CHECK(small.output_usd_per_mtok == 0.2);
  CHECK(small.context_window_tokens == 8192);
  CHECK(small.tags == std::vector<std::string>{"chat"});
  CHECK(small.latency.time_to_first_token_ms == 120);
  CHECK(small.latency.output_tokens_per_second == 90);
  CHECK(small.max_concurrent_calls == 4);
  CHECK(small.enabled);
  const ExpertSpec& large = registry[1];
  CHECK(large.has_tag("math"));
  CHECK_FALSE(large.enabled);
  CHECK(large.max_concurrent_calls == 0);  // default: no cap
}

TEST_CASE("capabilities load as declared; an expert that declares none takes everything") {
  const std::string path = write_file("caps.json", R"({"experts": [
      {"name": "vision", "capabilities": ["images", "tools", "json_output"]},
      {"name": "text", "capabilities": []},
      {"name": "old"}]})");
  const ExpertRegistry registry = torouter::load_expert_registry(path);
  torouter::Capabilities images;
  images.images = true;
  torouter::Capabilities everything = images;
  everything.tools = everything.json_output = true;
  REQUIRE(registry[0].capabilities.has_value());
  CHECK(registry[0].capabilities->tools);
  CHECK(registry[0].can_take(everything));
  REQUIRE(registry[1].capabilities.has_value());
  CHECK_FALSE(registry[1].capabilities->any());
  CHECK_FALSE(registry[1].can_take(images));
  CHECK(registry[1].can_take(torouter::Capabilities{}));  // plain text needs nothing
  CHECK_FALSE(registry[2].capabilities.has_value());
  CHECK(registry[2].can_take(everything));
}

TEST_CASE("the datasets' experts.json shape (an object keyed by name) loads") {
  const std::string path = write_file("by_name.json", R"({"source": "x", "experts": {
      "qwen": {"input_usd_per_mtok": 0.2, "output_usd_per_mtok": 0.2, "size": "7B"},
      "gpt": {}}})");
  const ExpertRegistry registry = torouter::load_expert_registry(path);
  REQUIRE(registry.size() == 2);
  CHECK(registry[0].name == "qwen");
  CHECK(registry[0].input_usd_per_mtok == 0.2);
  CHECK(registry[1].name == "gpt");
  CHECK(registry[1].input_usd_per_mtok == 0.0);
}

TEST_CASE("the shared datasets' registries load") {
  TOROUTER_SHARED_DATA_OR_SKIP(data_dir);
  const auto llmrouter = torouter::load_expert_registry((data_dir / "llmrouter14" / "experts.json").string());
  CHECK(llmrouter.size() == 9);
  CHECK(llmrouter.find("llama3-chatqa-1.5-70b")->input_usd_per_mtok == 0.9);
  const auto routerbench = torouter::load_expert_registry((data_dir / "routerbench3" / "experts.json").string());
  CHECK(routerbench.size() == 11);
  CHECK(routerbench.find("gpt-4-1106-preview") != nullptr);
}

TEST_CASE("a broken registry file is refused, naming the file and the field") {
  SECTION("missing name") {
    const auto message = load_error("noname.json", R"({"experts": [{"input_usd_per_mtok": 1}]})");
    CHECK_THAT(message, Contains("noname.json") && Contains("experts[0].name") &&
                            Contains("missing"));
  }
  SECTION("negative price") {
    const auto message = load_error(
        "negative.json", R"({"experts": [{"name": "a", "output_usd_per_mtok": -0.5}]})");
    CHECK_THAT(message, Contains("negative.json") && Contains("experts[0].output_usd_per_mtok") &&
                            Contains(">= 0"));
  }
  SECTION("duplicate expert") {
    const auto message =
        load_error("dup.json", R"({"experts": [{"name": "a"}, {"name": "b"}, {"name": "a"}]})");
    CHECK_THAT(message, Contains("dup.json") && Contains("experts[2]") &&
                            Contains("duplicate expert \"a\""));
  }
  SECTION("unknown key") {
    const auto message =
        load_error("unknown.json", R"({"experts": [{"name": "a", "price": 3}]})");
    CHECK_THAT(message, Contains("unknown.json") && Contains("experts[0].price") &&
                            Contains("unknown field"));
  }
  SECTION("unknown top-level key") {
    const auto message = load_error("top.json", R"({"experts": [{"name": "a"}], "expert": 1})");
    CHECK_THAT(message, Contains("top.json") && Contains("\"expert\""));
  }
  SECTION("wrong type") {
    const auto message =
        load_error("type.json", R"({"experts": [{"name": "a", "input_usd_per_mtok": "cheap"}]})");
    CHECK_THAT(message, Contains("type.json") && Contains("experts[0].input_usd_per_mtok") &&
                            Contains("expected a number, got a string"));
    const auto tags = load_error("tags.json", R"({"experts": [{"name": "a", "tags": "code"}]})");
    CHECK_THAT(tags, Contains("experts[0].tags") && Contains("array of strings"));
    const auto cap =
        load_error("cap.json", R"({"experts": [{"name": "a", "max_concurrent_calls": 2.5}]})");
    CHECK_THAT(cap, Contains("experts[0].max_concurrent_calls") && Contains("whole number"));
    const auto enabled = load_error("enabled.json", R"({"experts": [{"name": "a", "enabled": 1}]})");
    CHECK_THAT(enabled, Contains("experts[0].enabled") && Contains("true or false"));
  }
  SECTION("huge, NaN and infinite values") {
    CHECK_THAT(load_error("huge.json", R"({"experts": [{"name": "a", "max_concurrent_calls": 1e30}]})"),
               Contains("experts[0].max_concurrent_calls") && Contains("whole number"));
    CHECK_THAT(load_error("big.json", R"({"experts": [{"name": "a", "input_usd_per_mtok": 1e999}]})"),
               Contains("big.json"));
    CHECK_THAT(load_error("nan.json", R"({"experts": [{"name": "a", "input_usd_per_mtok": NaN}]})"),
               Contains("nan.json") && Contains("not valid JSON"));
    CHECK_THAT(load_error("inf.json", R"({"experts": [{"name": "a", "input_usd_per_mtok": Infinity}]})"),
               Contains("not valid JSON"));
  }
  SECTION("an unknown capability") {
    const auto message = load_error(
        "unknown_cap.json", R"({"experts": [{"name": "a", "capabilities": ["tools", "vision"]}]})");
    CHECK_THAT(message, Contains("unknown_cap.json") && Contains("experts[0].capabilities") &&
                            Contains("unknown capability \"vision\"") &&
                            Contains("tools, images, json_output"));
    CHECK_THAT(
        load_error("cap_type.json", R"({"experts": [{"name": "a", "capabilities": "tools"}]})"),
        Contains("experts[0].capabilities") && Contains("array of strings"));
  }
  SECTION("a name that differs from its key") {
    const auto message = load_error("key.json", R"({"experts": {"a": {"name": "b"}}})");
    CHECK_THAT(message, Contains("experts.\"a\".name") && Contains("differs"));
  }
  SECTION("zero context window") {
    const auto message =
        load_error("ctx.json", R"({"experts": [{"name": "a", "context_window_tokens": 0}]})");
    CHECK_THAT(message, Contains("experts[0].context_window_tokens") && Contains(">= 1"));
  }
  SECTION("not JSON, truncated, empty, no experts") {
    CHECK_THAT(load_error("trunc.json", R"({"experts": [{"name": "a")"),
               Contains("trunc.json") && Contains("not valid JSON"));
    CHECK_THAT(load_error("empty.json", ""), Contains("empty.json"));
    CHECK_THAT(load_error("none.json", R"({"source": "x"})"), Contains("missing field \"experts\""));
    CHECK_THAT(load_error("zero.json", R"({"experts": []})"), Contains("no expert listed"));
    CHECK_THAT(load_error("array.json", R"([1, 2])"), Contains("top level"));
  }
  SECTION("a file that does not exist") {
    CHECK_THROWS_WITH(torouter::load_expert_registry("/nonexistent/experts.json"),
                      Contains("/nonexistent/experts.json") && Contains("cannot open"));
  }
}
