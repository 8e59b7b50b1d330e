// The featurizer's hot loop: one pass over the UTF-8 bytes that decodes,
// lowercases, splits and hashes incrementally, so no token is ever copied
// into a string. See include/torouter/features.hpp for the rules it follows.
#include "torouter/features.hpp"

#include <algorithm>
#include <array>
#include <cmath>
#include <cstring>
#include <string>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

constexpr std::uint64_t kFnvOffsetBasis = 14695981039346656037ull;
constexpr std::uint64_t kFnvPrime = 1099511628211ull;
constexpr std::uint32_t kReplacementCharacter = 0xFFFD;

inline std::uint64_t fnv_byte(std::uint64_t h, unsigned char b) { return (h ^ b) * kFnvPrime; }

// One code point as UTF-8 bytes, encoded once and fed to every hash that
// reads it.
struct Utf8Char {
  std::array<unsigned char, 4> bytes{};
  unsigned char size = 0;
};

inline Utf8Char encode_utf8(std::uint32_t cp) {
  Utf8Char c;
  if (cp < 0x80) {
    c.bytes[0] = static_cast<unsigned char>(cp);
    c.size = 1;
  } else if (cp < 0x800) {
    c.bytes[0] = static_cast<unsigned char>(0xC0 | (cp >> 6));
    c.bytes[1] = static_cast<unsigned char>(0x80 | (cp & 0x3F));
    c.size = 2;
  } else if (cp < 0x10000) {
    c.bytes[0] = static_cast<unsigned char>(0xE0 | (cp >> 12));
    c.bytes[1] = static_cast<unsigned char>(0x80 | ((cp >> 6) & 0x3F));
    c.bytes[2] = static_cast<unsigned char>(0x80 | (cp & 0x3F));
    c.size = 3;
  } else {
    c.bytes[0] = static_cast<unsigned char>(0xF0 | (cp >> 18));
    c.bytes[1] = static_cast<unsigned char>(0x80 | ((cp >> 12) & 0x3F));
    c.bytes[2] = static_cast<unsigned char>(0x80 | ((cp >> 6) & 0x3F));
    c.bytes[3] = static_cast<unsigned char>(0x80 | (cp & 0x3F));
    c.size = 4;
  }
  return c;
}

inline std::uint64_t fnv_char(std::uint64_t h, const Utf8Char& c) {
  h = fnv_byte(h, c.bytes[0]);
  // Most text is ASCII: one byte, and no loop to run.
  for (unsigned char i = 1; i < c.size; ++i) h = fnv_byte(h, c.bytes[i]);
  return h;
}

struct Decoded {
  std::uint32_t code_point;
  std::size_t length;  // bytes consumed, >= 1
};

// Decodes one code point at p (< end). An ill-formed sequence yields U+FFFD
// and consumes its maximal subpart (the bytes that could still have begun a
// valid sequence), the substitution Unicode recommends; it never reads at or
// past `end`.
inline Decoded decode_utf8(const unsigned char* p, const unsigned char* end) {
  const unsigned char b0 = p[0];
  if (b0 < 0x80) return {b0, 1};
  std::size_t continuation = 0;
  std::uint32_t cp = 0;
  // Bounds of the second byte; they exclude overlong forms, surrogates and
  // code points above U+10FFFF.
  unsigned char lo = 0x80;
  unsigned char hi = 0xBF;
  if (b0 >= 0xC2 && b0 <= 0xDF) {
    continuation = 1;
    cp = b0 & 0x1Fu;
  } else if (b0 >= 0xE0 && b0 <= 0xEF) {
    continuation = 2;
    cp = b0 & 0x0Fu;
    if (b0 == 0xE0) lo = 0xA0;
    if (b0 == 0xED) hi = 0x9F;
  } else if (b0 >= 0xF0 && b0 <= 0xF4) {
    continuation = 3;
    cp = b0 & 0x07u;
    if (b0 == 0xF0) lo = 0x90;
    if (b0 == 0xF4) hi = 0x8F;
  } else {
    return {kReplacementCharacter, 1};
  }
  std::size_t length = 1;
  for (std::size_t k = 0; k < continuation; ++k) {
    if (p + length == end) return {kReplacementCharacter, length};
    const unsigned char b = p[length];
    if (b < lo || b > hi) return {kReplacementCharacter, length};
    cp = (cp << 6) | (b & 0x3Fu);
    ++length;
    lo = 0x80;
    hi = 0xBF;
  }
  return {cp, length};
}

enum class CharClass : unsigned char { kSeparator, kWord, kIdeograph };

constexpr bool in(std::uint32_t cp, std::uint32_t first, std::uint32_t last) {
  return cp >= first && cp <= last;
}

