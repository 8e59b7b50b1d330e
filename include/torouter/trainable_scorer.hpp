// torouter/trainable_scorer.hpp: scorers that learn from a routing dataset,
// made from a short spec string and saved to model files.
//
// The string factory follows faiss's index_factory:
//   "mlp"  "mlp:256"  "mlp:256x128"  "mlp:64,buckets=16384"   multi-layer perceptron
//   "mlp:64,buckets=16384,table=int8"     ... served with an int8 embedding table
//   "knn"  "knn:40"                                             k nearest neighbours
//   "tlite"  "tlite:64"  "tlite:128,ff=512,tokens=128"            transformer-lite encoder
//
//   auto scorer = torouter::make_scorer("mlp:256");
//   scorer->train(torouter::make_training_set(data.experts, data.train), {});
//   torouter::save_model(*scorer, "router.tormodel", &data.registry);
//
//   torouter::LoadedModel model = torouter::load_model("router.tormodel");
//   torouter::Router router(model.experts, model.scorer);
#pragma once

#include <memory>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/calibration.hpp"
#include "torouter/expert.hpp"
#include "torouter/model_io.hpp"
#include "torouter/scorer.hpp"
#include "torouter/train.hpp"

TOROUTER_BEGIN_NAMESPACE

/// One candidate's cross-validated figures on the training split.
struct CandidateFigures {
  /// The scorer spec and loss ("mlp:64,buckets=16384 loss=soft").
  std::string name;
  /// Out-of-fold AIQ, gap won and ECE (the shared definitions, on the
  /// training rows where every expert has an outcome), after calibration.
  double aiq = 0.0;
  double gap_won = 0.0;
  double ece = 0.0;
  /// Seconds its cross-validation took.
  double seconds = 0.0;
  /// Each fold's AIQ on its own rows (empty in models written before it
  /// was recorded).
  std::vector<double> fold_aiq;
};

/// How `train_best` chose a model, as stored in its model file; empty
/// (no folds) for a scorer trained as named.
struct ModelSelection {
  int folds = 0;
  std::vector<CandidateFigures> candidates;
  /// Index into `candidates` of the one trained.
  std::size_t chosen = 0;
};

/// How a trained scorer was trained, as stored in its model file.
struct TrainingRecord {
  /// The options used (their `on_epoch` is not kept).
  TrainOptions options;
  /// What training reported.
  TrainReport report;
  /// `TrainingSet::fingerprint` and `source` of the rows it learned from.
  std::string data_fingerprint;
  std::string data_source;
  /// The model selection that chose this scorer, if one did.
  ModelSelection selection;
};

/// A scorer that learns from a `TrainingSet` and saves itself to a model file.
class TrainableScorer : public Scorer {
 public:
  /// "mlp", "knn" or "tlite": the kind written in model files.
  virtual std::string_view kind() const = 0;
  /// The spec string that makes an untrained twin ("mlp:256").
  virtual std::string spec() const = 0;

  /// Learns each expert's quality (and output tokens, where the set has them)
  /// from `set`, replacing earlier training. Throws `Error` for an empty set.
  TrainReport train(const TrainingSet& set, const TrainOptions& options);

  /// True once trained or loaded.
  bool trained() const { return !experts_.empty(); }
  /// How it was trained.
  const TrainingRecord& training() const { return training_; }
  /// Records the model selection that chose it (saved with the model).
  void set_selection(ModelSelection selection) { training_.selection = std::move(selection); }

  /// Scores with the trained model, then maps each quality through the
  /// calibration (none until `set_calibration`), so a calibrated scorer's
  /// quality is the expected quality of the expert's answer.
  void score(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
             ScorerWorkspace* workspace) const final;
  using Scorer::score;

  /// Sets the per-expert calibration (one map per expert; empty: none).
  /// Throws `Error` when it covers a different number of experts. Training
  /// again removes it.
  void set_calibration(Calibration calibration);
  const Calibration& calibration() const { return calibration_; }

  /// Sets the map from a top pick's calibrated quality to its expected
  /// quality (`top_pick_quality`): a calibration of one column, fitted on
  /// held-out top picks (`train_calibrated`, `train_best`); empty: none.
  /// Throws `Error` for more than one column. Training again removes it.
  void set_pick_calibration(Calibration calibration);
  const Calibration& pick_calibration() const { return pick_calibration_; }
  /// The pick calibration applied to `predicted`, else `predicted`.
  double top_pick_quality(double predicted) const override;

  const std::vector<std::string>& expert_names() const override { return experts_; }
  /// "<spec>@<first 8 hex digits of the data fingerprint>".
  std::string_view version() const override { return version_; }

  /// Writes settings and weights (generic fields are written by `save_model`).
  void save(ModelWriter& out) const;
  /// Reads what `save` wrote; throws `Error` naming the file and the field.
  void load(const ModelReader& in);

 protected:
  /// The trained model's own predictions, before calibration (see `score`).
  virtual void score_uncalibrated(const std::string_view* prompts, std::size_t count,
                                  ScoreBatch& out, ScorerWorkspace* workspace) const = 0;
  /// The scorer's own training on `set` (experts already recorded).
  virtual TrainReport fit(const TrainingSet& set, const TrainOptions& options) = 0;
  /// The scorer's own fields and tensors.
  virtual void write_model(ModelWriter& out) const = 0;
  /// Reads them back; `expert_names()` is already set.
  virtual void read_model(const ModelReader& in) = 0;

 private:
  void set_identity(std::vector<std::string> experts, std::string fingerprint);

  std::vector<std::string> experts_;
  std::string version_;
  TrainingRecord training_;
  Calibration calibration_;
  Calibration pick_calibration_;
};

/// An untrained scorer from a spec ("mlp:256", "knn:40", "tlite"); throws
/// `Error` naming the spec and what is wrong with it.
std::unique_ptr<TrainableScorer> make_scorer(std::string_view spec);

/// Writes `scorer` to `path`: its settings and weights, the expert names,
/// the training options and data fingerprint, the experts' prices (from
/// `prices` when given), and a few recorded prompts with the scorer's
/// predictions, which `load_model` checks.
void save_model(const TrainableScorer& scorer, const std::string& path,
                const ExpertRegistry* prices = nullptr);

/// A model file, loaded and checked.
struct LoadedModel {
  std::shared_ptr<TrainableScorer> scorer;
  /// The model's experts with the prices stored in the file (zero where none
  /// was stored) and default latency priors.
  ExpertRegistry experts;
};

/// Loads a model file, then re-scores its recorded prompts and refuses (with
/// `Error` naming the file, the prompt and the expert) when the predictions
/// differ from the recorded ones.
LoadedModel load_model(const std::string& path);
/// The same for a model file already read.
LoadedModel load_model(const ModelReader& in);

/// The prompts whose predictions every model file records.
const std::vector<std::string>& model_check_prompts();

TOROUTER_END_NAMESPACE
