// Internal: a dense, low-rank view of the featurizer's hashed features (the
// "SVD of TF-IDF" that tree routers read), fitted without a vocabulary.
//
// Fitting: each training prompt's hashed features are weighted by the
// bucket's inverse document frequency, ln((1 + n) / (1 + df)) + 1 as
// scikit-learn's TfidfTransformer does, and scaled to unit L2 norm (or,
// where the featurizer gives words and characters blocks of buckets of
// their own, `word_buckets` > 0, each block to norm 1/sqrt(2): two TF-IDF
// blocks side by side); the
// top `dims` right singular vectors of that rows x buckets matrix are found
// by randomized SVD (Halko, Martinsson and Tropp 2011: a Gaussian sketch
// with `dims + 10` columns, two power iterations, each re-orthonormalised).
// Projecting: the same weighting and norm, then x * V, a sum of one
// `dims`-wide table row per feature, as an embedding bag.
#pragma once

#include <Eigen/Core>
#include <Eigen/SparseCore>
#include <cstddef>
#include <cstdint>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/features.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {

/// Prompts' IDF-weighted features, one row each (rows x buckets).
using SparseRows = Eigen::SparseMatrix<float, Eigen::RowMajor, std::int64_t>;

/// Each bucket's inverse document frequency over `rows`, rounded to half
/// precision (as the model file stores it).
std::vector<float> inverse_document_frequency(const std::vector<SparseFeatures>& rows,
                                              std::uint32_t buckets);

/// `rows` weighted by `idf` and scaled as `SparseProjection::project` scales
/// a prompt: what the projection's table multiplies.
SparseRows tfidf_rows(const std::vector<SparseFeatures>& rows, const std::vector<float>& idf,
                      std::uint32_t word_buckets);

class SparseProjection {
 public:
  using Table = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

  SparseProjection() = default;
  /// From stored weights: one IDF per bucket and a buckets x dims table,
  /// for features whose first `word_buckets` buckets are the words' block
  /// (FeaturizerOptions::word_buckets; 0: one block).
  SparseProjection(std::vector<float> idf, Table table, std::uint32_t word_buckets = 0);

  /// Fits the IDF and the top `dims` singular directions of `rows`
  /// (featurized with `buckets` buckets, the first `word_buckets` the
  /// words'); deterministic for a seed.
  static SparseProjection fit(const std::vector<SparseFeatures>& rows, std::uint32_t buckets,
                              int dims, std::uint64_t seed, std::uint32_t word_buckets = 0);

  /// Writes the `dims()` coordinates of `features` to `out`; allocates nothing.
  void project(const SparseFeatures& features, float* out) const;

  int dims() const { return static_cast<int>(table_.cols()); }
  std::uint32_t buckets() const { return static_cast<std::uint32_t>(table_.rows()); }
  const std::vector<float>& idf() const { return idf_; }
  const Table& table() const { return table_; }
  std::uint32_t word_buckets() const { return word_buckets_; }

  /// True when both map every prompt to the same coordinates: the same
  /// IDF and table, to the bit.
  bool operator==(const SparseProjection& other) const;

 private:
  std::vector<float> idf_;
  Table table_;
  std::uint32_t word_buckets_ = 0;
};

}  // namespace detail
TOROUTER_END_NAMESPACE
