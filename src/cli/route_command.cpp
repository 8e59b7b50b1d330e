// torouter route: print the routing decision for one prompt.
#include <fmt/format.h>

#include <cstdio>

#include "args.hpp"
#include "torouter/abi.hpp"
#include "torouter/router.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

int route(const Arguments& args) {
  args.allow_only({"model", "experts", "lambda-cost", "quality-floor"});
  if (args.positional.size() != 1) throw Error("route takes exactly one PROMPT");
  LoadedModel model = load_model(args.required("model"));
  ExpertRegistry experts =
      args.named.count("experts") ? load_expert_registry(args.required("experts"))
                                  : model.experts;
  Router router(experts, model.scorer);
  RouteOptions options;
  options.policy.lambda_cost = parse_number(args.get("lambda-cost", "0"), "lambda-cost");
  if (args.named.count("quality-floor")) {
    const double floor = parse_number(args.required("quality-floor"), "quality-floor");
    if (!(floor >= 0 && floor <= 1)) {
      throw Error(fmt::format("--quality-floor: expected a number in [0, 1], got {}", floor));
    }
    options.policy.quality_floor = floor;
  }
  std::printf("%s\n", to_json(router.route(args.positional[0], options)).c_str());
  return 0;
}

}  // namespace cli
TOROUTER_END_NAMESPACE