inline CharClass classify(std::uint32_t cp) {
  if (cp < 0x80) {
    const bool alnum = in(cp, '0', '9') || in(cp, 'a', 'z') || in(cp, 'A', 'Z');
    return alnum ? CharClass::kWord : CharClass::kSeparator;
  }
  if (cp < 0xC0) {
    // C1 controls and Latin-1 punctuation; ª µ º are letters.
    return cp == 0xAA || cp == 0xB5 || cp == 0xBA ? CharClass::kWord : CharClass::kSeparator;
  }
  if (cp == 0xD7 || cp == 0xF7) return CharClass::kSeparator;
  if (cp < 0x37E) return CharClass::kWord;
  switch (cp) {
    // clang-format off
    case 0x037E: case 0x0387: case 0x0589: case 0x060C: case 0x061B:
    case 0x061F: case 0x06D4: case 0x0964: case 0x0965: case 0x1680:
      // clang-format on
      return CharClass::kSeparator;
    default:
      break;
  }
  if (cp < 0x2000) return CharClass::kWord;
  if (cp <= 0x2BFF) return CharClass::kSeparator;
  if (in(cp, 0x3000, 0x303F)) return CharClass::kSeparator;
  if (in(cp, 0x3400, 0x4DBF) || in(cp, 0x4E00, 0x9FFF)) return CharClass::kIdeograph;
  if (cp < 0xF900) return CharClass::kWord;
  if (cp <= 0xFAFF) return CharClass::kIdeograph;
  if (in(cp, 0xFE10, 0xFE1F) || in(cp, 0xFE30, 0xFE6F)) return CharClass::kSeparator;
  if (in(cp, 0xFF01, 0xFF0F) || in(cp, 0xFF1A, 0xFF20) || in(cp, 0xFF3B, 0xFF40) ||
      in(cp, 0xFF5B, 0xFF65) || in(cp, 0xFFE0, 0xFFEE) || in(cp, 0xFFF0, 0xFFFF)) {
    return CharClass::kSeparator;
  }
  if (in(cp, 0x1F000, 0x1FAFF)) return CharClass::kSeparator;
  if (in(cp, 0x20000, 0x3FFFF)) return CharClass::kIdeograph;
  return CharClass::kWord;
}

// Upper-case letters of the alternating blocks sit at even (or odd) code
// points with their lower case right after.
inline std::uint32_t lower_if_even(std::uint32_t cp) { return (cp & 1u) == 0 ? cp + 1 : cp; }
inline std::uint32_t lower_if_odd(std::uint32_t cp) { return (cp & 1u) == 1 ? cp + 1 : cp; }

// Simple lowercase mapping (UnicodeData.txt field 13) for the blocks the
// header lists; any other code point is returned unchanged.
inline std::uint32_t to_lower(std::uint32_t cp) {
  if (cp < 0x80) return in(cp, 'A', 'Z') ? cp + 0x20 : cp;
  if (cp < 0x100) return in(cp, 0xC0, 0xDE) && cp != 0xD7 ? cp + 0x20 : cp;
  if (cp < 0x180) {  // Latin Extended-A
    if (cp == 0x130) return 'i';
    if (cp == 0x178) return 0xFF;
    if (cp <= 0x12F || in(cp, 0x132, 0x137) || in(cp, 0x14A, 0x177)) return lower_if_even(cp);
    if (in(cp, 0x139, 0x148) || in(cp, 0x179, 0x17E)) return lower_if_odd(cp);
    return cp;
  }
  if (in(cp, 0x370, 0x3FF)) {  // Greek and Coptic
    if (in(cp, 0x391, 0x3A1) || in(cp, 0x3A3, 0x3AB)) return cp + 0x20;
    if (in(cp, 0x370, 0x373) || in(cp, 0x3D8, 0x3EF)) return lower_if_even(cp);
    switch (cp) {
      // clang-format off
      case 0x376: return 0x377;
      case 0x37F: return 0x3F3;
      case 0x386: return 0x3AC;
      case 0x388: return 0x3AD;
      case 0x389: return 0x3AE;
      case 0x38A: return 0x3AF;
      case 0x38C: return 0x3CC;
      case 0x38E: return 0x3CD;
      case 0x38F: return 0x3CE;
      case 0x3CF: return 0x3D7;
      case 0x3F4: return 0x3B8;
      case 0x3F7: return 0x3F8;
      case 0x3F9: return 0x3F2;
      case 0x3FA: return 0x3FB;
      case 0x3FD: return 0x37B;
      case 0x3FE: return 0x37C;
      case 0x3FF: return 0x37D;
      default: return cp;
        // clang-format on
    }
  }
  if (in(cp, 0x400, 0x52F)) {  // Cyrillic and Cyrillic Supplement
    if (cp <= 0x40F) return cp + 0x50;
    if (cp <= 0x42F) return cp + 0x20;
    if (in(cp, 0x460, 0x481) || in(cp, 0x48A, 0x4BF) || cp >= 0x4D0) return lower_if_even(cp);
    if (cp == 0x4C0) return 0x4CF;
    if (in(cp, 0x4C1, 0x4CE)) return lower_if_odd(cp);
    return cp;
  }
  if (in(cp, 0xFF21, 0xFF3A)) return cp + 0x20;  // fullwidth A..Z
  return cp;
}

