// nn/layer_norm.hpp (internal, not installed): layer normalisation over the last dimension
// (each row), y = (x - mean) / sqrt(var + eps) * gain + bias, as PyTorch's
// nn.LayerNorm (biased variance, eps 1e-5), with its backward pass.
//
//   torouter::nn::LayerNorm<float> norm(128);
//   torouter::nn::LayerNorm<float>::Cache cache;
//   norm.forward(x, y, cache);
//   norm.backward(cache, dy, dx);
#pragma once

#include <cmath>
#include <string>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// LayerNorm with a learned gain and bias per feature.
template <typename Scalar>
class LayerNorm {
 public:
  /// What backward needs from forward; reused across calls, so inference
  /// does not allocate once it has the batch's shape.
  struct Cache {
    /// The normalised input, before gain and bias.
    Matrix<Scalar> normalized;
    /// 1 / sqrt(var + eps) per row.
    Eigen::Matrix<Scalar, Eigen::Dynamic, 1> inv_std;
  };

  /// An empty norm; give it a shape by assigning a constructed one.
  LayerNorm() = default;
  /// A norm over `dim` features: gain 1, bias 0.
  explicit LayerNorm(Index dim, Scalar eps = Scalar(1e-5))
      : gain_(Matrix<Scalar>::Ones(1, dim)),
        bias_(Matrix<Scalar>::Zero(1, dim)),
        gain_grad_(Matrix<Scalar>::Zero(1, dim)),
        bias_grad_(Matrix<Scalar>::Zero(1, dim)),
        eps_(eps) {}

  /// Normalises each row of x into `out` and fills `cache`.
  void forward(const Matrix<Scalar>& x, Matrix<Scalar>& out, Cache& cache) const {
    const Index rows = x.rows();
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim());
    cache.normalized.resize(rows, dim());
    cache.inv_std.resize(rows);
    out.resize(rows, dim());
    for (Index i = 0; i < rows; ++i) {
      const Scalar mean = x.row(i).sum() * inv_dim;
      cache.normalized.row(i) = x.row(i).array() - mean;
      const Scalar var = cache.normalized.row(i).squaredNorm() * inv_dim;
      const Scalar inv_std = Scalar(1) / std::sqrt(var + eps_);
      cache.inv_std(i) = inv_std;
      cache.normalized.row(i) *= inv_std;
    }
    out = cache.normalized.array().rowwise() * gain_.row(0).array();
    out.rowwise() += bias_.row(0);
  }

  /// Normalises each row of x into `out`, already x's shape (a Map or a block
  /// over the caller's memory): forward's result without the cache that
  /// backward needs. Never allocates.
  template <typename In, typename Out>
  void forward_into(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& out) const {
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim());
    for (Index i = 0; i < x.rows(); ++i) {
      const Scalar mean = x.row(i).sum() * inv_dim;
      out.row(i) = x.row(i).array() - mean;
      const Scalar var = out.row(i).squaredNorm() * inv_dim;
      const Scalar inv_std = Scalar(1) / std::sqrt(var + eps_);
      out.row(i) = (out.row(i).array() * inv_std) * gain_.row(0).array() + bias_.row(0).array();
    }
  }

  /// Accumulates the gain and bias gradients and sets dx, from the cache of
  /// the forward pass and the upstream gradient `dout`.
  void backward(const Cache& cache, const Matrix<Scalar>& dout, Matrix<Scalar>& dx) {
    const Index rows = dout.rows();
    const Scalar inv_dim = Scalar(1) / static_cast<Scalar>(dim());
    gain_grad_.row(0) += dout.cwiseProduct(cache.normalized).colwise().sum();
    bias_grad_.row(0) += dout.colwise().sum();
    dx.resize(rows, dim());
    // With g = dout * gain: dx = inv_std * (g - mean(g) - xhat * mean(g * xhat)).
    dx = dout.array().rowwise() * gain_.row(0).array();
    for (Index i = 0; i < rows; ++i) {
      const Scalar mean_g = dx.row(i).sum() * inv_dim;
      const Scalar mean_gx = dx.row(i).dot(cache.normalized.row(i)) * inv_dim;
      dx.row(i) =
          cache.inv_std(i) *
          ((dx.row(i).array() - mean_g) - mean_gx * cache.normalized.row(i).array()).matrix();
    }
  }

  /// Appends `prefix.gain` and `prefix.bias`, neither decayed.
  void collect_parameters(const std::string& prefix, ParameterList<Scalar>& list) {
    list.add({join_name(prefix, "gain"), &gain_, &gain_grad_, false, nullptr});
    list.add({join_name(prefix, "bias"), &bias_, &bias_grad_, false, nullptr});
  }

  /// Number of features normalised over.
  Index dim() const { return gain_.cols(); }
  /// 1 x dim.
  Matrix<Scalar>& gain() { return gain_; }
  /// 1 x dim.
  const Matrix<Scalar>& gain() const { return gain_; }
  /// 1 x dim.
  Matrix<Scalar>& bias() { return bias_; }
  /// 1 x dim.
  const Matrix<Scalar>& bias() const { return bias_; }

 private:
  Matrix<Scalar> gain_;
  Matrix<Scalar> bias_;
  Matrix<Scalar> gain_grad_;
  Matrix<Scalar> bias_grad_;
  Scalar eps_ = Scalar(1e-5);
};

}  // namespace nn
TOROUTER_END_NAMESPACE
