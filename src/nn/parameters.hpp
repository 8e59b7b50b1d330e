// nn/parameters.hpp (internal, not installed): the matrix type of the nn building blocks and
// a uniform list of a model's parameters (name, value, gradient), which the optimiser steps, the
// trainer zeroes and model files save by name.
//
// Every block appends its parameters under a prefix:
//
//   torouter::nn::ParameterList<float> params;
//   hidden.collect_parameters("hidden", params);   // hidden.weight, hidden.bias
//   head.collect_parameters("head", params);
//   params.zero_grad();
//   ... forward, loss, backward ...
//   optimiser.step();
//
// The blocks are templates on the scalar type: float to train and serve,
// double for the finite-difference gradient checks. Forward passes are const
// and keep their intermediates in a caller-owned cache, so threads can share
// one model, each with its own caches; backward passes accumulate into the
// block's gradients and are for one training thread.
#pragma once

#include <Eigen/Core>
#include <algorithm>
#include <cmath>
#include <cstdint>
#include <random>
#include <string>
#include <utility>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace nn {

/// Activations and weights. Row-major so that one example (or one position
/// of a sequence) is a contiguous row, as in `torouter::ScoreMatrix`.
template <typename Scalar>
using Matrix = Eigen::Matrix<Scalar, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

/// Row and column counts and indices.
using Index = Eigen::Index;

/// The random engine used to initialise weights. Its output sequence is fixed
/// by the C++ standard, and `uniform` below avoids the implementation-defined
/// standard distributions, so a seed means the same weights everywhere.
using Rng = std::mt19937_64;

/// A uniform draw in [-bound, bound).
inline double uniform(Rng& rng, double bound) {
  const double unit = static_cast<double>(rng() >> 11) * 0x1.0p-53;  // [0, 1)
  return (2.0 * unit - 1.0) * bound;
}

/// Fills `m` with uniform draws in [-bound, bound).
template <typename Scalar>
void fill_uniform(Matrix<Scalar>& m, double bound, Rng& rng) {
  for (Index i = 0; i < m.size(); ++i) m.data()[i] = static_cast<Scalar>(uniform(rng, bound));
}

/// One trainable tensor of a block, seen through pointers into the block (the
/// block must outlive the list and must not be moved while it is in use).
template <typename Scalar>
struct Parameter {
  /// Dotted name, e.g. "encoder.0.attn.q.weight"; model files key on it.
  std::string name;
  /// The value the optimiser updates.
  Matrix<Scalar>* value = nullptr;
  /// The gradient backward passes accumulate into; same shape as `value`.
  Matrix<Scalar>* grad = nullptr;
  /// Whether AdamW's weight decay applies: true for weight matrices and
  /// embedding tables, false for biases and LayerNorm gains and biases
  /// (decaying those pulls a norm's gain towards 0 and biases have no scale
  /// to regularise).
  bool decay = true;
  /// For a sparse gradient (an embedding table): the rows touched since the
  /// last `zero_grad`, sorted and unique; the other rows of `grad` are zero.
  /// Null for a dense gradient.
  std::vector<Index>* touched_rows = nullptr;
};

/// The parameters of a model, in the order its blocks appended them.
template <typename Scalar>
class ParameterList {
 public:
  /// Appends one parameter.
  void add(Parameter<Scalar> parameter) { parameters_.push_back(std::move(parameter)); }

  /// Sets every gradient to zero; for a sparse gradient only the touched rows
  /// are cleared (the rest already are zero), and the touched list is emptied.
  void zero_grad() {
    for (auto& p : parameters_) {
      if (p.touched_rows != nullptr) {
        for (Index row : *p.touched_rows) p.grad->row(row).setZero();
        p.touched_rows->clear();
      } else {
        p.grad->setZero();
      }
    }
  }

  /// The total number of scalars over all parameters.
  Index scalar_count() const {
    Index n = 0;
    for (const auto& p : parameters_) n += p.value->size();
    return n;
  }

  /// The parameter named `name`, or null.
  Parameter<Scalar>* find(const std::string& name) {
    for (auto& p : parameters_) {
      if (p.name == name) return &p;
    }
    return nullptr;
  }

  /// Number of parameters (tensors, not scalars).
  std::size_t size() const { return parameters_.size(); }
  /// The i-th parameter.
  Parameter<Scalar>& operator[](std::size_t i) { return parameters_[i]; }
  /// The i-th parameter.
  const Parameter<Scalar>& operator[](std::size_t i) const { return parameters_[i]; }
  /// Iteration in insertion order.
  auto begin() { return parameters_.begin(); }
  /// Iteration in insertion order.
  auto end() { return parameters_.end(); }
  /// Iteration in insertion order.
  auto begin() const { return parameters_.begin(); }
  /// Iteration in insertion order.
  auto end() const { return parameters_.end(); }

 private:
  std::vector<Parameter<Scalar>> parameters_;
};

/// Joins a prefix and a name with a dot ("" + "weight" is "weight").
inline std::string join_name(const std::string& prefix, const char* name) {
  return prefix.empty() ? std::string(name) : prefix + "." + name;
}

}  // namespace nn
TOROUTER_END_NAMESPACE
