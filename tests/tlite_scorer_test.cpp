// The transformer-lite scorer: its gradients against finite differences (in
// double), its forward pass against PyTorch, learning, determinism, model
// files and spec strings.
#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <limits>
#include <map>
#include <stdexcept>
#include <string>
#include <string_view>
#include <vector>

#include "tlite_model.hpp"
#include "tlite_packed.hpp"
#include "torouter/error.hpp"
#include "torouter/trainable_scorer.hpp"

namespace {

namespace nn = torouter::nn;
using torouter::Loss;
using torouter::TrainingSet;
using torouter::detail::TliteBatchScratch;
using torouter::detail::TliteInputs;
using torouter::detail::TliteModel;
using torouter::detail::TlitePackedBuffers;
using torouter::detail::TliteShape;
using MatD = nn::Matrix<double>;
using MatF = nn::Matrix<float>;

// Reads a fixture: `name rows cols` headers, each followed by rows * cols
// numbers; '#' lines are comments.
std::map<std::string, MatD> read_fixture(const std::string& path) {
  std::ifstream in(path);
  if (!in) throw std::runtime_error(path + ": cannot open");
  std::map<std::string, MatD> tensors;
  std::string name;
  while (in >> name) {
    if (name[0] == '#') {
      std::string rest;
      std::getline(in, rest);
      continue;
    }
    nn::Index rows = 0;
    nn::Index cols = 0;
    if (!(in >> rows >> cols)) throw std::runtime_error(path + ": bad header for " + name);
    MatD m(rows, cols);
    for (nn::Index i = 0; i < m.size(); ++i) {
      if (!(in >> m.data()[i])) throw std::runtime_error(path + ": short tensor " + name);
    }
    tensors[name] = m;
  }
  return tensors;
}

// A training set with the given prompts and per-expert columns.
TrainingSet make_set(std::vector<std::string> experts, std::vector<std::string> prompts) {
  TrainingSet set;
  const auto rows = static_cast<Eigen::Index>(prompts.size());
  const auto cols = static_cast<Eigen::Index>(experts.size());
  set.experts = std::move(experts);
  set.prompts = std::move(prompts);
  set.quality = Eigen::MatrixXf::Zero(rows, cols);
  set.present = Eigen::MatrixXf::Ones(rows, cols);
  set.output_tokens =
      Eigen::MatrixXf::Constant(rows, cols, std::numeric_limits<float>::quiet_NaN());
  set.fingerprint = "0123456789abcdef";
  set.source = "synthetic";
  return set;
}

}  // namespace

