// Randomized SVD of IDF-weighted hashed features; see sparse_projection.hpp.
#include "sparse_projection.hpp"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <Eigen/SparseCore>
#include <cmath>
#include <random>
#include <type_traits>

#include "compact_storage.hpp"
#include "nn/embedding_bag.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using SparseRows = Eigen::SparseMatrix<float, Eigen::RowMajor, std::int64_t>;
using Dense = Eigen::MatrixXf;

// Extra sketch columns beyond the kept directions, and power iterations:
// Halko et al.'s usual choices, enough for text whose spectrum decays slowly.
constexpr int kOversample = 10;
constexpr int kPowerIterations = 2;

std::vector<float> inverse_document_frequency(const std::vector<SparseFeatures>& rows,
                                              std::uint32_t buckets) {
  std::vector<double> df(buckets, 0.0);
  for (const auto& row : rows) {
    for (const std::uint32_t b : row.indices) df[b] += 1.0;
  }
  std::vector<float> idf(buckets);
  const double n = static_cast<double>(rows.size());
  for (std::uint32_t b = 0; b < buckets; ++b) {
    idf[b] = static_cast<float>(std::log((1.0 + n) / (1.0 + df[b])) + 1.0);
  }
  return idf;
}

SparseRows weighted_matrix(const std::vector<SparseFeatures>& rows, const std::vector<float>& idf) {
  std::vector<Eigen::Triplet<float, std::int64_t>> entries;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const SparseFeatures& f = rows[r];
    double norm = 0.0;
    for (std::size_t i = 0; i < f.indices.size(); ++i) {
      const double w = f.values[i] * idf[f.indices[i]];
      norm += w * w;
    }
    const double scale = norm > 0 ? 1.0 / std::sqrt(norm) : 0.0;
    for (std::size_t i = 0; i < f.indices.size(); ++i) {
      entries.emplace_back(static_cast<std::int64_t>(r), f.indices[i],
                           static_cast<float>(f.values[i] * idf[f.indices[i]] * scale));
    }
  }
  SparseRows x(static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(idf.size()));
  x.setFromTriplets(entries.begin(), entries.end());
  return x;
}

Dense orthonormal_basis(const Dense& m) {
  Eigen::HouseholderQR<Dense> qr(m);
  return qr.householderQ() * Dense::Identity(m.rows(), m.cols());
}

// out += each feature's weight (value * IDF * `scale`) times its bucket's
// table row. A prompt's rows lie scattered over a table of megabytes, so
// the sum waits on memory: the rows a few features ahead are asked for
// first, and at a fixed width the sum stays in registers (stored once, not
// after every row). The multiplies and adds are those of Eigen's `+=` on
// `out`, in the same order, so the result is the same to the bit.
template <int Width>
void add_weighted_rows(const SparseProjection::Table& table, const std::vector<float>& idf,
                       const SparseFeatures& features, float scale, float* out) {
  using Row = Eigen::Matrix<float, 1, Width>;
  using Sum = std::conditional_t<Width == Eigen::Dynamic, Eigen::Map<Row>, Row>;
  const Eigen::Index width = table.cols();
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  Eigen::Map<Row> result(out, width);
  Sum sum(result);
  const std::size_t count = features.indices.size();
  for (std::size_t i = 0; i < count; ++i) {
    if (i + nn::kBagPrefetchAhead < count) {
      nn::prefetch_bytes(table.row(features.indices[i + nn::kBagPrefetchAhead]).data(), row_bytes);
    }
    const std::uint32_t b = features.indices[i];
    sum +=
        (features.values[i] * idf[b] * scale) * Eigen::Map<const Row>(table.row(b).data(), width);
  }
  if constexpr (Width != Eigen::Dynamic) result = sum;
}

}  // namespace

SparseProjection::SparseProjection(std::vector<float> idf, Table table)
    : idf_(std::move(idf)), table_(std::move(table)) {}

SparseProjection SparseProjection::fit(const std::vector<SparseFeatures>& rows,
                                       std::uint32_t buckets, int dims, std::uint64_t seed) {
  std::vector<float> idf = inverse_document_frequency(rows, buckets);
  // Two bytes a weight in the model file; rounded before it weighs the rows.
  Eigen::Map<Eigen::ArrayXf> idf_values(idf.data(), static_cast<Eigen::Index>(idf.size()));
  round_to_half_precision(idf_values);
  const SparseRows x = weighted_matrix(rows, idf);
  const int width = std::min<int>(dims + kOversample,
                                  static_cast<int>(std::min<std::int64_t>(x.rows(), x.cols())));
  std::mt19937_64 rng(seed);
  std::normal_distribution<float> gaussian(0.0f, 1.0f);
  Dense sketch(x.cols(), width);
  for (Eigen::Index i = 0; i < sketch.size(); ++i) sketch.data()[i] = gaussian(rng);
  Dense range = orthonormal_basis(x * sketch);  // rows x width
  for (int i = 0; i < kPowerIterations; ++i) {
    const Dense back = orthonormal_basis(x.transpose() * range);  // buckets x width
    range = orthonormal_basis(x * back);
  }
  // x ~ range * (range^T x); the right singular vectors of x are those of
  // the small width x buckets matrix range^T x, i.e. the left ones of its
  // transpose.
  const Dense small = x.transpose() * range;  // buckets x width
  Eigen::BDCSVD<Dense> svd(small, Eigen::ComputeThinU);
  // Fewer rows than dims leave fewer directions: the rest stay zero, so the
  // projection is always `dims` wide.
  Table table = Table::Zero(x.cols(), dims);
  const int kept = std::min(dims, width);
  table.leftCols(kept) = svd.matrixU().leftCols(kept);
  // One byte a weight in the model file (compact_storage.hpp).
  round_to_int8_rows(table);
  return SparseProjection(std::move(idf), std::move(table));
}

bool SparseProjection::operator==(const SparseProjection& other) const {
  return idf_ == other.idf_ && table_.rows() == other.table_.rows() &&
         table_.cols() == other.table_.cols() && table_ == other.table_;
}

void SparseProjection::project(const SparseFeatures& features, float* out) const {
  const auto dims = static_cast<Eigen::Index>(table_.cols());
  Eigen::Map<Eigen::RowVectorXf> result(out, dims);
  result.setZero();
  double norm = 0.0;
  for (std::size_t i = 0; i < features.indices.size(); ++i) {
    const double w = features.values[i] * idf_[features.indices[i]];
    norm += w * w;
  }
  if (norm <= 0) return;
  const auto scale = static_cast<float>(1.0 / std::sqrt(norm));
  if (dims == 32) {  // the gbt and kNN scorers' default width
    add_weighted_rows<32>(table_, idf_, features, scale, out);
  } else {
    add_weighted_rows<Eigen::Dynamic>(table_, idf_, features, scale, out);
  }
}

}  // namespace detail
TOROUTER_END_NAMESPACE