constexpr bool is_code_like(std::uint32_t cp) {
  switch (cp) {
    // clang-format off
    case '{': case '}': case '(': case ')': case '[': case ']': case '<':
    case '>': case ';': case '=': case '_': case '#': case '`':
      // clang-format on
      return true;
    default:
      return false;
  }
}

constexpr bool is_math(std::uint32_t cp) {
  switch (cp) {
    // clang-format off
    case '+': case '*': case '/': case '^': case '%': case '=':
    case 0xD7: case 0xF7: case 0x2212:
      // clang-format on
      return true;
    default:
      return in(cp, 0x2200, 0x22FF);
  }
}

// What the walker needs to know of an ASCII character, from one table
// look-up instead of the general code-point tests.
struct AsciiTraits {
  unsigned char lower = 0;
  bool word = false;
  bool upper = false;
  bool digit = false;
  bool code_like = false;
  bool math = false;
  bool question = false;
  bool newline = false;
};

constexpr std::array<AsciiTraits, 0x80> make_ascii_traits() {
  std::array<AsciiTraits, 0x80> table{};
  for (std::uint32_t cp = 0; cp < 0x80; ++cp) {
    AsciiTraits& t = table[cp];
    t.upper = in(cp, 'A', 'Z');
    t.lower = static_cast<unsigned char>(t.upper ? cp + 0x20 : cp);
    t.digit = in(cp, '0', '9');
    t.word = t.digit || t.upper || in(cp, 'a', 'z');
    t.code_like = is_code_like(cp);
    t.math = is_math(cp);
    t.question = cp == '?';
    t.newline = cp == '\n';
  }
  return table;
}

constexpr std::array<AsciiTraits, 0x80> kAsciiTraits = make_ascii_traits();

inline std::uint32_t bucket_of(std::uint64_t hash, std::uint32_t num_buckets) {
  return static_cast<std::uint32_t>(hash % num_buckets);
}

// The buckets one kind of feature hashes into: `count` of them from `first`.
struct BucketRange {
  BucketRange(std::uint32_t first_bucket, std::uint32_t bucket_count)
      : first(first_bucket),
        count(bucket_count),
        // A power-of-two count (the usual case) takes the remainder with a
        // mask rather than a 64-bit division, the same value.
        mask((count & (count - 1)) == 0 ? count - 1 : 0) {}

  std::uint32_t of(std::uint64_t hash) const {
    return first + (mask != 0 ? static_cast<std::uint32_t>(hash & mask) : bucket_of(hash, count));
  }

  std::uint32_t first;
  std::uint32_t count;
  std::uint64_t mask;  // count - 1 when a power of two, else 0
};

// Words' buckets, and character n-grams' (FeaturizerOptions::word_buckets).
inline BucketRange word_range(const FeaturizerOptions& o) {
  return {0, o.word_buckets == 0 ? o.num_buckets : o.word_buckets};
}
inline BucketRange char_range(const FeaturizerOptions& o) {
  return o.word_buckets == 0 ? BucketRange(0, o.num_buckets)
                             : BucketRange(o.word_buckets, o.num_buckets - o.word_buckets);
}

// Walks the text once for `featurize`: feeds every word character into the
// running hashes of the current word, its bigram with the previous word and
// the character n-grams ending at it, and counts what the dense block needs.
class FeatureWalker {
 public:
  FeatureWalker(const FeaturizerOptions& options, const std::array<std::uint64_t, 3>& kind_state,
                std::vector<std::uint32_t>& buckets)
      : options_(options),
        unigram_start_(kind_state[0]),
        bigram_start_(kind_state[1]),
        ngram_start_(kind_state[2]),
        words_range_(word_range(options)),
        chars_range_(char_range(options)),
        buckets_(buckets) {}

  void run(std::string_view text) {
    const auto* p = reinterpret_cast<const unsigned char*>(text.data());
    const auto* end = p + text.size();
    while (p < end) {
      if (*p < 0x80) {
        if (!in_word_ && kAsciiTraits[*p].word) {
          const std::size_t length = ascii_word_length(p, end);
          if (length != 0) {
            add_ascii_word(p, length);
            p += length;
            continue;
          }
        }
        add_ascii(kAsciiTraits[*p]);
        ++p;
        continue;
      }
      const Decoded d = decode_utf8(p, end);
      p += d.length;
      add_code_point(d.code_point);
    }
    end_word();
    flush();
  }