TEST_CASE("tlite forward pass matches a PyTorch reference", "[tlite]") {
  auto t = read_fixture(std::string(TOROUTER_SOURCE_DIR) + "/tests/fixtures/tlite_reference.txt");
  const MatD& config = t.at("config");
  TliteShape shape;
  shape.d_model = static_cast<nn::Index>(config(0, 0));
  shape.heads = static_cast<nn::Index>(config(0, 1));
  shape.ff = static_cast<nn::Index>(config(0, 2));
  shape.layers = static_cast<nn::Index>(config(0, 3));
  shape.max_tokens = static_cast<nn::Index>(config(0, 4));
  shape.buckets = static_cast<std::uint32_t>(config(0, 5));
  const auto experts = static_cast<nn::Index>(config(0, 6));

  TliteModel<float> model(shape, experts, true);
  nn::ParameterList<float> params;
  model.collect_parameters(params);
  for (auto& p : params) {
    INFO(p.name);
    MatD value = t.at(p.name);
    // PyTorch's Linear weights are outputs x inputs; ours are the transpose.
    if (p.name.find("weight") != std::string::npos) value.transposeInPlace();
    REQUIRE(value.rows() == p.value->rows());
    REQUIRE(value.cols() == p.value->cols());
    *p.value = value.cast<float>();
  }

  const MatD& ids = t.at("ids");
  const MatD& lengths = t.at("lengths");
  double max_diff = 0;
  const auto compare = [&](nn::Index i, const MatF& pooled, nn::Index row) {
    MatF logits, tokens;
    model.heads_forward(pooled.row(row), logits, tokens);
    max_diff =
        std::max(max_diff, (pooled.row(row).cast<double>() - t.at("pooled").row(i)).cwiseAbs().maxCoeff());
    max_diff = std::max(
        max_diff, (logits.cast<double>() - t.at("quality_logits").row(i)).cwiseAbs().maxCoeff());
    max_diff = std::max(
        max_diff, (tokens.cast<double>() - t.at("log_tokens").row(i)).cwiseAbs().maxCoeff());
  };
  // One sequence at a time, as in training; and all of them packed in one
  // serving pass, as the scorer serves.
  std::vector<std::uint32_t> packed;
  std::vector<nn::Index> starts{0};
  for (nn::Index i = 0; i < ids.rows(); ++i) {
    std::vector<std::uint32_t> seq;
    for (nn::Index j = 0; j < lengths(0, i); ++j)
      seq.push_back(static_cast<std::uint32_t>(ids(i, j)));
    packed.insert(packed.end(), seq.begin(), seq.end());
    starts.push_back(static_cast<nn::Index>(packed.size()));
    // The empty prompt is the reserved token; give it as no ids at all.
    if (seq.size() == 1 && seq[0] == shape.buckets) seq.clear();
    TliteModel<float>::Sequence s;
    MatF pooled(1, shape.d_model);
    model.encode(seq.data(), seq.size(), std::max<nn::Index>(1, static_cast<nn::Index>(seq.size())),
                 s, pooled, 0);
    compare(i, pooled, 0);
  }
  TlitePackedBuffers buffers;
  buffers.reserve(shape, starts.back());
  MatF pooled(ids.rows() + 1, shape.d_model);
  torouter::detail::tlite_encode_packed(model, packed.data(), starts, buffers, pooled, 1);
  for (nn::Index i = 0; i < ids.rows(); ++i) compare(i, pooled, i + 1);
  std::printf("tlite PyTorch reference, max abs difference: %.3g\n", max_diff);
  CHECK(max_diff < 1e-5);
}

