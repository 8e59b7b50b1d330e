// nn/dense.hpp (internal, not installed): a fully connected (linear) layer, y = x W + b, over
// a batch whose rows are examples, with its backward pass.
//
//   torouter::nn::Dense<float> layer(64, 32);
//   layer.init(rng);
//   torouter::nn::Matrix<float> y(batch, 32);
//   layer.forward(x, y);             // no allocation once y has its size
//   layer.backward(x, dy, &dx);      // dx = dy W^T; weight/bias grads += ...
//
// The weight is stored inputs x outputs (the transpose of PyTorch's
// nn.Linear.weight), so the forward pass is one row-major product.
#pragma once

#include <algorithm>
#include <cmath>
#include <string>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// out = a b, for `out` already a.rows() x b.cols(), without allocating.
///
/// Matrix products reuse each panel of b across rows of a (a row at a time
/// streams all of b once per row), but Eigen packs their operands into
/// buffers it takes from the heap beyond 128 KB (EIGEN_STACK_ALLOCATION_LIMIT).
/// Tiles of at most 256 rows and columns and 128 floats (64 doubles) of
/// depth keep both buffers under it.
template <typename A, typename B, typename Out>
void multiply_in_tiles(const Eigen::MatrixBase<A>& a, const Eigen::MatrixBase<B>& b,
                       Eigen::MatrixBase<Out>& out) {
  using Scalar = typename Out::Scalar;
  constexpr Index kTile = 256;
  constexpr Index kDepth = 128 * 4 / static_cast<Index>(sizeof(Scalar));
  const Index rows = a.rows(), cols = b.cols(), depth = a.cols();
  for (Index i = 0; i < rows; i += kTile) {
    const Index m = std::min(kTile, rows - i);
    for (Index j = 0; j < cols; j += kTile) {
      const Index n = std::min(kTile, cols - j);
      auto tile = out.block(i, j, m, n);
      for (Index k = 0; k < depth; k += kDepth) {
        const Index d = std::min(kDepth, depth - k);
        if (k == 0) {
          tile.noalias() = a.block(i, k, m, d) * b.block(k, j, d, n);
        } else {
          tile.noalias() += a.block(i, k, m, d) * b.block(k, j, d, n);
        }
      }
    }
  }
}

/// A linear layer with bias.
template <typename Scalar>
class Dense {
 public:
  /// An empty layer; give it a shape by assigning a constructed one.
  Dense() = default;
  /// A layer from `inputs` to `outputs` features, zero-initialised.
  Dense(Index inputs, Index outputs)
      : weight_(Matrix<Scalar>::Zero(inputs, outputs)),
        bias_(Matrix<Scalar>::Zero(1, outputs)),
        weight_grad_(Matrix<Scalar>::Zero(inputs, outputs)),
        bias_grad_(Matrix<Scalar>::Zero(1, outputs)) {}

  /// Glorot-uniform weights and zero bias.
  void init(Rng& rng) {
    const double bound = std::sqrt(6.0 / static_cast<double>(inputs() + outputs()));
    fill_uniform(weight_, bound, rng);
    bias_.setZero();
  }

  /// out = x W + b; x is batch x inputs, out becomes batch x outputs. Does
  /// not allocate when `out` already has that shape.
  void forward(const Matrix<Scalar>& x, Matrix<Scalar>& out) const {
    out.resize(x.rows(), outputs());
    forward_into(x, out);
  }

  /// out = x W + b into `out`, already batch x outputs: a Map or a block
  /// over the caller's memory, so a caller whose batch size varies need not
  /// reallocate. Never allocates.
  template <typename In, typename Out>
  void forward_into(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& out) const {
    if (x.rows() < kGemmMinRows) {
      // A vector-matrix product never allocates.
      for (Index i = 0; i < x.rows(); ++i) out.row(i).noalias() = x.row(i) * weight_;
    } else {
      multiply_in_tiles(x, weight_, out);
    }
    out.rowwise() += bias_.row(0);
  }

  /// Accumulates the weight and bias gradients for upstream gradient `dout`
  /// at input `x` and, if `dx` is not null, sets *dx to the input gradient.
  void backward(const Matrix<Scalar>& x, const Matrix<Scalar>& dout, Matrix<Scalar>* dx) {
    weight_grad_.noalias() += x.transpose() * dout;
    bias_grad_.row(0) += dout.colwise().sum();
    if (dx != nullptr) {
      dx->resize(dout.rows(), inputs());
      dx->noalias() = dout * weight_.transpose();
    }
  }

  /// Appends `prefix.weight` (decayed) and `prefix.bias` (not decayed).
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    list.add({join_name(prefix, "weight"), &weight_, &weight_grad_, true, nullptr});
    list.add({join_name(prefix, "bias"), &bias_, &bias_grad_, false, nullptr});
  }

  /// Number of input features.
  Index inputs() const { return weight_.rows(); }
  /// Number of output features.
  Index outputs() const { return weight_.cols(); }
  /// inputs x outputs.
  Matrix<Scalar>& weight() { return weight_; }
  /// inputs x outputs.
  const Matrix<Scalar>& weight() const { return weight_; }
  /// 1 x outputs.
  Matrix<Scalar>& bias() { return bias_; }
  /// 1 x outputs.
  const Matrix<Scalar>& bias() const { return bias_; }
  /// Accumulated gradient of the weight.
  const Matrix<Scalar>& weight_grad() const { return weight_grad_; }
  /// Accumulated gradient of the bias.
  const Matrix<Scalar>& bias_grad() const { return bias_grad_; }

 private:
  // Batches of at least this many rows go through tiled matrix products.
  static constexpr Index kGemmMinRows = 8;
  Matrix<Scalar> weight_;
  Matrix<Scalar> bias_;
  Matrix<Scalar> weight_grad_;
  Matrix<Scalar> bias_grad_;
};

}  // namespace nn
TOROUTER_END_NAMESPACE
