// Internal: the scorer kinds the factory knows, and the parsed spec string
// each is built from.
#pragma once

#include <map>
#include <memory>
#include <string>
#include <string_view>

#include "torouter/abi.hpp"
#include "torouter/features.hpp"
#include "torouter/model_selection.hpp"
#include "torouter/trainable_scorer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// A parsed spec "kind[:argument][,key=value]...", e.g. "mlp:256x128,buckets=16384".
struct ScorerSpec {
  std::string text;
  std::string kind;
  std::string argument;
  std::map<std::string, std::string> options;

  /// Option `key` as a whole number in [minimum, maximum], or `fallback` when
  /// absent; throws `Error` naming the spec otherwise. Marks the key used.
  long long integer_option(const std::string& key, long long fallback, long long minimum,
                           long long maximum) const;
  /// Option `key` as a number, or `fallback`.
  double number_option(const std::string& key, double fallback) const;
  /// Option `key` as text, or `fallback`.
  std::string text_option(const std::string& key, const std::string& fallback) const;
  /// Throws `Error` naming any option no getter asked for.
  void reject_unused_options() const;

 private:
  mutable std::map<std::string, bool> used_;
};

ScorerSpec parse_scorer_spec(std::string_view text);

/// FeaturizerOptions::word_buckets for a spec's `blocks` option (gbt, kNN):
/// 0 for blocks=1, the default (one vector); half of `buckets` for blocks=2
/// (words and characters in blocks of their own, weighted alike).
std::uint32_t word_buckets_for(const ScorerSpec& spec, std::uint32_t buckets);

/// Parses a whole number in [minimum, maximum]; throws naming `what`.
long long parse_integer(const std::string& text, long long minimum, long long maximum,
                        const std::string& what);

std::unique_ptr<TrainableScorer> make_mlp_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_tlite_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_knn_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_gbt_scorer(const ScorerSpec& spec);
std::unique_ptr<TrainableScorer> make_linear_scorer(const ScorerSpec& spec);
/// "stack:<member>+<member>...": parsed by hand, since members hold commas.
std::unique_ptr<TrainableScorer> make_stack_scorer(std::string_view spec);
/// A member of a stack spec: its scorer spec, with "/soft" when not BCE.
std::string member_text(const CandidateScorer& candidate);
/// The spec of a stack of `members`.
std::string stack_spec(const std::vector<CandidateScorer>& members);
/// Out-of-fold predictions of a stack: the mean of its members' calibrated
/// quality, and of their output tokens where predicted (NaN where none is).
OutOfFold mean_of_calibrated(const std::vector<const OutOfFold*>& members,
                             const std::vector<const Calibration*>& calibrations);
/// The standard error of the mean of `values` (NaNs skipped; 0 for fewer
/// than two).
double standard_error(const std::vector<double>& values);
/// How far `other`'s AIQ is below `best`'s, fold by fold: the mean of the
/// folds' differences and its standard error (known with two folds or more
/// where both have a figure). The folds are the same rows for every
/// candidate, so their differences are what varies.
struct PairedGap {
  bool known = false;
  double mean = 0.0;
  double standard_error = 0.0;
};
PairedGap paired_gap(const CandidateFigures& best, const CandidateFigures& other);
/// Which candidate `train_best` trains, by the one-standard-error rule
/// (Breiman et al. 1984; Hastie, Tibshirani and Friedman, section 7.10),
/// paired by fold: the fewest members (a single scorer counts one, a stack
/// its members) among the best (by pooled AIQ) and the candidates whose
/// paired gap to it is at most its standard error; of those, the highest
/// AIQ. A stack is trained only where its gain over a simpler candidate
/// holds across the folds, not where one draw of rows favours it. Without
/// fold figures (older records) only the best qualifies. `members[i]` is
/// empty for a single scorer.
std::size_t one_standard_error_choice(const std::vector<CandidateFigures>& candidates,
                                      const std::vector<std::vector<std::size_t>>& members);
/// The pick calibration (TrainableScorer::set_pick_calibration) for a
/// scorer whose calibrated out-of-fold predictions are `calibrated` (rows x
/// experts, each fold's rows calibrated on the other folds), `fold` giving
/// each row's fold: an isotonic map of the top pick's true quality on its
/// prediction over `set`'s complete rows, kept only where it lowers the top
/// picks' ECE with each fold's picks mapped by a map of the other folds';
/// else none (empty).
Calibration pick_calibration_if_it_helps(const Eigen::MatrixXf& calibrated, const TrainingSet& set,
                                         const std::vector<int>& fold, int folds);
/// Gives a stack (made by make_stack_scorer) its members' calibrations, so
/// training it needs no cross-validation of its own.
void set_member_calibrations(TrainableScorer& stack, std::vector<Calibration> calibrations);

/// The workspace one scoring call works in: the caller's, or, when the
/// caller gave none, one `scorer.make_workspace()` makes for this call
/// alone, held by `local`. `Workspace` is the type `make_workspace` makes.
template <class Workspace>
Workspace& workspace_for_call(const Scorer& scorer, ScorerWorkspace* given,
                              std::unique_ptr<ScorerWorkspace>& local) {
  if (given == nullptr) {
    local = scorer.make_workspace();
    given = local.get();
  }
  return static_cast<Workspace&>(*given);
}

class SparseProjection;

/// A scorer that reads a prompt only through `Featurizer::featurize` (the
/// MLP, kNN and gbt): a stack of such scorers with the same featurizer
/// settings featurizes each prompt once for all of them.
class FeaturizedScorer {
 public:
  virtual ~FeaturizedScorer() = default;
  virtual const FeaturizerOptions& featurizer_options() const = 0;
  /// The uncalibrated scores of `count` prompts from their features, made
  /// with `featurizer_options()`: what `score_uncalibrated` gives for the
  /// prompts themselves.
  virtual void score_featurized(const SparseFeatures* features, std::size_t count, ScoreBatch& out,
                                ScorerWorkspace* workspace) const = 0;
  /// The dense projection the scorer reads the features through (gbt, kNN
  /// in dense mode), or null. Members of a stack trained on the same rows
  /// with the same settings fit equal projections (the default's kNN and
  /// gbt do), and the stack then projects each prompt once for both.
  virtual const SparseProjection* projection() const { return nullptr; }
  /// score_featurized, given each prompt's projection by `projection()`
  /// already made (`count` rows of its dims, row-major).
  virtual void score_projected(const SparseFeatures* features, const float* projected,
                               std::size_t count, ScoreBatch& out,
                               ScorerWorkspace* workspace) const {
    (void)projected;  // a scorer without a projection has no use for it
    score_featurized(features, count, out, workspace);
  }
};

/// True when two featurizers give the same features for every prompt.
bool same_featurizer(const FeaturizerOptions& a, const FeaturizerOptions& b);

/// Writes the featurizer.* fields of a model file.
void write_featurizer_options(ModelWriter& out, const FeaturizerOptions& options);
/// Reads them back, with at most `max_buckets` buckets; throws naming the field.
FeaturizerOptions read_featurizer_options(const ModelReader& in, std::uint32_t max_buckets);
/// Throws naming featurizer.word_buckets unless it is what a `blocks`
/// option makes (word_buckets_for): 0, or half of the buckets.
void check_blocks(const ModelReader& in, const FeaturizerOptions& f);

/// Throws `Error` (`Misuse`) naming the first field of `options` that
/// `validate_train_options` refuses.
void check_train_options(const TrainOptions& options);

}  // namespace detail
TOROUTER_END_NAMESPACE