TEST_CASE("tlite gradients match finite differences for both losses", "[tlite]") {
  TliteShape shape;
  shape.d_model = 8;
  shape.heads = 2;
  shape.ff = 16;
  shape.layers = 2;
  shape.max_tokens = 5;
  shape.buckets = 10;

  TrainingSet set = make_set({"a", "b", "c"}, {"", "", "", "", ""});
  set.quality << 0.9f, 0.2f, 0.5f,  //
      0.1f, 0.8f, 0.3f,             //
      0.4f, 0.4f, 1.0f,             //
      0.0f, 0.6f, 0.7f,             //
      0.3f, 0.2f, 0.9f;
  set.present(1, 2) = 0;  // a missing outcome
  set.present(3, 0) = 0;
  set.output_tokens(0, 0) = 120;
  set.output_tokens(1, 1) = 3;
  set.output_tokens(2, 2) = 0;
  set.output_tokens(4, 0) = 900;
  TliteInputs inputs;
  inputs.set = &set;
  // Full length, a repeated id, the empty prompt, one token, and the last
  // bucket.
  inputs.ids = {{3, 7, 1, 9, 0}, {4, 4, 2}, {}, {6}, {9, 5, 8, 2}};
  const std::vector<std::size_t> rows = {0, 1, 2, 3, 4};

  for (Loss loss : {Loss::Bce, Loss::Soft}) {
    INFO(torouter::to_string(loss));
    TliteModel<double> model(shape, 3, true);
    nn::Rng rng(11);
    model.init(rng);
    nn::ParameterList<double> params;
    model.collect_parameters(params);
    // Norm gains and biases away from 1 and 0, so their gradients show.
    for (auto& p : params) {
      if (p.name.find("norm") != std::string::npos) {
        for (nn::Index i = 0; i < p.value->size(); ++i) p.value->data()[i] += nn::uniform(rng, 0.3);
      }
      if (p.name.find("bias") != std::string::npos) nn::fill_uniform(*p.value, 0.2, rng);
    }
    params.zero_grad();
    TliteBatchScratch<double> scratch;
    const double temperature = 0.5;
    const double loss_value = torouter::detail::tlite_batch_loss(model, inputs, rows, loss,
                                                                 temperature, 1.0, true, scratch);

    // The row-at-a-time loss equals the whole-batch loss of the nn losses.
    MatD pooled(static_cast<nn::Index>(rows.size()), shape.d_model), logits, tokens, grad;
    TliteModel<double>::Sequence s;
    for (std::size_t i = 0; i < rows.size(); ++i) {
      const auto& ids = inputs.ids[i];
      model.encode(ids.data(), ids.size(),
                   std::max<nn::Index>(1, static_cast<nn::Index>(ids.size())), s, pooled,
                   static_cast<nn::Index>(i));
    }
    model.heads_forward(pooled, logits, tokens);
    const MatD targets = set.quality.cast<double>();
    const MatD mask = set.present.cast<double>();
    double expected = loss == Loss::Bce
                          ? nn::bce_with_logits(logits, targets, grad, &mask)
                          : nn::soft_label_cross_entropy(logits, targets, temperature, grad, &mask);
    double squared = 0;
    int known = 0;
    for (nn::Index i = 0; i < tokens.rows(); ++i) {
      for (nn::Index j = 0; j < tokens.cols(); ++j) {
        if (!std::isfinite(set.output_tokens(i, j))) continue;
        squared +=
            std::pow(tokens(i, j) - std::log1p(static_cast<double>(set.output_tokens(i, j))), 2);
        ++known;
      }
    }
    expected += torouter::detail::kTliteTokenLossWeight * squared / known;
    CHECK(loss_value == Approx(expected).epsilon(1e-12));

    // Every scalar of every parameter, by central differences.
    const double eps = 1e-6;
    double max_error = 0;
    std::string worst;
    std::size_t checked = 0;
    for (auto& p : params) {
      for (nn::Index k = 0; k < p.value->size(); ++k) {
        double& w = p.value->data()[k];
        const double saved = w;
        w = saved + eps;
        const double up = torouter::detail::tlite_batch_loss(model, inputs, rows, loss, temperature,
                                                             1.0, false, scratch);
        w = saved - eps;
        const double down = torouter::detail::tlite_batch_loss(model, inputs, rows, loss,
                                                               temperature, 1.0, false, scratch);
        w = saved;
        const double numeric = (up - down) / (2 * eps);
        const double error = std::abs(numeric - p.grad->data()[k]);
        if (error > max_error) {
          max_error = error;
          worst = p.name + "[" + std::to_string(k) + "]";
        }
        ++checked;
      }
    }
    std::printf("tlite gradient check (%s): %zu scalars in %zu tensors, max abs error %.3g (%s)\n",
                std::string(torouter::to_string(loss)).c_str(), checked, params.size(), max_error,
                worst.c_str());
    CHECK(checked == static_cast<std::size_t>(params.scalar_count()));
    CHECK(max_error < 1e-7);
    // The token table lists exactly the rows the batch used, the empty
    // prompt's token (row 10) included.
    const auto* table = params.find("tlite.token_embedding");
    REQUIRE(table != nullptr);
    CHECK(*table->touched_rows == std::vector<nn::Index>{0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10});
  }
}

