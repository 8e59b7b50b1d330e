// nn/attention.hpp (internal, not installed): multi-head self-attention over one sequence
// (rows are positions), with Q, K, V and output projections and scaled
// dot-product softmax, and its backward pass.
//
//   torouter::nn::MultiHeadAttention<float> attn(128, 4);
//   attn.init(rng);
//   torouter::nn::MultiHeadAttention<float>::Cache cache;
//   attn.forward(x, length, y, cache);   // positions >= length are padding
//   attn.backward(x, cache, dy, dx);
//
// Padding: positions at or beyond `length` are never attended to (as
// PyTorch's key_padding_mask); their own rows are still computed, attending
// to the real positions, so the output matches PyTorch's for every row and a
// caller simply ignores the padded ones (e.g. when mean pooling).
//
// Once the cache has the sequence's shape the forward pass does not allocate,
// up to 256 positions; beyond that Eigen's products take their packing
// buffers from the heap.
#pragma once

#include <cassert>
#include <cmath>
#include <string>
#include <vector>

#include "nn/dense.hpp"
#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// Multi-head self-attention; d_model must be a multiple of heads.
template <typename Scalar>
class MultiHeadAttention {
 public:
  /// What backward needs from forward; reused across calls, so inference
  /// does not allocate once it has the sequence's shape.
  struct Cache {
    /// Projected queries, keys and values, positions x d_model (head h owns
    /// columns h * head_dim .. (h + 1) * head_dim).
    Matrix<Scalar> q, k, v;
    /// Softmax weights, one positions x length block per head.
    std::vector<Matrix<Scalar>> probs;
    /// Heads' outputs side by side, before the output projection.
    Matrix<Scalar> context;
    /// The length the forward pass used.
    Index length = 0;
    /// Scratch for backward.
    Matrix<Scalar> dq, dk, dv, dcontext, dprobs, dx_part;
  };

  /// An empty block; give it a shape by assigning a constructed one.
  MultiHeadAttention() = default;
  /// A block of width d_model split into `heads` heads, zero-initialised.
  MultiHeadAttention(Index d_model, Index heads)
      : heads_(heads),
        q_(d_model, d_model),
        k_(d_model, d_model),
        v_(d_model, d_model),
        out_(d_model, d_model) {
    assert(heads > 0 && d_model % heads == 0);
  }

  /// Glorot-uniform projections, zero biases.
  void init(Rng& rng) {
    q_.init(rng);
    k_.init(rng);
    v_.init(rng);
    out_.init(rng);
  }

  /// out = attention over x (positions x d_model), attending only to the
  /// first `length` positions (1 <= length <= x.rows()).
  void forward(const Matrix<Scalar>& x, Index length, Matrix<Scalar>& out, Cache& cache) const {
    assert(length >= 1 && length <= x.rows());
    const Index positions = x.rows();
    const Index hd = head_dim();
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(hd));
    q_.forward(x, cache.q);
    k_.forward(x, cache.k);
    v_.forward(x, cache.v);
    cache.length = length;
    cache.probs.resize(static_cast<std::size_t>(heads_));
    cache.context.resize(positions, d_model());
    for (Index h = 0; h < heads_; ++h) {
      Matrix<Scalar>& p = cache.probs[static_cast<std::size_t>(h)];
      p.resize(positions, length);
      p.noalias() =
          cache.q.middleCols(h * hd, hd) * cache.k.block(0, h * hd, length, hd).transpose();
      p *= scale;
      // Subtracting the row maximum keeps exp from overflowing.
      for (Index i = 0; i < positions; ++i) {
        const Scalar m = p.row(i).maxCoeff();
        p.row(i) = (p.row(i).array() - m).exp();
        p.row(i) /= p.row(i).sum();
      }
      cache.context.middleCols(h * hd, hd).noalias() = p * cache.v.block(0, h * hd, length, hd);
    }
    out_.forward(cache.context, out);
  }

  /// Attention over every position of x.
  void forward(const Matrix<Scalar>& x, Matrix<Scalar>& out, Cache& cache) const {
    forward(x, x.rows(), out, cache);
  }

  /// Accumulates every projection's gradients and sets dx, from the forward
  /// input x, its cache and the upstream gradient `dout`.
  void backward(const Matrix<Scalar>& x, Cache& cache, const Matrix<Scalar>& dout,
                Matrix<Scalar>& dx) {
    const Index positions = x.rows();
    const Index length = cache.length;
    const Index hd = head_dim();
    const Scalar scale = Scalar(1) / std::sqrt(static_cast<Scalar>(hd));
    out_.backward(cache.context, dout, &cache.dcontext);
    cache.dq.resize(positions, d_model());
    cache.dk.setZero(positions, d_model());  // padded keys get no gradient
    cache.dv.setZero(positions, d_model());
    for (Index h = 0; h < heads_; ++h) {
      const Matrix<Scalar>& p = cache.probs[static_cast<std::size_t>(h)];
      const auto dctx = cache.dcontext.middleCols(h * hd, hd);
      cache.dv.block(0, h * hd, length, hd).noalias() = p.transpose() * dctx;
      cache.dprobs.resize(positions, length);
      cache.dprobs.noalias() = dctx * cache.v.block(0, h * hd, length, hd).transpose();
      // Softmax backward: ds = p * (dp - sum_j dp_j p_j), then the scale.
      for (Index i = 0; i < positions; ++i) {
        const Scalar inner = cache.dprobs.row(i).dot(p.row(i));
        cache.dprobs.row(i) =
            scale * p.row(i).cwiseProduct((cache.dprobs.row(i).array() - inner).matrix());
      }
      cache.dq.middleCols(h * hd, hd).noalias() =
          cache.dprobs * cache.k.block(0, h * hd, length, hd);
      cache.dk.block(0, h * hd, length, hd).noalias() =
          cache.dprobs.transpose() * cache.q.middleCols(h * hd, hd);
    }
    q_.backward(x, cache.dq, &dx);
    k_.backward(x, cache.dk, &cache.dx_part);
    dx += cache.dx_part;
    v_.backward(x, cache.dv, &cache.dx_part);
    dx += cache.dx_part;
  }

  /// Appends `prefix.q`, `.k`, `.v` and `.out`, each a weight and a bias.
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    q_.collect_parameters(join_name(prefix, "q"), list);
    k_.collect_parameters(join_name(prefix, "k"), list);
    v_.collect_parameters(join_name(prefix, "v"), list);
    out_.collect_parameters(join_name(prefix, "out"), list);
  }

  /// Model width.
  Index d_model() const { return q_.inputs(); }
  /// Number of heads.
  Index heads() const { return heads_; }
  /// Width of one head.
  Index head_dim() const { return heads_ == 0 ? 0 : d_model() / heads_; }
  /// Query projection.
  Dense<Scalar>& q() { return q_; }
  const Dense<Scalar>& q() const { return q_; }
  /// Key projection.
  Dense<Scalar>& k() { return k_; }
  const Dense<Scalar>& k() const { return k_; }
  /// Value projection.
  Dense<Scalar>& v() { return v_; }
  const Dense<Scalar>& v() const { return v_; }
  /// Output projection.
  Dense<Scalar>& out() { return out_; }
  const Dense<Scalar>& out() const { return out_; }

 private:
  Index heads_ = 0;
  Dense<Scalar> q_, k_, v_, out_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
