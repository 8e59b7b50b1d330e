// The kNN scorer: a prompt's predicted quality for each expert is the
// (similarity-weighted) mean quality of its K most similar training prompts,
// by exact cosine over the featurizer's L2-normalised sparse vectors, or, in
// dense mode (dims=D), by exact cosine over a D-wide projection of them.
//
// Spec grammar (canonical form first; `spec()` returns it):
//   knn[:K][,dims=D][,buckets=N][,blocks=2][,weighting=uniform|similarity]
//   K          neighbours, 1..100000 (default 40)
//   dims       dense mode's width, 1..512 (absent: the exact sparse search)
//   buckets    featurizer buckets. Sparse: 16..2^24 (default 2^18: rows are
//              stored sparse, so a wide table costs no memory). Dense:
//              16..2^20 (default 2^14, as gbt: the model file holds a
//              buckets x D projection table)
//   blocks     1 (default): word and character n-grams in one vector; 2: in
//              two halves of the buckets, each weighted alike
//              (FeaturizerOptions::word_buckets), as two TF-IDF blocks
//   weighting  similarity (default): each neighbour weighs its cosine, clipped
//              at 0; uniform: each weighs 1
// The canonical form is "knn:K" followed by the options that differ from
// their defaults, in the order above ("knn:40", "knn:5,weighting=uniform",
// "knn:40,dims=32").
//
// Dense mode exists for speed (issue 15 item 9): the sparse search below
// walks about 300,000 postings for a 500-character prompt, a D-wide product
// with every row costs rows x D multiply-adds in contiguous memory. Training
// fits a SparseProjection (IDF weighting and a randomized SVD, as gbt's) on
// every training row with the training seed (it sees no outcome, so held-out
// rows leak nothing), projects each row and scales it to unit length; with
// fewer rows than D the missing directions are zero columns. A query is
// featurized, projected and scaled the same way, and one matrix-vector
// product with the stored rows (column-major: D passes of axpy over an
// L1-resident similarity vector) gives every cosine. Cosines <= 0 are never
// neighbours; the selection and the means are the sparse mode's code. The
// neighbours are approximate only in that the projection is: they are the
// exact K nearest in the projected space. llmrouter14's cross-validated AIQ
// is the sparse search's at D = 32 and slightly below at 64 and 128, and a
// 500-character route takes about 49 µs at D = 32 against 320 sparse
// (docs/BENCHMARKS.md).
//
// Neighbours are the K rows of highest cosine among the rows that share at
// least one bucket with the query (ties go to the lower row index); rows with
// no shared bucket have cosine 0 and are never neighbours. Per expert, the
// prediction averages over the neighbours that have an outcome of that expert;
// with none, it is the expert's mean quality over the stored rows, and when
// their weights sum to 0 they count uniformly. Output tokens average the same
// way over neighbours whose length is known, and are NaN without any.
//
// The sparse search. Loading or training derives an inverted index from the
// stored rows (the file holds only the rows): for each bucket, the rows holding
// it in ascending order with their values, rows kept as 16-bit offsets within
// chunks of 2^16 rows. A query adds v_query * v_row into a per-row float
// accumulator, walking only the posting lists of its own buckets in ascending
// bucket order (each found by a galloping search from the last, the next one's
// first postings prefetched), so each row's cosine is summed in the same order
// as a merge of the two sorted vectors, bit for bit the exact brute force.
// The accumulator starts at -0.0: values are all > 0 (checked on load), so a
// row sharing a bucket ends with its sign bit clear and one sharing none keeps
// it set, with no per-posting bookkeeping. A min-heap of the K best values then
// gives the K-th, and one pass over the rows collects those above it and the
// lowest rows equal to it (both passes skip blocks of 32 rows whose maximum
// cannot enter, and the heap ignores values below the K-th largest block
// maximum). Cost: one multiply-add per posting walked, about 300,000 for a
// 500-character prompt on llmrouter14's 5,608 rows. Bounds that would skip
// postings prune little with character n-grams, which most rows share:
// max-score still walks three quarters of them, block-max over row blocks
// nearly all (docs/BENCHMARKS.md).
//
// Model file ("knn" kind). Fields: featurizer.* (as the MLP's), knn.k,
// knn.weighting, knn.rows (N), and in sparse mode knn.nonzeros (Z), in
// dense mode knn.dims (D; its absence means sparse). Tensors, float32 (the
// first three in sparse mode only):
//   knn.offsets        [N+1, 2] row starts into indices/values, each split as
//                      (offset >> 24, offset & 0xFFFFFF) so both halves are
//                      exact in float32 whatever Z is
//   knn.indices        [Z] bucket indices stored as exact whole numbers: the
//                      spec caps buckets at 2^24, the largest range in which
//                      float32 holds every integer, and loading checks it
//   knn.values         [Z] the rows' feature values, each > 0
//   knn.quality        [N, E] true quality (0 where absent)
//   knn.present        [N, E] 1 where the expert has an outcome, else 0
//   knn.output_tokens  [N, E] answer length, -1 where unknown (the writer
//                      refuses NaN)
// Dense mode stores instead:
//   knn.idf            [buckets] the projection's IDF weights, each > 0
//   knn.projection     [buckets, D] the projection table
//   knn.dense_rows     [N, D] the rows' projections, each of norm 1 (or 0
//                      for a prompt with no feature)
// (no inverted index: the product needs none). About 4 bytes x (buckets + N)
// x D: 3.5 MB at D = 32 on llmrouter14, against 19 MB for the sparse rows.
// Loading checks offsets (start at 0, never decrease, end at Z), indices
// (whole, < buckets, strictly ascending within a row), values (> 0), the IDF
// (> 0), the dense rows' norms and the tables' ranges, naming the file and
// the tensor.
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cmath>
#include <cstdint>
#include <functional>
#include <limits>
#include <numeric>
#include <random>

