// RouteDecision as JSON: what `torouter route` prints and a service logs.
#include <fmt/format.h>

#include "json_text.hpp"
#include "torouter/abi.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE

using detail::json_number;
using detail::json_string;

std::string to_json(const RouteDecision& decision) {
  std::string out = "{";
  const Candidate* pick = decision.pick();
  out += fmt::format("\"pick\": {}, ", pick ? json_string(pick->name) : "null");
  out += fmt::format("\"reason\": {}, ", json_string(to_string(decision.reason)));
  out += fmt::format("\"model_version\": {}, ", json_string(decision.model_version));
  out += fmt::format("\"policy\": {}, ", json_string(decision.policy_name));
  out += fmt::format("\"input_tokens\": {}, ", decision.input_tokens);
  out += fmt::format("\"propensity\": {}, ", json_number(decision.propensity));
  out += fmt::format("\"expected_quality\": {}, ", json_number(decision.expected_quality));

  const PolicyOptions& knobs = decision.policy;
  std::string tags;
  for (const auto& tag : knobs.required_tags) {
    tags += (tags.empty() ? "" : ", ") + json_string(tag);
  }
  const Capabilities& needs = knobs.required_capabilities;
  std::string capabilities;
  auto list = [&capabilities](bool needed, std::string_view name) {
    if (needed) capabilities += (capabilities.empty() ? "" : ", ") + json_string(name);
  };
  list(needs.tools, "tools");
  list(needs.images, "images");
  list(needs.json_output, "json_output");
  out += fmt::format(
      "\"knobs\": {{\"lambda_cost\": {}, \"lambda_latency\": {}, \"required_tags\": [{}], "
      "\"max_cost_usd\": {}, \"max_latency_ms\": {}, \"required_capabilities\": [{}], "
      "\"max_output_tokens\": {}, \"quality_floor\": {}}}, ",
      json_number(knobs.lambda_cost), json_number(knobs.lambda_latency), tags,
      json_number(knobs.max_cost_usd), json_number(knobs.max_latency_ms), capabilities,
      knobs.max_output_tokens > 0 ? std::to_string(knobs.max_output_tokens) : "null",
      knobs.quality_floor ? json_number(*knobs.quality_floor) : "null");

  out += "\"candidates\": [";
  for (std::size_t i = 0; i < decision.candidates.size(); ++i) {
    const Candidate& c = decision.candidates[i];
    out += fmt::format(
        "{}{{\"expert\": {}, \"eligible\": {}, \"excluded_because\": {}, "
        "\"predicted_quality\": {}, \"predicted_output_tokens\": {}, \"cost_usd\": {}, "
        "\"latency_ms\": {}, \"utility\": {}}}",
        i == 0 ? "" : ", ", json_string(c.name), c.eligible() ? "true" : "false",
        c.eligible() ? "null" : json_string(to_string(c.exclusion)),
        json_number(c.predicted_quality), json_number(c.predicted_output_tokens),
        json_number(c.cost_usd), json_number(c.latency_ms),
        c.eligible() ? json_number(c.utility) : "null");
  }
  out += "]}";
  return out;
}

TOROUTER_END_NAMESPACE
