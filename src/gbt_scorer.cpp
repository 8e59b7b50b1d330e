// The gbt scorer: gradient-boosted regression trees per expert over a dense
// view of the prompt, the router that a careful Python team builds with
// XGBoost on an SVD of TF-IDF, done in C++ without a vocabulary.
//
//   x        = [SparseProjection(hashed features) (dims), numeric features (10)]
//   quality  = clamp(forest_e(x), 0, 1)                 one forest per expert
//   tokens   = max(0, exp(forest'_e(x)) - 1)            where the data has lengths
//
// The trees are hand-written (gbdt.hpp) rather than libxgboost's: scoring
// walks complete trees stored in the model file with no allocation and no
// optional dependency, so every build, the default one included, can load
// the default router; training is the same histogram method as XGBoost's
// "hist", and docs/RESULTS.md puts the two side by side.
//
// Spec grammar (canonical form first; `spec()` returns it):
//   gbt[,dims=D][,buckets=N][,blocks=2][,depth=L][,eta=R][,bins=B][,leaf=M][,rounds=T]
//   dims     projection width, 1..512 (default 32)
//   buckets  featurizer buckets, 16..2^20 (default 2^14)
//   blocks   1 (default): word and character n-grams in one vector; 2: in
//            two halves of the buckets, each weighted alike
//            (FeaturizerOptions::word_buckets), as two TF-IDF blocks
//   depth    levels per tree, 1..10 (default 4)
//   eta      learning rate, (0, 1] (default 0.05)
//   bins     bins per feature, 2..255 (default 64)
//   leaf     fewest rows per leaf, 1..100000 (default 10)
//   rounds   most trees per expert, 1..100000 (default 2000; early stopping
//            on TrainOptions::validation_fraction of the rows picks fewer)
//   refit    1 (default): once early stopping has sized each forest, train
//            it again on every row, held-out ones included; 0: keep the
//            forests trained without them
// The canonical form is "gbt" followed by the options that differ from
// their defaults, in the order above.
//
// Model file ("gbt" kind). Fields: featurizer.*, gbt.dims, gbt.depth,
// gbt.predicts_tokens, gbt.quality.base and gbt.tokens.base (one per expert),
// gbt.quality.trees and gbt.tokens.trees (trees per expert). Tensors:
//   gbt.idf [buckets]; gbt.projection [buckets, dims]
//   gbt.quality.feature, gbt.quality.threshold [total trees, 2^depth - 1]
//   gbt.quality.leaf [total trees, 2^depth]; the same for gbt.tokens.*
// and gbt.tokens.known (per expert, 1 where its rows recorded a length).
// (the experts' trees one after another, in expert order).
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <numeric>
#include <random>

#include "gbdt.hpp"
#include "scorers.hpp"
#include "sparse_projection.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "trainer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

constexpr long long kDefaultDims = 32;
constexpr long long kDefaultBuckets = 1 << 14;
constexpr long long kDefaultDepth = 4;
constexpr double kDefaultEta = 0.05;
constexpr long long kDefaultBins = 64;
constexpr long long kDefaultLeaf = 10;
constexpr long long kDefaultRounds = 2000;
constexpr float kMaxLeaf = 1e4f;

struct GbtWorkspace : ScorerWorkspace {
  SparseFeatures features;
  std::vector<float> x;
};

