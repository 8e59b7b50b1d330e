// Featurizer: the stable hash against independently computed buckets,
// Unicode lowercasing and splitting, invalid UTF-8, sizes, determinism, the
// options' toggles, normalisation and the dense block.
#include "torouter/features.hpp"

#include <algorithm>
#include <catch2/catch.hpp>
#include <cctype>
#include <cmath>
#include <map>
#include <random>
#include <string>
#include <thread>
#include <utility>
#include <vector>

#include "torouter/error.hpp"

namespace {

using torouter::FeatureKind;
using torouter::Featurizer;
using torouter::FeaturizerOptions;
using torouter::SparseFeatures;

SparseFeatures featurize(const Featurizer& featurizer, std::string_view text) {
  SparseFeatures out;
  featurizer.featurize(text, out);
  return out;
}

std::vector<std::uint32_t> token_ids(const Featurizer& featurizer, std::string_view text,
                                     std::size_t max_tokens = 1000) {
  std::vector<std::uint32_t> out;
  featurizer.token_ids(text, max_tokens, out);
  return out;
}

bool contains(const SparseFeatures& f, std::uint32_t index) {
  return std::binary_search(f.indices.begin(), f.indices.end(), index);
}

double squared_norm(const SparseFeatures& f) {
  double sum = 0.0;
  for (float v : f.values) sum += static_cast<double>(v) * v;
  return sum;
}

void require_well_formed(const SparseFeatures& f, std::uint32_t num_buckets) {
  REQUIRE(f.indices.size() == f.values.size());
  REQUIRE(std::is_sorted(f.indices.begin(), f.indices.end()));
  REQUIRE(std::adjacent_find(f.indices.begin(), f.indices.end()) == f.indices.end());
  for (std::uint32_t i : f.indices) REQUIRE(i < num_buckets);
  for (float v : f.values) REQUIRE(std::isfinite(v));
  for (float v : f.dense) REQUIRE(std::isfinite(v));
  if (!f.indices.empty()) REQUIRE(squared_norm(f) == Approx(1.0).epsilon(1e-5));
}

void require_same_sparse(const SparseFeatures& a, const SparseFeatures& b) {
  REQUIRE(a.indices == b.indices);
  REQUIRE(a.values == b.values);
}

void require_same(const SparseFeatures& a, const SparseFeatures& b) {
  require_same_sparse(a, b);
  REQUIRE(a.dense == b.dense);
}

}  // namespace

// The expected buckets below come from this Python, run once with
// /usr/bin/python3 and pasted here; rerun it to recheck the hash rule:
//
//   def fnv1a64(data, seed):
//       h = 14695981039346656037
//       for b in seed.to_bytes(8, "little") + data:
//           h = ((h ^ b) * 1099511628211) % 2**64
//       return h
//   def bucket(kind, s, buckets, seed):
//       return fnv1a64(kind.encode() + s.encode("utf-8"), seed) % buckets
//   # 1) token_ids, default options
//   print([bucket("w", w, 1 << 18, 0) for w in ["hello", "wörld", "中", "文", "école"]])
//   # 2) seed 42, 1000 buckets, bigrams + char 3..4-grams of "ab cd"
//   feats = [("b", "ab cd")]
//   for word in ["ab", "cd"]:
//       padded = " " + word + " "
//       for n in (3, 4):
//           feats += [("c", padded[i:i + n]) for i in range(len(padded) - n + 1)]
//   print(sorted(bucket(k, s, 1000, 42) for k, s in feats), bucket("b", "ab cd", 1000, 42))
//   # 3) unigrams + bigrams, no char n-grams, default buckets and seed
//   import math, collections
//   words = "to be or not to be".split()
//   feats = [("w", w) for w in words] + [("b", a + " " + b) for a, b in zip(words, words[1:])]
//   counts = collections.Counter(bucket(k, s, 1 << 18, 0) for k, s in feats)
//   norm = math.sqrt(sum((1 + math.log(c)) ** 2 for c in counts.values()))
//   print([(i, round((1 + math.log(counts[i])) / norm, 6)) for i in sorted(counts)])
TEST_CASE("feature hash matches the documented rule (golden buckets)", "[features]") {
  SECTION("word unigrams with default options") {
    const Featurizer featurizer;
    const std::vector<std::uint32_t> expected{223910, 162688, 68581, 260783, 257415};
    REQUIRE(token_ids(featurizer, "Hello, WÖRLD! 中文 ÉCOLE") == expected);
    REQUIRE(torouter::feature_bucket(FeatureKind::kWordUnigram, "hello", FeaturizerOptions{}) ==
            223910);
  }
  SECTION("bigrams and char n-grams with a seed and few buckets") {
    FeaturizerOptions options;
    options.num_buckets = 1000;
    options.hash_seed = 42;
    options.word_unigrams = false;
    options.char_ngram_min = 3;
    options.char_ngram_max = 4;
    const SparseFeatures f = featurize(Featurizer(options), "ab cd");
    REQUIRE(f.indices == std::vector<std::uint32_t>{45, 77, 191, 201, 239, 321, 963});
    for (float v : f.values) REQUIRE(v == Approx(1.0 / std::sqrt(7.0)));
    REQUIRE(torouter::feature_bucket(FeatureKind::kWordBigram, "ab cd", options) == 239);
  }
  SECTION("counts give 1 + ln(count) before normalisation") {
    FeaturizerOptions options;
    options.char_ngrams = false;
    const SparseFeatures f = featurize(Featurizer(options), "To be, or not to BE");
    const std::vector<std::uint32_t> indices{9613,   30915,  64989,  69213,
                                             100347, 104779, 150179, 253515};
    const std::vector<double> values{0.271161, 0.271161, 0.459115, 0.271161,
                                     0.459115, 0.459115, 0.271161, 0.271161};
    REQUIRE(f.indices == indices);
    for (std::size_t i = 0; i < values.size(); ++i) {
      REQUIRE(f.values[i] == Approx(values[i]).margin(1e-6));
    }
  }
}

