// Internal: rounding trained weights to half precision.
//
// The model file stores a tensor in two bytes a value when every value is a
// half-precision number (model_io.cpp), so a scorer whose large tables need
// no more than half precision's 11 significant bits (a projection, unit
// vectors, qualities in [0, 1]) rounds them when it trains: the file halves
// and the loaded model predicts exactly what the trained one did.
#pragma once

#include <Eigen/Core>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

template <typename Derived>
void round_to_half_precision(Eigen::DenseBase<Derived>& values) {
  values = values.template cast<Eigen::half>().template cast<float>();
}

}  // namespace detail
TOROUTER_END_NAMESPACE
