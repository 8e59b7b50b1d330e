// The expert registry and its JSON loader. The loader accepts two shapes of
// the same file:
//   {"experts": [{"name": "a", "input_usd_per_mtok": 0.2, ...}, ...]}
//   {"experts": {"a": {"input_usd_per_mtok": 0.2, ...}, ...}}
// the second being the routing datasets' experts.json, so a dataset's file
// loads as it is.
#include <fmt/format.h>
#include <simdjson.h>

#include <cmath>
#include <fstream>
#include <sstream>

#include "json_type_name.hpp"
#include "torouter/abi.hpp"
#include "torouter/error.hpp"
#include "torouter/expert.hpp"

TOROUTER_BEGIN_NAMESPACE

std::string validate_expert(const ExpertSpec& spec) {
  if (spec.name.empty()) return "name must not be empty";
  auto non_negative = [](double v) { return std::isfinite(v) && v >= 0.0; };
  if (!non_negative(spec.input_usd_per_mtok)) {
    return fmt::format("input_usd_per_mtok must be a finite number >= 0, got {}",
                       spec.input_usd_per_mtok);
  }
  if (!non_negative(spec.output_usd_per_mtok)) {
    return fmt::format("output_usd_per_mtok must be a finite number >= 0, got {}",
                       spec.output_usd_per_mtok);
  }
  if (spec.context_window_tokens == 0) return "context_window_tokens must be > 0";
  if (!non_negative(spec.latency.time_to_first_token_ms)) {
    return fmt::format("time_to_first_token_ms must be a finite number >= 0, got {}",
                       spec.latency.time_to_first_token_ms);
  }
  if (!std::isfinite(spec.latency.output_tokens_per_second) ||
      spec.latency.output_tokens_per_second <= 0.0) {
    return fmt::format("output_tokens_per_second must be a finite number > 0, got {}",
                       spec.latency.output_tokens_per_second);
  }
  return {};
}

void ExpertRegistry::add(ExpertSpec spec) {
  if (auto problem = validate_expert(spec); !problem.empty()) {
    throw Error(fmt::format("expert \"{}\": {}", spec.name, problem));
  }
  if (find(spec.name) != nullptr) {
    throw Error(fmt::format("expert \"{}\" is already registered", spec.name));
  }
  experts_.push_back(std::move(spec));
}

const ExpertSpec* ExpertRegistry::find(std::string_view name) const {
  for (const auto& e : experts_) {
    if (e.name == name) return &e;
  }
  return nullptr;
}

std::optional<std::size_t> ExpertRegistry::index_of(std::string_view name) const {
  for (std::size_t i = 0; i < experts_.size(); ++i) {
    if (experts_[i].name == name) return i;
  }
  return std::nullopt;
}

namespace {

using simdjson::dom::element;
using simdjson::dom::element_type;

// Reads one expert object; `where` names it in errors ("experts[2]").
class ExpertReader {
 public:
  ExpertReader(const std::string& origin, std::string where)
      : origin_(origin), where_(std::move(where)) {}

  ExpertSpec read(simdjson::dom::object object, std::string_view name_from_key) {
    ExpertSpec spec;
    spec.name = std::string(name_from_key);
    for (auto field : object) {
      const std::string_view key = field.key;
      const element value = field.value;
      if (key == "name") {
        spec.name = std::string(text(key, value));
        if (!name_from_key.empty() && spec.name != name_from_key) {
          fail(key, fmt::format("\"{}\" differs from the object's key \"{}\"", spec.name,
                                name_from_key));
        }
      } else if (key == "input_usd_per_mtok") {
        spec.input_usd_per_mtok = number(key, value);
      } else if (key == "output_usd_per_mtok") {
        spec.output_usd_per_mtok = number(key, value);
      } else if (key == "context_window_tokens") {
        spec.context_window_tokens = static_cast<std::size_t>(count(key, value, 1));
      } else if (key == "tags") {
        spec.tags = strings(key, value);
      } else if (key == "capabilities") {
        spec.capabilities = capabilities(key, value);
      } else if (key == "time_to_first_token_ms") {
        spec.latency.time_to_first_token_ms = number(key, value);
      } else if (key == "output_tokens_per_second") {
        spec.latency.output_tokens_per_second = number(key, value);
      } else if (key == "max_concurrent_calls") {
        spec.max_concurrent_calls = static_cast<std::size_t>(count(key, value, 0));
      } else if (key == "requests_per_minute") {
        spec.requests_per_minute = static_cast<std::size_t>(count(key, value, 0));
      } else if (key == "tokens_per_minute") {
        spec.tokens_per_minute = static_cast<std::size_t>(count(key, value, 0));
      } else if (key == "enabled") {
        spec.enabled = boolean(key, value);
      } else if (key == "size" || key == "description") {
        text(key, value);  // descriptive only
      } else {
        fail(key,
             "unknown field (known: name, input_usd_per_mtok, output_usd_per_mtok, "
             "context_window_tokens, tags, capabilities, time_to_first_token_ms, "
             "output_tokens_per_second, max_concurrent_calls, requests_per_minute, "
             "tokens_per_minute, enabled, size, description)");
      }
    }
    if (spec.name.empty()) fail("name", "missing or empty");
    if (auto problem = validate_expert(spec); !problem.empty()) {
      throw Error(fmt::format("{}: {} (\"{}\"): {}", origin_, where_, spec.name, problem));
    }
    return spec;
  }