TEST_CASE("lowercasing covers Latin, Greek and Cyrillic", "[features]") {
  const Featurizer featurizer;
  SECTION("the issue's example") {
    require_same_sparse(featurize(featurizer, "ÉCOLE Straße"),
                        featurize(featurizer, "école straße"));
  }
  SECTION("pairs from each block") {
    const char* pairs[][2] = {
        {"ÀÉÎÕÜÇÑÅÆØÞ", "àéîõüçñåæøþ"},                // Latin-1 Supplement
        {"ŁÓDŹ ŒUVRE ĞİŞ ŸES", "łódź œuvre ğiş ÿes"},  // Latin Extended-A, İ -> i
        {"ΑΘΉΝΑ ΣΟΦΊΑ Ϊ", "αθήνα σοφία ϊ"},            // Greek
        {"МОСКВА ЁЖ ЇЄ Ґ", "москва ёж їє ґ"},          // Cyrillic
        {"ＡＢＣ", "ａｂｃ"},                          // fullwidth Latin
    };
    for (const auto& pair : pairs) {
      INFO(pair[0]);
      require_same_sparse(featurize(featurizer, pair[0]), featurize(featurizer, pair[1]));
      REQUIRE(token_ids(featurizer, pair[0]) == token_ids(featurizer, pair[1]));
    }
  }
  SECTION("letters with no case, and ß, are kept") {
    const FeaturizerOptions options;
    REQUIRE(token_ids(featurizer, "Straße") == std::vector<std::uint32_t>{torouter::feature_bucket(
                                                   FeatureKind::kWordUnigram, "straße", options)});
    REQUIRE(token_ids(featurizer, "STRASSE") != token_ids(featurizer, "Straße"));
  }
}

TEST_CASE("words are runs of letters and digits; ideographs stand alone", "[features]") {
  const Featurizer featurizer;
  const FeaturizerOptions options;
  const auto words = [&](std::initializer_list<const char*> list) {
    std::vector<std::uint32_t> ids;
    for (const char* w : list) {
      ids.push_back(torouter::feature_bucket(FeatureKind::kWordUnigram, w, options));
    }
    return ids;
  };
  REQUIRE(token_ids(featurizer, "don't x2 y_3") == words({"don", "t", "x2", "y", "3"}));
  // Em dash, no-break space, ideographic full stop and an emoji separate words.
  REQUIRE(token_ids(featurizer,
                    "a\xE2\x80\x94"
                    "b\xC2\xA0"
                    "c\xE3\x80\x82"
                    "d\xF0\x9F\x98\x80"
                    "e") == words({"a", "b", "c", "d", "e"}));
  // A combining accent stays in its word; Japanese kana form one run.
  REQUIRE(token_ids(featurizer, "e\xCC\x81t\xC3\xA9") == words({"e\xCC\x81t\xC3\xA9"}));
  REQUIRE(token_ids(featurizer, "中文abc日本語ですか") ==
          words({"中", "文", "abc", "日", "本", "語", "ですか"}));
}