#include "compact_storage.hpp"
#include "kernels/kernel_table.hpp"
#include "scorers.hpp"
#include "sparse_projection.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/features.hpp"
#include "trainer.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

constexpr long long kDefaultK = 40;
constexpr long long kMaxK = 100000;
constexpr std::uint32_t kDefaultBuckets = 1u << 18;
// Every integer up to 2^24 is exact in float32: bucket indices are stored as
// floats, so the bucket count may not exceed it.
constexpr std::uint32_t kMaxBuckets = 1u << 24;
// Dense mode stores a buckets x dims projection table in the model file, so
// it defaults to gbt's narrower featurizer and caps the width as gbt does.
constexpr std::uint32_t kDefaultDenseBuckets = 1u << 14;
constexpr std::uint32_t kMaxDenseBuckets = 1u << 20;
constexpr long long kMaxDims = 512;
constexpr std::uint64_t kOffsetHalf = 1u << 24;

enum class Weighting { Similarity, Uniform };

using Table = Eigen::Matrix<float, Eigen::Dynamic, Eigen::Dynamic, Eigen::RowMajor>;

// Rows per posting chunk. A chunk's posting lists store rows as 16-bit offsets
// from its first row: 6 bytes a posting instead of 8, and the postings a
// query walks (about 300,000 at 500 characters on llmrouter14) are most of
// its time.
constexpr std::size_t kChunkRows = std::size_t{1} << 16;

// Rows per block that select() skips whole when its maximum cannot enter.
constexpr std::size_t kSelectBlock = 32;

// Scratch of one query; sized to the stored rows once, so a warm query
// allocates nothing.
struct KnnWorkspace : ScorerWorkspace {
  SparseFeatures features;
  std::vector<float> embedding;           // dense mode: the query's projection
  std::vector<float> similarity;          // per stored row, -0.0f between queries
  std::vector<float> best;                // the K highest similarities, a min-heap
  std::vector<float> maxima, scratch;     // each block's highest similarity, a copy
  std::vector<std::uint32_t> neighbours;  // the K nearest rows, nearest first

  void prepare(std::size_t rows, std::size_t k, std::size_t dims) {
    if (similarity.size() != rows) similarity.assign(rows, -0.0f);
    embedding.resize(dims);
    maxima.reserve(rows / kSelectBlock + 1);
    scratch.reserve(rows / kSelectBlock + 1);
    best.reserve(std::min(rows, k));
    neighbours.reserve(std::min(rows, k));
  }
};

// The largest of sim[first, end); values are never NaN.
float block_max(const std::vector<float>& sim, std::size_t first, std::size_t end) {
  return Eigen::Map<const Eigen::ArrayXf>(sim.data() + first,
                                          static_cast<Eigen::Index>(end - first))
      .maxCoeff();
}

// Scales `v` to unit L2 norm; a zero vector (a prompt with no feature) stays 0.
void normalise(float* v, Eigen::Index dims) {
  Eigen::Map<Eigen::RowVectorXf> m(v, dims);
  const float norm = m.norm();
  if (norm > 0) m /= norm;
}

// Where bucket `bucket`'s posting list starts in its chunk.
struct ListStart {
  std::uint32_t bucket;
  std::uint32_t start;
};

// Posting lists of the rows [first_row, first_row + kChunkRows), fewer than
// 2^32 postings. List i holds bucket lists[i].bucket: rows first_row +
// rows[p] for p in [lists[i].start, lists[i + 1].start), ascending, and
// their values. `lists` ascends by bucket and ends with a sentinel whose
// bucket exceeds any bucket index and whose start is the postings' count.
struct PostingChunk {
  std::size_t first_row = 0;
  std::vector<ListStart> lists;
  std::vector<std::uint16_t> rows;
  std::vector<float> values;
};

// The first list at or after `from` whose bucket is >= `bucket`, galloping
// from `from`: a query's buckets ascend, so each search starts where the
// last stopped and the next list is usually near. `last` is the sentinel.
const ListStart* seek(const ListStart* from, const ListStart* last, std::uint32_t bucket) {
  std::size_t step = 1;
  while (from->bucket < bucket) {
    const ListStart* probe = from + std::min(step, static_cast<std::size_t>(last - from));
    if (probe->bucket >= bucket) {
      return std::lower_bound(from + 1, probe, bucket, [](const ListStart& list, std::uint32_t b) {
        return list.bucket < b;
      });
    }
    from = probe;
    step *= 2;
  }
  return from;
}

// The list of the first of the query's buckets, from position `i` on, that
// the chunk holds, searching from `from`; `i` is left at that bucket. nullptr
// when none is left.
const ListStart* next_list(const SparseFeatures& query, std::size_t& i, const ListStart* from,
                           const ListStart* last) {
  for (; i < query.indices.size() && from != last; ++i) {
    from = seek(from, last, query.indices[i]);
    if (from->bucket == query.indices[i]) return from;
  }
  return nullptr;
}

// Stored rows and their outcomes: in sparse mode the rows in CSR form and an
// inverted index over them, in dense mode the rows' unit-length projections.
struct KnnIndex {
  // Forward rows: row r holds indices/values [offsets[r], offsets[r + 1]).
  std::vector<std::uint64_t> offsets{0};
  std::vector<std::uint32_t> indices;
  std::vector<float> values;
  // The inverted index, derived from the forward rows by finish().
  std::vector<PostingChunk> chunks;
  // Dense mode only (projection.dims() > 0): rows x dims, each of norm 1
  // (or 0 for a prompt with no feature). Column-major, so the product with a
  // query is `dims` passes of axpy over a similarity vector that stays in L1;
  // measured faster than row-major's per-row dot products.
  SparseProjection projection;
  Eigen::MatrixXf dense_rows;
  // Outcomes, rows x experts; tokens NaN where unknown.
  Table quality, present, tokens;
  // Each expert's mean quality over the rows with its outcome (0 with none).
  std::vector<float> expert_mean;

