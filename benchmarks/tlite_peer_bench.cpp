// tlite_peer_bench: the C++ side of benchmarks/onnx_peer.sh (issue 17).
// For each transformer-lite shape it builds one seeded network, writes its
// weights, the token ids of real prompts and its own outputs (so the ONNX
// Runtime peer runs the very same network and its outputs are checked
// against these), then times the network alone on one thread: one prompt at
// a time at 18, 64 and 128 tokens, and 1,024 prompts through the packed
// pass in the scorer's chunks. Also the float GEMM rate of the kernels.
//
//   tlite_peer_bench --data ../shared/data --out DIR [--rounds 5] [--json FILE]
//                    --shape tlite=64,256,64 [--shape NAME=D_MODEL,FF,TOKENS ...]
//
// Writes DIR/NAME.tensors.{bin,json}, DIR/NAME.inputs.json,
// DIR/NAME.expected.json and the timings to FILE (default DIR/torouter.json). The kernels run at
// the CPU level torouter picks (TOROUTER_CPU_LEVEL lowers it).
#include <fmt/format.h>

#include <algorithm>
#include <chrono>
#include <cstdio>
#include <fstream>
#include <map>
#include <stdexcept>
#include <string>
#include <vector>

#include "kernels/kernel_table.hpp"
#include "tlite_model.hpp"
#include "tlite_packed.hpp"
#include "torouter/dataset.hpp"
#include "torouter/features.hpp"

namespace nn = torouter::nn;
using torouter::detail::TliteModel;
using torouter::detail::TlitePackedBuffers;
using torouter::detail::TliteShape;

namespace {

using Clock = std::chrono::steady_clock;
constexpr std::uint32_t kBuckets = 1u << 14;
constexpr nn::Index kExperts = 9;
constexpr nn::Index kChunkRows = 512;  // the scorer's packed chunk (tlite_scorer.cpp)
constexpr std::size_t kBatch = 1024;

struct ShapeArg {
  std::string name;
  TliteShape shape;
};

ShapeArg parse_shape(const std::string& text) {
  const auto eq = text.find('=');
  int d = 0, ff = 0, tokens = 0;
  if (eq == std::string::npos ||
      std::sscanf(text.c_str() + eq + 1, "%d,%d,%d", &d, &ff, &tokens) != 3 || d <= 0 ||
      d % 4 != 0 || ff <= 0 || tokens <= 0) {
    throw std::runtime_error(
        "--shape wants NAME=D_MODEL,FF,TOKENS (D_MODEL a multiple of 4), got " + text);
  }
  ShapeArg s{text.substr(0, eq), {}};
  s.shape.d_model = d;
  s.shape.heads = 4;
  s.shape.ff = ff;
  s.shape.layers = 2;
  s.shape.max_tokens = tokens;
  s.shape.buckets = kBuckets;
  return s;
}

std::string ids_json(const std::vector<std::uint32_t>& ids) {
  return fmt::format("[{}]", fmt::join(ids, ","));
}

void write_text(const std::string& path, const std::string& text) {
  std::ofstream out(path, std::ios::binary);
  out << text;
  if (!out) throw std::runtime_error("cannot write " + path);
}

// Every parameter, row-major float32 in one file, and where each starts.
void write_weights(TliteModel<float>& model, const std::string& stem) {
  nn::ParameterList<float> params;
  model.collect_parameters(params);
  std::ofstream bin(stem + ".tensors.bin", std::ios::binary);
  std::string index = "[";
  std::size_t offset = 0;
  for (const auto& p : params) {
    const nn::Matrix<float>& m = *p.value;
    bin.write(reinterpret_cast<const char*>(m.data()),
              static_cast<std::streamsize>(sizeof(float) * static_cast<std::size_t>(m.size())));
    index += fmt::format("{}{{\"name\": \"{}\", \"rows\": {}, \"cols\": {}, \"offset\": {}}}",
                         offset == 0 ? "" : ",\n ", p.name, m.rows(), m.cols(), offset);
    offset += static_cast<std::size_t>(m.size());
  }
  if (!bin) throw std::runtime_error("cannot write " + stem + ".tensors.bin");
  write_text(stem + ".tensors.json", index + "]\n");
}

struct Inputs {
  std::map<int, std::vector<std::uint32_t>> single;  // by length
  std::vector<std::vector<std::uint32_t>> batch;
};

// Token ids of real prompts: for each length the first prompt with that
// many words; the batch is llmrouter14's test prompts, then its training
// prompts, as they come, each cut at the shape's max_tokens.
Inputs make_inputs(const std::vector<std::string>& prompts, nn::Index max_tokens) {
  torouter::FeaturizerOptions options;
  options.num_buckets = kBuckets;
  const torouter::Featurizer featurizer(options);
  Inputs in;
  std::vector<std::uint32_t> ids;
  for (const int length : {18, 64, 128}) {
    if (length > max_tokens) continue;
    for (const auto& p : prompts) {
      featurizer.token_ids(p, static_cast<std::size_t>(length), ids);
      if (ids.size() == static_cast<std::size_t>(length)) break;
    }
    if (ids.size() != static_cast<std::size_t>(length))
      throw std::runtime_error("no prompt that long");
    in.single[length] = ids;
  }
  for (std::size_t i = 0; in.batch.size() < kBatch && i < prompts.size(); ++i) {
    featurizer.token_ids(prompts[i], static_cast<std::size_t>(max_tokens), ids);
    if (ids.empty()) ids.push_back(kBuckets);  // the empty prompt's token, as the scorer does
    in.batch.push_back(ids);
  }
  return in;
}

// The network alone over `prompts` (packed in the scorer's chunks): pooled
// rows, then the heads.
struct Network {
  const TliteModel<float>& model;
  TlitePackedBuffers buffers;
  std::vector<std::uint32_t> ids;
  std::vector<nn::Index> starts;
  nn::Matrix<float> pooled, logits, tokens;