TEST_CASE("invalid UTF-8 becomes U+FFFD per maximal subpart", "[features]") {
  const Featurizer featurizer;
  const std::string fffd = "\xEF\xBF\xBD";
  struct Case {
    std::string bytes;
    int replacements;
  };
  const std::vector<Case> cases = {
      {"\x80", 1},              // lone continuation byte
      {"\xBF\x80", 2},          // two of them
      {"\xE2\x82", 1},          // truncated 3-byte sequence
      {"\xF0\x9F\x98", 1},      // truncated 4-byte sequence
      {"\xFF", 1},              // never valid
      {"\xFE\xFE", 2},          // never valid
      {"\xC0\xAF", 2},          // overlong '/'
      {"\xE0\x80\xAF", 3},      // overlong, 3 bytes
      {"\xED\xA0\x80", 3},      // UTF-16 surrogate
      {"\xF4\x90\x80\x80", 4},  // above U+10FFFF
      {"\xC3", 1},              // truncated 2-byte sequence
  };
  for (const Case& c : cases) {
    std::string expected_text = "ab";
    for (int i = 0; i < c.replacements; ++i) expected_text += fffd;
    expected_text += "cd";
    INFO("case of " << c.replacements << " replacement(s), " << c.bytes.size() << " bytes");
    require_same(featurize(featurizer, "ab" + c.bytes + "cd"),
                 featurize(featurizer, expected_text));
    REQUIRE(token_ids(featurizer, "ab" + c.bytes + "cd").size() == 2);
  }
  SECTION("a text that ends mid-sequence is read no further than its end") {
    // The view stops inside the buffer, so reading past it would read 'z'.
    const std::string buffer = "word\xE2\x82zz";
    const std::string_view truncated(buffer.data(), 6);
    require_same(featurize(featurizer, truncated), featurize(featurizer, "word" + fffd));
  }
  SECTION("random bytes never break the invariants") {
    std::uint32_t state = 12345;
    std::string bytes;
    for (int i = 0; i < 20000; ++i) {
      state = state * 1664525u + 1013904223u;
      bytes.push_back(static_cast<char>(state >> 24));
    }
    const SparseFeatures f = featurize(featurizer, bytes);
    require_well_formed(f, FeaturizerOptions{}.num_buckets);
  }
}

TEST_CASE("empty and separator-only prompts give no sparse features", "[features]") {
  const Featurizer featurizer;
  SparseFeatures f = featurize(featurizer, "some words to warm the vectors");
  featurizer.featurize("", f);
  REQUIRE(f.indices.empty());
  REQUIRE(f.values.empty());
  for (float v : f.dense) REQUIRE(v == 0.0f);
  REQUIRE(token_ids(featurizer, "").empty());

  featurizer.featurize("  ,;! ?\n", f);
  REQUIRE(f.indices.empty());
  REQUIRE(f.dense[torouter::kDenseLogChars] == Approx(std::log1p(8.0)));
  REQUIRE(f.dense[torouter::kDenseLogWords] == 0.0f);
  REQUIRE(f.dense[torouter::kDenseHasQuestion] == 1.0f);
}

TEST_CASE("a 1 MB prompt is featurized", "[features]") {
  const Featurizer featurizer;
  std::string text;
  const std::string chunk =
      "Explain the proof of Theorem 12 in ΕΛΛΗΝΙΚΆ and русский; def f(x): return x**2 # 中文\n";
  while (text.size() < (1u << 20)) text += chunk;
  SparseFeatures f;
  featurizer.featurize(text, f);
  require_well_formed(f, FeaturizerOptions{}.num_buckets);
  REQUIRE(f.indices.size() > 50);
  REQUIRE(f.dense[torouter::kDenseLogLines] > 8.0f);  // thousands of lines
  std::vector<std::uint32_t> ids;
  featurizer.token_ids(text, 512, ids);
  REQUIRE(ids.size() == 512);
}

