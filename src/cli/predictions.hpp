// Internal to the torouter program: a trained router's own view of a
// dataset's rows, shared by eval and calibrate.
#pragma once

#include <Eigen/Core>
#include <string>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/eval.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

/// Predicted quality and predicted cost (USD), rows x the dataset's experts.
using Predictions = RouterPredictions;

/// The router's own view of every row, in the order of `experts`:
/// `router_predictions` of a `Router` with default options over the model's
/// experts in that order, so the predicted quality (clamped to [0, 1]) and
/// cost (the router's CostModel: estimated input tokens, predicted output
/// tokens or its default of 256, the model's prices) are those
/// `torouter route` ranks. Throws `Error` when the model has no predictions
/// for one of `experts`.
Predictions predict(const LoadedModel& model, const std::vector<std::string>& experts,
                    const std::vector<DatasetRow>& rows);

}  // namespace cli
TOROUTER_END_NAMESPACE