  explicit Network(const TliteModel<float>& m) : model(m) {
    buffers.reserve(m.shape(), std::max(kChunkRows, m.shape().max_tokens));
  }

  void run(const std::vector<std::vector<std::uint32_t>>& prompts) {
    const auto encode = torouter::detail::kernels().encode_packed;
    pooled.resize(static_cast<nn::Index>(prompts.size()), model.shape().d_model);
    std::size_t first = 0;
    ids.clear();
    starts.assign(1, 0);
    for (std::size_t i = 0; i < prompts.size(); ++i) {
      const auto length = static_cast<nn::Index>(prompts[i].size());
      if (starts.back() + length > buffers.capacity_rows) {
        encode(model, ids.data(), starts, buffers, pooled, static_cast<nn::Index>(first));
        first = i;
        ids.clear();
        starts.assign(1, 0);
      }
      ids.insert(ids.end(), prompts[i].begin(), prompts[i].end());
      starts.push_back(starts.back() + length);
    }
    encode(model, ids.data(), starts, buffers, pooled, static_cast<nn::Index>(first));
    model.heads_forward(pooled, logits, tokens);
  }
};

std::string rows_json(const nn::Matrix<float>& m) {
  std::string out = "[";
  for (nn::Index r = 0; r < m.rows(); ++r) {
    out += fmt::format("{}[{}]", r == 0 ? "" : ",",
                       fmt::join(m.row(r).data(), m.row(r).data() + m.cols(), ","));
  }
  return out + "]";
}

double median(std::vector<double> v) {
  std::sort(v.begin(), v.end());
  return v[v.size() / 2];
}

// Median over rounds of each round's median call, in microseconds.
template <typename Call>
double time_calls(Call&& call, int rounds, double seconds_per_round) {
  std::vector<double> round_medians;
  for (int r = 0; r < rounds; ++r) {
    std::vector<double> calls;
    const auto end = Clock::now() + std::chrono::duration<double>(seconds_per_round);
    while (Clock::now() < end || calls.size() < 3) {
      const auto start = Clock::now();
      call();
      calls.push_back(std::chrono::duration<double, std::micro>(Clock::now() - start).count());
    }
    round_medians.push_back(median(calls));
  }
  return median(round_medians);
}

std::string time_shape(const ShapeArg& s, const std::vector<std::string>& prompts,
                       const std::string& out_dir, int rounds) {
  TliteModel<float> model(s.shape, kExperts, true);
  nn::Rng rng(17);
  model.init(rng);
  const std::string stem = out_dir + "/" + s.name;
  write_weights(model, stem);
  const Inputs in = make_inputs(prompts, s.shape.max_tokens);
  std::string inputs = "{\"single\": {";
  std::string expected = "{\"single\": {";
  Network net(model);
  std::string timings;
  for (const auto& [length, ids] : in.single) {
    const std::string sep = length == in.single.begin()->first ? "" : ", ";
    inputs += fmt::format("{}\"{}\": {}", sep, length, ids_json(ids));
    const std::vector<std::vector<std::uint32_t>> one{ids};
    net.run(one);
    expected +=
        fmt::format("{}\"{}\": {{\"pooled\": {}, \"logits\": {}, \"tokens\": {}}}", sep, length,
                    rows_json(net.pooled), rows_json(net.logits), rows_json(net.tokens));
    const double p50 = time_calls([&] { net.run(one); }, rounds, 0.3);
    timings += fmt::format("{}\"{}\": {:.2f}", sep, length, p50);
  }
  inputs += "}, \"batch\": [";
  for (std::size_t i = 0; i < in.batch.size(); ++i)
    inputs += (i ? "," : "") + ids_json(in.batch[i]);
  write_text(stem + ".inputs.json", inputs + "]}\n");
  net.run(in.batch);
  const auto checked = std::min<nn::Index>(64, net.pooled.rows());
  expected += fmt::format("}}, \"batch_logits\": {}}}\n", rows_json(net.logits.topRows(checked)));
  write_text(stem + ".expected.json", expected);
  const double batch_us = time_calls([&] { net.run(in.batch); }, rounds, 1.0);
  std::size_t words = 0;
  for (const auto& p : in.batch) words += p.size();
  return fmt::format(
      "  \"{}\": {{\"d_model\": {}, \"ff\": {}, \"max_tokens\": {}, \"single_p50_us\": {{{}}}, "
      "\"batch\": {}, \"batch_tokens\": {}, \"batch_ms\": {:.2f}, \"batch_prompts_per_second\": "
      "{:.0f}}}",
      s.name, s.shape.d_model, s.shape.ff, s.shape.max_tokens, timings, in.batch.size(), words,
      batch_us / 1000.0, static_cast<double>(in.batch.size()) / (batch_us / 1e6));
}

// The kernels' float GEMM, n^3, GFLOP/s: median of rounds.
double gemm_rate(nn::Index n, int rounds) {
  nn::Rng rng(3);
  nn::Matrix<float> a(n, n), b(n, n), c(n, n);
  nn::fill_uniform(a, 1.0, rng);
  nn::fill_uniform(b, 1.0, rng);
  const auto multiply = torouter::detail::kernels().multiply;
  const double us =
      time_calls([&] { multiply(a.data(), b.data(), c.data(), n, n, n); }, rounds, 1.0);
  return 2.0 * static_cast<double>(n * n * n) / (us * 1e-6) / 1e9;
}

}  // namespace