TEST_CASE("featurize is deterministic and thread-safe", "[features]") {
  const std::string text =
      "Write a Python function that returns the n-th Fibonacci number, quickly!";
  const Featurizer a;
  const Featurizer b;
  const SparseFeatures reference = featurize(a, text);
  require_same(reference, featurize(b, text));

  SparseFeatures reused;
  for (int i = 0; i < 3; ++i) {
    a.featurize(i % 2 == 0 ? text : std::string_view("something else entirely"), reused);
  }
  a.featurize(text, reused);
  require_same(reference, reused);

  std::vector<int> matches(4, 0);
  std::vector<std::thread> threads;
  for (std::size_t t = 0; t < matches.size(); ++t) {
    threads.emplace_back([&, t] {
      SparseFeatures local;
      int ok = 0;
      for (int i = 0; i < 200; ++i) {
        a.featurize(text, local);
        ok += local.indices == reference.indices && local.values == reference.values;
      }
      matches[t] = ok;
    });
  }
  for (auto& thread : threads) thread.join();
  for (int m : matches) REQUIRE(m == 200);
}

// The code points of a UTF-8 string, each as its bytes.
std::vector<std::string> code_points(const std::string& utf8) {
  std::vector<std::string> out;
  for (char ch : utf8) {
    const bool continuation = (static_cast<unsigned char>(ch) & 0xC0) == 0x80;
    if (continuation && !out.empty()) {
      out.back() += ch;
    } else {
      out.emplace_back(1, ch);
    }
  }
  return out;
}

// A slow featurizer over lowercased words, written from the header's rules
// alone: it builds every feature string, hashes it with feature_bucket and
// counts buckets in a map.
SparseFeatures features_of_words(const std::vector<std::string>& words,
                                 const FeaturizerOptions& options) {
  std::map<std::uint32_t, int> counts;
  for (std::size_t w = 0; w < words.size(); ++w) {
    ++counts[torouter::feature_bucket(FeatureKind::kWordUnigram, words[w], options)];
    if (w > 0) {
      ++counts[torouter::feature_bucket(FeatureKind::kWordBigram, words[w - 1] + " " + words[w],
                                         options)];
    }
    const std::vector<std::string> padded = code_points(" " + words[w] + " ");
    for (std::size_t n = options.char_ngram_min; n <= options.char_ngram_max; ++n) {
      for (std::size_t start = 0; start + n <= padded.size(); ++start) {
        std::string ngram;
        for (std::size_t i = start; i < start + n; ++i) ngram += padded[i];
        ++counts[torouter::feature_bucket(FeatureKind::kCharNgram, ngram, options)];
      }
    }
  }
  SparseFeatures out;
  for (const auto& [bucket, count] : counts) {
    out.indices.push_back(bucket);
    out.values.push_back(static_cast<float>(1.0 + std::log(static_cast<double>(count))));
  }
  // Unit norm; or each block (words' buckets, characters') to 1/sqrt(2).
  const auto scale = [&](std::size_t first, std::size_t end, double norm) {
    double sum_squares = 0.0;
    for (std::size_t i = first; i < end; ++i) sum_squares += double{out.values[i]} * out.values[i];
    if (sum_squares == 0.0) return;
    for (std::size_t i = first; i < end; ++i) {
      out.values[i] = static_cast<float>(out.values[i] * norm / std::sqrt(sum_squares));
    }
  };
  if (options.word_buckets == 0) {
    scale(0, out.values.size(), 1.0);
  } else {
    std::size_t words = 0;
    while (words < out.indices.size() && out.indices[words] < options.word_buckets) ++words;
    scale(0, words, std::sqrt(0.5));
    scale(words, out.values.size(), std::sqrt(0.5));
  }
  return out;
}

// The same for ASCII text: its words are the runs of letters and digits.
SparseFeatures featurize_by_the_rules(std::string_view text, const FeaturizerOptions& options) {
  std::vector<std::string> words;
  std::string word;
  for (char ch : std::string(text) + " ") {
    if (std::isalnum(static_cast<unsigned char>(ch))) {
      word += static_cast<char>(std::tolower(static_cast<unsigned char>(ch)));
    } else if (!word.empty()) {
      words.push_back(word);
      word.clear();
    }
  }
  return features_of_words(words, options);
}

void require_features_of_words(const SparseFeatures& actual, const std::vector<std::string>& words,
                               const FeaturizerOptions& options) {
  const SparseFeatures expected = features_of_words(words, options);
  REQUIRE(actual.indices == expected.indices);
  REQUIRE(actual.values.size() == expected.values.size());
  for (std::size_t i = 0; i < expected.values.size(); ++i) {
    REQUIRE(actual.values[i] == Approx(expected.values[i]).epsilon(1e-6));
  }
}