class GbtScorer : public TrainableScorer, public FeaturizedScorer {
 public:
  explicit GbtScorer(const ScorerSpec& spec) {
    dims_ = static_cast<int>(spec.integer_option("dims", kDefaultDims, 1, 512));
    featurizer_options_.num_buckets =
        static_cast<std::uint32_t>(spec.integer_option("buckets", kDefaultBuckets, 16, 1 << 20));
    featurizer_options_.word_buckets = word_buckets_for(spec, featurizer_options_.num_buckets);
    boost_.max_depth = static_cast<int>(spec.integer_option("depth", kDefaultDepth, 1, 10));
    boost_.learning_rate = spec.number_option("eta", kDefaultEta);
    if (!(boost_.learning_rate > 0 && boost_.learning_rate <= 1)) {
      throw Error(
          fmt::format("scorer spec \"{}\", option eta: expected a number in (0, 1]", spec.text));
    }
    boost_.max_bins = static_cast<int>(spec.integer_option("bins", kDefaultBins, 2, 255));
    boost_.min_rows_per_leaf =
        static_cast<int>(spec.integer_option("leaf", kDefaultLeaf, 1, 100000));
    boost_.max_rounds = static_cast<int>(spec.integer_option("rounds", kDefaultRounds, 1, 100000));
    refit_ = spec.integer_option("refit", 1, 0, 1) == 1;
    if (static_cast<std::uint32_t>(dims_) > featurizer_options_.num_buckets) {
      throw Error(fmt::format("scorer spec \"{}\": dims ({}) cannot exceed buckets ({})", spec.text,
                              dims_, featurizer_options_.num_buckets));
    }
    if (!spec.argument.empty()) {
      throw Error(
          fmt::format("scorer spec \"{}\": gbt takes options only (gbt,depth=4,...)", spec.text));
    }
    spec_ = canonical_spec();
    featurizer_ = Featurizer(featurizer_options_);
  }

