// Tests of the nn building blocks: every gradient against central finite
// differences in double, AdamW against hand-computed steps, a tiny MLP fit,
// the no-allocation forward pass and the encoder layer against PyTorch.

// Eigen's asserts (which Release builds drop) throw here instead, so that
// set_is_malloc_allowed(false) can catch a heap allocation in a forward pass.
#include <stdexcept>
#define EIGEN_RUNTIME_NO_MALLOC
#define eigen_assert(x)                                              \
  do {                                                               \
    if (!(x)) throw std::logic_error("Eigen assertion failed: " #x); \
  } while (false)

#include <algorithm>
#include <catch2/catch.hpp>
#include <cmath>
#include <cstdio>
#include <fstream>
#include <functional>
#include <map>
#include <string>
#include <vector>

#include "nn/activations.hpp"
#include "nn/adamw.hpp"
#include "nn/attention.hpp"
#include "nn/dense.hpp"
#include "nn/embedding_bag.hpp"
#include "nn/encoder_layer.hpp"
#include "nn/int8_embedding_bag.hpp"
#include "nn/layer_norm.hpp"
#include "nn/losses.hpp"
#include "nn/parameters.hpp"

namespace nn = torouter::nn;
using MatD = nn::Matrix<double>;
using MatF = nn::Matrix<float>;

namespace {

MatD random_matrix(nn::Index rows, nn::Index cols, nn::Rng& rng, double bound = 1.0) {
  MatD m(rows, cols);
  nn::fill_uniform(m, bound, rng);
  return m;
}

// sum(out .* weights): a scalar loss whose gradient w.r.t. out is `weights`.
double weighted_sum(const MatD& out, const MatD& weights) {
  return out.cwiseProduct(weights).sum();
}

// The largest difference between the analytic gradient and central finite
// differences of `loss` over every entry of `x`, relative to the largest
// gradient entry (so entries near zero do not blow the ratio up).
double gradient_error(const std::function<double()>& loss, MatD& x, const MatD& analytic,
                      double h = 1e-5) {
  REQUIRE(analytic.rows() == x.rows());
  REQUIRE(analytic.cols() == x.cols());
  MatD numeric(x.rows(), x.cols());
  for (nn::Index i = 0; i < x.size(); ++i) {
    const double saved = x.data()[i];
    x.data()[i] = saved + h;
    const double up = loss();
    x.data()[i] = saved - h;
    const double down = loss();
    x.data()[i] = saved;
    numeric.data()[i] = (up - down) / (2 * h);
  }
  // The floor keeps a gradient that is zero by symmetry (the key bias: a
  // softmax ignores a shift of its row) from comparing noise with noise.
  const double scale = std::max(numeric.cwiseAbs().maxCoeff(), 1e-3);
  return (analytic - numeric).cwiseAbs().maxCoeff() / scale;
}

// The worst relative error since the last `report_worst`.
double g_worst_error = 0;

void report_worst(const char* block) {
  std::printf("%s: worst relative gradient error %.3g\n", block, g_worst_error);
  g_worst_error = 0;
}

void expect_small(const std::string& what, double error, double bound = 1e-6) {
  g_worst_error = std::max(g_worst_error, error);
  INFO(what << ": relative error " << error);
  CHECK(error < bound);
}

// Checks every parameter's accumulated gradient (as left by `run_backward`)
// against finite differences of `loss`.
void check_parameters(nn::ParameterList<double>& params, const std::function<double()>& loss,
                      const std::function<void()>& run_backward, const std::string& block) {
  params.zero_grad();
  run_backward();
  for (auto& p : params) {
    expect_small(block + " " + p.name, gradient_error(loss, *p.value, *p.grad));
  }
}

}  // namespace

TEST_CASE("Dense gradients match finite differences", "[nn]") {
  nn::Rng rng(1);
  nn::Dense<double> layer(3, 5);
  layer.init(rng);
  nn::fill_uniform(layer.bias(), 0.5, rng);
  MatD x = random_matrix(4, 3, rng);
  const MatD r = random_matrix(4, 5, rng);
  MatD out;
  auto loss = [&] {
    layer.forward(x, out);
    return weighted_sum(out, r);
  };
  nn::ParameterList<double> params;
  layer.collect_parameters("dense", params);
  REQUIRE(params.size() == 2);
  CHECK(params[0].name == "dense.weight");
  CHECK(params[0].decay);
  CHECK_FALSE(params[1].decay);
  MatD dx;
  check_parameters(
      params, loss, [&] { layer.backward(x, r, &dx); }, "dense");
  expect_small("dense dx", gradient_error(loss, x, dx));

  // Gradients accumulate over backward calls until zeroed.
  layer.backward(x, r, nullptr);
  CHECK((layer.weight_grad() - 2 * x.transpose() * r).cwiseAbs().maxCoeff() < 1e-12);
  params.zero_grad();
  CHECK(layer.weight_grad().isZero());
  report_worst("dense");
}

TEST_CASE("Activations and their gradients", "[nn]") {
  nn::Rng rng(2);
  MatD x = random_matrix(3, 7, rng, 3.0);
  // Keep ReLU's inputs off its kink, where finite differences straddle it.
  for (nn::Index i = 0; i < x.size(); ++i) {
    if (std::abs(x.data()[i]) < 1e-2) x.data()[i] = 0.5;
  }
  const MatD r = random_matrix(3, 7, rng);
  MatD out, dx;

  auto relu_loss = [&] {
    nn::relu(x, out);
    return weighted_sum(out, r);
  };
  nn::relu_backward(x, r, dx);
  expect_small("relu", gradient_error(relu_loss, x, dx));

  auto gelu_loss = [&] {
    nn::gelu(x, out);
    return weighted_sum(out, r);
  };
  nn::gelu_backward(x, r, dx);
  expect_small("gelu", gradient_error(gelu_loss, x, dx));

  auto sigmoid_loss = [&] {
    nn::sigmoid(x, out);
    return weighted_sum(out, r);
  };
  MatD y;
  nn::sigmoid(x, y);
  nn::sigmoid_backward(y, r, dx);
  expect_small("sigmoid", gradient_error(sigmoid_loss, x, dx));

  // Values from torch.nn.functional.gelu(x, approximate='tanh').
  CHECK(nn::gelu(1.0) == Approx(0.8411919906082768).epsilon(1e-12));
  CHECK(nn::gelu(-2.0) == Approx(-0.04540230591222).epsilon(1e-9));
  CHECK(nn::sigmoid(-1000.0) == 0.0);
  CHECK(nn::sigmoid(1000.0) == 1.0);
  CHECK(nn::sigmoid(0.0f) == 0.5f);
  report_worst("activations");
}

TEST_CASE("EmbeddingBag sums weighted rows and gradients touch only used rows", "[nn]") {
  nn::Rng rng(3);
  nn::EmbeddingBag<double> bag(10, 4);
  bag.init(rng);
  nn::SparseBatch batch;
  batch.add_row({1, 4, 7}, {1.0f, 0.5f, -2.0f});
  batch.add_row({}, {});  // an empty prompt embeds to zero
  batch.add_row({4, 9}, {0.25f, 3.0f});
  REQUIRE(batch.rows() == 3);

  MatD out;
  bag.forward(batch, out);
  REQUIRE(out.rows() == 3);
  const MatD expected0 = bag.table().row(1) + 0.5 * bag.table().row(4) - 2.0 * bag.table().row(7);
  CHECK((out.row(0) - expected0).cwiseAbs().maxCoeff() < 1e-12);
  CHECK(out.row(1).isZero());

  const MatD r = random_matrix(3, 4, rng);
  auto loss = [&] {
    bag.forward(batch, out);
    return weighted_sum(out, r);
  };
  nn::ParameterList<double> params;
  bag.collect_parameters("bag", params);
  REQUIRE(params[0].touched_rows != nullptr);
  check_parameters(
      params, loss, [&] { bag.backward(batch, r); }, "embedding_bag");
  CHECK(bag.touched_rows() == std::vector<nn::Index>{1, 4, 7, 9});
  CHECK(bag.table_grad().row(0).isZero());
  CHECK(bag.table_grad().row(5).isZero());

  params.zero_grad();
  CHECK(bag.touched_rows().empty());
  CHECK(bag.table_grad().isZero());
  report_worst("embedding_bag");
}

TEST_CASE("Int8EmbeddingBag stays within half a step of the float table", "[nn]") {
  nn::Rng rng(5);
  nn::EmbeddingBag<float> bag(50, 64);
  bag.init(rng);
  bag.table().row(3).setZero();  // an all-zero row gets scale 0, not NaN
  bag.table()(7, 5) = 40.0f;     // one large weight sets its row's step
  const nn::Int8EmbeddingBag small(bag.table());
  REQUIRE(small.buckets() == 50);
  REQUIRE(small.dim() == 64);
  CHECK(small.bytes() == 50 * 64 + 50 * sizeof(float));

  const nn::Matrix<float> dequantized = small.dequantized();
  for (nn::Index r = 0; r < bag.table().rows(); ++r) {
    const float step = bag.table().row(r).cwiseAbs().maxCoeff() / 127.0f;
    CHECK((dequantized.row(r) - bag.table().row(r)).cwiseAbs().maxCoeff() <= step * 0.5f * 1.0001f);
  }
  CHECK(dequantized.row(3).isZero());
  CHECK(dequantized(7, 5) == Approx(40.0f));
  // Quantizing the dequantized table changes nothing that matters: a model
  // file stores the dequantized floats and the loader quantizes them again.
  const nn::Matrix<float> again = nn::Int8EmbeddingBag(dequantized).dequantized();
  CHECK((again - dequantized).cwiseAbs().maxCoeff() <= 1e-6f * dequantized.cwiseAbs().maxCoeff());

  // Its forward pass is the float bag's over the dequantized table.
  nn::SparseBatch batch;
  std::vector<std::uint32_t> many;
  std::vector<float> values;
  for (std::uint32_t i = 0; i < 40; ++i) {
    many.push_back(i);
    values.push_back(0.1f * static_cast<float>(i % 7) - 0.3f);
  }
  batch.add_row(many.data(), values.data(), many.size());  // long enough to prefetch
  batch.add_row({}, {});
  batch.add_row({3, 7, 49}, {1.0f, -0.5f, 2.0f});
  nn::EmbeddingBag<float> reference(50, 64);
  reference.table() = dequantized;
  nn::Matrix<float> expected, out;
  reference.forward(batch, expected);
  small.forward(batch, out);
  REQUIRE(out.rows() == 3);
  CHECK((out - expected).cwiseAbs().maxCoeff() <= 1e-5f * (1.0f + expected.cwiseAbs().maxCoeff()));
  CHECK(out.row(1).isZero());
}

TEST_CASE("LayerNorm gradients match finite differences", "[nn]") {
  nn::Rng rng(4);
  nn::LayerNorm<double> norm(6);
  nn::fill_uniform(norm.gain(), 0.5, rng);
  norm.gain().array() += 1.0;
  nn::fill_uniform(norm.bias(), 0.5, rng);
  MatD x = random_matrix(4, 6, rng, 2.0);
  const MatD r = random_matrix(4, 6, rng);
  MatD out;
  nn::LayerNorm<double>::Cache cache;
  auto loss = [&] {
    norm.forward(x, out, cache);
    return weighted_sum(out, r);
  };
  // Normalised rows have mean 0 and variance 1 (up to eps).
  nn::LayerNorm<double> plain(6);
  plain.forward(x, out, cache);
  CHECK(std::abs(out.row(0).sum()) < 1e-12);
  CHECK(out.row(0).squaredNorm() / 6 == Approx(1.0).epsilon(1e-4));

  nn::ParameterList<double> params;
  norm.collect_parameters("norm", params);
  CHECK_FALSE(params[0].decay);
  MatD dx;
  check_parameters(
      params, loss,
      [&] {
        norm.forward(x, out, cache);
        norm.backward(cache, r, dx);
      },
      "layer_norm");
  expect_small("layer_norm dx", gradient_error(loss, x, dx));
  report_worst("layer_norm");
}

TEST_CASE("Attention gradients match finite differences, with and without padding", "[nn]") {
  for (const nn::Index length : {nn::Index(5), nn::Index(3), nn::Index(1)}) {
    DYNAMIC_SECTION("length " << length) {
      nn::Rng rng(5);
      nn::MultiHeadAttention<double> attn(8, 2);
      attn.init(rng);
      nn::ParameterList<double> params;
      attn.collect_parameters("attn", params);
      for (auto& p : params) {
        if (!p.decay) nn::fill_uniform(*p.value, 0.3, rng);  // non-zero biases
      }
      MatD x = random_matrix(5, 8, rng);
      const MatD r = random_matrix(5, 8, rng);
      MatD out;
      nn::MultiHeadAttention<double>::Cache cache;
      auto loss = [&] {
        attn.forward(x, length, out, cache);
        return weighted_sum(out, r);
      };
      MatD dx;
      check_parameters(
          params, loss,
          [&] {
            attn.forward(x, length, out, cache);
            attn.backward(x, cache, r, dx);
          },
          "attention");
      expect_small("attention dx", gradient_error(loss, x, dx));

      // Padded positions are invisible to the real ones.
      attn.forward(x, length, out, cache);
      const MatD before = out;
      x.bottomRows(5 - length).setConstant(7.0);
      attn.forward(x, length, out, cache);
      CHECK((out.topRows(length) - before.topRows(length)).cwiseAbs().maxCoeff() < 1e-12);
      // Padded rows still get a gradient through their own queries (with a
      // single real position every query attends to it alone, so not then).
      if (length == 3) CHECK(dx.bottomRows(5 - length).cwiseAbs().maxCoeff() > 0);
      report_worst(("attention, length " + std::to_string(length)).c_str());
    }
  }
}

TEST_CASE("EncoderLayer gradients match finite differences", "[nn]") {
  nn::Rng rng(6);
  nn::EncoderLayer<double> layer(8, 2, 16);
  layer.init(rng);
  nn::ParameterList<double> params;
  layer.collect_parameters("enc", params);
  REQUIRE(params.size() == 16);
  for (auto& p : params) {
    if (!p.decay) nn::fill_uniform(*p.value, 0.3, rng);
  }
  layer.norm1().gain().array() += 1.0;
  layer.norm2().gain().array() += 1.0;
  MatD x = random_matrix(5, 8, rng);
  const MatD r = random_matrix(5, 8, rng);
  const nn::Index length = 4;
  MatD out, dx;
  nn::EncoderLayer<double>::Cache cache;
  auto loss = [&] {
    layer.forward(x, length, out, cache);
    return weighted_sum(out, r);
  };
  check_parameters(
      params, loss,
      [&] {
        layer.forward(x, length, out, cache);
        layer.backward(cache, r, dx);
      },
      "encoder");
  expect_small("encoder dx", gradient_error(loss, x, dx));

  nn::EncoderLayer<float> defaults;
  CHECK(defaults.d_model() == 128);
  CHECK(defaults.attention().heads() == 4);
  CHECK(defaults.ff_dim() == 512);
  report_worst("encoder_layer");
}

TEST_CASE("Loss gradients match finite differences and stay finite", "[nn]") {
  nn::Rng rng(7);
  MatD logits = random_matrix(4, 5, rng, 3.0);
  MatD targets = random_matrix(4, 5, rng, 0.5);
  targets.array() += 0.5;  // in [0, 1]
  MatD mask = MatD::Ones(4, 5);
  mask(0, 1) = 0;
  mask(2, 0) = 0;
  mask(2, 4) = 0;
  mask.row(3).setZero();  // a prompt with no labels at all
  MatD grad, scratch;

  const MatD* const masks[] = {nullptr, &mask};
  for (const MatD* m : masks) {
    const std::string suffix = m == nullptr ? "" : " masked";
    nn::bce_with_logits(logits, targets, grad, m);
    expect_small("bce" + suffix,
                 gradient_error([&] { return nn::bce_with_logits(logits, targets, scratch, m); },
                                logits, grad));
    nn::soft_label_cross_entropy(logits, targets, 0.2, grad, m);
    expect_small("soft label" + suffix,
                 gradient_error(
                     [&] { return nn::soft_label_cross_entropy(logits, targets, 0.2, scratch, m); },
                     logits, grad));
    if (m != nullptr) {
      CHECK(grad(0, 1) == 0);
      CHECK(grad.row(3).isZero());
    }
  }

  // The value against the definitions, on one unmasked row.
  const MatD z = (MatD(1, 3) << 0.5, -1.0, 2.0).finished();
  const MatD t = (MatD(1, 3) << 1.0, 0.0, 0.7).finished();
  double bce = 0;
  double norm_z = 0;
  double norm_t = 0;
  for (int j = 0; j < 3; ++j) {
    const double s = 1 / (1 + std::exp(-z(0, j)));
    bce -= t(0, j) * std::log(s) + (1 - t(0, j)) * std::log(1 - s);
    norm_z += std::exp(z(0, j));
    norm_t += std::exp(t(0, j) / 0.5);
  }
  double soft = 0;
  for (int j = 0; j < 3; ++j) {
    soft -= std::exp(t(0, j) / 0.5) / norm_t * std::log(std::exp(z(0, j)) / norm_z);
  }
  CHECK(nn::bce_with_logits(z, t, grad) == Approx(bce / 3).epsilon(1e-12));
  CHECK(nn::soft_label_cross_entropy(z, t, 0.5, grad) == Approx(soft).epsilon(1e-12));

  // Extreme logits in float: no inf or NaN in loss or gradient.
  const MatF big = (MatF(1, 3) << 200.0f, -200.0f, 0.0f).finished();
  const MatF tf = (MatF(1, 3) << 0.0f, 1.0f, 0.5f).finished();
  MatF gf;
  const float bce_big = nn::bce_with_logits(big, tf, gf);
  CHECK(std::isfinite(bce_big));
  CHECK(bce_big == Approx((200.0 + 200.0 + std::log(2.0)) / 3).epsilon(1e-5));
  CHECK(gf.allFinite());
  CHECK(std::isfinite(nn::soft_label_cross_entropy(big, tf, 0.01f, gf)));
  CHECK(gf.allFinite());
  report_worst("losses");
}

TEST_CASE("AdamW matches steps computed by hand", "[nn]") {
  MatD w = (MatD(1, 2) << 1.0, -1.0).finished();
  MatD gw = MatD::Zero(1, 2);
  MatD b = (MatD(1, 2) << 0.5, 0.5).finished();
  MatD gb = MatD::Zero(1, 2);
  nn::ParameterList<double> params;
  params.add({"w", &w, &gw, true, nullptr});
  params.add({"b", &b, &gb, false, nullptr});
  nn::AdamWOptions<double> options;
  options.lr = 0.1;
  options.weight_decay = 0.1;
  nn::AdamW<double> adam(params, options);

  // Step 1, g = (0.5, -2): the bias-corrected moments are g and g^2, so the
  // step is lr * g / (|g| + eps), about lr * sign(g), after w *= 1 - lr * wd.
  gw << 0.5, -2.0;
  gb << 0.5, -2.0;
  adam.step();
  CHECK(w(0) == Approx(0.99 - 0.1 * 0.5 / (0.5 + 1e-8)).epsilon(1e-14));
  CHECK(w(1) == Approx(-0.99 + 0.1 * 2.0 / (2.0 + 1e-8)).epsilon(1e-14));
  CHECK(w(0) == Approx(0.89).epsilon(1e-7));
  CHECK(b(0) == Approx(0.4).epsilon(1e-7));  // no decay
  CHECK(b(1) == Approx(0.6).epsilon(1e-7));

  // Step 2, g = (0.1, 0.3), first entry of w:
  //   m = 0.9 * 0.05 + 0.1 * 0.1 = 0.055,        m_hat = 0.055 / 0.19
  //   v = 0.999 * 0.00025 + 0.001 * 0.01 = 0.00025975,  v_hat = v / 0.001999
  const double w0 = (0.99 - 0.1 * 0.5 / (0.5 + 1e-8)) * 0.99;
  const double m_hat = 0.055 / 0.19;
  const double v_hat = 0.00025975 / (1 - 0.999 * 0.999);
  gw << 0.1, 0.3;
  adam.step();
  CHECK(w(0) == Approx(w0 - 0.1 * m_hat / (std::sqrt(v_hat) + 1e-8)).epsilon(1e-12));
  CHECK(adam.steps() == 2);

  // Lazy sparse rows: untouched rows keep value and moments.
  MatD table = MatD::Ones(3, 2);
  MatD table_grad = MatD::Zero(3, 2);
  std::vector<nn::Index> touched{1};
  nn::ParameterList<double> sparse;
  sparse.add({"table", &table, &table_grad, true, &touched});
  nn::AdamW<double> lazy(sparse, options);
  table_grad.row(1) << 1.0, -1.0;
  lazy.step();
  CHECK(table.row(0) == MatD::Ones(1, 2));
  CHECK(table.row(2) == MatD::Ones(1, 2));
  CHECK(table(1, 0) == Approx(0.99 - 0.1).epsilon(1e-7));
  CHECK(lazy.first_moments()[0].row(0).isZero());
  sparse.zero_grad();
  CHECK(touched.empty());
}

TEST_CASE("AdamW fits a tiny MLP to a toy problem", "[nn]") {
  // Label 1 when the two coordinates share a sign (XOR-like, not linear).
  nn::Rng rng(8);
  const nn::Index n = 64;
  MatF x(n, 2);
  MatF y(n, 1);
  for (nn::Index i = 0; i < n; ++i) {
    x(i, 0) = static_cast<float>(nn::uniform(rng, 1.0));
    x(i, 1) = static_cast<float>(nn::uniform(rng, 1.0));
    y(i, 0) = x(i, 0) * x(i, 1) > 0 ? 1.0f : 0.0f;
  }
  nn::Dense<float> hidden(2, 16);
  nn::Dense<float> head(16, 1);
  hidden.init(rng);
  head.init(rng);
  nn::ParameterList<float> params;
  hidden.collect_parameters("hidden", params);
  head.collect_parameters("head", params);
  nn::AdamWOptions<float> options;
  options.lr = 0.03f;
  nn::AdamW<float> adam(params, options);

  MatF pre, act, logits, dlogits, dact, dpre;
  float first_loss = 0;
  float loss = 0;
  for (int step = 0; step < 400; ++step) {
    params.zero_grad();
    hidden.forward(x, pre);
    nn::relu(pre, act);
    head.forward(act, logits);
    loss = nn::bce_with_logits(logits, y, dlogits);
    if (step == 0) first_loss = loss;
    head.backward(act, dlogits, &dact);
    nn::relu_backward(pre, dact, dpre);
    hidden.backward(x, dpre, nullptr);
    adam.step();
  }
  INFO("loss " << first_loss << " -> " << loss);
  CHECK(first_loss > 0.5f);
  CHECK(loss < 0.05f);
}

TEST_CASE("Forward passes do not allocate once their outputs have a shape", "[nn]") {
  nn::Rng rng(9);
  nn::EncoderLayer<float> layer;  // the default size, as a scorer runs it
  layer.init(rng);
  MatF x(32, 128);
  nn::fill_uniform(x, 1.0, rng);
  MatF out;
  nn::EncoderLayer<float>::Cache cache;
  layer.forward(x, 20, out, cache);  // sizes every buffer
  const MatF first = out;

  nn::Dense<float> dense(128, 64);
  dense.init(rng);
  MatF dense_out;
  dense.forward(x, dense_out);

  nn::EmbeddingBag<float> bag(1000, 128);
  bag.init(rng);
  nn::SparseBatch batch;
  batch.add_row({3, 77, 999}, {0.5f, 0.5f, 0.7f});
  MatF bag_out;
  bag.forward(batch, bag_out);

  Eigen::internal::set_is_malloc_allowed(false);
  CHECK_NOTHROW(layer.forward(x, 20, out, cache));
  CHECK_NOTHROW(dense.forward(x, dense_out));
  CHECK_NOTHROW(bag.forward(batch, bag_out));
  Eigen::internal::set_is_malloc_allowed(true);
  CHECK(out == first);
}

namespace {

// Reads tests/fixtures/encoder_reference.txt: `name rows cols` headers, each
// followed by rows * cols numbers; '#' lines are comments.
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

}  // namespace

TEST_CASE("EncoderLayer matches PyTorch's TransformerEncoderLayer", "[nn]") {
  auto t = read_fixture(std::string(TOROUTER_SOURCE_DIR) + "/tests/fixtures/encoder_reference.txt");
  const MatD& config = t.at("config");
  const auto d = static_cast<nn::Index>(config(0, 0));
  const auto heads = static_cast<nn::Index>(config(0, 1));
  const auto ff = static_cast<nn::Index>(config(0, 2));
  const auto length = static_cast<nn::Index>(config(0, 4));

  nn::EncoderLayer<float> layer(d, heads, ff);
  nn::ParameterList<float> params;
  layer.collect_parameters("", params);
  for (auto& p : params) {
    INFO(p.name);
    MatD value = t.at(p.name);
    // PyTorch's Linear weights are outputs x inputs; ours are the transpose.
    if (p.name.find("weight") != std::string::npos) value.transposeInPlace();
    REQUIRE(value.rows() == p.value->rows());
    REQUIRE(value.cols() == p.value->cols());
    *p.value = value.cast<float>();
  }
  const MatF x = t.at("input").cast<float>();
  MatF out;
  nn::EncoderLayer<float>::Cache cache;
  layer.forward(x, length, out, cache);

  const double norm1_diff =
      (cache.norm1_out.cast<double>() - t.at("norm1_output")).cwiseAbs().maxCoeff();
  const double attn_diff =
      (cache.attention_out.cast<double>() - t.at("attention_output")).cwiseAbs().maxCoeff();
  const double out_diff = (out.cast<double>() - t.at("output")).cwiseAbs().maxCoeff();
  std::printf("PyTorch reference, max abs difference: norm1 %.3g, attention %.3g, output %.3g\n",
              norm1_diff, attn_diff, out_diff);
  CHECK(norm1_diff < 1e-5);
  CHECK(attn_diff < 1e-5);
  CHECK(out_diff < 1e-5);
}