  std::size_t rows() const { return static_cast<std::size_t>(quality.rows()); }
  bool dense() const { return projection.dims() > 0; }
  std::size_t dims() const { return static_cast<std::size_t>(projection.dims()); }

  void add_row(const SparseFeatures& f) {
    indices.insert(indices.end(), f.indices.begin(), f.indices.end());
    values.insert(values.end(), f.values.begin(), f.values.end());
    offsets.push_back(indices.size());
  }

  // Builds the posting lists and expert means from the rows and tables.
  void finish(std::uint32_t num_buckets) {
    chunks.clear();
    std::vector<std::uint32_t> slot(dense() ? 0 : num_buckets);
    for (std::size_t first = 0, end = 0; first < rows() && !dense(); first = end) {
      // At most kChunkRows rows, and fewer than 2^32 postings (a row holds
      // at most 2^24).
      end = first;
      while (end < rows() && end - first < kChunkRows &&
             offsets[end + 1] - offsets[first] < std::numeric_limits<std::uint32_t>::max()) {
        ++end;
      }
      chunks.push_back(build_chunk(first, end, slot));
    }
    const auto experts = static_cast<std::size_t>(quality.cols());
    expert_mean.assign(experts, 0.0f);
    for (std::size_t e = 0; e < experts; ++e) {
      double sum = 0, n = 0;
      for (Eigen::Index r = 0; r < quality.rows(); ++r) {
        if (present(r, static_cast<Eigen::Index>(e)) > 0.5f) {
          sum += quality(r, static_cast<Eigen::Index>(e));
          n += 1;
        }
      }
      expert_mean[e] = n > 0 ? static_cast<float>(sum / n) : 0.0f;
    }
  }

  // The posting lists of rows [first, end), by a counting sort on bucket:
  // visiting rows in order leaves each list sorted by row. `slot` (one entry
  // per bucket) first counts each bucket's postings, then maps the bucket to
  // its list.
  PostingChunk build_chunk(std::size_t first, std::size_t end,
                           std::vector<std::uint32_t>& slot) const {
    std::fill(slot.begin(), slot.end(), 0);
    for (std::uint64_t i = offsets[first]; i < offsets[end]; ++i) ++slot[indices[i]];
    PostingChunk chunk;
    chunk.first_row = first;
    std::uint32_t postings = 0;
    for (std::uint32_t b = 0; b < slot.size(); ++b) {
      const std::uint32_t n = slot[b];
      if (n == 0) continue;
      slot[b] = static_cast<std::uint32_t>(chunk.lists.size());
      chunk.lists.push_back({b, postings});
      postings += n;
    }
    chunk.lists.push_back({std::numeric_limits<std::uint32_t>::max(), postings});
    std::vector<std::uint32_t> next(chunk.lists.size());
    for (std::size_t i = 0; i < next.size(); ++i) next[i] = chunk.lists[i].start;
    chunk.rows.resize(postings);
    chunk.values.resize(postings);
    for (std::size_t r = first; r < end; ++r) {
      for (std::uint64_t i = offsets[r]; i < offsets[r + 1]; ++i) {
        const std::uint32_t at = next[slot[indices[i]]]++;
        chunk.rows[at] = static_cast<std::uint16_t>(r - first);
        chunk.values[at] = values[i];
      }
    }
    return chunk;
  }

  // Adds every stored row's dot product with `query` to sim[row], walking
  // only the posting lists of the query's buckets. sim starts at -0.0f:
  // stored and query values are all > 0, so each product is >= +0 and a row
  // that shares a bucket ends with its sign bit clear (-0 + +0 = +0), while
  // one that shares none keeps -0.0 with no flag to set or test. Each row's
  // products are added in ascending bucket order, as in a merge of the two
  // sorted vectors, so the sums do not depend on the index's layout.
  void accumulate(const SparseFeatures& query, float* sim) const {
    for (const PostingChunk& chunk : chunks) {
      float* chunk_sim = sim + chunk.first_row;
      const std::uint16_t* rows = chunk.rows.data();
      const float* values = chunk.values.data();
      const ListStart* last = chunk.lists.data() + chunk.lists.size() - 1;
      std::size_t i = 0;
      const ListStart* list = next_list(query, i, chunk.lists.data(), last);
      while (list != nullptr) {
        // The next list is found, and its first postings fetched, before
        // this one is walked: the lists lie far apart, and waiting for each
        // one's first cache lines cost about a fifth of the time.
        std::size_t j = i + 1;
        const ListStart* next = next_list(query, j, list, last);
        if (next != nullptr) {
          __builtin_prefetch(rows + next->start);
          __builtin_prefetch(values + next->start);
        }
        const float v = query.values[i];
        for (std::uint32_t p = list->start; p < list[1].start; ++p) {
          chunk_sim[rows[p]] += v * values[p];
        }
        list = next;
        i = j;
      }
    }
  }

  // Dense mode: every stored row's cosine with the query's unit-length
  // projection (`projected` when a stack already made it, else made here),
  // one matrix-vector product into sim. A cosine <= 0 (or NaN)
  // becomes -0.0f, which select() skips as it skips sparse rows sharing no
  // bucket: such rows are never neighbours, as in sparse mode.
  void dense_similarity(const SparseFeatures& query, const float* projected, float* embedding,
                        float* sim) const {
    const Eigen::Index d = projection.dims();
    if (projected != nullptr) {
      std::copy(projected, projected + d, embedding);
    } else {
      projection.project(query, embedding);
    }
    normalise(embedding, d);
    const Eigen::Index rows = dense_rows.rows();
    kernels().multiply_vector(dense_rows.data(), rows, d, embedding, sim);
    for (Eigen::Index r = 0; r < rows; ++r) sim[r] = sim[r] > 0 ? sim[r] : -0.0f;
  }

