// nn/embedding_bag.hpp (internal, not installed): sparse hashed features to a dense vector,
// the value-weighted sum of one embedding row per feature bucket, with a
// backward pass that touches only the rows the batch used.
//
//   torouter::nn::SparseBatch batch;
//   batch.add_row({3, 17, 90}, {1.0f, 0.5f, 0.25f});   // bucket indices, values
//   torouter::nn::EmbeddingBag<float> bag(1 << 18, 64);
//   bag.init(rng);
//   bag.forward(batch, out);          // out is 1 x 64
//   bag.backward(batch, dout);        // grad rows 3, 17, 90 += value * dout
//
// Sparse gradient: the table's gradient is a dense matrix of which only the
// touched rows (listed in `touched_rows()`) are non-zero, so zeroing it costs
// the rows used, not the table. AdamW by default updates only those rows
// ("lazy" Adam, as PyTorch's SparseAdam): with 2^18 buckets a dense update
// would cost far more than the batch itself. See nn/adamw.hpp.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <initializer_list>
#include <string>
#include <type_traits>
#include <vector>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// A batch of sparse feature vectors in compressed-row form: example i has
/// the entries offsets[i] .. offsets[i + 1] of `indices` and `values`.
/// Indices within an example should be sorted and unique (the featurizer's
/// output is), which keeps table reads in memory order; correctness does not
/// depend on it.
struct SparseBatch {
  /// rows() + 1 entries; starts at {0}.
  std::vector<std::size_t> offsets{0};
  /// Bucket index of each entry.
  std::vector<std::uint32_t> indices;
  /// Value (weight) of each entry.
  std::vector<float> values;

  /// Number of examples.
  Index rows() const { return static_cast<Index>(offsets.size()) - 1; }
  /// Empties the batch, keeping capacity.
  void clear() {
    offsets.assign(1, 0);
    indices.clear();
    values.clear();
  }
  /// Appends one example; `row_indices` and `row_values` have equal length.
  void add_row(const std::uint32_t* row_indices, const float* row_values, std::size_t count) {
    indices.insert(indices.end(), row_indices, row_indices + count);
    values.insert(values.end(), row_values, row_values + count);
    offsets.push_back(indices.size());
  }
  /// Appends one example.
  void add_row(std::initializer_list<std::uint32_t> row_indices,
               std::initializer_list<float> row_values) {
    indices.insert(indices.end(), row_indices);
    values.insert(values.end(), row_values);
    offsets.push_back(indices.size());
  }
};

/// Prefetch distance of the bags' forward passes: a prompt's rows are
/// scattered over a table of megabytes, and asking for the rows a few
/// entries ahead overlaps their cache misses.
inline constexpr std::size_t kBagPrefetchAhead = 8;

/// Asks for the `bytes` at `data` to be brought into cache.
inline void prefetch_bytes(const void* data, std::size_t bytes) {
#if defined(__GNUC__) || defined(__clang__)
  const char* p = static_cast<const char*>(data);
  for (std::size_t offset = 0; offset < bytes; offset += 64) __builtin_prefetch(p + offset);
#else
  (void)data;
  (void)bytes;
#endif
}

/// add_weighted_rows at `Width` columns (Eigen::Dynamic: `width`). At a
/// fixed width the sum is kept in a local the compiler holds in registers
/// and stored once: summed in `out` itself, each row's adds wait for the
/// last row's stores. The same adds in the same order either way; a local
/// of dynamic width would allocate, so that one sums in `out`.
template <typename Scalar, int Width>
void add_weighted_rows_of_width(const Scalar* table, Index width, const std::uint32_t* indices,
                                const float* values, std::size_t count, Scalar* out) {
  using Row = Eigen::Matrix<Scalar, 1, Width>;
  using Sum = std::conditional_t<Width == Eigen::Dynamic, Eigen::Map<Row>, Row>;
  const auto row = [&](std::uint32_t r) {
    return table + static_cast<std::size_t>(r) * static_cast<std::size_t>(width);
  };
  Eigen::Map<Row> result(out, width);
  Sum sum(result);
  for (std::size_t e = 0; e < count; ++e) {
    if (e + kBagPrefetchAhead < count) {
      prefetch_bytes(row(indices[e + kBagPrefetchAhead]),
                     static_cast<std::size_t>(width) * sizeof(Scalar));
    }
    sum += static_cast<Scalar>(values[e]) * Eigen::Map<const Row>(row(indices[e]), width);
  }
  if constexpr (Width != Eigen::Dynamic) result = sum;
}