  void write_dense(std::array<float, kDenseFeatureCount>& dense) const {
    const auto fraction = [](std::size_t part, std::size_t whole) {
      return whole == 0 ? 0.0f : static_cast<float>(static_cast<double>(part) / whole);
    };
    const auto log1p_of = [](double x) { return static_cast<float>(std::log1p(x)); };
    dense[kDenseLogChars] = log1p_of(static_cast<double>(chars_));
    dense[kDenseLogWords] = log1p_of(static_cast<double>(words_));
    dense[kDenseLogLines] = log1p_of(chars_ == 0 ? 0.0 : static_cast<double>(newlines_ + 1));
    dense[kDenseDigitFraction] = fraction(digits_, chars_);
    dense[kDenseCodeFraction] = fraction(code_like_, chars_);
    dense[kDenseMathFraction] = fraction(math_, chars_);
    dense[kDenseHasQuestion] = question_ ? 1.0f : 0.0f;
    dense[kDenseUppercaseFraction] = fraction(uppercase_, word_chars_);
    dense[kDenseNonAsciiFraction] = fraction(non_ascii_, chars_);
    dense[kDenseLogMeanWordLength] =
        log1p_of(words_ == 0 ? 0.0 : static_cast<double>(word_chars_) / words_);
  }

 private:
  static constexpr std::size_t kLongestWholeWord = 64;

  // The length of the ASCII word that begins at p when it ends at an ASCII
  // separator or the end of the text within kLongestWholeWord characters,
  // else 0 (the word goes character by character).
  static std::size_t ascii_word_length(const unsigned char* p, const unsigned char* end) {
    const unsigned char* q = p;
    const unsigned char* last =
        end - p > static_cast<std::ptrdiff_t>(kLongestWholeWord) ? p + kLongestWholeWord : end;
    while (q < last && *q < 0x80 && kAsciiTraits[*q].word) ++q;
    if (q == end) return static_cast<std::size_t>(q - p);
    if (*q >= 0x80 || kAsciiTraits[*q].word) return 0;
    return static_cast<std::size_t>(q - p);
  }

  // The same as feeding the word's characters to add_ascii and ending it,
  // with every hash kept in registers: the n-grams are hashed start by start
  // rather than chain by chain, the same hashes in another order, which the
  // counting does not see.
  void add_ascii_word(const unsigned char* word, std::size_t length) {
    std::array<unsigned char, kLongestWholeWord + 2> padded;
    padded[0] = ' ';
    std::uint64_t unigram = unigram_start_;
    std::uint64_t next_bigram = bigram_start_;
    std::uint64_t bigram = previous_bigram_prefix_;
    std::size_t upper = 0;
    std::size_t digits = 0;
    for (std::size_t i = 0; i < length; ++i) {
      const AsciiTraits& t = kAsciiTraits[word[i]];
      padded[i + 1] = t.lower;
      upper += t.upper;
      digits += t.digit;
      unigram = fnv_byte(unigram, t.lower);
      next_bigram = fnv_byte(next_bigram, t.lower);
      bigram = fnv_byte(bigram, t.lower);
    }
    padded[length + 1] = ' ';
    chars_ += length;
    word_chars_ += length;
    uppercase_ += upper;
    digits_ += digits;
    ++words_;
    const std::size_t padded_length = length + 2;
    make_room(2 + (options_.char_ngram_max - options_.char_ngram_min + 1) * padded_length);
    if (options_.word_unigrams) emit(words_range_, unigram);
    if (options_.word_bigrams && has_previous_word_) emit(words_range_, bigram);
    previous_bigram_prefix_ = fnv_byte(next_bigram, ' ');
    has_previous_word_ = true;
    if (options_.char_ngrams) emit_ngrams(padded.data(), padded_length);
  }

  // Emits the char n-grams of a padded ASCII word, each start's n-grams
  // from one hash chain: independent chains the CPU runs side by side.
  void emit_ngrams(const unsigned char* padded, std::size_t padded_length) {
    const std::size_t shortest = options_.char_ngram_min;
    const std::size_t longest = options_.char_ngram_max;
    for (std::size_t start = 0; start + shortest <= padded_length; ++start) {
      const std::size_t n_max = std::min(longest, padded_length - start);
      std::uint64_t h = ngram_start_;
      std::size_t n = 0;
      for (; n < shortest; ++n) h = fnv_byte(h, padded[start + n]);
      emit(chars_range_, h);
      for (; n < n_max; ++n) {
        h = fnv_byte(h, padded[start + n]);
        emit(chars_range_, h);
      }
    }
  }

  // The same as add_code_point for an ASCII character, without its tests.
  void add_ascii(const AsciiTraits& t) {
    ++chars_;
    digits_ += t.digit;
    newlines_ += t.newline;
    code_like_ += t.code_like;
    math_ += t.math;
    question_ = question_ || t.question;
    if (t.word) {
      add_word_char(Utf8Char{{t.lower, 0, 0, 0}, 1}, t.upper);
    } else {
      end_word();
    }
  }

  void add_code_point(std::uint32_t cp) {
    ++chars_;
    if (cp >= 0x80) ++non_ascii_;
    if (in(cp, '0', '9')) ++digits_;
    if (cp == '\n') ++newlines_;
    if (is_code_like(cp)) ++code_like_;
    if (is_math(cp)) ++math_;
    if (cp == '?' || cp == 0xFF1F || cp == 0x061F) question_ = true;
    switch (classify(cp)) {
      case CharClass::kSeparator:
        end_word();
        break;
      case CharClass::kWord:
        add_word_code_point(cp);
        break;
      case CharClass::kIdeograph:
        end_word();
        add_word_code_point(cp);
        end_word();
        break;
    }
  }