TEST_CASE("ASCII words hashed whole agree with words read character by character", "[features]") {
  // The featurizer hashes an ASCII word of up to 64 characters that ends at
  // an ASCII separator in one piece, and any other word character by
  // character; these texts put both kinds side by side, at the 64-character
  // edge, and with the widest n-gram settings.
  const std::string long64(64, 'q');
  const std::string long65 = std::string(65, 'z');
  struct Case {
    std::string text;
    std::vector<std::string> words;
  };
  const std::vector<Case> cases = {
      {"Naïve ABC Café x", {"naïve", "abc", "café", "x"}},
      {"abécd EF", {"abécd", "ef"}},
      {"éab cd", {"éab", "cd"}},
      {"one—two three", {"one", "two", "three"}},  // an em dash separates
      {long64 + " " + long65 + "\n" + long64, {long64, long65, long64}},
      {"X" + long64 + ".", {"x" + long64}},
      {"ΑΒ Hello World99", {"αβ", "hello", "world99"}},
      {"end at the text's end", {"end", "at", "the", "text", "s", "end"}},
  };
  SparseFeatures features;
  for (const auto& [shortest, longest] :
       {std::pair{3u, 5u}, std::pair{1u, 8u}, std::pair{2u, 2u}}) {
    FeaturizerOptions options;
    options.num_buckets = 1u << 16;
    options.char_ngram_min = shortest;
    options.char_ngram_max = longest;
    const Featurizer featurizer(options);
    for (const Case& c : cases) {
      CAPTURE(shortest, longest, c.text);
      featurizer.featurize(c.text, features);
      require_features_of_words(features, c.words, options);
    }
  }
}

TEST_CASE("featurize agrees with the rules, reusing one output across sizes and bucket counts",
          "[features]") {
  // Texts from a few words to thousands, with repeated words so buckets are
  // hit many times, and bucket counts from heavy collisions (64) to the
  // default 2^18 and beyond: every way of counting the buckets is used, in
  // a mixed order, through one reused SparseFeatures.
  const std::vector<std::string> vocabulary = {"the", "router", "Picks", "an", "expert", "x",
                                               "cheaper", "MODEL", "for", "each", "query", "42"};
  std::mt19937 rng(7);
  std::vector<std::string> texts;
  for (std::size_t words : {3, 12, 40, 90, 400, 2500, 7, 150}) {
    std::string text;
    for (std::size_t i = 0; i < words; ++i) {
      text += vocabulary[rng() % vocabulary.size()];
      text += i % 9 == 8 ? ".\n" : " ";
    }
    texts.push_back(text);
  }
  SparseFeatures reused;
  // (buckets, word_buckets): words and characters in blocks of their own
  // too, at counts that are powers of two (masked) and not (divided).
  const std::vector<std::pair<std::uint32_t, std::uint32_t>> shapes = {
      {64, 0},  {1000, 0},   {16384, 0},    {1u << 18, 0},  {1u << 20, 0}, {16384, 0},
      {64, 16}, {1000, 300}, {16384, 8192}, {32768, 16384}, {1u << 18, 0}};
  for (const auto& [buckets, word_buckets] : shapes) {
    FeaturizerOptions options;
    options.num_buckets = buckets;
    options.word_buckets = word_buckets;
    const Featurizer featurizer(options);
    for (const std::string& text : texts) {
      CAPTURE(buckets, word_buckets, text.size());
      featurizer.featurize(text, reused);
      const SparseFeatures expected = featurize_by_the_rules(text, options);
      REQUIRE(reused.indices == expected.indices);
      REQUIRE(reused.values.size() == expected.values.size());
      for (std::size_t i = 0; i < expected.values.size(); ++i) {
        REQUIRE(reused.values[i] == Approx(expected.values[i]).epsilon(1e-6));
      }
      require_same(featurize(featurizer, text), reused);
    }
  }
}