int main(int argc, char** argv) {
  try {
    std::string data, out, json_path;
    int rounds = 5;
    std::vector<ShapeArg> shapes;
    for (int i = 1; i + 1 < argc; i += 2) {
      const std::string flag = argv[i], value = argv[i + 1];
      if (flag == "--data")
        data = value;
      else if (flag == "--out")
        out = value;
      else if (flag == "--json")
        json_path = value;
      else if (flag == "--rounds")
        rounds = std::max(1, std::stoi(value));
      else if (flag == "--shape")
        shapes.push_back(parse_shape(value));
      else
        throw std::runtime_error("unknown flag " + flag);
    }
    if (data.empty() || out.empty() || shapes.empty()) {
      throw std::runtime_error(
          "usage: tlite_peer_bench --data DIR --out DIR --shape NAME=D,FF,TOKENS ...");
    }
    const torouter::RoutingDataset set = torouter::load_routing_dataset(data + "/llmrouter14");
    std::vector<std::string> prompts;
    for (const auto* rows : {&set.test, &set.train}) {
      for (const auto& row : *rows) prompts.push_back(row.prompt);
    }
    std::string json =
        fmt::format("{{\"level\": \"{}\",\n \"shapes\": {{\n", torouter::detail::kernels().name);
    for (std::size_t i = 0; i < shapes.size(); ++i) {
      json += (i ? ",\n" : "") + time_shape(shapes[i], prompts, out, rounds);
    }
    json += fmt::format("}},\n \"gemm_1024_gflops\": {:.1f}}}\n", gemm_rate(1024, rounds));
    write_text(json_path.empty() ? out + "/torouter.json" : json_path, json);
    std::fputs(json.c_str(), stdout);
    return 0;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "tlite_peer_bench: %s\n", e.what());
    return 1;
  }
}
