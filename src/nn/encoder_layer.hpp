// nn/encoder_layer.hpp (internal, not installed): a pre-norm transformer encoder layer over
// one sequence (rows are positions), with its backward pass:
//
//   y   = x + MHA(LN1(x))
//   out = y + FFN(LN2(y)),   FFN = Linear(d, ff) -> GELU (tanh) -> Linear(ff, d)
//
// It matches PyTorch's nn.TransformerEncoderLayer(norm_first=True,
// dropout=0, activation=gelu(approximate='tanh')) with a key padding mask;
// tests/fixtures/make_encoder_reference.py checks that.
//
//   torouter::nn::EncoderLayer<float> layer;      // d=128, 4 heads, ff=512
//   layer.init(rng);
//   torouter::nn::EncoderLayer<float>::Cache cache;
//   layer.forward(x, length, y, cache);
//   layer.backward(cache, dy, dx);
#pragma once

#include <string>

#include "nn/activations.hpp"
#include "nn/attention.hpp"
#include "nn/dense.hpp"
#include "nn/layer_norm.hpp"
#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// Pre-norm self-attention and feed-forward block with residuals.
template <typename Scalar>
class EncoderLayer {
 public:
  /// What backward needs from forward; reused across calls, so inference
  /// does not allocate once it has the sequence's shape.
  struct Cache {
    /// LN1(x) and its cache.
    Matrix<Scalar> norm1_out;
    typename LayerNorm<Scalar>::Cache norm1;
    /// The attention block's cache and output.
    typename MultiHeadAttention<Scalar>::Cache attention;
    Matrix<Scalar> attention_out;
    /// x + MHA(LN1(x)).
    Matrix<Scalar> residual;
    /// LN2(residual) and its cache.
    Matrix<Scalar> norm2_out;
    typename LayerNorm<Scalar>::Cache norm2;
    /// The feed-forward's hidden layer before and after GELU.
    Matrix<Scalar> hidden_pre, hidden;
    /// Scratch for backward.
    Matrix<Scalar> d_hidden, d_hidden_pre, d_norm2, d_residual, d_norm1, d_part;
  };

  /// A layer of width d_model with `heads` heads and a feed-forward of width
  /// `ff`, zero-initialised (LayerNorm gains 1).
  explicit EncoderLayer(Index d_model = 128, Index heads = 4, Index ff = 512)
      : norm1_(d_model),
        attention_(d_model, heads),
        norm2_(d_model),
        ff1_(d_model, ff),
        ff2_(ff, d_model) {}

  /// Glorot-uniform projections; norms at gain 1, bias 0.
  void init(Rng& rng) {
    attention_.init(rng);
    ff1_.init(rng);
    ff2_.init(rng);
  }

  /// out = the layer applied to x (positions x d_model), attending only to
  /// the first `length` positions.
  void forward(const Matrix<Scalar>& x, Index length, Matrix<Scalar>& out, Cache& c) const {
    norm1_.forward(x, c.norm1_out, c.norm1);
    attention_.forward(c.norm1_out, length, c.attention_out, c.attention);
    c.residual.resize(x.rows(), x.cols());
    c.residual = x + c.attention_out;
    norm2_.forward(c.residual, c.norm2_out, c.norm2);
    ff1_.forward(c.norm2_out, c.hidden_pre);
    gelu(c.hidden_pre, c.hidden);
    ff2_.forward(c.hidden, out);
    out += c.residual;
  }

  /// The layer over every position of x.
  void forward(const Matrix<Scalar>& x, Matrix<Scalar>& out, Cache& cache) const {
    forward(x, x.rows(), out, cache);
  }

  /// Accumulates every parameter's gradient and sets dx, from the forward
  /// pass's cache (which holds every intermediate it needs) and the
  /// upstream gradient `dout`.
  void backward(Cache& c, const Matrix<Scalar>& dout, Matrix<Scalar>& dx) {
    ff2_.backward(c.hidden, dout, &c.d_hidden);
    gelu_backward(c.hidden_pre, c.d_hidden, c.d_hidden_pre);
    ff1_.backward(c.norm2_out, c.d_hidden_pre, &c.d_norm2);
    norm2_.backward(c.norm2, c.d_norm2, c.d_part);
    c.d_residual.resize(dout.rows(), dout.cols());
    c.d_residual = dout + c.d_part;
    attention_.backward(c.norm1_out, c.attention, c.d_residual, c.d_norm1);
    norm1_.backward(c.norm1, c.d_norm1, c.d_part);
    dx.resize(dout.rows(), dout.cols());
    dx = c.d_residual + c.d_part;
  }

  /// Appends `prefix.norm1`, `.attn`, `.norm2`, `.ff1` and `.ff2`.
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    norm1_.collect_parameters(join_name(prefix, "norm1"), list);
    attention_.collect_parameters(join_name(prefix, "attn"), list);
    norm2_.collect_parameters(join_name(prefix, "norm2"), list);
    ff1_.collect_parameters(join_name(prefix, "ff1"), list);
    ff2_.collect_parameters(join_name(prefix, "ff2"), list);
  }

  /// Model width.
  Index d_model() const { return norm1_.dim(); }
  /// Feed-forward width.
  Index ff_dim() const { return ff1_.outputs(); }
  /// The norm before attention.
  LayerNorm<Scalar>& norm1() { return norm1_; }
  const LayerNorm<Scalar>& norm1() const { return norm1_; }
  /// The self-attention block.
  MultiHeadAttention<Scalar>& attention() { return attention_; }
  const MultiHeadAttention<Scalar>& attention() const { return attention_; }
  /// The norm before the feed-forward.
  LayerNorm<Scalar>& norm2() { return norm2_; }
  const LayerNorm<Scalar>& norm2() const { return norm2_; }
  /// Feed-forward, d_model to ff.
  Dense<Scalar>& ff1() { return ff1_; }
  const Dense<Scalar>& ff1() const { return ff1_; }
  /// Feed-forward, ff to d_model.
  Dense<Scalar>& ff2() { return ff2_; }
  const Dense<Scalar>& ff2() const { return ff2_; }

 private:
  LayerNorm<Scalar> norm1_;
  MultiHeadAttention<Scalar> attention_;
  LayerNorm<Scalar> norm2_;
  Dense<Scalar> ff1_;
  Dense<Scalar> ff2_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
