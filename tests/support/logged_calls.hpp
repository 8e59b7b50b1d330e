// Decision-log lines in the format torouter-server writes
// (torouter/decision_log.hpp), with only the fields the log readers use, for
// tests that need a log of known calls without running traffic.
#pragma once

#include <cstdio>
#include <string>
#include <vector>

namespace torouter::testing {

/// `value` exactly, as JSON writes a number.
inline std::string json_number_text(double value) {
  char text[32];
  std::snprintf(text, sizeof text, "%.17g", value);
  return text;
}

/// `text` as a JSON string, quotes included (the escapes a prompt needs).
inline std::string json_string_text(const std::string& text) {
  std::string out = "\"";
  for (const char c : text) {
    if (c == '"' || c == '\\') out += '\\';
    if (c == '\n') {
      out += "\\n";
      continue;
    }
    out += c;
  }
  return out + "\"";
}

/// A decision line for a call picked among `candidates` and answered by `expert`.
inline std::string logged_decision_line(const std::string& id, const std::string& prompt,
                                        const std::string& expert, double propensity,
                                        double cost_usd, std::size_t output_tokens,
                                        const std::vector<std::string>& candidates) {
  std::string listed;
  for (const auto& name : candidates) {
    listed += (listed.empty() ? "" : ", ") + std::string("{\"expert\": \"") + name + "\"}";
  }
  return "{\"type\": \"decision\", \"id\": \"" + id +
         "\", \"prompt\": " + json_string_text(prompt) +
         ", \"propensity\": " + json_number_text(propensity) +
         ", \"cost_usd\": " + json_number_text(cost_usd) +
         ", \"output_tokens\": " + std::to_string(output_tokens) + ", \"expert\": \"" + expert +
         "\", \"decision\": {\"pick\": \"" + expert +
         "\", \"knobs\": {\"lambda_cost\": 0}, \"candidates\": [" + listed + "]}}";
}

/// A feedback line: the verdict on call `id`.
inline std::string logged_feedback_line(const std::string& id, double quality) {
  return "{\"type\": \"feedback\", \"id\": \"" + id +
         "\", \"quality\": " + json_number_text(quality) + "}";
}

}  // namespace torouter::testing
