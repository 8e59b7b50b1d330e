// Histogram gradient boosting of squared-error regression trees; see gbdt.hpp.
#include "gbdt.hpp"

#include <algorithm>
#include <cmath>
#include <exception>
#include <limits>
#include <numeric>
#include <random>
#include <thread>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

// A node that did not split sends every row left. The largest float rather
// than +inf, so the threshold can be stored in a model file (which refuses
// non-finite values); every feature is finite and compares below it.
constexpr float kNeverRight = std::numeric_limits<float>::max();

// Sums of one bin: gradient and rows (each row's hessian is 1).
struct BinSum {
  double gradient = 0.0;
  double rows = 0.0;
};

struct Split {
  double gain = 0.0;
  int feature = -1;
  int bin = -1;
};

// Grows one tree at a time over the binned rows.
class TreeBuilder {
 public:
  TreeBuilder(const BinnedFeatures& binned, const BoostOptions& options)
      : binned_(binned), options_(options) {
    offsets_.resize(binned.features + 1, 0);
    for (std::size_t f = 0; f < binned.features; ++f) {
      offsets_[f + 1] = offsets_[f] + binned.edges[f].size() + 1;
    }
  }

  // Grows a tree on `rows` (reordered in place) whose gradients are
  // `gradient[row]`, splitting only on `allowed` features; appends it to
  // `forest` and leaves each node's split bin in `split_bins()`.
  void grow(std::vector<std::uint32_t>& rows, const std::vector<float>& gradient,
            const std::vector<int>& allowed, Forest& forest) {
    const std::size_t internal = forest.internal_per_tree();
    const std::size_t nodes = internal + forest.leaves_per_tree();
    begin_.assign(nodes, 0);
    end_.assign(nodes, 0);
    hist_.resize(nodes);
    split_bin_.assign(internal, -1);
    end_[0] = rows.size();
    build_histogram(rows, 0, gradient, allowed);
    const std::size_t first_feature = forest.feature.size();
    forest.feature.resize(first_feature + internal, 0);
    forest.threshold.resize(first_feature + internal, kNeverRight);
    for (std::size_t node = 0; node < internal; ++node) {
      const Split split = best_split(node, allowed);
      if (split.feature >= 0) {
        forest.feature[first_feature + node] = split.feature;
        forest.threshold[first_feature + node] =
            binned_.edges[static_cast<std::size_t>(split.feature)]
                         [static_cast<std::size_t>(split.bin)];
        split_bin_[node] = split.bin;
      }
      divide(node, split, rows, gradient, allowed);
    }
    for (std::size_t leaf = internal; leaf < nodes; ++leaf) {
      double sum = 0.0;
      for (std::size_t i = begin_[leaf]; i < end_[leaf]; ++i) sum += gradient[rows[i]];
      const double count = static_cast<double>(end_[leaf] - begin_[leaf]);
      forest.leaf.push_back(
          static_cast<float>(-options_.learning_rate * sum / (count + options_.l2)));
    }
  }

  const std::vector<int>& split_bins() const { return split_bin_; }

 private:
  void build_histogram(const std::vector<std::uint32_t>& rows, std::size_t node,
                       const std::vector<float>& gradient, const std::vector<int>& allowed) {
    std::vector<BinSum>& hist = hist_[node];
    hist.assign(offsets_.back(), BinSum{});
    const std::size_t features = binned_.features;
    for (std::size_t i = begin_[node]; i < end_[node]; ++i) {
      const std::uint32_t row = rows[i];
      const std::uint8_t* bins = binned_.bins.data() + std::size_t{row} * features;
      const double g = gradient[row];
      for (const int f : allowed) {
        BinSum& sum = hist[offsets_[static_cast<std::size_t>(f)] + bins[f]];
        sum.gradient += g;
        sum.rows += 1.0;
      }
    }
  }

