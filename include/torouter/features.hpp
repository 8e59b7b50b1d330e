// torouter/features.hpp: turns a prompt into the features the scorers read,
// with no vocabulary file: hashed word unigrams, word bigrams and character
// n-grams (a sparse, L2-normalised vector) plus a few cheap numeric features.
// The MLP and kNN scorers read `featurize`; the transformer-lite reads
// `token_ids`.
//
//   torouter::Featurizer featurizer;            // 2^18 buckets, words, bigrams, 3..5-grams
//   torouter::SparseFeatures features;          // reuse it: warm calls allocate nothing
//   featurizer.featurize("Écris une fonction Python", features);
//   for (std::size_t i = 0; i < features.indices.size(); ++i)
//     use(features.indices[i], features.values[i]);
//   float chars = features.dense[torouter::kDenseLogChars];
//
// Normalisation. The text is decoded as UTF-8; every ill-formed sequence (a
// lone continuation byte, a truncated sequence, an overlong form, a
// surrogate, a byte 0xF5..0xFF, ...) becomes one U+FFFD per maximal invalid
// subpart, as the Unicode standard recommends. Code points are lowercased by
// their simple case mappings in ASCII, Latin-1 Supplement, Latin Extended-A,
// Greek, Cyrillic (with its Supplement) and the fullwidth Latin letters; other
// scripts are kept as they are. No other normalisation is done (no NFC: a
// precomposed "é" and "e" + U+0301 differ; final sigma stays "ς").
//
// Words. A word is a maximal run of word characters: ASCII letters and
// digits, and every code point >= 0x80 outside the separator ranges (C1
// controls and Latin-1 punctuation and symbols except ª µ º; × and ÷; a few
// script punctuation marks U+037E, U+0387, U+0589, U+060C, U+061B,
// U+061F, U+06D4, U+0964, U+0965; U+1680; U+2000..U+2BFF (spaces,
// punctuation, super- and subscripts, currency, letterlike symbols, number
// forms, arrows, math, technical and box symbols, dingbats);
// U+3000..U+303F; U+FE10..U+FE1F; U+FE30..U+FE6F; fullwidth punctuation
// U+FF01..U+FF0F, U+FF1A..U+FF20, U+FF3B..U+FF40, U+FF5B..U+FF65, U+FFE0..U+FFEE;
// U+FFF0..U+FFFF, which includes U+FFFD; U+1F000..U+1FAFF, the emoji). Each
// CJK ideograph (U+3400..U+4DBF, U+4E00..U+9FFF, U+F900..U+FAFF,
// U+20000..U+3FFFF) is a word of its own.
//
// The stable hash (a model file means the same on every machine). Every
// feature is a byte string S over the lowercased UTF-8 text:
//   word unigram  S = 'w' + word
//   word bigram   S = 'b' + word1 + ' ' + word2       (consecutive words)
//   char n-gram   S = 'c' + n code points of (' ' + word + ' ')
// for n in [char_ngram_min, char_ngram_max] and every start position in the
// padded word. Its bucket is
//   FNV-1a-64(seed as 8 bytes little-endian, then S) mod num_buckets
// where FNV-1a-64 starts at 14695981039346656037 and, per byte b,
// sets h = (h XOR b) * 1099511628211 mod 2^64. With `word_buckets` = W > 0
// the words and the characters get buckets of their own: a word unigram's
// or bigram's bucket is that hash mod W, a character n-gram's W + (that
// hash mod (num_buckets - W)). `feature_bucket` computes it for one feature.
//
// Values. Each bucket's value is 1 + ln(count), count being the number of
// features hashed to it (collisions add up); the vector is then scaled to
// unit L2 norm, or with `word_buckets` > 0 each block of buckets (words,
// characters) to norm 1/sqrt(2). The dense block is not normalised.
#pragma once

#include <array>
#include <cstddef>
#include <cstdint>
#include <string_view>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// Settings of a `Featurizer`. They are part of a model: a scorer saves them
/// and must featurize with the same ones.
struct FeaturizerOptions {
  /// Number of hash buckets, the width of the sparse vector (> 0).
  std::uint32_t num_buckets = 1u << 18;
  /// Hash each lowercased word.
  bool word_unigrams = true;
  /// Hash each pair of consecutive words.
  bool word_bigrams = true;
  /// Hash the character n-grams of each space-padded word.
  bool char_ngrams = true;
  /// Shortest character n-gram, in code points (1..char_ngram_max).
  std::uint32_t char_ngram_min = 3;
  /// Longest character n-gram, in code points (char_ngram_min..kMaxCharNgram).
  std::uint32_t char_ngram_max = 5;
  /// Mixed into every hash: a different seed gives different collisions.
  std::uint64_t hash_seed = 0;
  /// 0: every feature hashes over all `num_buckets`. Else (1 ..
  /// num_buckets - 1) word unigrams and bigrams hash into the first
  /// `word_buckets` buckets and character n-grams into the rest, and each
  /// of the two blocks is scaled to the same norm: words and characters
  /// weigh alike, as two TF-IDF blocks side by side do, where in one
  /// vector the far more numerous character n-grams carry most of its norm.
  /// `token_ids` does not read it.
  std::uint32_t word_buckets = 0;
};