  void add_word_code_point(std::uint32_t cp) {
    const std::uint32_t lower = to_lower(cp);
    add_word_char(encode_utf8(lower), lower != cp);
  }

  // Feeds one lowercased word character into the word's hashes.
  void add_word_char(const Utf8Char& c, bool was_upper) {
    make_room();
    if (!in_word_) start_word();
    ++word_chars_;
    uppercase_ += was_upper;
    unigram_ = fnv_char(unigram_, c);
    next_bigram_ = fnv_char(next_bigram_, c);
    if (has_previous_word_) bigram_ = fnv_char(bigram_, c);
    push_ngram_char(c);
  }

  void start_word() {
    in_word_ = true;
    unigram_ = unigram_start_;
    next_bigram_ = bigram_start_;
    bigram_ = previous_bigram_prefix_;
    ngram_chars_ = 0;
    push_ngram_char(kSpace);
  }

  void end_word() {
    if (!in_word_) return;
    make_room();
    in_word_ = false;
    ++words_;
    if (options_.word_unigrams) emit(words_range_, unigram_);
    if (options_.word_bigrams && has_previous_word_) emit(words_range_, bigram_);
    previous_bigram_prefix_ = fnv_byte(next_bigram_, ' ');
    has_previous_word_ = true;
    push_ngram_char(kSpace);
  }

  // Adds one character of the padded word and emits every n-gram that ends
  // at it. FNV-1a reads a string from its first byte, so each n-gram's hash
  // is a chain begun at its first character: the chains begun at the last
  // char_ngram_max characters are each fed this character once, and those
  // now char_ngram_min or more long are emitted. That is one hash step per
  // chain and character, not one per character of every n-gram; the hashes
  // and their order (shortest n-gram first) are the same.
  void push_ngram_char(const Utf8Char& c) {
    if (!options_.char_ngrams) return;
    chains_[ngram_chars_ % kMaxCharNgram] = ngram_start_;
    ++ngram_chars_;
    const std::size_t live = std::min<std::size_t>(options_.char_ngram_max, ngram_chars_);
    const std::size_t shortest = options_.char_ngram_min;
    std::size_t length = 1;
    for (; length < shortest && length <= live; ++length) {
      std::uint64_t& chain = chains_[(ngram_chars_ - length) % kMaxCharNgram];
      chain = fnv_char(chain, c);
    }
    for (; length <= live; ++length) {
      std::uint64_t& chain = chains_[(ngram_chars_ - length) % kMaxCharNgram];
      chain = fnv_char(chain, c);
      emit(chars_range_, chain);
    }
  }

  // Buckets are gathered in a small array and appended to the output vector
  // in blocks, so the hot loop stores without a capacity check per bucket.
  void emit(const BucketRange& range, std::uint64_t hash) {
    pending_[pending_count_++] = range.of(hash);
  }

  // Most buckets one add_word_char or end_word call emits: a word's
  // unigram and bigram, and the n-grams ending at two padded characters.
  static constexpr std::size_t kMostEmitsPerCall = 2 + 2 * kMaxCharNgram;

  void make_room(std::size_t emits = kMostEmitsPerCall) {
    if (pending_count_ > pending_.size() - emits) flush();
  }

  void flush() {
    buckets_.insert(buckets_.end(), pending_.begin(),
                    pending_.begin() + static_cast<std::ptrdiff_t>(pending_count_));
    pending_count_ = 0;
  }

  static constexpr Utf8Char kSpace{{' ', 0, 0, 0}, 1};

  const FeaturizerOptions& options_;
  const std::uint64_t unigram_start_;
  const std::uint64_t bigram_start_;
  const std::uint64_t ngram_start_;
  const BucketRange words_range_;
  const BucketRange chars_range_;
  std::vector<std::uint32_t>& buckets_;
  // Room for the most a whole word emits: its unigram and bigram, and
  // every n-gram of the padded word.
  std::array<std::uint32_t, 1024> pending_;
  static_assert(2 + kMaxCharNgram * (kLongestWholeWord + 2) <= 1024);
  std::size_t pending_count_ = 0;

  bool in_word_ = false;
  bool has_previous_word_ = false;
  std::uint64_t unigram_ = 0;
  std::uint64_t bigram_ = 0;       // 'b' + previous word + ' ' + this word so far
  std::uint64_t next_bigram_ = 0;  // 'b' + this word so far
  std::uint64_t previous_bigram_prefix_ = 0;
  // chains_[i % kMaxCharNgram]: hash of the padded word's characters from
  // its i-th (0-based) to the latest.
  std::array<std::uint64_t, kMaxCharNgram> chains_{};
  std::size_t ngram_chars_ = 0;  // characters of the padded word so far

