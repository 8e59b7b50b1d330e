// A router's predictions read from Router::route itself, so that evaluation
// sees exactly what the router ranks: its clamping of quality, its cost
// model and its registry order.
#include <fmt/format.h>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/eval.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE

RouterPredictions router_predictions(const Router& router,
                                     const std::vector<std::string_view>& prompts) {
  if (dynamic_cast<const UtilityPolicy*>(&router.policy()) == nullptr) {
    throw Error(
        fmt::format("router_predictions: the router's policy is \"{}\"; evaluation "
                    "picks as the utility policy does",
                    router.policy().name()));
  }
  const auto rows = static_cast<Eigen::Index>(prompts.size());
  const auto experts = static_cast<Eigen::Index>(router.experts().size());
  RouterPredictions out{Eigen::MatrixXd(rows, experts), Eigen::MatrixXd(rows, experts),
                        Eigen::VectorXd(rows)};
  const RouteOptions options;  // lambda 0, no constraint: every expert a candidate
  RouteDecision decision;
  for (Eigen::Index i = 0; i < rows; ++i) {
    router.route(prompts[static_cast<std::size_t>(i)], options, decision);
    for (const Candidate& c : decision.candidates) {
      if (!c.eligible()) {
        throw Error(
            fmt::format("router_predictions: the router excludes \"{}\" ({}); evaluation "
                        "needs every expert eligible",
                        c.name, to_string(c.exclusion)));
      }
      const auto j = static_cast<Eigen::Index>(c.expert_index);
      out.quality(i, j) = c.predicted_quality;
      out.cost(i, j) = c.cost_usd;
    }
    out.expected_quality(i) = decision.expected_quality;
  }
  return out;
}

TOROUTER_END_NAMESPACE