namespace {

// Prompts with a code word are answered best by "coder", others by "writer".
TrainingSet synthetic_set(std::size_t rows, std::uint64_t seed) {
  const std::vector<std::string> code = {"code", "python", "function", "compile", "bug", "script"};
  const std::vector<std::string> prose = {"poem", "history", "story", "capital", "essay", "song"};
  const std::vector<std::string> filler = {"please", "write", "a",  "short", "about",   "the",
                                           "my",     "for",   "me", "quick", "explain", "good"};
  nn::Rng rng(seed);
  std::vector<std::string> prompts;
  std::vector<bool> is_code;
  for (std::size_t i = 0; i < rows; ++i) {
    const bool c = rng() % 2 == 0;
    std::string p;
    const std::size_t words = 2 + rng() % 8;
    const std::size_t key_at = rng() % words;
    for (std::size_t w = 0; w < words; ++w) {
      if (!p.empty()) p += ' ';
      p += w == key_at ? (c ? code : prose)[rng() % 6] : filler[rng() % filler.size()];
    }
    prompts.push_back(p);
    is_code.push_back(c);
  }
  TrainingSet set = make_set({"coder", "writer"}, prompts);
  for (std::size_t i = 0; i < rows; ++i) {
    const auto r = static_cast<Eigen::Index>(i);
    set.quality(r, 0) = is_code[i] ? 0.9f : 0.2f;
    set.quality(r, 1) = is_code[i] ? 0.3f : 0.8f;
    set.output_tokens(r, 0) = is_code[i] ? 400.0f : 80.0f;
    set.output_tokens(r, 1) = is_code[i] ? 200.0f : 300.0f;
  }
  return set;
}

const char* const kSmallSpec = "tlite:16,heads=2,ff=32,layers=1,tokens=12,buckets=512";

// Scores of the same network on the same prompt agree to float rounding:
// the kernels of a CPU level with FMA (src/kernels/) round a row by where it
// falls in a product's blocks, so a prompt's position in its batch and the
// weights' addresses can move the last bits.
bool same_scores(const Eigen::MatrixXf& a, const Eigen::MatrixXf& b) {
  return a.rows() == b.rows() && a.cols() == b.cols() &&
         (a - b).cwiseAbs().maxCoeff() <= 1e-5f * (1.0f + a.cwiseAbs().maxCoeff());
}

torouter::TrainOptions small_options(int threads) {
  torouter::TrainOptions o;
  o.seed = 5;
  o.threads = threads;
  o.max_epochs = 25;
  o.batch_size = 16;
  return o;
}

}  // namespace

TEST_CASE("tlite learns a synthetic routing rule", "[tlite]") {
  const TrainingSet set = synthetic_set(400, 1);
  for (Loss loss : {Loss::Bce, Loss::Soft}) {
    INFO(torouter::to_string(loss));
    auto scorer = torouter::make_scorer(kSmallSpec);
    auto options = small_options(1);
    options.loss = loss;
    const auto report = scorer->train(set, options);
    CHECK(report.validation_quality > 0.8);
    const std::vector<std::string> prompts = {"fix the bug in my python script please",
                                              "compile this", "a poem about the sea",
                                              "explain the history of rome"};
    const auto scores = scorer->score_all(prompts);
    CHECK(scores.quality(0, 0) > scores.quality(0, 1));
    CHECK(scores.quality(1, 0) > scores.quality(1, 1));
    CHECK(scores.quality(2, 1) > scores.quality(2, 0));
    CHECK(scores.quality(3, 1) > scores.quality(3, 0));
    // The length head learned that code answers run longer for "coder".
    CHECK(scores.output_tokens(0, 0) > scores.output_tokens(2, 0));
  }
}

TEST_CASE("tlite training is deterministic and round-trips through a model file", "[tlite]") {
  const TrainingSet set = synthetic_set(200, 2);
  auto a = torouter::make_scorer(kSmallSpec);
  auto b = torouter::make_scorer(kSmallSpec);
  auto options = small_options(2);
  options.max_epochs = 4;
  a->train(set, options);
  b->train(set, options);
  const auto& prompts = torouter::model_check_prompts();
  const auto sa = a->score_all(prompts);
  const auto sb = b->score_all(prompts);
  CHECK(sa.quality == sb.quality);
  CHECK(sa.output_tokens == sb.output_tokens);

  const std::string path = "tlite_scorer_test.tormodel";
  torouter::save_model(*a, path);
  const torouter::LoadedModel loaded = torouter::load_model(path);
  std::remove(path.c_str());
  CHECK(loaded.scorer->version() == a->version());
  CHECK(loaded.scorer->spec() == a->spec());
  const auto sl = loaded.scorer->score_all(prompts);
  CHECK(same_scores(sl.quality, sa.quality));
  CHECK(same_scores(sl.output_tokens, sa.output_tokens));

  // With a workspace, and the workspace reused, the scores are the same.
  auto workspace = loaded.scorer->make_workspace();
  torouter::ScoreBatch batch;
  for (int round = 0; round < 2; ++round) {
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const std::string_view p = prompts[i];
      loaded.scorer->score(&p, 1, batch, workspace.get());
      CHECK(same_scores(batch.quality.row(0), sl.quality.row(static_cast<Eigen::Index>(i))));
    }
  }
}

