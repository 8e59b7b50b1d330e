#include <catch2/catch.hpp>

#include <limits>

#include "torouter/cost_model.hpp"

using torouter::CostModel;
using torouter::ExpertSpec;

TEST_CASE("characters are Unicode code points, tokens ceil(chars / 4)") {
  CHECK(torouter::count_characters("") == 0);
  CHECK(torouter::count_characters("abcd") == 4);
  CHECK(torouter::count_characters("\xC3\xA9t\xC3\xA9") == 3);     // "été"
  CHECK(torouter::count_characters("\xE2\x80\xA8") == 1);          // U+2028
  CHECK(torouter::count_characters("\xF0\x9F\x98\x80!") == 2);     // emoji + "!"
  CHECK(torouter::count_characters("\x80\x80") == 0);              // stray continuation bytes
  CHECK(torouter::estimate_tokens("") == 0);
  CHECK(torouter::estimate_tokens("a") == 1);
  CHECK(torouter::estimate_tokens("abcd") == 1);
  CHECK(torouter::estimate_tokens("abcde") == 2);
  CHECK(torouter::estimate_tokens("What is 2 + 2?") == 4);  // 14 chars
}

TEST_CASE("cost is tokens times price per million") {
  ExpertSpec e;
  e.input_usd_per_mtok = 0.9;
  e.output_usd_per_mtok = 2.0;
  const CostModel model;
  // (1000 * 0.9 + 500 * 2.0) / 1e6 = 0.0019
  CHECK(model.cost_usd(e, 1000, 500) == Approx(0.0019).epsilon(1e-12));
  CHECK(model.cost_usd(e, 0, 0) == 0.0);
}

TEST_CASE("latency is time to first token plus generation at the expert's speed") {
  ExpertSpec e;
  e.latency.time_to_first_token_ms = 200;
  e.latency.output_tokens_per_second = 50;
  const CostModel model;
  CHECK(model.latency_ms(e, 100) == Approx(200 + 2000));
  CHECK(model.latency_ms(e, 0) == Approx(200));
}

TEST_CASE("absent output-token predictions fall back to the default") {
  torouter::CostModelOptions options;
  options.default_output_tokens = 128;
  const CostModel model(options);
  CHECK(model.output_tokens_or_default(std::numeric_limits<float>::quiet_NaN()) == 128);
  CHECK(model.output_tokens_or_default(-3.0f) == 128);
  CHECK(model.output_tokens_or_default(std::numeric_limits<float>::infinity()) == 128);
  CHECK(model.output_tokens_or_default(40.0f) == 40);
}
