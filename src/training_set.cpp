// Training sets from dataset rows, and prices fitted from recorded costs.
#include <fmt/format.h>

#include <algorithm>
#include <cmath>
#include <cstring>
#include <limits>

#include "torouter/abi.hpp"
#include "torouter/cost_model.hpp"
#include "torouter/train.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace {

// FNV-1a-64, the hash the featurizer documents, over the rows' content.
class Fingerprint {
 public:
  void add(const void* data, std::size_t size) {
    const auto* bytes = static_cast<const unsigned char*>(data);
    for (std::size_t i = 0; i < size; ++i) {
      hash_ ^= bytes[i];
      hash_ *= 1099511628211ull;
    }
  }
  void add(std::string_view text) {
    add(text.data(), text.size());
    add("\0", 1);
  }
  void add(float value) {
    std::uint32_t raw = 0;
    std::memcpy(&raw, &value, sizeof(raw));
    unsigned char bytes[4];
    for (int i = 0; i < 4; ++i) bytes[i] = static_cast<unsigned char>(raw >> (8 * i));
    add(bytes, 4);
  }
  std::string hex() const { return fmt::format("{:016x}", hash_); }

 private:
  std::uint64_t hash_ = 14695981039346656037ull;
};

}  // namespace

bool TrainingSet::has_output_tokens() const {
  for (Eigen::Index i = 0; i < output_tokens.size(); ++i) {
    if (std::isfinite(output_tokens.data()[i])) return true;
  }
  return false;
}

std::vector<std::string> TrainingSet::distinct_tasks() const {
  std::vector<std::string> out;
  for (const std::string& task : tasks) {
    if (!task.empty()) out.push_back(task);
  }
  std::sort(out.begin(), out.end());
  out.erase(std::unique(out.begin(), out.end()), out.end());
  return out;
}

TrainingSet make_training_set(const std::vector<std::string>& experts,
                              const std::vector<DatasetRow>& rows, std::string source) {
  TrainingSet set;
  set.experts = experts;
  set.source = std::move(source);
  const auto n = static_cast<Eigen::Index>(rows.size());
  const auto e = static_cast<Eigen::Index>(experts.size());
  set.quality = Eigen::MatrixXf::Zero(n, e);
  set.present = Eigen::MatrixXf::Zero(n, e);
  set.output_tokens = Eigen::MatrixXf::Constant(n, e, std::numeric_limits<float>::quiet_NaN());
  Fingerprint fingerprint;
  for (const auto& name : experts) fingerprint.add(name);
  for (Eigen::Index i = 0; i < n; ++i) {
    const DatasetRow& row = rows[static_cast<std::size_t>(i)];
    set.prompts.push_back(row.prompt);
    set.tasks.push_back(row.task);
    fingerprint.add(row.prompt);
    // Rows without a task add nothing, so a set without tasks keeps the
    // fingerprint it had before tasks were read.
    if (!row.task.empty()) fingerprint.add("task:" + row.task);
    for (Eigen::Index j = 0; j < e; ++j) {
      const Outcome& outcome = row.outcomes[static_cast<std::size_t>(j)];
      if (!outcome.present) {
        fingerprint.add(-1.0f);
        continue;
      }
      set.present(i, j) = 1.0f;
      set.quality(i, j) = static_cast<float>(outcome.quality);
      fingerprint.add(static_cast<float>(outcome.quality));
      if (outcome.output_chars) {
        set.output_tokens(i, j) =
            static_cast<float>(estimate_tokens_from_characters(*outcome.output_chars));
      }
    }
  }
  set.fingerprint = fingerprint.hex();
  return set;
}

std::vector<FittedPrice> fit_prices(const RoutingDataset& data, const std::vector<DatasetRow>& rows) {
  struct Sample {
    double input_tokens, output_tokens, cost;
  };
  std::vector<FittedPrice> fitted;
  std::vector<Sample> samples;
  for (std::size_t e = 0; e < data.experts.size(); ++e) {
    samples.clear();
    bool has_output = false;
    for (const auto& row : rows) {
      const Outcome& o = row.outcomes[e];
      if (!o.present || !o.cost_usd) continue;
      has_output = has_output || o.output_chars.has_value();
      samples.push_back({static_cast<double>(estimate_tokens(row.prompt)),
                         o.output_chars ? static_cast<double>(
                                              estimate_tokens_from_characters(*o.output_chars))
                                        : 0.0,
                         *o.cost_usd});
    }
    if (samples.empty()) continue;
    auto sse = [&](double a, double b) {
      double total = 0;
      for (const auto& s : samples) {
        const double r = a * s.input_tokens + b * s.output_tokens - s.cost;
        total += r * r;
      }
      return total;
    };
    // Normal equations of cost ~ a * input_tokens + b * output_tokens.
    double xx = 0, xy = 0, yy = 0, xc = 0, yc = 0, cost_sum = 0;
    for (const auto& s : samples) {
      xx += s.input_tokens * s.input_tokens;
      xy += s.input_tokens * s.output_tokens;
      yy += s.output_tokens * s.output_tokens;
      xc += s.input_tokens * s.cost;
      yc += s.output_tokens * s.cost;
      cost_sum += s.cost;
    }
    const double det = xx * yy - xy * xy;
    double a = 0, b = 0;
    const bool solvable = has_output && det > 1e-12 * xx * yy;
    if (solvable) {
      a = (xc * yy - yc * xy) / det;
      b = (yc * xx - xc * xy) / det;
    }
    // A negative price is not a price: keep the better one-variable fit.
    if (!solvable || a < 0 || b < 0) {
      const double a_only = xx > 0 ? std::max(0.0, xc / xx) : 0.0;
      const double b_only = yy > 0 ? std::max(0.0, yc / yy) : 0.0;
      const bool input_only = sse(a_only, 0) <= sse(0, b_only);
      a = input_only ? a_only : 0.0;
      b = input_only ? 0.0 : b_only;
    }
    FittedPrice price;
    price.expert = data.experts[e];
    price.input_usd_per_mtok = a * 1e6;
    price.output_usd_per_mtok = b * 1e6;
    price.rows = samples.size();
    const double count = static_cast<double>(samples.size());
    double absolute = 0;
    for (const auto& s : samples) absolute += std::abs(a * s.input_tokens + b * s.output_tokens - s.cost);
    price.rmse_usd = std::sqrt(sse(a, b) / count);
    const double mean_cost = cost_sum / count;
    price.relative_error = mean_cost > 0 ? absolute / count / mean_cost : 0.0;
    fitted.push_back(price);
  }
  return fitted;
}

TOROUTER_END_NAMESPACE