/// The L2 norm of each of the two blocks of a featurized prompt when
/// `FeaturizerOptions::word_buckets` splits it: 1/sqrt(2), so the whole
/// has unit norm when both blocks hold features (a prompt whose options
/// give it only one kind has norm 1/sqrt(2); gbt's and kNN's `blocks=2`
/// give every word a unigram and a character n-gram).
inline constexpr double kFeatureBlockNorm = 0.70710678118654752440;

/// Longest character n-gram a `Featurizer` supports.
inline constexpr std::uint32_t kMaxCharNgram = 8;

/// Kind of a hashed feature: its one-byte prefix in the stable hash.
enum class FeatureKind : char {
  kWordUnigram = 'w',  ///< S = 'w' + word
  kWordBigram = 'b',   ///< S = 'b' + word1 + ' ' + word2
  kCharNgram = 'c',    ///< S = 'c' + n code points of ' ' + word + ' '
};

/// Positions in `SparseFeatures::dense`. Values are raw (not standardised);
/// fractions are 0 when their denominator is 0.
enum DenseFeature : std::size_t {
  /// ln(1 + code points).
  kDenseLogChars = 0,
  /// ln(1 + words), words as defined above (each CJK ideograph counts one).
  kDenseLogWords,
  /// ln(1 + lines): '\n' count + 1, or 0 for an empty text.
  kDenseLogLines,
  /// ASCII digits / code points.
  kDenseDigitFraction,
  /// Code-like characters { } ( ) [ ] < > ; = _ # ` / code points.
  kDenseCodeFraction,
  /// Math characters + * / ^ % = × ÷ U+2212 and U+2200..U+22FF / code points.
  kDenseMathFraction,
  /// 1 if the text holds '?', U+FF1F or U+061F, else 0.
  kDenseHasQuestion,
  /// Word characters that change when lowercased / word characters.
  kDenseUppercaseFraction,
  /// Code points >= 0x80 (U+FFFD included) / code points.
  kDenseNonAsciiFraction,
  /// ln(1 + mean word length in code points).
  kDenseLogMeanWordLength,
  /// Number of dense features.
  kDenseFeatureCount
};

/// A featurized prompt. Reuse one object across calls: its vectors keep
/// their capacity, so a warm `featurize` allocates nothing.
struct SparseFeatures {
  /// Bucket indices, sorted ascending, unique, each < num_buckets.
  std::vector<std::uint32_t> indices;
  /// One value per index: 1 + ln(count), then scaled to unit L2 norm (or
  /// each block to 1/sqrt(2), see `FeaturizerOptions::word_buckets`).
  std::vector<float> values;
  /// Cheap numeric features, indexed by `DenseFeature`.
  std::array<float, kDenseFeatureCount> dense{};
  /// Working memory of `Featurizer::featurize` (it sorts through it); its
  /// contents mean nothing. Kept here so a warm call need not allocate it.
  std::vector<std::uint32_t> scratch;

  /// Empties the features, keeping the vectors' capacity.
  void clear() {
    indices.clear();
    values.clear();
    dense.fill(0.0f);
  }
};

/// Dot product of two sparse vectors (sorted indices): their cosine
/// similarity when both come from `Featurizer::featurize`.
float sparse_dot(const SparseFeatures& a, const SparseFeatures& b);

/// Bucket of one feature by the stable hash: `normalized_utf8` is the feature
/// without its kind byte, already lowercased (e.g. "hello world" for a bigram).
std::uint32_t feature_bucket(FeatureKind kind, std::string_view normalized_utf8,
                             const FeaturizerOptions& options);

/// Text to hashed features. Immutable after construction, so one instance
/// serves any number of threads at once.
class Featurizer {
 public:
  /// Default options (2^18 buckets, unigrams, bigrams, char 3..5-grams).
  Featurizer();
  /// Throws `torouter::Error` if the options are out of range.
  explicit Featurizer(const FeaturizerOptions& options);

  /// Featurizes `text` (any bytes; invalid UTF-8 is replaced, not rejected)
  /// into `out`, overwriting it. Allocates only if `out` has never held as
  /// many features.
  void featurize(std::string_view text, SparseFeatures& out) const;

  /// Word-unigram bucket ids of the first `max_tokens` words of `text`, in
  /// order, into `out` (cleared first). Hashed as for `featurize`, whatever
  /// `word_unigrams` says. Stops reading at the last token it needs.
  void token_ids(std::string_view text, std::size_t max_tokens,
                 std::vector<std::uint32_t>& out) const;

  /// The options this featurizer was built with.
  const FeaturizerOptions& options() const { return options_; }

 private:
  FeaturizerOptions options_;
  // FNV-1a state after the seed and each kind byte, so a feature's hash
  // starts from here: indexed word unigram, word bigram, char n-gram.
  std::array<std::uint64_t, 3> kind_state_{};
};

TOROUTER_END_NAMESPACE