  // Fills ws.maxima with each block's highest similarity and returns a
  // floor below which no row can be among the K best: when K blocks each
  // hold a value >= m, at least K values are >= m, so the K-th largest block
  // maximum will do if it is > 0 (values <= 0 may be rows sharing no bucket,
  // which do not count); otherwise -infinity.
  static float block_floor(const std::vector<float>& sim, std::size_t k, KnnWorkspace& ws) {
    ws.maxima.clear();
    for (std::size_t first = 0; first < sim.size(); first += kSelectBlock) {
      ws.maxima.push_back(block_max(sim, first, std::min(sim.size(), first + kSelectBlock)));
    }
    const float none = -std::numeric_limits<float>::infinity();
    if (ws.maxima.size() < k) return none;
    ws.scratch.assign(ws.maxima.begin(), ws.maxima.end());
    const auto kth = ws.scratch.begin() + static_cast<long>(k - 1);
    std::nth_element(ws.scratch.begin(), kth, ws.scratch.end(), std::greater<float>());
    return *kth > 0 ? *kth : none;
  }

  // The K rows of highest similarity among those sharing a bucket, nearest
  // first (ties to the lower row), into ws.neighbours. A min-heap of the K
  // best values gives the K-th best, theta; the neighbours are every row
  // above theta and the lowest rows at theta. The same rows, in the same
  // order, as a partial sort of all those rows by (similarity desc, row
  // asc), with direct float comparisons instead of indirect ones. Both
  // passes skip whole blocks whose maximum cannot enter, and the heap sees
  // only values at or above block_floor(): in dense mode nearly every row is
  // a candidate, and testing and pushing each one cost more than the
  // matrix-vector product. (A buffer of 2K candidates cut to K by
  // nth_element instead of the heap was no faster.)
  static void select(const std::vector<float>& sim, std::size_t k, KnnWorkspace& ws) {
    const auto greater = std::greater<float>();
    const float floor = block_floor(sim, k, ws);
    std::vector<float>& best = ws.best;
    best.clear();
    for (std::size_t b = 0; b < ws.maxima.size(); ++b) {
      if (ws.maxima[b] < floor || (best.size() == k && ws.maxima[b] <= best.front())) continue;
      const std::size_t end = std::min(sim.size(), (b + 1) * kSelectBlock);
      for (std::size_t r = b * kSelectBlock; r < end; ++r) {
        const float s = sim[r];
        if (std::signbit(s) || s < floor) continue;  // -0.0: shares no bucket
        if (best.size() < k) {
          best.push_back(s);
          std::push_heap(best.begin(), best.end(), greater);
        } else if (s > best.front()) {
          std::pop_heap(best.begin(), best.end(), greater);
          best.back() = s;
          std::push_heap(best.begin(), best.end(), greater);
        }
      }
    }
    ws.neighbours.clear();
    if (best.empty()) return;
    const float theta = best.front();
    // Every row above theta is in the heap, so the rest are ties at theta.
    auto ties = static_cast<std::size_t>(std::count(best.begin(), best.end(), theta));
    for (std::size_t b = 0; b < ws.maxima.size(); ++b) {
      if (ws.maxima[b] < theta) continue;
      const std::size_t end = std::min(sim.size(), (b + 1) * kSelectBlock);
      for (std::size_t r = b * kSelectBlock; r < end; ++r) {
        if (std::signbit(sim[r]) || sim[r] < theta) continue;
        if (sim[r] == theta) {
          if (ties == 0) continue;
          --ties;
        }
        ws.neighbours.push_back(static_cast<std::uint32_t>(r));
      }
    }
    const float* s = sim.data();
    std::sort(ws.neighbours.begin(), ws.neighbours.end(), [s](std::uint32_t a, std::uint32_t b) {
      return s[a] > s[b] || (s[a] == s[b] && a < b);
    });
  }

  // Averages the neighbours' outcomes into one value per expert each.
  void average(const std::vector<std::uint32_t>& neighbours, const float* sim, Weighting weighting,
               float* quality_out, float* tokens_out) const {
    const auto experts = static_cast<Eigen::Index>(quality.cols());
    for (Eigen::Index e = 0; e < experts; ++e) {
      double q_weighted = 0, q_weight = 0, q_plain = 0, q_count = 0;
      double t_weighted = 0, t_weight = 0, t_plain = 0, t_count = 0;
      for (const std::uint32_t r : neighbours) {
        const double w = weighting == Weighting::Uniform ? 1.0 : std::max(0.0f, sim[r]);
        if (present(r, e) > 0.5f) {
          const double q = quality(r, e);
          q_weighted += w * q;
          q_weight += w;
          q_plain += q;
          q_count += 1;
        }
        const float t = tokens(r, e);
        if (std::isfinite(t)) {
          t_weighted += w * t;
          t_weight += w;
          t_plain += t;
          t_count += 1;
        }
      }
      const auto at = static_cast<std::size_t>(e);
      if (q_count == 0) {
        quality_out[at] = expert_mean[at];
      } else {
        quality_out[at] =
            static_cast<float>(q_weight > 0 ? q_weighted / q_weight : q_plain / q_count);
      }
      if (t_count == 0) {
        tokens_out[at] = std::numeric_limits<float>::quiet_NaN();
      } else {
        tokens_out[at] =
            static_cast<float>(t_weight > 0 ? t_weighted / t_weight : t_plain / t_count);
      }
    }
  }

