// torouter/model_selection.hpp: trains the router that routes best on a
// dataset, chosen by cross-validation on its training split alone, with its
// quality calibrated on held-out folds.
//
//   auto data = torouter::load_routing_dataset("../shared/data/llmrouter14");
//   torouter::TrainOptions options;
//   options.threads = 2;
//   auto scorer = torouter::train_best(data, data.registry, options, {});
//   const torouter::ModelSelection& why = scorer->training().selection;
//   torouter::save_model(*scorer, "router.tormodel", &data.registry);
//
// Each candidate is trained `folds` times, each time on every training row
// but one fold, and predicts that fold: out-of-fold predictions for every
// row, from models that never saw it. They give the candidate's
// calibration (torouter/calibration.hpp) and, calibrated, its AIQ, gap won
// and ECE by the shared definitions on the training rows where every expert
// has an outcome, costs weighed by the router's own cost model. The best
// AIQ wins and is trained on every row; the test split is never read.
#pragma once

#include <functional>
#include <memory>
#include <string>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/dataset.hpp"
#include "torouter/expert.hpp"
#include "torouter/train.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE

/// A scorer spec and the loss it trains with.
struct CandidateScorer {
  std::string spec;
  Loss loss = Loss::Bce;
  /// "<spec> loss=<loss>", as recorded in model files.
  std::string name() const;
};

/// "mlp:64/soft" -> {"mlp:64", Soft}: a spec with an optional "/bce" or
/// "/soft" loss (default bce). Throws `Error` naming the text.
CandidateScorer parse_candidate(std::string_view text);

/// What `train_best` tries unless told otherwise: gradient-boosted trees,
/// the MLP with soft labels and with BCE, kNN over a 32-wide dense
/// projection, ridge per expert (`linear`) and the task scorer (`task`:
/// which training task a prompt belongs to, and that task's mean quality
/// per expert). Each routes in tens of microseconds; kNN's exact sparse
/// search takes about ten times as long, so it is tried only when named.
/// `train_best` leaves `task` out when the training rows carry fewer than
/// two tasks (DatasetRow::task), as logged calls do.
std::vector<CandidateScorer> default_candidates();

/// Settings of the selection.
struct SelectionOptions {
  std::vector<CandidateScorer> candidates = default_candidates();
  /// Folds of the cross-validation (2..100).
  int folds = 5;
  /// Also judge stacks of the best two, three, ... candidates.
  bool stacks = true;
  /// Called after each candidate's cross-validation, e.g. to print it.
  std::function<void(const CandidateFigures&)> on_candidate;
  /// Called after each candidate's cross-validation with what it was judged
  /// on: every training row's calibrated out-of-fold quality (each fold's
  /// rows calibrated on the other folds), and each row's fold.
  std::function<void(const CandidateFigures&, const Eigen::MatrixXf& quality,
                     const std::vector<int>& fold)>
      on_out_of_fold;
};

/// A candidate's predictions for rows it was not trained on.
struct OutOfFold {
  /// Raw (uncalibrated) quality, rows x experts.
  Eigen::MatrixXf quality;
  /// Output tokens; NaN where the scorer predicts none.
  Eigen::MatrixXf output_tokens;
};

/// Trains `candidate` once per fold on the other folds and predicts the
/// held-out one. Folds are a seeded shuffle of the rows (`options.seed`).
OutOfFold cross_validate(const CandidateScorer& candidate, const TrainingSet& set,
                         const TrainOptions& options, int folds);

/// Predicted cost in USD, rows x experts: each prompt's estimated input
/// tokens and the predicted output tokens (the cost model's default where
/// not predicted) at `prices`' rates, by the router's own default cost
/// model (torouter/cost_model.hpp).
Eigen::MatrixXd predicted_costs(const std::vector<std::string_view>& prompts,
                                const Eigen::MatrixXf& output_tokens,
                                const std::vector<std::string>& experts,
                                const ExpertRegistry& prices);

/// Trains `candidate` on every row of `set`, calibrated on `folds`
/// out-of-fold predictions (uncalibrated when `folds` is 0).
std::unique_ptr<TrainableScorer> train_calibrated(const CandidateScorer& candidate,
                                                  const TrainingSet& set,
                                                  const TrainOptions& options, int folds);

/// Cross-validates every candidate on `data.train`, and trains the one of
/// highest out-of-fold AIQ on every training row, calibrated on its
/// out-of-fold predictions, with the selection recorded in it
/// (`training().selection`). `prices` gives the cost model's rates.
/// Throws `Error` for no candidate, bad folds, or no training row with
/// every expert's outcome.
std::unique_ptr<TrainableScorer> train_best(const RoutingDataset& data,
                                            const ExpertRegistry& prices,
                                            const TrainOptions& options,
                                            const SelectionOptions& selection);

TOROUTER_END_NAMESPACE
