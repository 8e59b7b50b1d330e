// One CPU level's kernels (kernel_table.hpp). CMake compiles this file once
// per higher level with that level's -march, defining TOROUTER_KERNEL_LEVEL
// (the CpuLevel enumerator), TOROUTER_KERNEL_LEVEL_NAME and
// TOROUTER_KERNEL_ENTRY (the one symbol the copy keeps global); every Eigen
// function it instantiates becomes private to the copy, so no level's code
// can stand in for another's at link time.
#include <Eigen/Core>

#include "kernels/kernel_table.hpp"
#include "nn/embedding_bag.hpp"
#include "nn/int8_embedding_bag.hpp"
#include "tlite_model.hpp"
#include "tlite_packed.hpp"

#ifndef TOROUTER_KERNEL_LEVEL
// The baseline copy: an ordinary source of the library, built with its flags.
#define TOROUTER_KERNEL_LEVEL baseline
#define TOROUTER_KERNEL_LEVEL_NAME "x86-64"
#define TOROUTER_KERNEL_ENTRY torouter_kernels_baseline
#endif

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using RowMajor = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

void encode_packed(const TliteModel<float>& model, const std::uint32_t* ids,
                   const std::vector<nn::Index>& starts, TlitePackedBuffers& buffers,
                   nn::Matrix<float>& pooled, nn::Index first_row) {
  tlite_encode_packed(model, ids, starts, buffers, pooled, first_row);
}

void multiply(const float* a, const float* b, float* c, nn::Index m, nn::Index n, nn::Index k) {
  Eigen::Map<RowMajor> out(c, m, n);
  out.noalias() = Eigen::Map<const RowMajor>(a, m, k) * Eigen::Map<const RowMajor>(b, k, n);
}

void multiply_vector(const float* a, nn::Index rows, nn::Index cols, const float* x, float* y) {
  Eigen::Map<Eigen::VectorXf> out(y, rows);
  out.noalias() =
      Eigen::Map<const Eigen::MatrixXf>(a, rows, cols) * Eigen::Map<const Eigen::VectorXf>(x, cols);
}

const KernelTable kTable{
    CpuLevel::TOROUTER_KERNEL_LEVEL,
    TOROUTER_KERNEL_LEVEL_NAME,
    KernelLayout{sizeof(TliteModel<float>), sizeof(TlitePackedBuffers), sizeof(nn::Matrix<float>)},
    &encode_packed,
    &multiply,
    &nn::add_weighted_rows<float>,
    &nn::add_weighted_int8_rows,
    &multiply_vector};

}  // namespace
}  // namespace detail
TOROUTER_END_NAMESPACE

extern "C" const torouter::detail::KernelTable* TOROUTER_KERNEL_ENTRY() {
  return &torouter::detail::kTable;
}