  // Predicts one featurized query into `quality_out` and `tokens_out` (one
  // value per expert each), from its projection when `projected` is given
  // (dense mode). Allocates nothing once `ws` is prepared.
  void predict(const SparseFeatures& query, std::size_t k, Weighting weighting, KnnWorkspace& ws,
               float* quality_out, float* tokens_out, const float* projected = nullptr) const {
    ws.prepare(rows(), k, dims());
    if (dense()) {
      dense_similarity(query, projected, ws.embedding.data(), ws.similarity.data());
    } else {
      accumulate(query, ws.similarity.data());
    }
    select(ws.similarity, k, ws);
    average(ws.neighbours, ws.similarity.data(), weighting, quality_out, tokens_out);
    // The sparse accumulator must start at -0.0; the dense product overwrites.
    if (!dense()) std::fill(ws.similarity.begin(), ws.similarity.end(), -0.0f);
  }
};

// Copies the outcomes of `rows` of `set` into the index's tables.
void copy_outcomes(const TrainingSet& set, const std::vector<std::size_t>& rows, KnnIndex& index) {
  const auto experts = static_cast<Eigen::Index>(set.experts.size());
  const auto n = static_cast<Eigen::Index>(rows.size());
  index.quality.resize(n, experts);
  index.present.resize(n, experts);
  index.tokens.resize(n, experts);
  for (Eigen::Index i = 0; i < n; ++i) {
    const auto r = static_cast<Eigen::Index>(rows[static_cast<std::size_t>(i)]);
    index.quality.row(i) = set.quality.row(r);
    index.present.row(i) = set.present.row(r);
    index.tokens.row(i) = set.output_tokens.row(r);
  }
}

// The same seeded Fisher-Yates over mt19937_64 as the neural trainer, so a
// seed holds out the same rows for every scorer.
void shuffle(std::vector<std::size_t>& items, std::mt19937_64& rng) {
  for (std::size_t i = items.size(); i > 1; --i) {
    const std::size_t j = static_cast<std::size_t>(rng() % i);
    std::swap(items[i - 1], items[j]);
  }
}

std::uint32_t default_buckets(int dims) {
  return dims > 0 ? kDefaultDenseBuckets : kDefaultBuckets;
}
std::uint32_t max_buckets(int dims) { return dims > 0 ? kMaxDenseBuckets : kMaxBuckets; }

std::string canonical_spec(std::size_t k, int dims, const FeaturizerOptions& featurizer,
                           Weighting weighting) {
  std::string spec = fmt::format("knn:{}", k);
  if (dims > 0) spec += fmt::format(",dims={}", dims);
  if (featurizer.num_buckets != default_buckets(dims)) {
    spec += fmt::format(",buckets={}", featurizer.num_buckets);
  }
  if (featurizer.word_buckets != 0) spec += ",blocks=2";
  if (weighting == Weighting::Uniform) spec += ",weighting=uniform";
  return spec;
}

// The projection of `features` to `dims` coordinates. With fewer rows than
// dims the SVD finds fewer directions; the rest are padded with zero
// columns, which add nothing to any cosine, so the model keeps its width.
SparseProjection fit_projection(const std::vector<SparseFeatures>& features,
                                const FeaturizerOptions& featurizer, int dims, std::uint64_t seed) {
  const std::uint32_t buckets = featurizer.num_buckets;
  SparseProjection fitted =
      SparseProjection::fit(features, buckets, dims, seed, featurizer.word_buckets);
  if (fitted.dims() == dims) return fitted;
  SparseProjection::Table table = SparseProjection::Table::Zero(buckets, dims);
  table.leftCols(fitted.dims()) = fitted.table();
  return SparseProjection(fitted.idf(), std::move(table), featurizer.word_buckets);
}

// Each row's projection, scaled to unit length: rows x dims.
Table embed(const SparseProjection& projection, const std::vector<SparseFeatures>& rows) {
  Table out(static_cast<Eigen::Index>(rows.size()), projection.dims());
  for (std::size_t i = 0; i < rows.size(); ++i) {
    float* row = out.row(static_cast<Eigen::Index>(i)).data();
    projection.project(rows[i], row);
    normalise(row, projection.dims());
  }
  round_to_half_precision(out);  // unit vectors: see compact_storage.hpp
  return out;
}

// An index of the rows `which` of `set`: sparse from `features`, or dense
// (when the projection has dims) from `embedded`, the rows' projections.
KnnIndex build_index(const TrainingSet& set, const std::vector<SparseFeatures>& features,
                     const SparseProjection& projection, const Table& embedded,
                     const std::vector<std::size_t>& which, std::uint32_t buckets) {
  KnnIndex index;
  if (projection.dims() > 0) {
    index.projection = projection;
    index.dense_rows.resize(static_cast<Eigen::Index>(which.size()), projection.dims());
    for (std::size_t i = 0; i < which.size(); ++i) {
      index.dense_rows.row(static_cast<Eigen::Index>(i)) =
          embedded.row(static_cast<Eigen::Index>(which[i]));
    }
  } else {
    for (const std::size_t r : which) index.add_row(features[r]);
  }
  copy_outcomes(set, which, index);
  // Dense mode is the compact one (its projection and rows are at half
  // precision too); sparse mode keeps each quality exact.
  if (projection.dims() > 0) round_to_half_precision(index.quality);
  index.finish(buckets);
  return index;
}

Error tensor_error(const ModelReader& in, const char* tensor, const std::string& what) {
  return Error(fmt::format("{}tensor \"{}\": {}", in.where(), tensor, what));
}

bool whole(float v, double limit) { return v >= 0 && v < limit && v == std::floor(v); }