TEST_CASE("options turn feature kinds on and off", "[features]") {
  const std::string text = "The quick brown fox";
  FeaturizerOptions all;
  const SparseFeatures full = featurize(Featurizer(all), text);
  const std::uint32_t bigram =
      torouter::feature_bucket(FeatureKind::kWordBigram, "quick brown", all);
  const std::uint32_t unigram = torouter::feature_bucket(FeatureKind::kWordUnigram, "fox", all);
  const std::uint32_t gram3 = torouter::feature_bucket(FeatureKind::kCharNgram, " qu", all);
  const std::uint32_t gram4 = torouter::feature_bucket(FeatureKind::kCharNgram, "fox ", all);
  const std::uint32_t gram5b = torouter::feature_bucket(FeatureKind::kCharNgram, "brown", all);
  REQUIRE(contains(full, bigram));
  REQUIRE(contains(full, unigram));
  REQUIRE(contains(full, gram3));
  REQUIRE(contains(full, gram4));
  REQUIRE(contains(full, gram5b));
  // 4 words + 3 bigrams + char n-grams of " the "(3+2+1), " quick "(5+4+3),
  // " brown "(5+4+3), " fox "(3+2+1), assuming no collisions.
  REQUIRE(full.indices.size() == 4 + 3 + 6 + 12 + 12 + 6);

  FeaturizerOptions no_bigrams = all;
  no_bigrams.word_bigrams = false;
  const SparseFeatures f1 = featurize(Featurizer(no_bigrams), text);
  REQUIRE_FALSE(contains(f1, bigram));
  REQUIRE(f1.indices.size() == full.indices.size() - 3);

  FeaturizerOptions no_chars = all;
  no_chars.char_ngrams = false;
  const SparseFeatures f2 = featurize(Featurizer(no_chars), text);
  REQUIRE_FALSE(contains(f2, gram3));
  REQUIRE(f2.indices.size() == 7);

  FeaturizerOptions trigrams_only = all;
  trigrams_only.char_ngram_max = 3;
  const SparseFeatures f3 = featurize(Featurizer(trigrams_only), text);
  REQUIRE(contains(f3, gram3));
  REQUIRE_FALSE(contains(f3, gram5b));
  REQUIRE(f3.indices.size() == 7 + 3 + 5 + 5 + 3);

  FeaturizerOptions no_unigrams = all;
  no_unigrams.word_unigrams = false;
  const SparseFeatures f4 = featurize(Featurizer(no_unigrams), text);
  REQUIRE_FALSE(contains(f4, unigram));
  // token_ids do not depend on word_unigrams.
  REQUIRE(token_ids(Featurizer(no_unigrams), text) == token_ids(Featurizer(all), text));

  FeaturizerOptions seeded = all;
  seeded.hash_seed = 7;
  REQUIRE(featurize(Featurizer(seeded), text).indices != full.indices);

  for (const SparseFeatures* f : {&full, &f1, &f2, &f3, &f4})
    require_well_formed(*f, all.num_buckets);
  // The dense block does not depend on the hashed options.
  REQUIRE(f2.dense == full.dense);
}

TEST_CASE("bad options are refused", "[features]") {
  FeaturizerOptions zero_buckets;
  zero_buckets.num_buckets = 0;
  REQUIRE_THROWS_AS(Featurizer(zero_buckets), torouter::Error);
  FeaturizerOptions inverted;
  inverted.char_ngram_min = 5;
  inverted.char_ngram_max = 3;
  REQUIRE_THROWS_AS(Featurizer(inverted), torouter::Error);
  FeaturizerOptions too_long;
  too_long.char_ngram_max = torouter::kMaxCharNgram + 1;
  REQUIRE_THROWS_AS(Featurizer(too_long), torouter::Error);
  FeaturizerOptions no_room_for_characters;
  no_room_for_characters.num_buckets = 1024;
  no_room_for_characters.word_buckets = 1024;
  REQUIRE_THROWS_WITH(Featurizer(no_room_for_characters),
                      Catch::Matchers::Contains("word_buckets"));
}

TEST_CASE("word_buckets gives words and characters buckets of their own, weighted alike",
          "[features]") {
  FeaturizerOptions options;
  options.num_buckets = 4096;
  options.word_buckets = 1024;
  const SparseFeatures f = featurize(Featurizer(options), "Sorting a Python list, quickly");
  const std::uint32_t word = torouter::feature_bucket(FeatureKind::kWordUnigram, "python", options);
  const std::uint32_t pair =
      torouter::feature_bucket(FeatureKind::kWordBigram, "python list", options);
  const std::uint32_t gram = torouter::feature_bucket(FeatureKind::kCharNgram, "pyt", options);
  CHECK(word < 1024);
  CHECK(pair < 1024);
  CHECK(gram >= 1024);
  CHECK(gram < 4096);
  for (const std::uint32_t b : {word, pair, gram}) {
    CHECK(std::binary_search(f.indices.begin(), f.indices.end(), b));
  }
  double words = 0.0, chars = 0.0;
  for (std::size_t i = 0; i < f.indices.size(); ++i) {
    (f.indices[i] < 1024 ? words : chars) += double{f.values[i]} * f.values[i];
  }
  // Far fewer word features than character n-grams, yet half the norm each.
  CHECK(words == Approx(0.5).epsilon(1e-5));
  CHECK(chars == Approx(0.5).epsilon(1e-5));
  CHECK(torouter::sparse_dot(f, f) == Approx(1.0f).epsilon(1e-5));
}

