// nn/int8_embedding_bag.hpp (internal, not installed): an embedding bag for serving whose
// table is stored as int8 with one float scale per row, a quarter of the
// float table's bytes.
//
//   torouter::nn::Int8EmbeddingBag small(trained_bag.table());  // quantizes
//   trained_bag.table() = small.dequantized();  // the weights it really uses
//   small.forward(batch, out);                  // as EmbeddingBag::forward
//
// Why: routing a prompt reads one table row per distinct hashed feature, a
// few hundred rows scattered over megabytes, so it waits on memory, not on
// arithmetic. A 64-wide float row is four cache lines; an int8 row is one.
//
// Quantization is symmetric per row: scale = max |x| / 127 and
// q = round(x / scale), so each weight moves by at most scale / 2. The
// dequantized table (scale * q) is exact in float; quantizing it again
// gives the same q (and the scale to within rounding), which lets a model
// file keep its table as plain floats.
#pragma once

#include <algorithm>
#include <cmath>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "nn/embedding_bag.hpp"
#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// Sum of value-weighted int8 rows times their scales, per example.
class Int8EmbeddingBag {
 public:
  /// An empty table.
  Int8EmbeddingBag() = default;

  /// Quantizes `table` (buckets x dim) row by row.
  explicit Int8EmbeddingBag(const Matrix<float>& table)
      : buckets_(table.rows()),
        dim_(table.cols()),
        values_(static_cast<std::size_t>(table.size())),
        scales_(static_cast<std::size_t>(table.rows())) {
    for (Index r = 0; r < buckets_; ++r) {
      const float largest = table.row(r).cwiseAbs().maxCoeff();
      const float scale = largest > 0.0f ? largest / 127.0f : 0.0f;
      scales_[static_cast<std::size_t>(r)] = scale;
      std::int8_t* row = row_data(r);
      for (Index c = 0; c < dim_; ++c) {
        const float q = scale > 0.0f ? std::nearbyint(table(r, c) / scale) : 0.0f;
        row[c] = static_cast<std::int8_t>(std::min(127.0f, std::max(-127.0f, q)));
      }
    }
  }

  /// The float table this one stands for: scale * q per entry.
  Matrix<float> dequantized() const {
    Matrix<float> table(buckets_, dim_);
    for (Index r = 0; r < buckets_; ++r) {
      const std::int8_t* row = row_data(r);
      for (Index c = 0; c < dim_; ++c) {
        table(r, c) = scales_[static_cast<std::size_t>(r)] * static_cast<float>(row[c]);
      }
    }
    return table;
  }

  /// out (batch.rows() x dim) = per example, sum over entries of value *
  /// scale * q-row. Does not allocate when `out` already has that shape.
  /// Indices must be below `buckets()`.
  void forward(const SparseBatch& batch, Matrix<float>& out) const {
    out.resize(batch.rows(), dim_);
    out.setZero();
    for (Index i = 0; i < batch.rows(); ++i) {
      const auto ui = static_cast<std::size_t>(i);
      const std::size_t first = batch.offsets[ui];
      const std::size_t last = batch.offsets[ui + 1];
      float* sum = out.row(i).data();
      for (std::size_t e = first; e < last; ++e) {
        // The rows are scattered; asking for a few ahead overlaps the misses.
        if (e + kPrefetchAhead < last) prefetch(row_data(batch.indices[e + kPrefetchAhead]));
        const Index r = batch.indices[e];
        const float weight = batch.values[e] * scales_[static_cast<std::size_t>(r)];
        const std::int8_t* row = row_data(r);
        // A plain loop the compiler turns into widen-convert-multiply-add.
        for (Index c = 0; c < dim_; ++c) sum[c] += weight * static_cast<float>(row[c]);
      }
    }
  }

  /// Number of rows.
  Index buckets() const { return buckets_; }
  /// Row width.
  Index dim() const { return dim_; }
  /// Bytes the table and scales take.
  std::size_t bytes() const { return values_.size() + scales_.size() * sizeof(float); }

 private:
  static constexpr std::size_t kPrefetchAhead = 8;

  std::int8_t* row_data(Index r) { return values_.data() + static_cast<std::size_t>(r * dim_); }
  const std::int8_t* row_data(Index r) const {
    return values_.data() + static_cast<std::size_t>(r * dim_);
  }

  void prefetch(const std::int8_t* row) const {
#if defined(__GNUC__) || defined(__clang__)
    for (Index offset = 0; offset < dim_; offset += 64) __builtin_prefetch(row + offset);
#else
    (void)row;
#endif
  }

  Index buckets_ = 0;
  Index dim_ = 0;
  std::vector<std::int8_t> values_;
  std::vector<float> scales_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