class KnnScorer : public TrainableScorer, public FeaturizedScorer {
 public:
  explicit KnnScorer(const ScorerSpec& spec) {
    k_ = spec.argument.empty()
             ? static_cast<std::size_t>(kDefaultK)
             : static_cast<std::size_t>(parse_integer(
                   spec.argument, 1, kMaxK, fmt::format("scorer spec \"{}\", K", spec.text)));
    dims_ = static_cast<int>(spec.integer_option("dims", 0, 1, kMaxDims));
    featurizer_options_.num_buckets = static_cast<std::uint32_t>(
        spec.integer_option("buckets", default_buckets(dims_), 16, max_buckets(dims_)));
    featurizer_options_.word_buckets = word_buckets_for(spec, featurizer_options_.num_buckets);
    const std::string weighting = spec.text_option("weighting", "similarity");
    if (weighting == "similarity") {
      weighting_ = Weighting::Similarity;
    } else if (weighting == "uniform") {
      weighting_ = Weighting::Uniform;
    } else {
      throw Error(fmt::format(
          "scorer spec \"{}\", option weighting: expected uniform or similarity, got \"{}\"",
          spec.text, weighting));
    }
    featurizer_ = Featurizer(featurizer_options_);
    spec_ = canonical_spec(k_, dims_, featurizer_options_, weighting_);
  }

  std::string_view kind() const override { return "knn"; }
  std::string spec() const override { return spec_; }

  std::unique_ptr<ScorerWorkspace> make_workspace() const override {
    auto ws = std::make_unique<KnnWorkspace>();
    ws->prepare(index_.rows(), k_, index_.dims());
    return ws;
  }

  void score_uncalibrated(const std::string_view* prompts, std::size_t count, ScoreBatch& out,
                          ScorerWorkspace* workspace) const override {
    score_rows(count, out, workspace,
               [&](std::size_t i, KnnWorkspace& ws) -> const SparseFeatures& {
                 featurizer_.featurize(prompts[i], ws.features);
                 return ws.features;
               });
  }

  const FeaturizerOptions& featurizer_options() const override { return featurizer_options_; }

  void score_featurized(const SparseFeatures* features, std::size_t count, ScoreBatch& out,
                        ScorerWorkspace* workspace) const override {
    score_projected(features, nullptr, count, out, workspace);
  }

  const SparseProjection* projection() const override {
    return index_.dense() ? &index_.projection : nullptr;
  }

  // `projected` may be null: each prompt is then projected here (dense
  // mode), or not at all (sparse mode).
  void score_projected(const SparseFeatures* features, const float* projected, std::size_t count,
                       ScoreBatch& out, ScorerWorkspace* workspace) const override {
    score_rows(
        count, out, workspace,
        [&](std::size_t i, KnnWorkspace&) -> const SparseFeatures& { return features[i]; },
        projected);
  }

 protected:
  TrainReport fit(const TrainingSet& set, const TrainOptions& options) override {
    if (!(options.validation_fraction >= 0 && options.validation_fraction < 1)) {
      throw Error("TrainOptions.validation_fraction must be in [0, 1)");
    }
    if (set.rows() >= std::numeric_limits<std::uint32_t>::max()) {
      throw Error(fmt::format("{}: too many training rows ({})", spec_, set.rows()));
    }
    const auto start = std::chrono::steady_clock::now();
    std::vector<SparseFeatures> features(set.rows());
    for (std::size_t i = 0; i < set.rows(); ++i) featurizer_.featurize(set.prompts[i], features[i]);
    // Dense mode. The projection is unsupervised: fitting it on every row,
    // held-out ones included, leaks no target (as gbt's).
    SparseProjection projection;
    Table embedded;
    const std::uint32_t buckets = featurizer_options_.num_buckets;
    if (dims_ > 0) {
      projection = fit_projection(features, featurizer_options_, dims_, options.seed);
      embedded = embed(projection, features);
    }

    std::vector<std::size_t> order(set.rows());
    std::iota(order.begin(), order.end(), 0);
    std::mt19937_64 rng(options.seed);
    shuffle(order, rng);
    const auto held_out =
        static_cast<std::size_t>(static_cast<double>(set.rows()) * options.validation_fraction);
    std::vector<std::size_t> validation(order.begin(), order.begin() + static_cast<long>(held_out));
    std::vector<std::size_t> train(order.begin() + static_cast<long>(held_out), order.end());
    std::sort(validation.begin(), validation.end());
    std::sort(train.begin(), train.end());
    if (train.empty())
      throw Error("training set too small: no row left after the validation split");

    TrainReport report;
    report.epochs_run = 1;
    report.best_epoch = 1;
    report.train_rows = train.size();
    report.validation_rows = validation.size();
    if (!validation.empty()) {
      // Leave-out figures: the held-out rows query an index of the others.
      const KnnIndex fitted = build_index(set, features, projection, embedded, train, buckets);
      leave_out_figures(set, features, fitted, validation, report);
    }
    // The final index keeps every row, held-out ones included.
    std::iota(order.begin(), order.end(), 0);
    index_ = build_index(set, features, projection, embedded, order, buckets);

    if (options.on_epoch) {
      EpochProgress progress;
      progress.epoch = 1;
      progress.validation_loss = report.validation_loss;
      progress.validation_quality = report.validation_quality;
      progress.elapsed_seconds =
          std::chrono::duration<double>(std::chrono::steady_clock::now() - start).count();
      progress.improved = true;
      options.on_epoch(progress);
    }
    return report;
  }

  void write_model(ModelWriter& out) const override {
    write_featurizer_options(out, featurizer_options_);
    out.set("knn.k", static_cast<std::uint64_t>(k_));
    out.set("knn.weighting",
            std::string(weighting_ == Weighting::Uniform ? "uniform" : "similarity"));
    if (dims_ > 0) out.set("knn.dims", static_cast<std::uint64_t>(dims_));
    out.set("knn.rows", static_cast<std::uint64_t>(index_.rows()));
    if (dims_ > 0) {
      out.add_tensor("knn.idf", {static_cast<std::int64_t>(index_.projection.idf().size())},
                     index_.projection.idf());
      out.add_tensor("knn.projection", index_.projection.table());
      out.add_tensor("knn.dense_rows", index_.dense_rows);
    } else {
      write_sparse_rows(out);
    }
    out.add_tensor("knn.quality", index_.quality);
    out.add_tensor("knn.present", index_.present);
    Table tokens = index_.tokens;
    for (Eigen::Index i = 0; i < tokens.size(); ++i) {
      if (!std::isfinite(tokens.data()[i])) tokens.data()[i] = -1.0f;
    }
    out.add_tensor("knn.output_tokens", tokens);
  }