TEST_CASE("values are L2-normalised and sparse_dot is a cosine", "[features]") {
  const Featurizer featurizer;
  const SparseFeatures a = featurize(featurizer, "How do I sort a list in Python?");
  const SparseFeatures b = featurize(featurizer, "How can I sort a Python list?");
  const SparseFeatures c = featurize(featurizer, "Quelle est la capitale de la France ?");
  for (const SparseFeatures* f : {&a, &b, &c})
    require_well_formed(*f, FeaturizerOptions{}.num_buckets);
  REQUIRE(torouter::sparse_dot(a, a) == Approx(1.0f).epsilon(1e-5));
  REQUIRE(torouter::sparse_dot(a, b) == Approx(torouter::sparse_dot(b, a)));
  REQUIRE(torouter::sparse_dot(a, b) > 0.3f);
  REQUIRE(torouter::sparse_dot(a, b) > 3 * torouter::sparse_dot(a, c));
}

TEST_CASE("dense features tell code from prose", "[features]") {
  using namespace torouter;
  const Featurizer featurizer;
  const SparseFeatures code = featurize(
      featurizer, "for (int i = 0; i < n; ++i) {\n  sum_[i] = a[i] * b[i];\n}\n#include <x>");
  const SparseFeatures prose = featurize(
      featurizer, "Could you tell me why the sky looks blue during the day and red at sunset?");
  REQUIRE(code.dense[kDenseCodeFraction] > 0.2f);
  REQUIRE(prose.dense[kDenseCodeFraction] == 0.0f);
  REQUIRE(code.dense[kDenseMathFraction] > prose.dense[kDenseMathFraction]);
  REQUIRE(code.dense[kDenseLogLines] == Approx(std::log1p(4.0)));
  REQUIRE(prose.dense[kDenseLogLines] == Approx(std::log1p(1.0)));
  REQUIRE(code.dense[kDenseDigitFraction] > 0.0f);
  REQUIRE(prose.dense[kDenseDigitFraction] == 0.0f);
  REQUIRE(prose.dense[kDenseHasQuestion] == 1.0f);
  REQUIRE(code.dense[kDenseHasQuestion] == 0.0f);
  REQUIRE(prose.dense[kDenseLogMeanWordLength] > code.dense[kDenseLogMeanWordLength]);

  const SparseFeatures counted = featurize(featurizer, "ABC déf 12\n?");
  // 12 code points; words ABC, déf, 12; 8 word characters, 3 of them upper case.
  REQUIRE(counted.dense[kDenseLogChars] == Approx(std::log1p(12.0)));
  REQUIRE(counted.dense[kDenseLogWords] == Approx(std::log1p(3.0)));
  REQUIRE(counted.dense[kDenseLogLines] == Approx(std::log1p(2.0)));
  REQUIRE(counted.dense[kDenseDigitFraction] == Approx(2.0 / 12));
  REQUIRE(counted.dense[kDenseUppercaseFraction] == Approx(3.0 / 8));
  REQUIRE(counted.dense[kDenseNonAsciiFraction] == Approx(1.0 / 12));
  REQUIRE(counted.dense[kDenseLogMeanWordLength] == Approx(std::log1p(8.0 / 3)));
}

TEST_CASE("token_ids keep order and stop at max_tokens", "[features]") {
  const Featurizer featurizer;
  const std::vector<std::uint32_t> all = token_ids(featurizer, "one two three four");
  REQUIRE(all.size() == 4);
  REQUIRE(token_ids(featurizer, "one two three four", 2) ==
          std::vector<std::uint32_t>(all.begin(), all.begin() + 2));
  REQUIRE(token_ids(featurizer, "one two three four", 0).empty());
  REQUIRE(token_ids(featurizer, "中文字", 2).size() == 2);
  REQUIRE(token_ids(featurizer, "one two three four", 4) == all);
}
