// torouter/train.hpp: what a trainable scorer learns from, and how it trains.
//
// The paper's phase 2: learn, from the prompt alone, each expert's quality
// (and answer length) on a routing dataset.
//
//   auto data = torouter::load_routing_dataset("../shared/data/llmrouter14");
//   torouter::TrainingSet set = torouter::make_training_set(data.experts, data.train);
//   auto scorer = torouter::make_scorer("mlp:256");
//   torouter::TrainOptions options;
//   options.seed = 7;
//   options.threads = 2;
//   options.on_epoch = [](const torouter::EpochProgress& p) { print(p); };
//   torouter::TrainReport report = scorer->train(set, options);
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <functional>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/calibration.hpp"
#include "torouter/dataset.hpp"

TOROUTER_BEGIN_NAMESPACE

/// The training loss of the neural scorers.
enum class Loss {
  /// Per-expert binary cross-entropy on the quality (a regression of each
  /// expert's quality; predictions are qualities).
  Bce,
  /// TO-Router's soft labels: cross-entropy of softmax(logits) against
  /// softmax(quality / temperature) over the experts. Predictions are then
  /// each expert's probability of being the best choice, still in [0, 1].
  Soft,
};

/// "bce" or "soft".
constexpr std::string_view to_string(Loss loss) { return loss == Loss::Bce ? "bce" : "soft"; }

/// What a trainer reports after each epoch.
struct EpochProgress {
  /// 1-based epoch number.
  int epoch = 0;
  /// Mean training loss over the epoch.
  double train_loss = 0.0;
  /// Mean loss on the validation split.
  double validation_loss = 0.0;
  /// Mean true quality of the expert the scorer ranks first, on the
  /// validation rows that have that expert's outcome: the routing quality
  /// at lambda = 0.
  double validation_quality = 0.0;
  /// Seconds since training started.
  double elapsed_seconds = 0.0;
  /// True when this epoch is the best so far (its weights are kept).
  bool improved = false;
};

/// Settings of training; every field has a default that works on the shared
/// datasets.
struct TrainOptions {
  /// Seeds the weight initialisation, the validation split and the shuffling.
  std::uint64_t seed = 1;
  /// Threads computing gradients; results are deterministic for a given seed
  /// and thread count.
  int threads = 1;
  /// Most passes over the training rows.
  int max_epochs = 40;
  /// Epochs without a better validation loss before training stops.
  int patience = 5;
  /// Rows per optimiser step.
  std::size_t batch_size = 64;
  /// AdamW learning rate.
  double learning_rate = 2e-3;
  /// AdamW decoupled weight decay.
  double weight_decay = 1e-4;
  /// Loss of the neural scorers.
  Loss loss = Loss::Bce;
  /// Temperature of the soft labels (Loss::Soft).
  double temperature = 0.1;
  /// How `train_calibrated`, `train_best` and a stack map raw output to
  /// expected quality (torouter/calibration.hpp).
  CalibrationMethod calibration = CalibrationMethod::Linear;
  /// Share of the training rows held out for early stopping.
  double validation_fraction = 0.1;
  /// Called after each epoch (from the training thread), e.g. to print progress.
  std::function<void(const EpochProgress&)> on_epoch;
};

/// Checks every field of `options` (threads, epochs and batch size at
/// least 1, patience not negative, a finite learning rate and temperature
/// above 0, a finite weight decay >= 0, a validation fraction in [0, 1));
/// returns an empty string when valid, otherwise the first field that is
/// not and why. Training (`TrainableScorer::train`, `cross_validate`,
/// `train_best`) throws `Error` (`Misuse`) with it before reading a row.
std::string validate_train_options(const TrainOptions& options);

/// What training did.
struct TrainReport {
  /// Epochs run, and the epoch whose weights were kept.
  int epochs_run = 0;
  int best_epoch = 0;
  /// The kept epoch's validation figures.
  double validation_loss = 0.0;
  double validation_quality = 0.0;
  /// Training rows used for gradients and for validation.
  std::size_t train_rows = 0;
  std::size_t validation_rows = 0;
  /// Wall time of training.
  double seconds = 0.0;
};

/// Training rows in the form scorers read.
struct TrainingSet {
  /// Expert names: the columns of the matrices.
  std::vector<std::string> experts;
  /// One prompt per row.
  std::vector<std::string> prompts;
  /// True quality in [0, 1]; 0 where absent.
  Eigen::MatrixXf quality;
  /// 1 where the expert has an outcome, else 0.
  Eigen::MatrixXf present;
  /// Output tokens, ceil(output_chars / 4); NaN where unknown.
  Eigen::MatrixXf output_tokens;
  /// Each row's task (DatasetRow::task), empty where the row has none. Only
  /// the `task` scorer learns from it: the task a prompt resembles.
  std::vector<std::string> tasks;
  /// Identifies the rows (FNV-1a-64 of the prompts and outcomes, in hex):
  /// stored in model files so a model says what it was trained on.
  std::string fingerprint;
  /// Where the rows come from ("llmrouter14/train.jsonl"), for model files.
  std::string source;

  std::size_t rows() const { return prompts.size(); }
  /// True when some row records an answer length.
  bool has_output_tokens() const;
  /// The distinct non-empty tasks of the rows, sorted.
  std::vector<std::string> distinct_tasks() const;
};

/// Builds a training set from dataset rows whose outcomes follow `experts`.
TrainingSet make_training_set(const std::vector<std::string>& experts,
                              const std::vector<DatasetRow>& rows, std::string source = {});

/// An expert's prices fitted from recorded per-query costs.
struct FittedPrice {
  std::string expert;
  double input_usd_per_mtok = 0.0;
  double output_usd_per_mtok = 0.0;
  /// Rows the fit used (those with `cost_usd`).
  std::size_t rows = 0;
  /// Root mean square error of the fitted cost, USD.
  double rmse_usd = 0.0;
  /// Mean absolute error relative to the mean recorded cost.
  double relative_error = 0.0;
};

/// Least-squares prices per input and output token for every expert whose
/// rows carry `cost_usd`: cost ~ in_tokens * p_in + out_tokens * p_out, with
/// tokens estimated by ceil(chars / 4) (output from `output_chars`; an
/// expert without it is fitted on input tokens alone). Prices are kept
/// non-negative. Experts with no recorded cost are left out.
std::vector<FittedPrice> fit_prices(const RoutingDataset& data,
                                    const std::vector<DatasetRow>& rows);

TOROUTER_END_NAMESPACE
