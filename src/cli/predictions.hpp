// Internal to the torouter program: a trained router's own view of a
// dataset's rows, shared by eval and calibrate.
#pragma once

#include <Eigen/Core>
#include <string>
#include <vector>

#include "torouter/dataset.hpp"
#include "torouter/trainable_scorer.hpp"

namespace torouter::cli {

/// Predicted quality and predicted cost (USD), rows x the dataset's experts.
struct Predictions {
  Eigen::MatrixXd quality;
  Eigen::MatrixXd cost;
};

/// The router's own view of every row, in the order of `experts`:
/// predicted quality, and predicted cost from the estimated input tokens, the
/// predicted output tokens and the model's prices. Where the model predicts
/// no output tokens (its data had no answer lengths), output counts 0, as the
/// datasets' cost rule counts an absent answer length. Throws `Error` when
/// the model has no predictions for one of `experts`.
Predictions predict(const LoadedModel& model, const std::vector<std::string>& experts,
                    const std::vector<DatasetRow>& rows);

}  // namespace torouter::cli