  std::size_t chars_ = 0;
  std::size_t words_ = 0;
  std::size_t word_chars_ = 0;
  std::size_t newlines_ = 0;
  std::size_t digits_ = 0;
  std::size_t code_like_ = 0;
  std::size_t math_ = 0;
  std::size_t uppercase_ = 0;
  std::size_t non_ascii_ = 0;
  bool question_ = false;
};

std::uint64_t seeded_kind_state(std::uint64_t seed, FeatureKind kind) {
  std::uint64_t h = kFnvOffsetBasis;
  for (int i = 0; i < 8; ++i) h = fnv_byte(h, static_cast<unsigned char>(seed >> (8 * i)));
  return fnv_byte(h, static_cast<unsigned char>(kind));
}

// Sorts bucket indices (each < num_buckets) ascending with a least-
// significant-digit radix sort: one or more passes of up to 11 bits, each a
// count and a stable scatter between `keys` and `scratch`. Linear in the
// keys, and several times faster than std::sort on the thousands of keys of
// a long prompt; the same order. Allocates only to grow `scratch`.
void sort_buckets(std::vector<std::uint32_t>& keys, std::vector<std::uint32_t>& scratch,
                  std::uint32_t num_buckets) {
  const std::size_t n = keys.size();
  if (n < 64) {  // a short prompt: insertion sort beats clearing counters
    for (std::size_t i = 1; i < n; ++i) {
      const std::uint32_t v = keys[i];
      std::size_t j = i;
      for (; j > 0 && keys[j - 1] > v; --j) keys[j] = keys[j - 1];
      keys[j] = v;
    }
    return;
  }
  int bits = 0;
  while (bits < 32 && (static_cast<std::uint64_t>(num_buckets - 1) >> bits) != 0) ++bits;
  constexpr int kMaxDigitBits = 11;
  const int passes = std::max(1, (bits + kMaxDigitBits - 1) / kMaxDigitBits);
  const int digit_bits = (bits + passes - 1) / passes;
  const std::uint32_t digit_mask = (1u << digit_bits) - 1;
  if (scratch.size() < n) scratch.resize(n);
  std::uint32_t* from = keys.data();
  std::uint32_t* to = scratch.data();
  std::array<std::size_t, std::size_t{1} << kMaxDigitBits> position;
  for (int pass = 0, shift = 0; pass < passes; ++pass, shift += digit_bits) {
    std::fill_n(position.begin(), digit_mask + 1, 0);
    for (std::size_t i = 0; i < n; ++i) ++position[(from[i] >> shift) & digit_mask];
    std::size_t sum = 0;
    for (std::uint32_t d = 0; d <= digit_mask; ++d) {
      const std::size_t count = position[d];
      position[d] = sum;
      sum += count;
    }
    for (std::size_t i = 0; i < n; ++i) to[position[(from[i] >> shift) & digit_mask]++] = from[i];
    std::swap(from, to);
  }
  if (from != keys.data()) std::copy(from, from + n, keys.data());
}

// 1 + ln(count) for the counts a bucket usually has, computed once with
// std::log so the values are the same as computing them each time.
double value_of_count(std::size_t count) {
  static const std::array<double, 64> table = [] {
    std::array<double, 64> values{};
    values[0] = 0.0;
    for (std::size_t c = 1; c < values.size(); ++c) {
      // Most buckets are hit once, and ln(1) is exactly 0.
      values[c] = c == 1 ? 1.0 : 1.0 + std::log(static_cast<double>(c));
    }
    return values;
  }();
  return count < table.size() ? table[count] : 1.0 + std::log(static_cast<double>(count));
}

// What counting a prompt's buckets leaves: `keys[0..distinct)` holds the
// distinct buckets ascending and `values[0..distinct)` 1 + ln(count) of
// each; `sum_of_squares` is the sum of the values' squares, added in that
// order.
struct CountedBuckets {
  std::size_t distinct = 0;
  double sum_of_squares = 0.0;
};

// Counting in a table indexed by bucket, with a bitmap of the buckets seen,
// beats sorting when the bitmap has no more words than there are keys to
// scan; the table (4 bytes a bucket) is kept for models of up to 2^18
// buckets, the featurizer's default.
bool bitmap_counting_pays(std::size_t keys, std::uint32_t num_buckets) {
  constexpr std::uint32_t kMostBuckets = 1u << 18;
  return num_buckets <= kMostBuckets && num_buckets / 64 <= keys;
}

// Writes the positions of the set bits of `bitmap` (its words cleared as
// they are read) to `out` in ascending order and returns how many there
// were. `out` has room for that many plus kSpareKeys: each word writes its
// first kSpareKeys positions without testing how many bits it has (a
// prompt's buckets are spread thin, a few bits a word, and a loop that ends
// at a word's last bit mispredicts once a word), and the slots past its
// bits are overwritten by the next word's.
constexpr std::size_t kSpareKeys = 4;