  std::string_view kind() const override { return "gbt"; }
  std::string spec() const override { return spec_; }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    auto w = std::make_unique<GbtWorkspace>();
    w->x.resize(input_width());
    return w;
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                          ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<GbtWorkspace>(*this, workspace, local);
    out.resize(count, quality_.size());
    for (std::size_t i = 0; i < count; ++i) {
      featurizer_.featurize(prompts[i], w->features);
      score_row(w->features, nullptr, i, out, *w);
    }
  }

  const FeaturizerOptions& featurizer_options() const override { return featurizer_options_; }

  void score_featurized(const SparseFeatures* features, std::size_t count, ScoreBatch& out,
                        ScorerWorkspace* workspace) const override {
    score_projected(features, nullptr, count, out, workspace);
  }

  const SparseProjection* projection() const override { return &projection_; }

  // `projected` may be null: each prompt is then projected here.
  void score_projected(const SparseFeatures* features, const float* projected, std::size_t count,
                       ScoreBatch& out, ScorerWorkspace* workspace) const override {
    std::unique_ptr<ScorerWorkspace> local;
    auto* w = &workspace_for_call<GbtWorkspace>(*this, workspace, local);
    out.resize(count, quality_.size());
    const auto dims = static_cast<std::size_t>(dims_);
    for (std::size_t i = 0; i < count; ++i) {
      score_row(features[i], projected ? projected + i * dims : nullptr, i, out, *w);
    }
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override {
    if (!(options.validation_fraction >= 0 && options.validation_fraction < 1)) {
      throw Error(fmt::format("{}: validation_fraction must be in [0, 1), got {}", spec_,
                              options.validation_fraction));
    }
    std::vector<SparseFeatures> rows(set.rows());
    SparseFeatures features;
    for (std::size_t i = 0; i < set.rows(); ++i) {
      featurizer_.featurize(set.prompts[i], features);
      rows[i].indices = features.indices;
      rows[i].values = features.values;
      rows[i].dense = features.dense;
    }
    // The projection is unsupervised: fitting it on every row, held-out
    // ones included, leaks no target.
    projection_ = SparseProjection::fit(rows, featurizer_options_.num_buckets, dims_, options.seed,
                                        featurizer_options_.word_buckets);
    FeatureMatrix x = FeatureMatrix::Zero(static_cast<Eigen::Index>(set.rows()),
                                          static_cast<Eigen::Index>(input_width()));
    for (std::size_t i = 0; i < set.rows(); ++i)
      inputs(rows[i], x.row(static_cast<Eigen::Index>(i)).data());

    std::vector<std::size_t> train, validation;
    split_validation_rows(set.rows(), options, train, validation);
    BoostOptions boost = boost_;
    boost.seed = options.seed;
    boost.threads = options.threads;
    const BinnedFeatures binned = bin_features(x, train, boost.max_bins);

    const Eigen::MatrixXf quality = quality_or_nan(set);
    std::vector<ForestReport> reports, token_reports;
    quality_ = train_forests(binned, quality, train, validation, boost, &reports);
    const TrainReport trained = report(set, x, train, validation, reports);
    predicts_tokens_ = set.has_output_tokens();
    tokens_known_ = experts_with_lengths(set);
    tokens_.clear();
    const Eigen::MatrixXf log_tokens = set.output_tokens.array().log1p();
    if (predicts_tokens_) {
      tokens_ = train_forests(binned, log_tokens, train, validation, boost, &token_reports);
    }
    if (refit_ && !validation.empty()) {
      // Early stopping chose each forest's size; the final fit learns from
      // the held-out rows too (a tenth of the data, and of rare tasks).
      std::vector<std::size_t> all(set.rows());
      std::iota(all.begin(), all.end(), 0);
      quality_ = refit_forests(binned, quality, all, reports, boost);
      if (predicts_tokens_) tokens_ = refit_forests(binned, log_tokens, all, token_reports, boost);
    }
    return trained;
  }

  void write_model(ModelWriter& out) const override {
    write_featurizer_options(out, featurizer_options_);
    out.set("gbt.dims", dims_);
    out.set("gbt.depth", boost_.max_depth);
    out.set("gbt.predicts_tokens", predicts_tokens_);
    out.set("gbt.tokens.known", std::vector<double>(tokens_known_.begin(), tokens_known_.end()));
    out.add_tensor("gbt.idf", {static_cast<std::int64_t>(projection_.idf().size())},
                   projection_.idf());
    out.add_tensor("gbt.projection", projection_.table());
    write_forests(out, "gbt.quality", quality_);
    if (predicts_tokens_) write_forests(out, "gbt.tokens", tokens_);
  }

  void read_model(const ModelReader& in) override {
    featurizer_options_ = read_featurizer_options(in, 1u << 20);
    check_blocks(in, featurizer_options_);
    try {
      featurizer_ = Featurizer(featurizer_options_);
    } catch (const Error& e) {
      throw Error(in.where() + e.what());
    }
    dims_ = static_cast<int>(in.integer("gbt.dims", 1, 512));
    boost_.max_depth = static_cast<int>(in.integer("gbt.depth", 1, 10));
    predicts_tokens_ = in.flag("gbt.predicts_tokens");
    spec_ = in.text("scorer.spec");
    const auto buckets = static_cast<std::int64_t>(featurizer_options_.num_buckets);
    const ModelTensor& idf = in.tensor("gbt.idf", {buckets});
    SparseProjection::Table table;
    in.tensor("gbt.projection", buckets, dims_, table);
    projection_ = SparseProjection(idf.values, std::move(table), featurizer_options_.word_buckets);
    quality_ = read_forests(in, "gbt.quality");
    tokens_.clear();
    if (predicts_tokens_) tokens_ = read_forests(in, "gbt.tokens");
    // Files written before the field existed predict a length for every expert.
    const std::vector<double> all_known(expert_names().size(), 1.0);
    const auto& known = in.has("gbt.tokens.known") ? in.numbers("gbt.tokens.known") : all_known;
    if (known.size() != expert_names().size()) {
      throw Error(in.where() + "field \"gbt.tokens.known\": one flag per expert expected");
    }
    tokens_known_.clear();
    for (const double k : known) tokens_known_.push_back(predicts_tokens_ && k != 0);
  }

 private:
  std::size_t input_width() const { return static_cast<std::size_t>(dims_) + kDenseFeatureCount; }

  // Row `row` of `out` from one prompt's features, and their projection
  // when it is already made (else null).
  void score_row(const SparseFeatures& features, const float* projected, std::size_t row,
                 ScoreBatch& out, GbtWorkspace& w) const {
    w.x.resize(input_width());
    inputs(features, w.x.data(), projected);
    const auto r = static_cast<Eigen::Index>(row);
    for (std::size_t e = 0; e < quality_.size(); ++e) {
      const auto col = static_cast<Eigen::Index>(e);
      out.quality(r, col) = std::clamp(quality_[e].predict(w.x.data()), 0.0f, 1.0f);
      out.output_tokens(r, col) = tokens_known_[e]
                                      ? std::max(0.0f, std::expm1(tokens_[e].predict(w.x.data())))
                                      : std::numeric_limits<float>::quiet_NaN();
    }
  }

  void inputs(const SparseFeatures& features, float* x, const float* projected = nullptr) const {
    if (projected != nullptr) {
      std::copy(projected, projected + dims_, x);
    } else {
      projection_.project(features, x);
    }
    std::copy(features.dense.begin(), features.dense.end(), x + dims_);
  }

  std::string canonical_spec() const {
    std::string s = "gbt";
    if (dims_ != kDefaultDims) s += fmt::format(",dims={}", dims_);
    if (featurizer_options_.num_buckets != kDefaultBuckets) {
      s += fmt::format(",buckets={}", featurizer_options_.num_buckets);
    }
    if (featurizer_options_.word_buckets != 0) s += ",blocks=2";
    if (boost_.max_depth != kDefaultDepth) s += fmt::format(",depth={}", boost_.max_depth);
    if (boost_.learning_rate != kDefaultEta) s += fmt::format(",eta={}", boost_.learning_rate);
    if (boost_.max_bins != kDefaultBins) s += fmt::format(",bins={}", boost_.max_bins);
    if (boost_.min_rows_per_leaf != kDefaultLeaf)
      s += fmt::format(",leaf={}", boost_.min_rows_per_leaf);
    if (boost_.max_rounds != kDefaultRounds) s += fmt::format(",rounds={}", boost_.max_rounds);
    if (!refit_) s += ",refit=0";
    return s;
  }

  TrainReport report(const TrainingSet& set, const FeatureMatrix& x,
                     const std::vector<std::size_t>& train,
                     const std::vector<std::size_t>& validation,
                     const std::vector<ForestReport>& forests) const {
    TrainReport r;
    r.train_rows = train.size();
    r.validation_rows = validation.size();
    double mse = 0.0;
    for (const auto& f : forests) {
      r.epochs_run = std::max(r.epochs_run, f.rounds_run);
      r.best_epoch = std::max(r.best_epoch, f.rounds_kept);
      mse += f.validation_mse / static_cast<double>(forests.size());
    }
    r.validation_loss = mse;
    Eigen::MatrixXf scores(static_cast<Eigen::Index>(validation.size()),
                           static_cast<Eigen::Index>(quality_.size()));
    for (std::size_t i = 0; i < validation.size(); ++i) {
      const float* row = x.row(static_cast<Eigen::Index>(validation[i])).data();
      for (std::size_t e = 0; e < quality_.size(); ++e) {
        scores(static_cast<Eigen::Index>(i), static_cast<Eigen::Index>(e)) =
            quality_[e].predict(row);
      }
    }
    r.validation_quality = validation.empty() ? 0.0 : routed_quality(set, validation, scores);
    return r;
  }

  static void write_forests(ModelWriter& out, const std::string& prefix,
                            const std::vector<Forest>& forests) {
    std::vector<double> base, trees;
    std::vector<float> feature, threshold, leaf;
    for (const Forest& f : forests) {
      base.push_back(f.base);
      trees.push_back(static_cast<double>(f.trees()));
      feature.insert(feature.end(), f.feature.begin(), f.feature.end());
      threshold.insert(threshold.end(), f.threshold.begin(), f.threshold.end());
      leaf.insert(leaf.end(), f.leaf.begin(), f.leaf.end());
    }
    const auto depth = forests.empty() ? 0 : forests.front().depth;
    const std::int64_t internal = (std::int64_t{1} << depth) - 1;
    const std::int64_t total = static_cast<std::int64_t>(leaf.size()) >> depth;
    out.set(prefix + ".base", std::move(base));
    out.set(prefix + ".trees", std::move(trees));
    out.add_tensor(prefix + ".feature", {total, internal}, std::move(feature));
    out.add_tensor(prefix + ".threshold", {total, internal}, std::move(threshold));
    out.add_tensor(prefix + ".leaf", {total, internal + 1}, std::move(leaf));
  }

  std::vector<Forest> read_forests(const ModelReader& in, const std::string& prefix) const;

  int dims_ = static_cast<int>(kDefaultDims);
  FeaturizerOptions featurizer_options_;
  Featurizer featurizer_;
  BoostOptions boost_;
  SparseProjection projection_;
  std::vector<Forest> quality_, tokens_;
  bool predicts_tokens_ = false;
  std::vector<bool> tokens_known_;
  bool refit_ = true;
  std::string spec_;
};

