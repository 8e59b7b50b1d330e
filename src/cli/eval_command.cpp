// torouter eval: a trained router's figures on a dataset's test split, next
// to every expert alone, random and the oracle, by the shared definitions.
#include <chrono>
#include <cmath>
#include <cstdio>
#include <fstream>

#include "../json_text.hpp"
#include "args.hpp"
#include "torouter/dataset.hpp"
#include "torouter/eval.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

namespace torouter::cli {
namespace {

using detail::json_number;
using detail::json_string;

struct Predictions {
  Eigen::MatrixXd quality;
  Eigen::MatrixXd cost;
};

// The router's own view of every test row, in the dataset's expert order:
// predicted quality, and predicted cost from the estimated input tokens, the
// predicted output tokens and the model's prices. Where the model predicts
// no output tokens (its data had no answer lengths), output counts 0, as the
// datasets' cost rule counts an absent answer length.
Predictions predict(const LoadedModel& model, const std::vector<std::string>& experts,
                    const std::vector<DatasetRow>& rows) {
  const auto& names = model.scorer->expert_names();
  std::vector<Eigen::Index> column;
  for (const auto& e : experts) {
    auto it = std::find(names.begin(), names.end(), e);
    if (it == names.end()) throw Error(fmt::format("the model has no predictions for expert \"{}\"", e));
    column.push_back(static_cast<Eigen::Index>(it - names.begin()));
  }
  CostModelOptions cost_options;
  cost_options.default_output_tokens = 0;
  const CostModel cost_model(cost_options);
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto m = static_cast<Eigen::Index>(experts.size());
  Predictions out{Eigen::MatrixXd(n, m), Eigen::MatrixXd(n, m)};
  std::vector<std::string_view> prompts;
  for (const auto& r : rows) prompts.push_back(r.prompt);
  ScoreBatch batch;
  auto workspace = model.scorer->make_workspace();
  constexpr std::size_t kBatch = 256;
  for (std::size_t begin = 0; begin < rows.size(); begin += kBatch) {
    const std::size_t count = std::min(kBatch, rows.size() - begin);
    model.scorer->score(prompts.data() + begin, count, batch, workspace.get());
    for (std::size_t i = 0; i < count; ++i) {
      const auto row = static_cast<Eigen::Index>(begin + i);
      const double input = static_cast<double>(estimate_tokens(prompts[begin + i]));
      for (Eigen::Index e = 0; e < m; ++e) {
        const auto b = static_cast<Eigen::Index>(i);
        const ExpertSpec& spec = model.experts[static_cast<std::size_t>(column[static_cast<std::size_t>(e)])];
        out.quality(row, e) = batch.quality(b, column[static_cast<std::size_t>(e)]);
        out.cost(row, e) = cost_model.cost_usd(
            spec, input, cost_model.output_tokens_or_default(batch.output_tokens(b, column[static_cast<std::size_t>(e)])));
      }
    }
  }
  return out;
}

// Routes per second of Router::route, one prompt at a time on this thread.
double routes_per_second(const LoadedModel& model, const std::vector<DatasetRow>& rows) {
  Router router(model.experts, model.scorer);
  RouteDecision decision;
  RouteOptions options;
  router.route(rows.front().prompt, options, decision);  // warm up
  const auto start = std::chrono::steady_clock::now();
  for (const auto& r : rows) router.route(r.prompt, options, decision);
  const double seconds = std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
  return static_cast<double>(rows.size()) / seconds;
}

std::string optional_number(const std::optional<double>& v) {
  return v ? json_number(*v) : std::string("null");
}

std::string point_json(const OperatingPoint& p) {
  return fmt::format("{{\"quality\": {}, \"cost\": {}}}", json_number(p.quality), json_number(p.cost));
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
      " \"experts_aiq\": {},\n"
      " \"router\": {{\"curve\": [{}],\n"
      "  \"aiq\": {}, \"quality_at_best_cost\": {}, \"cost_at_best_quality_pct\": {},\n"
      "  \"gap_won\": {}, \"quality_at_10pct\": {}, \"quality_at_30pct\": {},\n"
      "  \"quality_at_70pct\": {}, \"routes_per_second\": {},\n"
      "  \"train_seconds\": {}}}}}\n",
      json_string(dataset), report.rows, json_string(scorer.version()), json_string(model_path),
      experts, point_json(b.random), point_json(b.oracle), json_string(report.experts[b.best.index]),
      json_number(b.best.quality), json_number(b.best.cost), json_number(b.experts_aiq), curve,
      json_number(r.aiq), optional_number(r.quality_at_best_cost),
      optional_number(r.cost_at_best_quality_pct), optional_number(r.gap_won),
      optional_number(r.quality_at_10pct), optional_number(r.quality_at_30pct),
      optional_number(r.quality_at_70pct), json_number(rps),
      json_number(scorer.training().report.seconds));
}

std::string figure(const std::optional<double>& v, const char* format = "{:.4f}") {
  return v ? fmt::format(fmt::runtime(format), *v) : std::string("-");
}

}  // namespace

int evaluate(const Arguments& args) {
  args.allow_only({"data", "model", "json"});
  const std::string dir = args.required("data");
  const std::string model_path = args.required("model");
  const RoutingDataset data = load_routing_dataset(dir);
  const LoadedModel model = load_model(model_path);
  const std::vector<DatasetRow> rows = complete_rows(data.test);
  if (rows.empty()) throw Error(fmt::format("{}: no test row has every expert's outcome", dir));

  const Eigen::MatrixXd quality = quality_matrix(rows);
  const Eigen::MatrixXd cost = cost_matrix(data, rows);
  const Predictions predicted = predict(model, data.experts, rows);
  const EvalReport report = torouter::evaluate(data.experts, quality, cost, predicted.quality, predicted.cost);
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
  std::printf("%-40s %8.4f %12.4g\n\n", "router (lambda = 0)", r.at_lambda0.quality, r.at_lambda0.cost);
  std::printf("router curve (%zu lambdas): AIQ %.4f (experts alone %.4f)\n", r.curve.size(), r.aiq,
              b.experts_aiq);
  std::printf("  Q@C* %s  C@Q* %s  gap won %s\n", figure(r.quality_at_best_cost).c_str(),
              r.cost_at_best_quality_pct ? fmt::format("{:.1f}%", *r.cost_at_best_quality_pct).c_str()
                                         : "not reached",
              figure(r.gap_won, "{:.3f}").c_str());
  std::printf("  Q@10%% %s  Q@30%% %s  Q@70%% %s\n", figure(r.quality_at_10pct).c_str(),
              figure(r.quality_at_30pct).c_str(), figure(r.quality_at_70pct).c_str());
  std::printf("  %.0f routes per second (Router::route, one thread)\n", rps);

  if (args.named.count("json")) {
    const std::string path = args.required("json");
    std::ofstream out(path);
    if (!out) throw Error(fmt::format("{}: cannot write", path));
    out << report_json(data.name, model_path, *model.scorer, report, rps);
  }
  return 0;
}

}  // namespace torouter::cli