  Split best_split(std::size_t node, const std::vector<int>& allowed) const {
    Split best;
    const double total_rows = static_cast<double>(end_[node] - begin_[node]);
    const double min_rows = options_.min_rows_per_leaf;
    if (total_rows < 2 * min_rows || allowed.empty()) return best;
    const std::vector<BinSum>& hist = hist_[node];
    double total = 0.0;
    const std::size_t first = offsets_[static_cast<std::size_t>(allowed[0])];
    for (std::size_t b = first; b < offsets_[static_cast<std::size_t>(allowed[0]) + 1]; ++b) {
      total += hist[b].gradient;
    }
    const double l2 = options_.l2;
    const double parent = total * total / (total_rows + l2);
    for (const int f : allowed) {
      const std::size_t begin = offsets_[static_cast<std::size_t>(f)];
      const std::size_t bins = offsets_[static_cast<std::size_t>(f) + 1] - begin;
      double left_g = 0.0, left_n = 0.0;
      for (std::size_t b = 0; b + 1 < bins; ++b) {
        left_g += hist[begin + b].gradient;
        left_n += hist[begin + b].rows;
        const double right_n = total_rows - left_n;
        if (left_n < min_rows) continue;
        if (right_n < min_rows) break;
        const double right_g = total - left_g;
        const double gain =
            left_g * left_g / (left_n + l2) + right_g * right_g / (right_n + l2) - parent;
        if (gain > best.gain + 1e-12) best = Split{gain, f, static_cast<int>(b)};
      }
    }
    return best;
  }

  // Splits node's rows between its children and gives each its histogram:
  // the smaller child's is counted, the larger's is the parent's minus it.
  void divide(std::size_t node, const Split& split, std::vector<std::uint32_t>& rows,
              const std::vector<float>& gradient, const std::vector<int>& allowed) {
    const std::size_t left = 2 * node + 1, right = 2 * node + 2;
    std::size_t middle = end_[node];
    if (split.feature >= 0) {
      const std::size_t features = binned_.features;
      const auto f = static_cast<std::size_t>(split.feature);
      const auto goes_left = [&](std::uint32_t row) {
        return binned_.bins[std::size_t{row} * features + f] <= split.bin;
      };
      middle = static_cast<std::size_t>(
          std::stable_partition(rows.begin() + static_cast<long>(begin_[node]),
                                rows.begin() + static_cast<long>(end_[node]), goes_left) -
          rows.begin());
    }
    begin_[left] = begin_[node];
    end_[left] = middle;
    begin_[right] = middle;
    end_[right] = end_[node];
    if (left >= split_bin_.size()) return;  // leaves need no histogram
    if (split.feature < 0) {
      std::swap(hist_[left], hist_[node]);
      hist_[right].assign(offsets_.back(), BinSum{});
      return;
    }
    const bool left_smaller = middle - begin_[node] <= end_[node] - middle;
    const std::size_t small = left_smaller ? left : right, large = left_smaller ? right : left;
    build_histogram(rows, small, gradient, allowed);
    hist_[large].resize(offsets_.back());
    for (std::size_t b = 0; b < offsets_.back(); ++b) {
      hist_[large][b].gradient = hist_[node][b].gradient - hist_[small][b].gradient;
      hist_[large][b].rows = hist_[node][b].rows - hist_[small][b].rows;
    }
  }

  const BinnedFeatures& binned_;
  const BoostOptions& options_;
  std::vector<std::size_t> offsets_;
  std::vector<std::size_t> begin_, end_;
  std::vector<std::vector<BinSum>> hist_;
  std::vector<int> split_bin_;
};

// The leaf a binned row reaches in the forest's last tree.
std::size_t last_tree_leaf(const Forest& forest, const std::vector<int>& split_bins,
                           const BinnedFeatures& binned, std::size_t row) {
  const std::size_t internal = forest.internal_per_tree();
  const std::size_t first = forest.feature.size() - internal;
  const std::uint8_t* bins = binned.bins.data() + row * binned.features;
  std::size_t node = 0;
  for (int d = 0; d < forest.depth; ++d) {
    const int bin = split_bins[node];
    const bool right = bin >= 0 && bins[forest.feature[first + node]] > bin;
    node = 2 * node + 1 + (right ? 1 : 0);
  }
  return forest.leaf.size() - forest.leaves_per_tree() + (node - internal);
}