/// out[0 .. width) += values[e] * row indices[e] of `table` (row-major,
/// `width` columns) for each of the `count` entries: one example of a bag.
/// The kernels of each CPU level run it (src/kernels/).
template <typename Scalar>
void add_weighted_rows(const Scalar* table, Index width, const std::uint32_t* indices,
                       const float* values, std::size_t count, Scalar* out) {
  switch (width) {  // the MLP's usual widths
    case 64:
      return add_weighted_rows_of_width<Scalar, 64>(table, width, indices, values, count, out);
    case 32:
      return add_weighted_rows_of_width<Scalar, 32>(table, width, indices, values, count, out);
    default:
      return add_weighted_rows_of_width<Scalar, Eigen::Dynamic>(table, width, indices, values,
                                                                count, out);
  }
}

/// Sum of value-weighted embedding rows per example.
template <typename Scalar>
class EmbeddingBag {
 public:
  /// An empty bag; give it a shape by assigning a constructed one.
  EmbeddingBag() = default;
  /// A table of `buckets` rows of `dim` columns, zero-initialised.
  EmbeddingBag(Index buckets, Index dim)
      : table_(Matrix<Scalar>::Zero(buckets, dim)),
        table_grad_(Matrix<Scalar>::Zero(buckets, dim)) {}

  /// Uniform rows in +-1/sqrt(dim), so a bag of features whose values have
  /// unit L2 norm starts with entries of about that size.
  void init(Rng& rng) { fill_uniform(table_, 1.0 / std::sqrt(static_cast<double>(dim())), rng); }

  /// How one example's rows are summed: add_weighted_rows, or the same
  /// compiled for the CPU's level (src/kernels/).
  using RowSum = void (*)(const Scalar*, Index, const std::uint32_t*, const float*, std::size_t,
                          Scalar*);

  /// out (batch.rows() x dim) = per example, sum over entries of value * row.
  /// Does not allocate when `out` already has that shape. Indices must be
  /// below `buckets()`.
  void forward(const SparseBatch& batch, Matrix<Scalar>& out,
               RowSum add_rows = &add_weighted_rows<Scalar>) const {
    out.resize(batch.rows(), dim());
    out.setZero();
    for (Index i = 0; i < batch.rows(); ++i) {
      const std::size_t first = batch.offsets[static_cast<std::size_t>(i)];
      add_rows(table_.data(), dim(), batch.indices.data() + first, batch.values.data() + first,
               batch.offsets[static_cast<std::size_t>(i) + 1] - first, out.row(i).data());
    }
  }

  /// Accumulates value * dout.row(i) into the gradient rows of example i's
  /// buckets, and records those rows in `touched_rows()`.
  void backward(const SparseBatch& batch, const Matrix<Scalar>& dout) {
    for (Index i = 0; i < batch.rows(); ++i) {
      const auto ui = static_cast<std::size_t>(i);
      for (std::size_t e = batch.offsets[ui]; e < batch.offsets[ui + 1]; ++e) {
        const auto row = static_cast<Index>(batch.indices[e]);
        table_grad_.row(row) += static_cast<Scalar>(batch.values[e]) * dout.row(i);
        touched_rows_.push_back(row);
      }
    }
    std::sort(touched_rows_.begin(), touched_rows_.end());
    touched_rows_.erase(std::unique(touched_rows_.begin(), touched_rows_.end()),
                        touched_rows_.end());
  }

  /// Appends `prefix.table` (decayed, sparse gradient).
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    list.add({join_name(prefix, "table"), &table_, &table_grad_, true, &touched_rows_});
  }

  /// Number of hash buckets (rows).
  Index buckets() const { return table_.rows(); }
  /// Embedding width (columns).
  Index dim() const { return table_.cols(); }
  /// buckets x dim.
  Matrix<Scalar>& table() { return table_; }
  /// buckets x dim.
  const Matrix<Scalar>& table() const { return table_; }
  /// The accumulated gradient; zero outside `touched_rows()`.
  const Matrix<Scalar>& table_grad() const { return table_grad_; }
  /// Rows with a gradient since the last `ParameterList::zero_grad`, sorted.
  const std::vector<Index>& touched_rows() const { return touched_rows_; }

 private:
  Matrix<Scalar> table_;
  Matrix<Scalar> table_grad_;
  std::vector<Index> touched_rows_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
