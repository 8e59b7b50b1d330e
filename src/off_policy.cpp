// Off-policy estimates from a decision log (see torouter/off_policy.hpp).
#include "torouter/off_policy.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>
#include <cstdint>
#include <fstream>
#include <unordered_map>
#include <unordered_set>

#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE

namespace {

// The mean of `terms` and its 95% normal interval.
Estimate mean_with_interval(const std::vector<double>& terms) {
  const auto n = static_cast<double>(terms.size());
  double sum = 0;
  for (const double t : terms) sum += t;
  const double mean = sum / n;
  double squares = 0;
  for (const double t : terms) squares += (t - mean) * (t - mean);
  const double spread = terms.size() > 1 ? std::sqrt(squares / (n - 1) / n) : 0.0;
  return {mean, mean - 1.96 * spread, mean + 1.96 * spread};
}

// One decision line's fields, or an error naming the first missing one.
struct DecisionLine {
  std::string id, prompt, pick, expert;
  std::vector<std::string> candidates;
  bool has_prompt = false, answered = false, pinned = false;
  double propensity = 1, cost_usd = 0, lambda_cost = 0;
  std::size_t output_tokens = 0;
};

DecisionLine read_decision(simdjson::dom::element line, const std::string& where) {
  DecisionLine d;
  auto text = [&](simdjson::simdjson_result<simdjson::dom::element> value, const char* field) {
    std::string_view out;
    if (value.get(out))
      throw Error(fmt::format("{}: missing or non-string field {}", where, field));
    return std::string(out);
  };
  auto number = [&](simdjson::simdjson_result<simdjson::dom::element> value, const char* field) {
    double out = 0;
    if (value.get(out))
      throw Error(fmt::format("{}: missing or non-number field {}", where, field));
    return out;
  };
  d.id = text(line["id"], "id");
  d.has_prompt = !line["prompt"].is_null();
  if (d.has_prompt) d.prompt = text(line["prompt"], "prompt");
  d.propensity = number(line["propensity"], "propensity");
  d.cost_usd = number(line["cost_usd"], "cost_usd");
  d.lambda_cost = number(line["decision"]["knobs"]["lambda_cost"], "decision.knobs.lambda_cost");
  std::uint64_t tokens = 0;
  if (line["output_tokens"].get(tokens)) {
    throw Error(fmt::format("{}: missing or non-integer field output_tokens", where));
  }
  d.output_tokens = static_cast<std::size_t>(tokens);
  simdjson::dom::array candidates;
  if (line["decision"]["candidates"].get(candidates)) {
    throw Error(fmt::format("{}: missing or non-array field decision.candidates", where));
  }
  for (simdjson::dom::element c : candidates) {
    d.candidates.push_back(text(c["expert"], "decision.candidates[].expert"));
  }
  // Absent from logs written before named calls were marked.
  simdjson::dom::element pinned;
  d.pinned = !line["pinned_expert"].get(pinned) && !pinned.is_null();
  d.answered = !line["expert"].is_null();
  if (d.answered) d.expert = text(line["expert"], "expert");
  if (!line["decision"]["pick"].is_null()) d.pick = text(line["decision"]["pick"], "decision.pick");
  return d;
}

}  // namespace

DecisionLogReading read_decision_log(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw Error(fmt::format("{}: cannot open the decision log", path));
  std::vector<DecisionLine> decisions;
  std::unordered_map<std::string, double> feedback;  // the last verdict per id
  simdjson::dom::parser parser;
  std::size_t number = 0;
  for (std::string text; std::getline(in, text);) {
    ++number;
    if (text.find_first_not_of(" \t\r") == std::string::npos) continue;
    const std::string where = fmt::format("{}:{}", path, number);
    simdjson::dom::element line;
    if (parser.parse(text).get(line)) throw Error(fmt::format("{}: not a JSON object", where));
    std::string_view type;
    if (line["type"].get(type)) throw Error(fmt::format("{}: missing field type", where));
    if (type == "decision") {
      decisions.push_back(read_decision(line, where));
    } else if (type == "feedback") {
      std::string_view id;
      double quality = 0;
      if (line["id"].get(id) || line["quality"].get(quality)) {
        throw Error(fmt::format("{}: a feedback line needs id and quality", where));
      }
      if (!(quality >= 0 && quality <= 1)) {
        throw Error(fmt::format("{}: quality must be in [0, 1], got {}", where, quality));
      }
      feedback[std::string(id)] = quality;
    } else {
      throw Error(fmt::format("{}: unknown type \"{}\"", where, type));
    }
  }
  DecisionLogReading out;
  out.decisions = decisions.size();
  std::unordered_set<std::string> seen;
  for (const DecisionLine& d : decisions) {
    for (const std::string& name : d.candidates) {
      if (seen.insert(name).second) out.experts.push_back(name);
    }
    const auto verdict = feedback.find(d.id);
    if (verdict == feedback.end()) {
      ++out.without_feedback;
    } else if (!d.has_prompt) {
      ++out.redacted;
    } else if (d.pinned) {
      ++out.pinned;
    } else if (!d.answered || d.expert != d.pick) {
      ++out.not_answered;
    } else {
      out.calls.push_back({d.id, d.prompt, d.expert, d.propensity, verdict->second, d.cost_usd,
                           d.lambda_cost, d.output_tokens});
    }
  }
  return out;
}

OffPolicyReport estimate_off_policy(const std::vector<LoggedCall>& calls,
                                    const std::vector<TargetPrediction>& target) {
  if (calls.empty()) throw Error("off-policy estimate: no logged call with feedback");
  if (calls.size() != target.size()) {
    throw Error(fmt::format("off-policy estimate: {} calls but {} target predictions", calls.size(),
                            target.size()));
  }
  OffPolicyReport report;
  report.calls = calls.size();
  std::vector<double> ips_q, dr_q, ips_c, dr_c;
  for (std::size_t i = 0; i < calls.size(); ++i) {
    const LoggedCall& call = calls[i];
    const TargetPrediction& t = target[i];
    if (!(call.propensity > 0 && call.propensity <= 1)) {
      throw Error(fmt::format("off-policy estimate: call {} has propensity {}, not in (0, 1]",
                              call.id, call.propensity));
    }
    const double weight = t.pick == call.expert ? 1.0 / call.propensity : 0.0;
    report.matching += weight > 0 ? 1 : 0;
    ips_q.push_back(weight * call.quality);
    dr_q.push_back(t.quality_of_pick + weight * (call.quality - t.quality_of_logged));
    ips_c.push_back(weight * call.cost_usd);
    dr_c.push_back(t.cost_of_pick + weight * (call.cost_usd - t.cost_of_logged));
  }
  report.ips_quality = mean_with_interval(ips_q);
  report.dr_quality = mean_with_interval(dr_q);
  report.ips_cost = mean_with_interval(ips_c);
  report.dr_cost = mean_with_interval(dr_c);
  return report;
}

TOROUTER_END_NAMESPACE
