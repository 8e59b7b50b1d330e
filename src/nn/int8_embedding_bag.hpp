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

/// add_weighted_int8_rows at `Width` columns (0: `width`). At a fixed
/// width the sum is kept in a local array, which an int8 pointer cannot
/// alias as it can `out`: the compiler keeps it in registers and stores it
/// once. Otherwise it sums in `out`.
template <int Width>
void add_weighted_int8_rows_of_width(const std::int8_t* table, const float* scales, Index width,
                                     const std::uint32_t* indices, const float* values,
                                     std::size_t count, float* out) {
  constexpr bool kFixed = Width > 0;
  const std::size_t columns = kFixed ? Width : static_cast<std::size_t>(width);
  float local[kFixed ? Width : 1];
  float* sum = out;
  if constexpr (kFixed) {
    std::copy(out, out + Width, local);
    sum = local;
  }
  for (std::size_t e = 0; e < count; ++e) {
    if (e + kBagPrefetchAhead < count) {
      prefetch_bytes(table + static_cast<std::size_t>(indices[e + kBagPrefetchAhead]) * columns,
                     columns);
    }
    const std::uint32_t r = indices[e];
    const float weight = values[e] * scales[r];
    const std::int8_t* row = table + static_cast<std::size_t>(r) * columns;
    // A plain loop the compiler turns into widen-convert-multiply-add.
    for (std::size_t c = 0; c < columns; ++c) sum[c] += weight * static_cast<float>(row[c]);
  }
  if constexpr (kFixed) std::copy(local, local + Width, out);
}

/// out[0 .. width) += values[e] * scales[r] * q-row r of `table` (int8,
/// row-major, `width` columns), r = indices[e], for each of the `count`
/// entries: one example of an int8 bag. The kernels of each CPU level run
/// it (src/kernels/).
inline void add_weighted_int8_rows(const std::int8_t* table, const float* scales, Index width,
                                   const std::uint32_t* indices, const float* values,
                                   std::size_t count, float* out) {
  if (width == 64) {  // the MLP's usual width
    add_weighted_int8_rows_of_width<64>(table, scales, width, indices, values, count, out);
  } else {
    add_weighted_int8_rows_of_width<0>(table, scales, width, indices, values, count, out);
  }
}

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

  /// How one example's rows are summed: add_weighted_int8_rows, or the same
  /// compiled for the CPU's level (src/kernels/).
  using RowSum = void (*)(const std::int8_t*, const float*, Index, const std::uint32_t*,
                          const float*, std::size_t, float*);

  /// out (batch.rows() x dim) = per example, sum over entries of value *
  /// scale * q-row. Does not allocate when `out` already has that shape.
  /// Indices must be below `buckets()`.
  void forward(const SparseBatch& batch, Matrix<float>& out,
               RowSum add_rows = &add_weighted_int8_rows) const {
    out.resize(batch.rows(), dim_);
    out.setZero();
    for (Index i = 0; i < batch.rows(); ++i) {
      const std::size_t first = batch.offsets[static_cast<std::size_t>(i)];
      add_rows(values_.data(), scales_.data(), dim_, batch.indices.data() + first,
               batch.values.data() + first, batch.offsets[static_cast<std::size_t>(i) + 1] - first,
               out.row(i).data());
    }
  }

  /// Number of rows.
  Index buckets() const { return buckets_; }
  /// Row width.
  Index dim() const { return dim_; }
  /// Bytes the table and scales take.
  std::size_t bytes() const { return values_.size() + scales_.size() * sizeof(float); }

 private:
  std::int8_t* row_data(Index r) { return values_.data() + static_cast<std::size_t>(r * dim_); }
  const std::int8_t* row_data(Index r) const {
    return values_.data() + static_cast<std::size_t>(r * dim_);
  }

  Index buckets_ = 0;
  Index dim_ = 0;
  std::vector<std::int8_t> values_;
  std::vector<float> scales_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
