// nn/activations.hpp (internal, not installed): element-wise activations (ReLU, GELU,
// sigmoid) and their backward passes.
//
//   torouter::nn::gelu(pre, act);                 // act = GELU(pre)
//   torouter::nn::gelu_backward(pre, dact, dpre); // dpre = dact * GELU'(pre)
//
// GELU is the tanh approximation, 0.5 x (1 + tanh(sqrt(2/pi) (x + 0.044715 x^3))),
// which is PyTorch's `gelu(x, approximate='tanh')` (not its exact erf default).
// Forward functions resize their output (no allocation once it has the shape);
// backward functions set (not accumulate) the input gradient.
#pragma once

#include <cmath>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// A numerically stable logistic function (no overflow for large |x|).
template <typename Scalar>
Scalar sigmoid(Scalar x) {
  if (x >= Scalar(0)) return Scalar(1) / (Scalar(1) + std::exp(-x));
  const Scalar e = std::exp(x);
  return e / (Scalar(1) + e);
}

/// out = max(x, 0).
template <typename Scalar>
void relu(const Matrix<Scalar>& x, Matrix<Scalar>& out) {
  out.resize(x.rows(), x.cols());
  out = x.cwiseMax(Scalar(0));
}

/// dx = dout where x > 0, else 0 (the subgradient 0 at x = 0).
template <typename Scalar>
void relu_backward(const Matrix<Scalar>& x, const Matrix<Scalar>& dout, Matrix<Scalar>& dx) {
  dx.resize(x.rows(), x.cols());
  dx = (x.array() > Scalar(0)).select(dout, Scalar(0));
}

namespace detail {
template <typename Scalar>
constexpr Scalar kGeluC = Scalar(0.7978845608028654);  // sqrt(2 / pi)
template <typename Scalar>
constexpr Scalar kGeluA = Scalar(0.044715);
}  // namespace detail

/// GELU, tanh approximation, of one value.
template <typename Scalar>
Scalar gelu(Scalar x) {
  const Scalar u = detail::kGeluC<Scalar> * (x + detail::kGeluA<Scalar> * x * x * x);
  return Scalar(0.5) * x * (Scalar(1) + std::tanh(u));
}

/// The derivative of `gelu` at x.
template <typename Scalar>
Scalar gelu_derivative(Scalar x) {
  const Scalar u = detail::kGeluC<Scalar> * (x + detail::kGeluA<Scalar> * x * x * x);
  const Scalar t = std::tanh(u);
  const Scalar du =
      detail::kGeluC<Scalar> * (Scalar(1) + Scalar(3) * detail::kGeluA<Scalar> * x * x);
  return Scalar(0.5) * (Scalar(1) + t) + Scalar(0.5) * x * (Scalar(1) - t * t) * du;
}

/// out = GELU(x), tanh approximation, into `out` already x's shape (a Map
/// or a block over the caller's memory; `out` may be x itself).
template <typename In, typename Out>
void gelu_into(const Eigen::MatrixBase<In>& x, Eigen::MatrixBase<Out>& out) {
  using Scalar = typename Out::Scalar;
  // As an array expression, so Eigen vectorises tanh (its rational
  // approximation for float, within a few ulp of std::tanh); the scalar
  // std::tanh per element was a third of a transformer-lite forward pass.
  const auto v = x.array();
  out.array() =
      Scalar(0.5) * v *
      (Scalar(1) + (detail::kGeluC<Scalar> * (v + detail::kGeluA<Scalar> * v.cube())).tanh());
}

/// out = GELU(x), tanh approximation.
template <typename Scalar>
void gelu(const Matrix<Scalar>& x, Matrix<Scalar>& out) {
  out.resize(x.rows(), x.cols());
  gelu_into(x, out);
}

/// dx = dout * GELU'(x).
template <typename Scalar>
void gelu_backward(const Matrix<Scalar>& x, const Matrix<Scalar>& dout, Matrix<Scalar>& dx) {
  dx.resize(x.rows(), x.cols());
  dx = dout.cwiseProduct(x.unaryExpr([](Scalar v) { return gelu_derivative(v); }));
}

/// out = sigmoid(x).
template <typename Scalar>
void sigmoid(const Matrix<Scalar>& x, Matrix<Scalar>& out) {
  out.resize(x.rows(), x.cols());
  out = x.unaryExpr([](Scalar v) { return sigmoid(v); });
}

/// dx = dout * y (1 - y), from the forward output y = sigmoid(x), which is
/// what a caller keeps anyway.
template <typename Scalar>
void sigmoid_backward(const Matrix<Scalar>& y, const Matrix<Scalar>& dout, Matrix<Scalar>& dx) {
  dx.resize(y.rows(), y.cols());
  dx = dout.cwiseProduct(y.cwiseProduct((Scalar(1) - y.array()).matrix()));
}

}  // namespace nn
TOROUTER_END_NAMESPACE
