#include "predictions.hpp"

#include <fmt/format.h>

#include <memory>
#include <string_view>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/router.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

Predictions predict(const LoadedModel& model, const std::vector<std::string>& experts,
                    const std::vector<DatasetRow>& rows) {
  // The model's experts in the dataset's order, so that column j is the
  // dataset's expert j for the router too, ties included.
  ExpertRegistry registry;
  for (const auto& name : experts) {
    const ExpertSpec* spec = model.experts.find(name);
    if (!spec) throw Error(fmt::format("the model has no predictions for expert \"{}\"", name));
    registry.add(*spec);
  }
  const Router router(std::move(registry), model.scorer);
  std::vector<std::string_view> prompts;
  prompts.reserve(rows.size());
  for (const auto& r : rows) prompts.push_back(r.prompt);
  return router_predictions(router, prompts);
}

}  // namespace cli
TOROUTER_END_NAMESPACE
