// torouter eval: a trained router's figures on a dataset's test split, next
// to every expert alone, random and the oracle, by the shared definitions.
// Its predictions are Router::route's own (predictions.hpp), and its picks
// rank them as UtilityPolicy does (eval.hpp), so the figures are those of the
// router `torouter route` and the server run.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "../json_text.hpp"
#include "args.hpp"
#include "cost_quality_plot.hpp"
#include "predictions.hpp"
#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/eval.hpp"
#include "torouter/off_policy.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {
namespace {

using detail::json_number;
using detail::json_string;

// Routes per second of Router::route, one prompt at a time on this thread.
double routes_per_second(const LoadedModel& model, const std::vector<DatasetRow>& rows) {
  Router router(model.experts, model.scorer);
  RouteDecision decision;
  RouteOptions options;
  router.route(rows.front().prompt, options, decision);  // warm up
  const auto start = std::chrono::steady_clock::now();
  for (const auto& r : rows) router.route(r.prompt, options, decision);
  const double seconds =
      std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(rows.size()) / seconds;
}

std::string optional_number(const std::optional<double>& v) {
  return v ? json_number(*v) : std::string("null");
}

std::string point_json(const OperatingPoint& p) {
  return fmt::format("{{\"quality\": {}, \"cost\": {}}}", json_number(p.quality),
                     json_number(p.cost));
}

// The reliability diagram behind router.ece: one object per bin, its
// predicted and observed means null when it is empty.
std::string reliability_json(const std::vector<ReliabilityBin>& bins) {
  std::string out;
  for (std::size_t k = 0; k < bins.size(); ++k) {
    const ReliabilityBin& bin = bins[k];
    const bool empty = bin.count == 0;
    out += fmt::format(
        "{}{{\"lower\": {}, \"upper\": {}, \"count\": {}, \"predicted\": {}, \"observed\": {}}}",
        k ? ", " : "", json_number(bin.lower), json_number(bin.upper), bin.count,
        empty ? "null" : json_number(bin.mean_predicted),
        empty ? "null" : json_number(bin.mean_observed));
  }
  return out;
}

std::string report_json(const std::string& dataset, const std::string& model_path,
                        const TrainableScorer& scorer, const EvalReport& report, double rps) {
  const Baselines& b = report.baselines;
  const RouterFigures& r = *report.router;
  std::string experts;
  for (std::size_t e = 0; e < report.experts.size(); ++e) {
    experts += fmt::format("{}{{\"name\": {}, \"quality\": {}, \"cost\": {}}}", e ? ", " : "",
                           json_string(report.experts[e]), json_number(b.experts[e].quality),
                           json_number(b.experts[e].cost));
  }
  std::string curve;
  for (std::size_t i = 0; i < r.curve.size(); ++i) {
    curve += fmt::format("{}{{\"lambda\": {}, \"quality\": {}, \"cost\": {}}}", i ? ", " : "",
                         json_number(r.curve[i].lambda), json_number(r.curve[i].quality),
                         json_number(r.curve[i].cost));
  }
  return fmt::format(
      "{{\"dataset\": {}, \"test_rows\": {}, \"model\": {}, \"model_file\": {},\n"
      " \"experts\": [{}],\n"
      " \"random\": {}, \"oracle\": {},\n"
      " \"best_expert\": {{\"name\": {}, \"quality\": {}, \"cost\": {}}},\n"
      " \"experts_alone_aiq\": {}, \"train_seconds\": {},\n"
      " \"router\": {{\"curve\": [{}],\n"
      "  \"aiq\": {}, \"quality_at_best_cost\": {}, \"cost_at_best_quality_pct\": {},\n"
      "  \"gap_won\": {}, \"quality_at_10pct\": {}, \"quality_at_30pct\": {},\n"
      "  \"quality_at_70pct\": {}, \"routes_per_second\": {},\n"
      "  \"ece\": {}, \"reliability\": [{}]}}}}\n",
      json_string(dataset), report.rows, json_string(scorer.version()), json_string(model_path),
      experts, point_json(b.random), point_json(b.oracle),
      json_string(report.experts[b.best.index]), json_number(b.best.quality),
      json_number(b.best.cost), json_number(b.experts_aiq),
      json_number(scorer.training().report.seconds), curve, json_number(r.aiq),
      optional_number(r.quality_at_best_cost), optional_number(r.cost_at_best_quality_pct),
      optional_number(r.gap_won), optional_number(r.quality_at_10pct),
      optional_number(r.quality_at_30pct), optional_number(r.quality_at_70pct), json_number(rps),
      optional_number(r.ece), reliability_json(r.reliability));
}

// Each row's predicted quality per expert, as the peers write it
// (benchmarks/peers/routing_eval.py): a header `id,<expert>,...`, then one
// line per test row, so the same predictions can be judged by either side.
void write_predictions_csv(const std::string& path, const std::vector<std::string>& experts,
                           const std::vector<DatasetRow>& rows, const Eigen::MatrixXd& quality) {
  std::ofstream out(path);
  if (!out) throw Error(fmt::format("{}: cannot write", path));
  out << "id";
  for (const auto& name : experts) out << ',' << name;
  out << '\n';
  for (std::size_t i = 0; i < rows.size(); ++i) {
    out << rows[i].id;
    for (Eigen::Index e = 0; e < quality.cols(); ++e) {
      out << fmt::format(",{:.9g}", quality(static_cast<Eigen::Index>(i), e));
    }
    out << '\n';
  }
}

std::string figure(const std::optional<double>& v, const char* format = "{:.4f}") {
  return v ? fmt::format(fmt::runtime(format), *v) : std::string("-");
}

// What MODEL would have done on the logged calls with feedback: the
// off-policy estimates of torouter/off_policy.hpp. Each call is routed
// again with its own cost weight.
TargetPrediction target_prediction(const Router& router, const LoggedCall& call) {
  RouteOptions options;
  options.policy.lambda_cost = call.lambda_cost;
  const RouteDecision decision = router.route(call.prompt, options);
  const Candidate* pick = decision.pick();
  const Candidate* logged = decision.find(call.expert);
  if (pick == nullptr) throw Error(fmt::format("call {}: the model picks no expert", call.id));
  if (logged == nullptr) {
    throw Error(fmt::format("call {}: the model does not know the logged expert \"{}\"",
                            call.id, call.expert));
  }
  return {std::string(pick->name), pick->predicted_quality, logged->predicted_quality,
          pick->cost_usd, logged->cost_usd};
}

std::string estimate_json(const Estimate& e) {
  return fmt::format("{{\"value\": {}, \"low\": {}, \"high\": {}}}", json_number(e.value),
                     json_number(e.low), json_number(e.high));
}

int evaluate_log(const Arguments& args) {
  args.allow_only({"log", "model", "json"});
  const std::string log_path = args.required("log");
  const std::string model_path = args.required("model");
  const DecisionLogReading reading = read_decision_log(log_path);
  const LoadedModel model = load_model(model_path);
  const Router router(model.experts, model.scorer);
  std::vector<TargetPrediction> target;
  for (const LoggedCall& call : reading.calls) target.push_back(target_prediction(router, call));
  const OffPolicyReport report = estimate_off_policy(reading.calls, target);
  std::printf(
      "%s: %zu decisions; %zu with feedback used (%zu without feedback, %zu redacted, "
      "%zu to a named expert, %zu failed or failed over)\nmodel %s picks the logged "
      "expert on %zu of them\n\n",
      log_path.c_str(), reading.decisions, report.calls, reading.without_feedback, reading.redacted,
      reading.pinned, reading.not_answered, std::string(model.scorer->version()).c_str(),
      report.matching);
  auto line = [](const char* what, const Estimate& e) {
    std::printf("%-22s %10.4g   [%.4g, %.4g]\n", what, e.value, e.low, e.high);
  };
  line("quality, IPS", report.ips_quality);
  line("quality, doubly robust", report.dr_quality);
  line("cost USD, IPS", report.ips_cost);
  line("cost USD, doubly robust", report.dr_cost);
  if (args.named.count("json")) {
    const std::string path = args.required("json");
    std::ofstream out(path);
    if (!out) throw Error(fmt::format("{}: cannot write", path));
    out << fmt::format(
        "{{\"log\": {}, \"model\": {}, \"model_version\": {}, \"decisions\": {}, "
        "\"calls\": {}, \"matching\": {}, \"without_feedback\": {}, \"redacted\": {}, "
        "\"pinned\": {}, \"not_answered\": {}, \"quality\": {{\"ips\": {}, "
        "\"doubly_robust\": {}}}, "
        "\"cost_usd\": {{\"ips\": {}, \"doubly_robust\": {}}}}}\n",
        json_string(log_path), json_string(model_path), json_string(model.scorer->version()),
        reading.decisions, report.calls, report.matching, reading.without_feedback,
        reading.redacted, reading.pinned, reading.not_answered, estimate_json(report.ips_quality),
        estimate_json(report.dr_quality), estimate_json(report.ips_cost),
        estimate_json(report.dr_cost));
  }
  return 0;
}

}  // namespace

