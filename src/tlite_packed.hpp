// Internal: the transformer-lite's serving pass over several prompts at
// once, packed: the rows of every prompt's real tokens are stacked in one
// matrix, with no padding. The position-wise parts of a layer (norms, the
// Q, K, V and output projections, the feed-forward) are then one large
// matrix product over all the rows, which runs near the machine's GEMM rate;
// only attention works prompt by prompt, on each prompt's own rows.
//
//   TlitePackedBuffers buffers;
//   buffers.reserve(model.shape(), 512);   // once: warm calls allocate nothing
//   // ids of prompt s: ids[starts[s] .. starts[s + 1]), at least one each
//   tlite_encode_packed(model, ids, starts, buffers, pooled, first_row);
//
// It computes what TliteModel::encode computes for each prompt on its own
// (tests/tlite_scorer_test.cpp checks both against PyTorch), up to the order
// of float additions inside the products.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <vector>

#include "nn/activations.hpp"
#include "nn/dense.hpp"
#include "tlite_model.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// Working memory of `tlite_encode_packed` for up to `capacity_rows` rows in
/// all. Plain vectors seen through Eigen maps, so any number of rows up to
/// the capacity uses them without reallocating.
struct TlitePackedBuffers {
  std::vector<float> x, normed, q, k, v, context, residual, hidden, scores;
  nn::Index capacity_rows = 0;

  /// Sizes every buffer for `rows` rows of a network of `shape`.
  void reserve(const TliteShape& shape, nn::Index rows) {
    const auto cells = [&](nn::Index width) { return static_cast<std::size_t>(rows * width); };
    for (auto* buffer : {&x, &normed, &q, &k, &v, &context, &residual}) {
      buffer->resize(cells(shape.d_model));
    }
    hidden.resize(cells(shape.ff));
    scores.resize(static_cast<std::size_t>(shape.max_tokens * shape.max_tokens));
    capacity_rows = rows;
  }
};

/// Encodes prompts packed: prompt s has the token ids ids[starts[s] ..
/// starts[s + 1]) (1 to max_tokens of them; an empty prompt is given as the
/// one id `shape.buckets`), and pooled.row(first_row + s) gets the mean of
/// its final norm, as TliteModel::encode gives it. starts.back() must not
/// exceed the buffers' capacity. Allocates nothing.
inline void tlite_encode_packed(const TliteModel<float>& model, const std::uint32_t* ids,
                                const std::vector<nn::Index>& starts, TlitePackedBuffers& b,
                                nn::Matrix<float>& pooled, nn::Index first_row) {
  using Map = Eigen::Map<nn::Matrix<float>>;
  const TliteShape& shape = model.shape();
  const nn::Index rows = starts.back();
  const nn::Index d = shape.d_model;
  const nn::Index hd = d / shape.heads;
  const float scale = 1.0f / std::sqrt(static_cast<float>(hd));
  Map x(b.x.data(), rows, d), normed(b.normed.data(), rows, d), q(b.q.data(), rows, d),
      k(b.k.data(), rows, d), v(b.v.data(), rows, d), context(b.context.data(), rows, d),
      residual(b.residual.data(), rows, d), hidden(b.hidden.data(), rows, shape.ff);
  const std::size_t prompts = starts.size() - 1;

  for (std::size_t s = 0; s < prompts; ++s) {
    for (nn::Index r = starts[s]; r < starts[s + 1]; ++r) {
      x.row(r) = model.token_table().row(static_cast<nn::Index>(ids[r])) +
                 model.position_table().row(r - starts[s]);
    }
  }
  for (const auto& layer : model.layers()) {
    const auto& attention = layer.attention();
    layer.norm1().forward_into(x, normed);
    attention.q().forward_into(normed, q);
    attention.k().forward_into(normed, k);
    attention.v().forward_into(normed, v);
    for (std::size_t s = 0; s < prompts; ++s) {
      const nn::Index start = starts[s];
      const nn::Index length = starts[s + 1] - start;
      Map weights(b.scores.data(), length, length);
      for (nn::Index h = 0; h < shape.heads; ++h) {
        weights.noalias() =
            q.block(start, h * hd, length, hd) * k.block(start, h * hd, length, hd).transpose();
        weights *= scale;
        // Subtracting the row maximum keeps exp from overflowing.
        for (nn::Index i = 0; i < length; ++i) {
          const float top = weights.row(i).maxCoeff();
          weights.row(i) = (weights.row(i).array() - top).exp();
          weights.row(i) /= weights.row(i).sum();
        }
        context.block(start, h * hd, length, hd).noalias() =
            weights * v.block(start, h * hd, length, hd);
      }
    }
    attention.out().forward_into(context, normed);
    residual = x + normed;
    layer.norm2().forward_into(residual, normed);
    layer.ff1().forward_into(normed, hidden);
    nn::gelu_into(hidden, hidden);
    layer.ff2().forward_into(hidden, normed);
    x = residual + normed;
  }
  model.final_norm().forward_into(x, normed);
  for (std::size_t s = 0; s < prompts; ++s) {
    const nn::Index length = starts[s + 1] - starts[s];
    pooled.row(first_row + static_cast<nn::Index>(s)) =
        normed.middleRows(starts[s], length).colwise().sum() / static_cast<float>(length);
  }
}

}  // namespace detail
TOROUTER_END_NAMESPACE