std::size_t take_set_bits(unsigned char* bitmap, std::size_t words, std::uint32_t* out) {
  std::size_t n = 0;
  for (std::size_t w = 0; w < words; ++w) {
    std::uint64_t word;
    std::memcpy(&word, bitmap + 8 * w, sizeof word);  // defined for any alignment
    std::memset(bitmap + 8 * w, 0, sizeof word);
    const auto base = static_cast<std::uint32_t>(64 * w);
    // The bits are counted as they are taken: __builtin_popcountll is a
    // call into libgcc where the build targets CPUs without POPCNT (a
    // fortieth of a routed request's instructions).
    std::size_t bits = 0;
    for (std::size_t k = 0; k < kSpareKeys; ++k) {
      bits += word != 0 ? 1 : 0;
      // The top bit set keeps ctz defined on an emptied word; that slot is spare.
      const auto bit = __builtin_ctzll(word | (std::uint64_t{1} << 63));
      out[n + k] = base + static_cast<std::uint32_t>(bit);
      word &= word - 1;
    }
    for (; word != 0; ++bits) {
      out[n + bits] = base + static_cast<std::uint32_t>(__builtin_ctzll(word));
      word &= word - 1;
    }
    n += bits;
  }
  return n;
}

// Counts with `scratch` as a table of num_buckets counters followed by a
// bitmap of num_buckets bits. Both are zero on entry and left zero (every
// user of the scratch leaves it zero), so a warm call touches only the
// buckets of this prompt and the bitmap.
CountedBuckets count_with_bitmap(std::vector<std::uint32_t>& keys, std::vector<float>& values,
                                 std::vector<std::uint32_t>& scratch, std::uint32_t num_buckets) {
  const std::size_t bitmap_words = (static_cast<std::size_t>(num_buckets) + 63) / 64;
  const std::size_t needed = num_buckets + 2 * bitmap_words;
  if (scratch.size() < needed) scratch.resize(needed);  // new entries are zero
  std::uint32_t* counts = scratch.data();
  // Two 32-bit entries per 64-bit word; memcpy keeps the accesses defined.
  unsigned char* bitmap = reinterpret_cast<unsigned char*>(scratch.data() + num_buckets);
  for (const std::uint32_t key : keys) {
    ++counts[key];
    std::uint64_t word;
    std::memcpy(&word, bitmap + 8 * (key / 64), sizeof word);
    word |= std::uint64_t{1} << (key % 64);
    std::memcpy(bitmap + 8 * (key / 64), &word, sizeof word);
  }
  keys.resize(keys.size() + kSpareKeys);
  CountedBuckets counted;
  counted.distinct = take_set_bits(bitmap, bitmap_words, keys.data());
  for (std::size_t i = 0; i < counted.distinct; ++i) {
    const double value = value_of_count(counts[keys[i]]);
    counts[keys[i]] = 0;
    counted.sum_of_squares += value * value;
    values[i] = static_cast<float>(value);
  }
  return counted;
}

// Counts by sorting the keys and measuring each run of equal ones.
CountedBuckets count_after_sorting(std::vector<std::uint32_t>& keys, std::vector<float>& values,
                                   std::vector<std::uint32_t>& scratch, std::uint32_t num_buckets) {
  sort_buckets(keys, scratch, num_buckets);
  // count_with_bitmap needs the scratch all zero, as it leaves it.
  std::fill_n(scratch.begin(), std::min(keys.size(), scratch.size()), 0u);
  CountedBuckets counted;
  const std::size_t total = keys.size();
  for (std::size_t i = 0; i < total;) {
    std::size_t j = i + 1;
    while (j < total && keys[j] == keys[i]) ++j;
    const double value = value_of_count(j - i);
    counted.sum_of_squares += value * value;
    keys[counted.distinct] = keys[i];
    values[counted.distinct] = static_cast<float>(value);
    ++counted.distinct;
    i = j;
  }
  return counted;
}

// Scales values[0 .. count) to L2 norm `norm`; all zero, they stay so.
void scale_to_norm(float* values, std::size_t count, double norm) {
  double sum_of_squares = 0.0;
  for (std::size_t i = 0; i < count; ++i) sum_of_squares += double{values[i]} * values[i];
  if (!(sum_of_squares > 0.0)) return;
  const auto scale = static_cast<float>(norm / std::sqrt(sum_of_squares));
  for (std::size_t i = 0; i < count; ++i) values[i] *= scale;
}

}  // namespace
}  // namespace detail

float sparse_dot(const SparseFeatures& a, const SparseFeatures& b) {
  std::size_t i = 0;
  std::size_t j = 0;
  double sum = 0.0;
  while (i < a.indices.size() && j < b.indices.size()) {
    if (a.indices[i] < b.indices[j]) {
      ++i;
    } else if (b.indices[j] < a.indices[i]) {
      ++j;
    } else {
      sum += static_cast<double>(a.values[i]) * b.values[j];
      ++i;
      ++j;
    }
  }
  return static_cast<float>(sum);
}