std::vector<std::size_t> rows_with_target(const Eigen::MatrixXf& targets, Eigen::Index column,
                                          const std::vector<std::size_t>& rows) {
  std::vector<std::size_t> kept;
  for (const std::size_t r : rows) {
    if (!std::isnan(targets(static_cast<Eigen::Index>(r), column))) kept.push_back(r);
  }
  return kept;
}

double mean_squared_error(const Eigen::MatrixXf& targets, Eigen::Index column,
                          const std::vector<std::size_t>& rows,
                          const std::vector<float>& predicted) {
  double sum = 0.0;
  for (const std::size_t r : rows) {
    const double diff = predicted[r] - targets(static_cast<Eigen::Index>(r), column);
    sum += diff * diff;
  }
  return rows.empty() ? 0.0 : sum / static_cast<double>(rows.size());
}

Forest train_forest(const BinnedFeatures& binned, const Eigen::MatrixXf& targets,
                    Eigen::Index column, const std::vector<std::size_t>& all_train,
                    const std::vector<std::size_t>& all_validation, const BoostOptions& options,
                    ForestReport& report) {
  const std::vector<std::size_t> train = rows_with_target(targets, column, all_train);
  const std::vector<std::size_t> validation = rows_with_target(targets, column, all_validation);
  Forest forest;
  forest.depth = options.max_depth;
  double sum = 0.0;
  for (const std::size_t r : train) sum += targets(static_cast<Eigen::Index>(r), column);
  forest.base = train.empty() ? 0.0f : static_cast<float>(sum / static_cast<double>(train.size()));
  if (train.empty()) return forest;

  std::vector<float> predicted(binned.rows, forest.base), gradient(binned.rows, 0.0f);
  std::mt19937_64 rng(options.seed * 0x9E3779B97F4A7C15ull + static_cast<std::uint64_t>(column));
  std::uniform_real_distribution<double> uniform(0.0, 1.0);
  std::vector<int> features(binned.features);
  std::iota(features.begin(), features.end(), 0);
  const auto feature_count = static_cast<std::size_t>(
      std::max(1.0, std::ceil(options.feature_subsample * static_cast<double>(binned.features))));
  TreeBuilder builder(binned, options);
  std::vector<std::uint32_t> sample;
  double best_mse = mean_squared_error(targets, column, validation, predicted);
  int best_round = 0, round = 0;
  while (round < options.max_rounds) {
    ++round;
    sample.clear();
    for (const std::size_t r : train) {
      if (uniform(rng) < options.row_subsample) sample.push_back(static_cast<std::uint32_t>(r));
    }
    for (const std::uint32_t r : sample) {
      gradient[r] = predicted[r] - targets(static_cast<Eigen::Index>(r), column);
    }
    std::shuffle(features.begin(), features.end(), rng);
    std::vector<int> allowed(features.begin(), features.begin() + static_cast<long>(feature_count));
    std::sort(allowed.begin(), allowed.end());
    builder.grow(sample, gradient, allowed, forest);
    for (const auto* rows : {&train, &validation}) {
      for (const std::size_t r : *rows) {
        predicted[r] += forest.leaf[last_tree_leaf(forest, builder.split_bins(), binned, r)];
      }
    }
    if (validation.empty()) continue;
    const double mse = mean_squared_error(targets, column, validation, predicted);
    if (mse < best_mse - 1e-12) {
      best_mse = mse;
      best_round = round;
    } else if (round - best_round >= options.patience) {
      break;
    }
  }
  report.rounds_run = round;
  report.rounds_kept = validation.empty() ? round : best_round;
  report.validation_mse = best_mse;
  const auto kept = static_cast<std::size_t>(report.rounds_kept);
  forest.feature.resize(kept * forest.internal_per_tree());
  forest.threshold.resize(kept * forest.internal_per_tree());
  forest.leaf.resize(kept * forest.leaves_per_tree());
  return forest;
}

}  // namespace