TEST_CASE("tlite scores empty and long prompts", "[tlite]") {
  const TrainingSet set = synthetic_set(100, 3);
  auto scorer = torouter::make_scorer(kSmallSpec);
  auto options = small_options(1);
  options.max_epochs = 2;
  scorer->train(set, options);
  std::string first12 = "one two three four five six seven eight nine ten eleven twelve";
  std::string longer = first12;
  for (int i = 0; i < 300; ++i) longer += " python";
  const auto scores = scorer->score_all({"", "   ", first12, longer});
  CHECK(scores.quality.allFinite());
  // No words at all is the empty prompt.
  CHECK(same_scores(scores.quality.row(0), scores.quality.row(1)));
  // Only the first `tokens` words are read.
  CHECK(same_scores(scores.quality.row(2), scores.quality.row(3)));
}

TEST_CASE("tlite scores a large batch in packed chunks as it scores prompts one by one",
          "[tlite]") {
  const TrainingSet set = synthetic_set(100, 4);
  auto scorer = torouter::make_scorer("tlite:16,heads=2,ff=32,layers=2,tokens=64,buckets=512");
  auto options = small_options(1);
  options.max_epochs = 2;
  scorer->train(set, options);
  // 60 prompts of 0 to 70 words: about 2,000 rows, so several chunks of the
  // serving pass, split between prompts, with empty prompts among them.
  std::vector<std::string> prompts;
  for (int i = 0; i < 60; ++i) {
    std::string text;
    for (int w = 0; w < (i * 37) % 71; ++w) text += (w % 4 == 0 ? "python " : w % 4 == 1 ? "sea " : "bug ");
    prompts.push_back(text);
  }
  const auto together = scorer->score_all(prompts);
  REQUIRE(together.quality.rows() == 60);
  auto workspace = scorer->make_workspace();
  torouter::ScoreBatch one;
  for (std::size_t i = 0; i < prompts.size(); ++i) {
    const std::string_view p = prompts[i];
    scorer->score(&p, 1, one, workspace.get());
    const auto row = static_cast<Eigen::Index>(i);
    CHECK((one.quality.row(0) - together.quality.row(row)).cwiseAbs().maxCoeff() < 1e-5f);
    CHECK((one.output_tokens.row(0) - together.output_tokens.row(row)).cwiseAbs().maxCoeff() <
          1e-3f * (1.0f + one.output_tokens.row(0).cwiseAbs().maxCoeff()));
  }
}

TEST_CASE("tlite spec strings", "[tlite]") {
  CHECK(torouter::make_scorer("tlite")->spec() == "tlite:64");
  CHECK(torouter::make_scorer("tlite:64,tokens=32,layers=1")->spec() ==
        "tlite:64,layers=1,tokens=32");
  CHECK(torouter::make_scorer("tlite:64,heads=4,ff=256,layers=2,tokens=64,buckets=16384")->spec() ==
        "tlite:64");
  CHECK(torouter::make_scorer("tlite:128,ff=512,tokens=128")->spec() ==
        "tlite:128,ff=512,tokens=128");
  CHECK(torouter::make_scorer(kSmallSpec)->kind() == "tlite");
  CHECK_THROWS_AS(torouter::make_scorer("tlite:30,heads=4"), torouter::Error);
  CHECK_THROWS_AS(torouter::make_scorer("tlite:0"), torouter::Error);
  CHECK_THROWS_AS(torouter::make_scorer("tlite,depth=3"), torouter::Error);
  CHECK_THROWS_AS(torouter::make_scorer("tlite,tokens=0"), torouter::Error);
}