 private:
  [[noreturn]] void fail(std::string_view field, const std::string& problem) const {
    throw Error(fmt::format("{}: {}.{}: {}", origin_, where_, field, problem));
  }

  double number(std::string_view key, element value) const {
    double out = 0;
    if (value.get_double().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a number, got {}", detail::json_type_name(value)));
    }
    if (!std::isfinite(out) || out < 0) {
      fail(key, fmt::format("must be a finite number >= 0, got {}", out));
    }
    return out;
  }

  std::uint64_t count(std::string_view key, element value, std::uint64_t minimum) const {
    std::uint64_t out = 0;
    if (value.get_uint64().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a whole number >= {}, got {}", minimum,
                            simdjson::to_string(value)));
    }
    if (out < minimum) fail(key, fmt::format("must be >= {}, got {}", minimum, out));
    return out;
  }

  bool boolean(std::string_view key, element value) const {
    bool out = false;
    if (value.get_bool().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected true or false, got {}", detail::json_type_name(value)));
    }
    return out;
  }

  std::string_view text(std::string_view key, element value) const {
    std::string_view out;
    if (value.get_string().get(out) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected a string, got {}", detail::json_type_name(value)));
    }
    return out;
  }

  std::vector<std::string> strings(std::string_view key, element value) const {
    simdjson::dom::array array;
    if (value.get_array().get(array) != simdjson::SUCCESS) {
      fail(key, fmt::format("expected an array of strings, got {}", detail::json_type_name(value)));
    }
    std::vector<std::string> out;
    for (element item : array) out.emplace_back(text(key, item));
    return out;
  }

  Capabilities capabilities(std::string_view key, element value) const {
    Capabilities out;
    const std::string problem = capabilities_from(strings(key, value), out);
    if (!problem.empty()) fail(key, problem);
    return out;
  }

  const std::string& origin_;
  std::string where_;
};

void add_or_fail(ExpertRegistry& registry, ExpertSpec spec, const std::string& origin,
                 const std::string& where) {
  if (registry.find(spec.name) != nullptr) {
    throw Error(fmt::format("{}: {}: duplicate expert \"{}\"", origin, where, spec.name));
  }
  registry.add(std::move(spec));
}

}  // namespace

ExpertRegistry parse_expert_registry(std::string_view json, const std::string& origin) {
  simdjson::dom::parser parser;
  simdjson::padded_string padded(json);
  element root;
  if (auto error = parser.parse(padded).get(root); error != simdjson::SUCCESS) {
    throw Error(fmt::format("{}: not valid JSON: {}", origin, simdjson::error_message(error)));
  }
  simdjson::dom::object top;
  if (root.get_object().get(top) != simdjson::SUCCESS) {
    throw Error(fmt::format("{}: expected a JSON object at the top level", origin));
  }

  ExpertRegistry registry;
  bool saw_experts = false;
  for (auto field : top) {
    const std::string_view key = field.key;
    if (key == "source" || key == "description") continue;
    if (key != "experts") {
      throw Error(
          fmt::format("{}: unknown top-level field \"{}\" (known: experts, source, "
                      "description)",
                      origin, key));
    }
    saw_experts = true;
    simdjson::dom::array list;
    simdjson::dom::object by_name;
    if (field.value.get_array().get(list) == simdjson::SUCCESS) {
      std::size_t i = 0;
      for (element item : list) {
        const std::string where = fmt::format("experts[{}]", i++);
        simdjson::dom::object object;
        if (item.get_object().get(object) != simdjson::SUCCESS) {
          throw Error(fmt::format("{}: {}: expected an object", origin, where));
        }
        add_or_fail(registry, ExpertReader(origin, where).read(object, {}), origin, where);
      }
    } else if (field.value.get_object().get(by_name) == simdjson::SUCCESS) {
      for (auto entry : by_name) {
        const std::string where = fmt::format("experts.\"{}\"", entry.key);
        simdjson::dom::object object;
        if (entry.value.get_object().get(object) != simdjson::SUCCESS) {
          throw Error(fmt::format("{}: {}: expected an object", origin, where));
        }
        if (entry.key.empty()) throw Error(fmt::format("{}: {}: empty expert name", origin, where));
        add_or_fail(registry, ExpertReader(origin, where).read(object, entry.key), origin, where);
      }
    } else {
      throw Error(fmt::format("{}: experts: expected an array or an object", origin));
    }
  }
  if (!saw_experts) throw Error(fmt::format("{}: missing field \"experts\"", origin));
  if (registry.empty()) throw Error(fmt::format("{}: experts: no expert listed", origin));
  return registry;
}

ExpertRegistry load_expert_registry(const std::string& path) {
  std::ifstream in(path, std::ios::binary);
  if (!in) throw Error(fmt::format("{}: cannot open file", path), ErrorCode::FileAccess);
  std::ostringstream text;
  text << in.rdbuf();
  return parse_expert_registry(text.str(), path);
}

TOROUTER_END_NAMESPACE
