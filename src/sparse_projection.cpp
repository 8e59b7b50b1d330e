// Randomized SVD of IDF-weighted hashed features; see sparse_projection.hpp.
#include "sparse_projection.hpp"

#include <Eigen/QR>
#include <Eigen/SVD>
#include <Eigen/SparseCore>
#include <algorithm>
#include <cmath>
#include <random>
#include <type_traits>

#include "compact_storage.hpp"
#include "nn/embedding_bag.hpp"
#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

using Dense = Eigen::MatrixXf;

// Extra sketch columns beyond the kept directions, and power iterations:
// Halko et al.'s usual choices, enough for text whose spectrum decays slowly.
constexpr int kOversample = 10;
constexpr int kPowerIterations = 2;

// How one prompt's IDF-weighted entries are scaled: to unit norm, or with
// a words' block (word_buckets > 0) each block to kFeatureBlockNorm.
// Entries [0, split) are the words' block (all of them without blocks).
struct RowScales {
  std::size_t split = 0;
  double words = 0.0;
  double chars = 0.0;
};

RowScales row_scales(const SparseFeatures& f, const std::vector<float>& idf,
                     std::uint32_t word_buckets) {
  RowScales s;
  s.split = word_buckets == 0
                ? f.indices.size()
                : static_cast<std::size_t>(
                      std::lower_bound(f.indices.begin(), f.indices.end(), word_buckets) -
                      f.indices.begin());
  double words = 0.0, chars = 0.0;
  for (std::size_t i = 0; i < f.indices.size(); ++i) {
    const double w = f.values[i] * idf[f.indices[i]];
    (i < s.split ? words : chars) += w * w;
  }
  const double norm = word_buckets == 0 ? 1.0 : kFeatureBlockNorm;
  s.words = words > 0 ? norm / std::sqrt(words) : 0.0;
  s.chars = chars > 0 ? norm / std::sqrt(chars) : 0.0;
  return s;
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
                       const SparseFeatures& features, std::size_t first, std::size_t end,
                       float scale, float* out) {
  using Row = Eigen::Matrix<float, 1, Width>;
  using Sum = std::conditional_t<Width == Eigen::Dynamic, Eigen::Map<Row>, Row>;
  const Eigen::Index width = table.cols();
  const std::size_t row_bytes = static_cast<std::size_t>(width) * sizeof(float);
  Eigen::Map<Row> result(out, width);
  Sum sum(result);
  for (std::size_t i = first; i < end; ++i) {
    if (i + nn::kBagPrefetchAhead < end) {
      nn::prefetch_bytes(table.row(features.indices[i + nn::kBagPrefetchAhead]).data(), row_bytes);
    }
    const std::uint32_t b = features.indices[i];
    sum +=
        (features.values[i] * idf[b] * scale) * Eigen::Map<const Row>(table.row(b).data(), width);
  }
  if constexpr (Width != Eigen::Dynamic) result = sum;
}

}  // namespace

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
  // Two bytes a weight in the model file; rounded before it weighs the rows.
  Eigen::Map<Eigen::ArrayXf> values(idf.data(), static_cast<Eigen::Index>(idf.size()));
  round_to_half_precision(values);
  return idf;
}

SparseRows tfidf_rows(const std::vector<SparseFeatures>& rows, const std::vector<float>& idf,
                      std::uint32_t word_buckets) {
  std::vector<Eigen::Triplet<float, std::int64_t>> entries;
  for (std::size_t r = 0; r < rows.size(); ++r) {
    const SparseFeatures& f = rows[r];
    const RowScales scales = row_scales(f, idf, word_buckets);
    for (std::size_t i = 0; i < f.indices.size(); ++i) {
      const double scale = i < scales.split ? scales.words : scales.chars;
      entries.emplace_back(static_cast<std::int64_t>(r), f.indices[i],
                           static_cast<float>(f.values[i] * idf[f.indices[i]] * scale));
    }
  }
  SparseRows x(static_cast<std::int64_t>(rows.size()), static_cast<std::int64_t>(idf.size()));
  x.setFromTriplets(entries.begin(), entries.end());
  return x;
}

SparseProjection::SparseProjection(std::vector<float> idf, Table table, std::uint32_t word_buckets)
    : idf_(std::move(idf)), table_(std::move(table)), word_buckets_(word_buckets) {}

SparseProjection SparseProjection::fit(const std::vector<SparseFeatures>& rows,
                                       std::uint32_t buckets, int dims, std::uint64_t seed,
                                       std::uint32_t word_buckets) {
  std::vector<float> idf = inverse_document_frequency(rows, buckets);
  const SparseRows x = tfidf_rows(rows, idf, word_buckets);
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
  return SparseProjection(std::move(idf), std::move(table), word_buckets);
}

bool SparseProjection::operator==(const SparseProjection& other) const {
  return word_buckets_ == other.word_buckets_ && idf_ == other.idf_ &&
         table_.rows() == other.table_.rows() && table_.cols() == other.table_.cols() &&
         table_ == other.table_;
}

void SparseProjection::project(const SparseFeatures& features, float* out) const {
  const auto dims = static_cast<Eigen::Index>(table_.cols());
  Eigen::Map<Eigen::RowVectorXf> result(out, dims);
  result.setZero();
  const RowScales scales = row_scales(features, idf_, word_buckets_);
  const auto add = [&](std::size_t first, std::size_t end, double scale) {
    if (first == end || scale == 0.0) return;
    if (dims == 32) {  // the gbt and kNN scorers' default width
      add_weighted_rows<32>(table_, idf_, features, first, end, static_cast<float>(scale), out);
    } else {
      add_weighted_rows<Eigen::Dynamic>(table_, idf_, features, first, end,
                                        static_cast<float>(scale), out);
    }
  };
  add(0, scales.split, scales.words);
  add(scales.split, features.indices.size(), scales.chars);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