std::vector<Forest> GbtScorer::read_forests(const ModelReader& in,
                                            const std::string& prefix) const {
  const std::size_t experts = expert_names().size();
  const auto& base = in.numbers(prefix + ".base");
  const auto& trees = in.numbers(prefix + ".trees");
  if (base.size() != experts || trees.size() != experts) {
    throw Error(fmt::format("{}fields \"{}.base\" and \"{}.trees\": one value per expert expected",
                            in.where(), prefix, prefix));
  }
  std::int64_t total = 0;
  for (const double t : trees) {
    if (t < 0 || t != std::floor(t) || t > 1e7) {
      throw Error(fmt::format("{}field \"{}.trees\": bad tree count", in.where(), prefix));
    }
    total += static_cast<std::int64_t>(t);
  }
  const int depth = boost_.max_depth;
  const std::int64_t internal = (std::int64_t{1} << depth) - 1;
  const auto& feature = in.tensor(prefix + ".feature", {total, internal}).values;
  const auto& threshold = in.tensor(prefix + ".threshold", {total, internal}).values;
  const auto& leaf = in.tensor(prefix + ".leaf", {total, internal + 1}).values;
  const auto width = static_cast<float>(input_width());
  std::vector<Forest> forests(experts);
  std::size_t node = 0, leaves = 0;
  for (std::size_t e = 0; e < experts; ++e) {
    Forest& f = forests[e];
    f.depth = depth;
    f.base = static_cast<float>(base[e]);
    const auto count = static_cast<std::size_t>(trees[e]);
    for (std::size_t i = 0; i < count * f.internal_per_tree(); ++i, ++node) {
      if (!(feature[node] >= 0 && feature[node] < width &&
            feature[node] == std::floor(feature[node]))) {
        throw Error(fmt::format("{}tensor \"{}.feature\": value {} is not a feature index below {}",
                                in.where(), prefix, feature[node], width));
      }
      f.feature.push_back(static_cast<std::int32_t>(feature[node]));
      f.threshold.push_back(threshold[node]);
    }
    f.leaf.assign(leaf.begin() + static_cast<long>(leaves),
                  leaf.begin() + static_cast<long>(leaves + count * f.leaves_per_tree()));
    // Leaves are shrunk steps of a quality or a log length; a huge one can
    // only come from a damaged file, and sums of them could overflow.
    for (const float v : f.leaf) {
      if (std::abs(v) > kMaxLeaf) {
        throw Error(fmt::format("{}tensor \"{}.leaf\": value {} is beyond +-{}", in.where(), prefix,
                                v, kMaxLeaf));
      }
    }
    leaves += count * f.leaves_per_tree();
  }
  return forests;
}

}  // namespace

std::unique_ptr<TrainableScorer> make_gbt_scorer(const ScorerSpec& spec) {
  return std::make_unique<GbtScorer>(spec);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