  void read_model(const ModelReader& in) override {
    dims_ = in.has("knn.dims") ? static_cast<int>(in.integer("knn.dims", 1, kMaxDims)) : 0;
    const FeaturizerOptions f = read_featurizer_options(in, max_buckets(dims_));
    check_blocks(in, f);
    try {
      featurizer_ = Featurizer(f);
    } catch (const Error& e) {
      throw Error(in.where() + e.what());
    }
    featurizer_options_ = f;
    k_ = static_cast<std::size_t>(in.integer("knn.k", 1, kMaxK));
    const std::string& weighting = in.text("knn.weighting");
    if (weighting != "uniform" && weighting != "similarity") {
      throw Error(in.where() + "field \"knn.weighting\": expected uniform or similarity, got \"" +
                  weighting + "\"");
    }
    weighting_ = weighting == "uniform" ? Weighting::Uniform : Weighting::Similarity;
    spec_ = canonical_spec(k_, dims_, f, weighting_);
    if (in.text("scorer.spec") != spec_) {
      throw Error(
          fmt::format("{}field \"scorer.spec\" is \"{}\" but the knn fields describe \"{}\"",
                      in.where(), in.text("scorer.spec"), spec_));
    }
    const auto rows = static_cast<std::size_t>(
        in.integer("knn.rows", 1, std::numeric_limits<std::uint32_t>::max() - 1));
    KnnIndex index;
    if (dims_ > 0) {
      read_dense_rows(in, rows, index);
    } else {
      read_sparse_rows(in, rows, index);
    }
    read_outcomes(in, rows, index);
    index.finish(f.num_buckets);
    index_ = std::move(index);
  }

 private:
  // Row i of `out` from the features `features_of(i, workspace)` gives.
  template <typename FeaturesOf>
  void score_rows(std::size_t count, ScoreBatch& out, ScorerWorkspace* workspace,
                  FeaturesOf&& features_of, const float* projected = nullptr) const {
    if (!trained()) throw Error(fmt::format("{}: score called before train or load", spec_));
    KnnWorkspace local;
    auto* ws = workspace ? static_cast<KnnWorkspace*>(workspace) : &local;
    const std::size_t experts = expert_names().size();
    out.resize(count, experts);
    for (std::size_t i = 0; i < count; ++i) {
      index_.predict(features_of(i, *ws), k_, weighting_, *ws, out.quality.data() + i * experts,
                     out.output_tokens.data() + i * experts,
                     projected ? projected + i * index_.dims() : nullptr);
    }
  }

  // Validation loss and routed quality of the rows `validation` predicted
  // by `fitted`, an index of the other rows.
  void leave_out_figures(const TrainingSet& set, const std::vector<SparseFeatures>& features,
                         const KnnIndex& fitted, const std::vector<std::size_t>& validation,
                         TrainReport& report) const {
    const auto experts = static_cast<Eigen::Index>(set.experts.size());
    Eigen::MatrixXf scores(static_cast<Eigen::Index>(validation.size()), experts);
    std::vector<float> quality(static_cast<std::size_t>(experts));
    std::vector<float> tokens(static_cast<std::size_t>(experts));
    KnnWorkspace ws;
    double squared = 0, counted = 0;
    for (std::size_t i = 0; i < validation.size(); ++i) {
      const std::size_t r = validation[i];
      fitted.predict(features[r], k_, weighting_, ws, quality.data(), tokens.data());
      const auto row = static_cast<Eigen::Index>(r);
      for (Eigen::Index e = 0; e < experts; ++e) {
        const float q = quality[static_cast<std::size_t>(e)];
        scores(static_cast<Eigen::Index>(i), e) = q;
        if (set.present(row, e) > 0.5f) {
          const double diff = q - set.quality(row, e);
          squared += diff * diff;
          counted += 1;
        }
      }
    }
    report.validation_loss = counted > 0 ? squared / counted : 0.0;
    report.validation_quality = routed_quality(set, validation, scores);
  }

  void write_sparse_rows(ModelWriter& out) const {
    const std::size_t rows = index_.rows();
    out.set("knn.nonzeros", static_cast<std::uint64_t>(index_.indices.size()));
    std::vector<float> offsets;
    offsets.reserve(2 * (rows + 1));
    for (std::uint64_t o : index_.offsets) {
      offsets.push_back(static_cast<float>(o / kOffsetHalf));
      offsets.push_back(static_cast<float>(o % kOffsetHalf));
    }
    out.add_tensor("knn.offsets", {static_cast<std::int64_t>(rows + 1), 2}, std::move(offsets));
    // Exact: every index is < num_buckets <= 2^24.
    out.add_tensor("knn.indices", {static_cast<std::int64_t>(index_.indices.size())},
                   std::vector<float>(index_.indices.begin(), index_.indices.end()));
    out.add_tensor("knn.values", {static_cast<std::int64_t>(index_.values.size())}, index_.values);
  }

