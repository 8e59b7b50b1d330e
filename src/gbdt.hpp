// Internal: gradient-boosted regression trees, hand-written for the gbt
// scorer (see gbt_scorer.cpp for why not libxgboost).
//
// Training is the histogram method of LightGBM and XGBoost's "hist": every
// feature is cut into at most 255 quantile bins once, and a node's best
// split is found from per-bin sums of the gradient. The loss is squared
// error (each row's gradient is prediction minus target, its hessian 1), the
// leaf value is learning_rate * sum(target - prediction) / (rows + l2).
// Each tree sees a random share of the rows and of the features; each
// target's forest stops when its loss on held-out rows has not improved
// for `patience` rounds and keeps the best round's trees.
//
// Trees are stored complete (every internal node of every level present), so
// scoring walks `depth` comparisons per tree with no branches on the layout:
// a node that did not split sends every row left (threshold FLT_MAX).
#pragma once

#include <Eigen/Core>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// Settings of boosting; the defaults work on the shared datasets.
struct BoostOptions {
  /// Most trees per target.
  int max_rounds = 2000;
  /// Levels of every tree (1..10).
  int max_depth = 4;
  /// Shrinkage of each tree's leaves.
  double learning_rate = 0.05;
  /// L2 penalty on leaf values, in rows.
  double l2 = 1.0;
  /// Fewest training rows a leaf may hold.
  int min_rows_per_leaf = 10;
  /// Share of the rows each tree learns from.
  double row_subsample = 0.8;
  /// Share of the features each tree may split on.
  double feature_subsample = 0.8;
  /// Rounds without a better held-out loss before a forest stops.
  int patience = 50;
  /// Most bins per feature (2..255).
  int max_bins = 64;
  std::uint64_t seed = 1;
  /// Threads; forests of different targets train in parallel.
  int threads = 1;
};

/// Rows x features matrix of the inputs, row-major.
using FeatureMatrix = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Each feature's quantile cut points, and the inputs as bin numbers.
struct BinnedFeatures {
  /// Per feature, ascending upper edges: a value v falls in the first bin b
  /// with v <= edges[b], or in bin edges.size() past the last.
  std::vector<std::vector<float>> edges;
  /// rows x features bin numbers, row-major.
  std::vector<std::uint8_t> bins;
  std::size_t rows = 0;
  std::size_t features = 0;
};

/// Cuts every column of `x` into at most `max_bins` bins by its quantiles
/// over `rows` (the training rows), then bins every row of `x`.
BinnedFeatures bin_features(const FeatureMatrix& x, const std::vector<std::size_t>& rows,
                            int max_bins);

/// The trees of one target, complete binary trees of one depth.
struct Forest {
  int depth = 0;
  /// Prediction before any tree: the mean target of the training rows.
  float base = 0.0f;
  /// Per tree, its 2^depth - 1 internal nodes in level order (node i has
  /// children 2i+1 and 2i+2): the feature compared and the threshold; a row
  /// goes left when x[feature] <= threshold.
  std::vector<std::int32_t> feature;
  std::vector<float> threshold;
  /// Per tree, its 2^depth leaf values (already scaled by the learning rate).
  std::vector<float> leaf;

  std::size_t internal_per_tree() const { return (std::size_t{1} << depth) - 1; }
  std::size_t leaves_per_tree() const { return std::size_t{1} << depth; }
  std::size_t trees() const { return depth == 0 ? 0 : leaf.size() / leaves_per_tree(); }

  /// The prediction for one row of features.
  float predict(const float* x) const {
    const std::size_t internal = internal_per_tree();
    const std::size_t leaves = leaves_per_tree();
    float sum = base;
    const std::size_t count = trees();
    for (std::size_t t = 0; t < count; ++t) {
      const std::int32_t* f = feature.data() + t * internal;
      const float* th = threshold.data() + t * internal;
      std::size_t node = 0;
      for (int d = 0; d < depth; ++d) node = 2 * node + 1 + (x[f[node]] > th[node] ? 1 : 0);
      sum += leaf[t * leaves + (node - internal)];
    }
    return sum;
  }
};

/// What training one forest did.
struct ForestReport {
  int rounds_kept = 0;
  int rounds_run = 0;
  /// Mean squared error on the held-out rows at the kept round.
  double validation_mse = 0.0;
};

/// Trains one forest per column of `targets` (NaN: no target for that row)
/// on `train_rows`, stopping each on `validation_rows` (none: every round up
/// to max_rounds is kept). Deterministic for a seed, whatever the threads.
std::vector<Forest> train_forests(const BinnedFeatures& binned, const Eigen::MatrixXf& targets,
                                  const std::vector<std::size_t>& train_rows,
                                  const std::vector<std::size_t>& validation_rows,
                                  const BoostOptions& options,
                                  std::vector<ForestReport>* reports = nullptr);

/// Trains one forest per column on `rows` with exactly `rounds[column]`
/// trees (at least one), as early stopping in `train_forests` found them:
/// the final fit on every row, held-out ones included.
std::vector<Forest> refit_forests(const BinnedFeatures& binned, const Eigen::MatrixXf& targets,
                                  const std::vector<std::size_t>& rows,
                                  const std::vector<ForestReport>& rounds,
                                  const BoostOptions& options);

}  // namespace detail
TOROUTER_END_NAMESPACE
