// Internal: the training loop the neural scorers share: a validation split,
// shuffled mini-batches, data-parallel gradients over replicas, AdamW, and
// early stopping that keeps the best epoch's weights.
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <memory>
#include <vector>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"
#include "torouter/train.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// A network the trainer can train. Rows are indices into the training set
/// the network was built over.
class Network {
 public:
  virtual ~Network() = default;
  /// A copy with the same weights and zero gradients, for another thread.
  virtual std::unique_ptr<Network> replicate() const = 0;
  /// Parameters in a fixed order (the same in every replica).
  virtual nn::ParameterList<float>& parameters() = 0;
  /// Forward and backward over `rows`: adds `weight` times the gradient of
  /// the mean loss over these rows to this network's gradients; returns that
  /// mean loss.
  virtual double accumulate_gradients(const std::vector<std::size_t>& rows, float weight) = 0;
  /// Mean loss over `rows` (no gradient) and the predicted scores, one row
  /// per entry of `rows`, one column per expert.
  virtual double evaluate(const std::vector<std::size_t>& rows, Eigen::MatrixXf& scores) = 0;
};

/// Trains `network` on the rows of `set` (holding out
/// `options.validation_fraction` of them), leaving the best epoch's weights.
TrainReport train_network(Network& network, const TrainingSet& set, const TrainOptions& options);

/// A seeded split of `rows` rows: `options.validation_fraction` of them held
/// out (`validation`), the rest in `train`, each sorted (gbt and linear).
void split_validation_rows(std::size_t rows, const TrainOptions& options,
                           std::vector<std::size_t>& train, std::vector<std::size_t>& validation);

/// `set.quality` with NaN where the expert has no outcome: the targets of
/// the regression scorers (gbt, linear), which skip NaN rows.
Eigen::MatrixXf quality_or_nan(const TrainingSet& set);

/// Per expert, whether any row records its answer length: an expert
/// without gets no length prediction (the cost model's default), not 0.
std::vector<bool> experts_with_lengths(const TrainingSet& set);

/// Mean true quality of the expert ranked first by `scores` on the rows of
/// `rows` that have its outcome (0 when none has).
double routed_quality(const TrainingSet& set, const std::vector<std::size_t>& rows,
                      const Eigen::MatrixXf& scores);

}  // namespace detail
TOROUTER_END_NAMESPACE