  // Dense mode's tensors: the IDF (each > 0), the projection table and the
  // rows' projections, each of norm 1 or 0 as embed() leaves them.
  void read_dense_rows(const ModelReader& in, std::size_t rows, KnnIndex& index) const {
    const auto buckets = static_cast<std::int64_t>(featurizer_options_.num_buckets);
    const std::vector<float>& idf = in.tensor("knn.idf", {buckets}).values;
    for (std::size_t i = 0; i < idf.size(); ++i) {
      if (!(idf[i] > 0)) {
        throw tensor_error(in, "knn.idf", fmt::format("value {} at {} is not positive", idf[i], i));
      }
    }
    SparseProjection::Table table;
    in.tensor("knn.projection", buckets, dims_, table);
    index.projection = SparseProjection(idf, std::move(table), featurizer_options_.word_buckets);
    in.tensor("knn.dense_rows", static_cast<Eigen::Index>(rows), dims_, index.dense_rows);
    for (Eigen::Index r = 0; r < index.dense_rows.rows(); ++r) {
      const float norm = index.dense_rows.row(r).norm();
      if (norm != 0 && std::abs(norm - 1.0f) > 1e-3f) {
        throw tensor_error(in, "knn.dense_rows",
                           fmt::format("row {} has norm {}, not 1 (or 0)", r, norm));
      }
    }
  }

  // Sparse mode's tensors: offsets, indices and values, checked as the
  // header says.
  void read_sparse_rows(const ModelReader& in, std::size_t rows, KnnIndex& index) const {
    const auto nonzeros = static_cast<std::uint64_t>(in.integer("knn.nonzeros", 0));
    const ModelTensor& offsets = in.tensor("knn.offsets", {static_cast<std::int64_t>(rows) + 1, 2});
    index.offsets.resize(rows + 1);
    for (std::size_t r = 0; r <= rows; ++r) {
      const float high = offsets.values[2 * r];
      const float low = offsets.values[2 * r + 1];
      if (!whole(high, static_cast<double>(kOffsetHalf)) ||
          !whole(low, static_cast<double>(kOffsetHalf))) {
        throw tensor_error(
            in, "knn.offsets",
            fmt::format("row {} holds ({}, {}), not two whole numbers below 2^24", r, high, low));
      }
      index.offsets[r] =
          static_cast<std::uint64_t>(high) * kOffsetHalf + static_cast<std::uint64_t>(low);
      if (r == 0 && index.offsets[0] != 0)
        throw tensor_error(in, "knn.offsets", "the first row must start at 0");
      if (r > 0 && index.offsets[r] < index.offsets[r - 1]) {
        throw tensor_error(in, "knn.offsets",
                           fmt::format("offsets decrease at row {} ({} after {})", r,
                                       index.offsets[r], index.offsets[r - 1]));
      }
    }
    if (index.offsets[rows] != nonzeros) {
      throw tensor_error(
          in, "knn.offsets",
          fmt::format("the rows end at {} but knn.nonzeros is {}", index.offsets[rows], nonzeros));
    }
    read_sparse_entries(in, rows, nonzeros, index);
  }

  void read_sparse_entries(const ModelReader& in, std::size_t rows, std::uint64_t nonzeros,
                           KnnIndex& index) const {
    const std::uint32_t buckets = featurizer_options_.num_buckets;
    const auto z = static_cast<std::int64_t>(nonzeros);
    const ModelTensor& indices = in.tensor("knn.indices", {z});
    index.indices.resize(static_cast<std::size_t>(nonzeros));
    for (std::size_t r = 0; r < rows; ++r) {
      for (std::uint64_t i = index.offsets[r]; i < index.offsets[r + 1]; ++i) {
        const float v = indices.values[i];
        if (!whole(v, buckets)) {
          throw tensor_error(
              in, "knn.indices",
              fmt::format("value {} at {} is not a bucket index below {}", v, i, buckets));
        }
        index.indices[i] = static_cast<std::uint32_t>(v);
        if (i > index.offsets[r] && index.indices[i] <= index.indices[i - 1]) {
          throw tensor_error(in, "knn.indices",
                             fmt::format("row {} is not strictly ascending at {}", r, i));
        }
      }
    }
    index.values = in.tensor("knn.values", {z}).values;
    // The featurizer's values are all > 0, which the search relies on.
    for (std::size_t i = 0; i < index.values.size(); ++i) {
      if (!(index.values[i] > 0)) {
        throw tensor_error(in, "knn.values",
                           fmt::format("value {} at {} is not positive", index.values[i], i));
      }
    }
  }

  void read_outcomes(const ModelReader& in, std::size_t rows, KnnIndex& index) const {
    const auto n = static_cast<std::int64_t>(rows);
    const auto experts = static_cast<std::int64_t>(expert_names().size());
    in.tensor("knn.quality", n, experts, index.quality);
    in.tensor("knn.present", n, experts, index.present);
    in.tensor("knn.output_tokens", n, experts, index.tokens);
    for (Eigen::Index i = 0; i < index.quality.size(); ++i) {
      const float q = index.quality.data()[i];
      const float p = index.present.data()[i];
      float& t = index.tokens.data()[i];
      if (!(q >= 0 && q <= 1))
        throw tensor_error(in, "knn.quality",
                           fmt::format("value {} at {} is outside [0, 1]", q, i));
      if (p != 0 && p != 1)
        throw tensor_error(in, "knn.present", fmt::format("value {} at {} is not 0 or 1", p, i));
      if (t == -1.0f) {
        t = std::numeric_limits<float>::quiet_NaN();
      } else if (t < 0) {
        throw tensor_error(in, "knn.output_tokens",
                           fmt::format("value {} at {} is neither -1 nor >= 0", t, i));
      }
    }
  }

  FeaturizerOptions featurizer_options_;
  Featurizer featurizer_;
  std::size_t k_ = kDefaultK;
  int dims_ = 0;  // 0: exact sparse search; else the projection's width
  Weighting weighting_ = Weighting::Similarity;
  std::string spec_;
  KnnIndex index_;
};

}  // namespace

std::unique_ptr<TrainableScorer> make_knn_scorer(const ScorerSpec& spec) {
  return std::make_unique<KnnScorer>(spec);
}

}  // namespace detail
TOROUTER_END_NAMESPACE
