// Internal: the kernels compiled once per CPU level, and the one this
// process runs.
//
// Eigen picks its vector instructions when it is compiled, so one build of
// the library would run SSE2 code on every CPU. Instead level_kernels.cpp is
// compiled once per level (cmake/TorouterCpuLevels.cmake: the x86-64
// baseline, and x86-64-v3 and x86-64-v4 where the compiler and the platform
// allow), each copy's symbols made private to it but one entry point, and
// `kernels()` hands out the best copy this CPU runs, once, on first use.
//
//   const detail::KernelTable& k = detail::kernels();
//   k.encode_packed(model, ids, starts, buffers, pooled, 0);
//
// What may cross into a level's code: objects it reads or writes in place.
// A level built for AVX allocates with 32- or 64-byte alignment and a
// header of its own, so nothing it allocates may be freed outside it, and
// the reverse: its functions never resize what they are given.
#pragma once

#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "nn/parameters.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

template <typename Scalar>
class TliteModel;
struct TlitePackedBuffers;

/// A CPU level, lowest first.
enum class CpuLevel { baseline = 0, x86_64_v3 = 1, x86_64_v4 = 2 };

/// The sizes of the types that cross into a level's code. Every level is
/// compiled with the baseline's Eigen alignment so that they agree;
/// `kernels()` checks that they do.
struct KernelLayout {
  std::size_t model = 0, buffers = 0, matrix = 0;
  bool operator==(const KernelLayout& o) const {
    return model == o.model && buffers == o.buffers && matrix == o.matrix;
  }
};

/// One level's kernels.
struct KernelTable {
  CpuLevel level;
  const char* name;  // "x86-64", "x86-64-v3" or "x86-64-v4"
  KernelLayout layout;
  /// tlite_encode_packed (tlite_packed.hpp) compiled for this level.
  void (*encode_packed)(const TliteModel<float>& model, const std::uint32_t* ids,
                        const std::vector<nn::Index>& starts, TlitePackedBuffers& buffers,
                        nn::Matrix<float>& pooled, nn::Index first_row);
  /// c = a b, every matrix row-major and dense: a is m x k, b is k x n and
  /// c is m x n.
  void (*multiply)(const float* a, const float* b, float* c, nn::Index m, nn::Index n, nn::Index k);
  /// nn::add_weighted_rows<float> (nn/embedding_bag.hpp): one example of an
  /// embedding bag, added into out[0 .. width).
  void (*embedding_bag)(const float* table, nn::Index width, const std::uint32_t* indices,
                        const float* values, std::size_t count, float* out);
  /// nn::add_weighted_int8_rows (nn/int8_embedding_bag.hpp): the same from
  /// an int8 table with a scale per row.
  void (*int8_embedding_bag)(const std::int8_t* table, const float* scales, nn::Index width,
                             const std::uint32_t* indices, const float* values, std::size_t count,
                             float* out);
  /// y = a x for a column-major a of rows x cols.
  void (*multiply_vector)(const float* a, nn::Index rows, nn::Index cols, const float* x, float* y);
};

/// The kernels this process runs: the highest level both compiled and
/// offered by the CPU, at most TOROUTER_CPU_LEVEL's when that is set.
/// Chosen on the first call. Throws torouter::Error when TOROUTER_CPU_LEVEL
/// names no level.
const KernelTable& kernels();

/// The kernels of `level`, or null when this build did not compile it or
/// this CPU cannot run it (tests compare every level the machine runs).
const KernelTable* kernels_for(CpuLevel level);

/// The highest level this CPU and its operating system run.
CpuLevel cpu_level();

/// "x86-64", "x86-64-v3" or "x86-64-v4".
std::string_view cpu_level_name(CpuLevel level);

}  // namespace detail
TOROUTER_END_NAMESPACE
