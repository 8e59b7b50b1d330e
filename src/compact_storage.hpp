// Internal: rounding trained weights to what a model file stores compactly.
//
// The model file stores a tensor in two bytes a value when every value is a
// half-precision number, and in one byte a value plus a float scale per row
// when every row is a whole number of int8 steps of its scale (model_io.cpp:
// "f16" and "q8"). A scorer whose large tables need no more precision (a
// projection, unit vectors, qualities in [0, 1]) rounds them when it
// trains: the file shrinks and the loaded model predicts exactly what the
// trained one did.
#pragma once

#include <Eigen/Core>
#include <cmath>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

template <typename Derived>
void round_to_half_precision(Eigen::DenseBase<Derived>& values) {
  values = values.template cast<Eigen::half>().template cast<float>();
}

/// The int8 step of a row whose largest magnitude is `largest` (> 0):
/// largest / 127 kept to 17 significant bits, so that every multiple of it
/// by -127 .. 127 is exact in float and the row's step can be found again
/// from its values alone.
inline float int8_row_scale(float largest) {
  int exponent = 0;
  const float mantissa = std::frexp(largest / 127.0f, &exponent);  // in [0.5, 1)
  return std::ldexp(std::nearbyint(std::ldexp(mantissa, 17)), exponent - 17);
}

/// Rounds each row to whole steps of int8_row_scale(its largest magnitude):
/// at most half a step, 1/254 of the row's largest value, from where it was.
template <typename Derived>
void round_to_int8_rows(Eigen::DenseBase<Derived>& values) {
  for (Eigen::Index r = 0; r < values.rows(); ++r) {
    const float largest = values.row(r).cwiseAbs().maxCoeff();
    if (!(largest > 0.0f)) continue;
    const float scale = int8_row_scale(largest);
    for (Eigen::Index c = 0; c < values.cols(); ++c) {
      values(r, c) = std::nearbyint(values(r, c) / scale) * scale;
    }
  }
}

}  // namespace detail
TOROUTER_END_NAMESPACE
