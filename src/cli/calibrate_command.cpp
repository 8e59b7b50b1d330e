// torouter calibrate: the smallest cost weight lambda that meets a budget on
// a dataset's prompts, the way RouteLLM calibrates its threshold to a share
// of strong-model calls. Only the prompts and the router's own predictions
// are used, so any sample of real traffic serves; the training split is the
// default so the test split stays unseen.
#include <cstdio>

#include "args.hpp"
#include "predictions.hpp"
#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/eval.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {
namespace {

// What a lambda does on the prompts: mean predicted cost and each expert's share.
struct Outcome {
  double mean_cost = 0;
  std::vector<double> share;
};

Outcome outcome_at(const Predictions& p, double lambda) {
  const std::vector<std::size_t> picks = pick_by_utility(p.quality, p.cost, lambda);
  Outcome out;
  out.share.assign(static_cast<std::size_t>(p.quality.cols()), 0.0);
  for (std::size_t i = 0; i < picks.size(); ++i) {
    out.mean_cost += p.cost(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(picks[i]));
    out.share[picks[i]] += 1;
  }
  for (auto& s : out.share) s /= static_cast<double>(picks.size());
  out.mean_cost /= static_cast<double>(picks.size());
  return out;
}

}  // namespace

int calibrate(const Arguments& args) {
  args.allow_only({"data", "model", "max-cost-per-query", "max-share", "split"});
  const std::string dir = args.required("data");
  const bool by_cost = args.named.count("max-cost-per-query") != 0;
  const bool by_share = args.named.count("max-share") != 0;
  if (by_cost == by_share) {
    throw Error("give exactly one of --max-cost-per-query USD and --max-share EXPERT=F");
  }
  const std::string split = args.get("split", "train");
  if (split != "train" && split != "test") throw Error("--split: expected train or test");

  const RoutingDataset data = load_routing_dataset(dir);
  const LoadedModel model = load_model(args.required("model"));
  const std::vector<DatasetRow>& rows = split == "train" ? data.train : data.test;
  if (rows.empty()) throw Error(fmt::format("{}: the {} split has no rows", dir, split));
  const Predictions predicted = predict(model, data.experts, rows);

  double limit = 0;
  std::size_t expert = 0;
  if (by_cost) {
    limit = parse_number(args.required("max-cost-per-query"), "max-cost-per-query");
  } else {
    const std::string spec = args.required("max-share");
    const std::size_t equals = spec.rfind('=');
    if (equals == std::string::npos) throw Error("--max-share: expected EXPERT=F");
    const std::string name = spec.substr(0, equals);
    auto it = std::find(data.experts.begin(), data.experts.end(), name);
    if (it == data.experts.end()) throw Error(fmt::format("--max-share: unknown expert \"{}\"", name));
    expert = static_cast<std::size_t>(it - data.experts.begin());
    limit = parse_number(spec.substr(equals + 1), "max-share");
    if (limit < 0 || limit > 1) throw Error("--max-share: the share must be in [0, 1]");
  }
  auto meets = [&](const Outcome& o) {
    return by_cost ? o.mean_cost <= limit : o.share[expert] <= limit;
  };

  // Walk the curve's lambdas to the first that meets the budget, then narrow
  // the gap to the lambda before it by bisection.
  const std::vector<double> lambdas = lambda_sweep(predicted.quality, predicted.cost, {400});
  std::optional<std::size_t> first;
  for (std::size_t i = 0; i < lambdas.size() && !first; ++i) {
    if (meets(outcome_at(predicted, lambdas[i]))) first = i;
  }
  if (!first) {
    const Outcome cheapest = outcome_at(predicted, lambdas.back());
    std::printf("no lambda meets the budget: at the largest (%g) the mean predicted cost is $%.6g "
                "and %s's share %.3f\n",
                lambdas.back(), cheapest.mean_cost, data.experts[expert].c_str(),
                cheapest.share[expert]);
    return 1;
  }
  double hi = lambdas[*first];
  if (*first > 0) {
    double lo = lambdas[*first - 1];
    for (int step = 0; step < 60; ++step) {
      const double mid = 0.5 * (lo + hi);
      (meets(outcome_at(predicted, mid)) ? hi : lo) = mid;
    }
  }
  const Outcome chosen = outcome_at(predicted, hi);
  std::printf("lambda_cost = %.6g on %zu %s prompts of %s\n", hi, rows.size(), split.c_str(),
              data.name.c_str());
  std::printf("mean predicted cost per query $%.6g\n", chosen.mean_cost);
  for (std::size_t e = 0; e < data.experts.size(); ++e) {
    if (chosen.share[e] > 0) std::printf("  %-40s %5.1f%%\n", data.experts[e].c_str(), 100 * chosen.share[e]);
  }
  return 0;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