int evaluate(const Arguments& args) {
  if (args.named.count("log")) return evaluate_log(args);
  args.allow_only({"data", "model", "json", "plot", "predictions"});
  const std::string dir = args.required("data");
  const std::string model_path = args.required("model");
  const RoutingDataset data = load_routing_dataset(dir);
  const LoadedModel model = load_model(model_path);
  const std::vector<DatasetRow> rows = complete_rows(data.test);
  if (rows.empty()) throw Error(fmt::format("{}: no test row has every expert's outcome", dir));

  const Eigen::MatrixXd quality = quality_matrix(rows);
  const Eigen::MatrixXd cost = cost_matrix(data, rows);
  const Predictions predicted = predict(model, data.experts, rows);
  const EvalReport report = torouter::evaluate(data.experts, quality, cost, predicted.quality,
                                               predicted.cost, {}, &predicted.expected_quality);
  const double rps = routes_per_second(model, rows);

  const Baselines& b = report.baselines;
  const RouterFigures& r = *report.router;
  std::printf("%s: %zu test rows, model %s\n\n", data.name.c_str(), report.rows,
              std::string(model.scorer->version()).c_str());
  std::printf("%-40s %8s %12s\n", "", "quality", "cost (USD)");
  for (std::size_t e = 0; e < report.experts.size(); ++e) {
    std::printf("%-40s %8.4f %12.4g%s\n", report.experts[e].c_str(), b.experts[e].quality,
                b.experts[e].cost, e == b.best.index ? "  best expert" : "");
  }
  std::printf("%-40s %8.4f %12.4g\n", "random", b.random.quality, b.random.cost);
  std::printf("%-40s %8.4f %12.4g\n", "oracle", b.oracle.quality, b.oracle.cost);
  std::printf("%-40s %8.4f %12.4g\n\n", "router (lambda = 0)", r.at_lambda0.quality,
              r.at_lambda0.cost);
  std::printf("router curve (%zu lambdas): AIQ %.4f (experts alone %.4f)\n", r.curve.size(), r.aiq,
              b.experts_aiq);
  std::printf("  Q@C* %s  C@Q* %s  gap won %s\n", figure(r.quality_at_best_cost).c_str(),
              r.cost_at_best_quality_pct
                  ? fmt::format("{:.1f}%", *r.cost_at_best_quality_pct).c_str()
                  : "not reached",
              figure(r.gap_won, "{:.3f}").c_str());
  std::printf("  Q@10%% %s  Q@30%% %s  Q@70%% %s\n", figure(r.quality_at_10pct).c_str(),
              figure(r.quality_at_30pct).c_str(), figure(r.quality_at_70pct).c_str());
  std::printf("  ECE %s (picks at lambda = 0, 10 bins of their expected quality)\n",
              figure(r.ece).c_str());
  std::printf("  %.0f routes per second (Router::route, one thread)\n", rps);

  if (args.named.count("json")) {
    const std::string path = args.required("json");
    std::ofstream out(path);
    if (!out) throw Error(fmt::format("{}: cannot write", path));
    out << report_json(data.name, model_path, *model.scorer, report, rps);
  }
  if (args.named.count("predictions")) {
    write_predictions_csv(args.required("predictions"), data.experts, rows, predicted.quality);
  }
  if (args.named.count("plot")) {
    const std::string path = args.required("plot");
    std::ofstream out(path);
    if (!out) throw Error(fmt::format("{}: cannot write", path));
    out << cost_quality_svg(report, fmt::format("{}: {} ({} test prompts)", data.name,
                                                model.scorer->version(), report.rows));
  }
  return 0;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