BinnedFeatures bin_features(const FeatureMatrix& x, const std::vector<std::size_t>& rows,
                            int max_bins) {
  BinnedFeatures out;
  out.rows = static_cast<std::size_t>(x.rows());
  out.features = static_cast<std::size_t>(x.cols());
  out.edges.resize(out.features);
  std::vector<float> values;
  for (std::size_t f = 0; f < out.features; ++f) {
    values.clear();
    for (const std::size_t r : rows)
      values.push_back(x(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(f)));
    std::sort(values.begin(), values.end());
    values.erase(std::unique(values.begin(), values.end()), values.end());
    std::vector<float>& edges = out.edges[f];
    // Cut at quantiles of the distinct values; the largest value needs no
    // edge (the last bin is open).
    const std::size_t cuts = std::min<std::size_t>(static_cast<std::size_t>(max_bins) - 1,
                                                   values.empty() ? 0 : values.size() - 1);
    for (std::size_t c = 1; c <= cuts; ++c) {
      const std::size_t at = c * (values.size() - 1) / (cuts + 1);
      if (edges.empty() || values[at] > edges.back()) edges.push_back(values[at]);
    }
  }
  out.bins.resize(out.rows * out.features);
  for (std::size_t r = 0; r < out.rows; ++r) {
    for (std::size_t f = 0; f < out.features; ++f) {
      const std::vector<float>& edges = out.edges[f];
      const float v = x(static_cast<Eigen::Index>(r), static_cast<Eigen::Index>(f));
      out.bins[r * out.features + f] = static_cast<std::uint8_t>(
          std::lower_bound(edges.begin(), edges.end(), v) - edges.begin());
    }
  }
  return out;
}

namespace {

// Runs `train(t)` for every target, spread over the threads.
template <typename Train>
std::vector<Forest> for_each_target(std::size_t count, int threads, const Train& train) {
  std::vector<Forest> forests(count);
  // An exception (bad_alloc) on a worker is carried to the caller, not
  // left to end the process.
  std::vector<std::exception_ptr> errors(static_cast<std::size_t>(std::max(1, threads)));
  const auto work = [&](std::size_t first, std::size_t stride) {
    try {
      for (std::size_t t = first; t < count; t += stride) forests[t] = train(t);
    } catch (...) {
      errors[first] = std::current_exception();
    }
  };
  const std::size_t n = errors.size();
  std::vector<std::thread> pool;
  for (std::size_t i = 1; i < n; ++i) pool.emplace_back(work, i, n);
  work(0, n);
  for (auto& thread : pool) thread.join();
  for (const auto& e : errors) {
    if (e) std::rethrow_exception(e);
  }
  return forests;
}

}  // namespace

std::vector<Forest> train_forests(const BinnedFeatures& binned, const Eigen::MatrixXf& targets,
                                  const std::vector<std::size_t>& train_rows,
                                  const std::vector<std::size_t>& validation_rows,
                                  const BoostOptions& options, std::vector<ForestReport>* reports) {
  const auto count = static_cast<std::size_t>(targets.cols());
  std::vector<ForestReport> local(count);
  auto forests = for_each_target(count, options.threads, [&](std::size_t t) {
    return train_forest(binned, targets, static_cast<Eigen::Index>(t), train_rows, validation_rows,
                        options, local[t]);
  });
  if (reports) *reports = std::move(local);
  return forests;
}

std::vector<Forest> refit_forests(const BinnedFeatures& binned, const Eigen::MatrixXf& targets,
                                  const std::vector<std::size_t>& rows,
                                  const std::vector<ForestReport>& rounds,
                                  const BoostOptions& options) {
  return for_each_target(
      static_cast<std::size_t>(targets.cols()), options.threads, [&](std::size_t t) {
        BoostOptions fixed = options;
        fixed.max_rounds = rounds[t].rounds_kept;
        ForestReport unused;
        return train_forest(binned, targets, static_cast<Eigen::Index>(t), rows, {}, fixed, unused);
      });
}

}  // namespace detail
TOROUTER_END_NAMESPACE