namespace {

// Both blocks need a bucket: the characters' is what word_buckets leaves.
void check_word_buckets(const FeaturizerOptions& options) {
  if (options.word_buckets >= options.num_buckets) {
    throw Error("FeaturizerOptions.word_buckets: must be 0 or below num_buckets (" +
                std::to_string(options.num_buckets) + "), got " +
                std::to_string(options.word_buckets));
  }
}

}  // namespace

std::uint32_t feature_bucket(FeatureKind kind, std::string_view normalized_utf8,
                             const FeaturizerOptions& options) {
  std::uint64_t h = detail::seeded_kind_state(options.hash_seed, kind);
  for (char ch : normalized_utf8) h = detail::fnv_byte(h, static_cast<unsigned char>(ch));
  if (options.num_buckets == 0) return 0;
  check_word_buckets(options);
  return kind == FeatureKind::kCharNgram ? detail::char_range(options).of(h)
                                         : detail::word_range(options).of(h);
}

Featurizer::Featurizer() : Featurizer(FeaturizerOptions{}) {}

Featurizer::Featurizer(const FeaturizerOptions& options) : options_(options) {
  if (options_.num_buckets == 0) throw Error("FeaturizerOptions.num_buckets: must be > 0");
  check_word_buckets(options_);
  if (options_.char_ngram_min < 1 || options_.char_ngram_min > options_.char_ngram_max ||
      options_.char_ngram_max > kMaxCharNgram) {
    throw Error("FeaturizerOptions.char_ngram_min/max: need 1 <= min <= max <= " +
                std::to_string(kMaxCharNgram) + ", got " + std::to_string(options_.char_ngram_min) +
                ".." + std::to_string(options_.char_ngram_max));
  }
  kind_state_ = {detail::seeded_kind_state(options_.hash_seed, FeatureKind::kWordUnigram),
                 detail::seeded_kind_state(options_.hash_seed, FeatureKind::kWordBigram),
                 detail::seeded_kind_state(options_.hash_seed, FeatureKind::kCharNgram)};
}

void Featurizer::featurize(std::string_view text, SparseFeatures& out) const {
  out.clear();
  // Collect every feature's bucket, then count each distinct one in
  // ascending order: no hash map, and every vector's capacity is reused on
  // the next call.
  std::vector<std::uint32_t>& buckets = out.indices;
  detail::FeatureWalker walker(options_, kind_state_, buckets);
  walker.run(text);
  walker.write_dense(out.dense);

  out.values.resize(buckets.size());  // an upper bound; cut to the distinct count below
  const detail::CountedBuckets counted =
      detail::bitmap_counting_pays(buckets.size(), options_.num_buckets)
          ? detail::count_with_bitmap(buckets, out.values, out.scratch, options_.num_buckets)
          : detail::count_after_sorting(buckets, out.values, out.scratch, options_.num_buckets);
  buckets.resize(counted.distinct);
  out.values.resize(counted.distinct);
  if (options_.word_buckets == 0) {
    if (counted.sum_of_squares > 0.0) {
      const float scale = static_cast<float>(1.0 / std::sqrt(counted.sum_of_squares));
      for (float& v : out.values) v *= scale;
    }
    return;
  }
  // Indices ascend, so the words' block is a prefix.
  const auto words = static_cast<std::size_t>(
      std::lower_bound(buckets.begin(), buckets.end(), options_.word_buckets) - buckets.begin());
  detail::scale_to_norm(out.values.data(), words, kFeatureBlockNorm);
  detail::scale_to_norm(out.values.data() + words, out.values.size() - words, kFeatureBlockNorm);
}

void Featurizer::token_ids(std::string_view text, std::size_t max_tokens,
                           std::vector<std::uint32_t>& out) const {
  out.clear();
  if (max_tokens == 0) return;
  const std::uint64_t start = kind_state_[0];
  const auto* p = reinterpret_cast<const unsigned char*>(text.data());
  const auto* end = p + text.size();
  bool in_word = false;
  std::uint64_t h = start;
  const auto end_word = [&] {
    if (!in_word) return;
    in_word = false;
    out.push_back(detail::bucket_of(h, options_.num_buckets));
  };
  while (p < end && out.size() < max_tokens) {
    const detail::Decoded d = detail::decode_utf8(p, end);
    p += d.length;
    const detail::CharClass cls = detail::classify(d.code_point);
    if (cls == detail::CharClass::kSeparator) {
      end_word();
      continue;
    }
    if (cls == detail::CharClass::kIdeograph) end_word();
    if (out.size() == max_tokens) break;
    if (!in_word) {
      in_word = true;
      h = start;
    }
    h = detail::fnv_char(h, detail::encode_utf8(detail::to_lower(d.code_point)));
    if (cls == detail::CharClass::kIdeograph) end_word();
  }
  if (out.size() < max_tokens) end_word();
}

TOROUTER_END_NAMESPACE
