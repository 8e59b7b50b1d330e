// torouter/expert.hpp: the experts a router chooses among.
//
// An `ExpertSpec` says what an expert costs, how much context it takes, what
// it can take besides text (tools, images, JSON output), what it is good at
// (tags) and how fast it usually answers. An `ExpertRegistry`
// holds a set of them, built in code or loaded from JSON:
//
//   torouter::ExpertRegistry registry;
//   torouter::ExpertSpec small("llama-3.1-8b", 0.2, 0.2);  // USD per million tokens in, out
//   small.tags = {"chat"};
//   registry.add(small);
//
//   auto loaded = torouter::load_expert_registry("experts.json");
#pragma once

#include <cstddef>
#include <limits>
#include <optional>
#include <string>
#include <string_view>
#include <utility>
#include <vector>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// How fast an expert usually answers; used to predict a call's latency.
struct LatencyPrior {
  /// Time to the first output token, in milliseconds.
  double time_to_first_token_ms = 500.0;
  /// Output tokens generated per second once the answer streams.
  double output_tokens_per_second = 50.0;
};

/// What an expert can take besides plain text in and out; also what a
/// request needs of one.
struct Capabilities {
  /// Function calling (a request's `tools`).
  bool tools = false;
  /// Image inputs (image parts in the messages).
  bool images = false;
  /// JSON output (`response_format` of type json_object or json_schema).
  bool json_output = false;

  /// True when every capability `needed` asks for is here.
  bool covers(const Capabilities& needed) const {
    return (tools || !needed.tools) && (images || !needed.images) &&
           (json_output || !needed.json_output);
  }
  /// True when any capability is set.
  bool any() const { return tools || images || json_output; }
};

/// The capability names files use, as one string for messages.
inline constexpr std::string_view kCapabilityNames = "tools, images, json_output";

/// The capabilities named in `names` ("tools", "images", "json_output")
/// into `out`; returns what is wrong (an unknown name), or "" when nothing
/// is. The expert registry and the server's config both read them this way.
inline std::string capabilities_from(const std::vector<std::string>& names, Capabilities& out) {
  out = Capabilities{};
  for (const auto& name : names) {
    if (name == "tools") {
      out.tools = true;
    } else if (name == "images") {
      out.images = true;
    } else if (name == "json_output") {
      out.json_output = true;
    } else {
      return "unknown capability \"" + name + "\" (known: " + std::string(kCapabilityNames) + ")";
    }
  }
  return {};
}

/// One expert model the router can send queries to.
struct ExpertSpec {
  ExpertSpec() = default;
  /// An expert with a name and prices (USD per million tokens), defaults elsewhere.
  ExpertSpec(std::string name, double input_usd_per_mtok, double output_usd_per_mtok)
      : name(std::move(name)),
        input_usd_per_mtok(input_usd_per_mtok),
        output_usd_per_mtok(output_usd_per_mtok) {}

  /// Unique name; the scorer's outputs and the transports are keyed by it.
  std::string name;
  /// Price in USD per million input (prompt) tokens.
  double input_usd_per_mtok = 0.0;
  /// Price in USD per million output (completion) tokens.
  double output_usd_per_mtok = 0.0;
  /// Largest prompt plus answer, in tokens, the expert accepts.
  std::size_t context_window_tokens = std::numeric_limits<std::size_t>::max();
  /// What the expert is good at ("code", "math", ...); a request can require tags.
  std::vector<std::string> tags;
  /// What it takes besides text. Unset (the default) means undeclared and is
  /// taken as capable of everything, as before capabilities existed: a wrong
  /// guess then costs a refused call and a failover, where assuming "none"
  /// would refuse every tool or image request of an existing deployment.
  /// Once set, it is exact: `Capabilities{}` is a text-only expert.
  std::optional<Capabilities> capabilities;
  /// Usual speed of the expert.
  LatencyPrior latency;
  /// Most calls to this expert in flight at once, across all threads; 0 means no cap.
  std::size_t max_concurrent_calls = 0;
  /// Most requests sent to it per minute (UTC minutes); 0 means no limit.
  /// A call's retries count when it settles, so they may pass it briefly.
  std::size_t requests_per_minute = 0;
  /// Most tokens (prompt and answer) per minute; 0 means no limit. A call is
  /// admitted on its predicted tokens and charged its actual ones.
  std::size_t tokens_per_minute = 0;
  /// A disabled expert is never picked.
  bool enabled = true;

  /// True when the expert can take what `needed` asks for (always when it
  /// declares no capabilities).
  bool can_take(const Capabilities& needed) const {
    return !capabilities || capabilities->covers(needed);
  }

  /// True when `tags` holds `tag`.
  bool has_tag(std::string_view tag) const {
    for (const auto& t : tags) {
      if (t == tag) return true;
    }
    return false;
  }
};

/// An ordered set of experts with unique names.
class ExpertRegistry {
 public:
  /// Adds an expert; throws `Error` when its name is empty or already taken,
  /// or when a price, the context window or the latency prior is invalid.
  void add(ExpertSpec spec);

  /// The expert named `name`, or nullptr.
  const ExpertSpec* find(std::string_view name) const;
  /// Position of the expert named `name`, if present.
  std::optional<std::size_t> index_of(std::string_view name) const;

  /// The experts, in the order they were added.
  const std::vector<ExpertSpec>& experts() const { return experts_; }
  std::size_t size() const { return experts_.size(); }
  bool empty() const { return experts_.empty(); }
  const ExpertSpec& operator[](std::size_t i) const { return experts_[i]; }

 private:
  std::vector<ExpertSpec> experts_;
};

/// Checks one expert's fields; returns an empty string when valid, otherwise
/// what is wrong, naming the field ("input_usd_per_mtok must be >= 0 ...").
std::string validate_expert(const ExpertSpec& spec);

/// Loads a registry from a JSON file; throws `Error` naming the file and the
/// field when the file is unreadable or malformed. The format is described
/// in docs/ARCHITECTURE.md ("Expert registry files").
ExpertRegistry load_expert_registry(const std::string& path);

/// Parses a registry from JSON text; `origin` names the text in errors.
ExpertRegistry parse_expert_registry(std::string_view json, const std::string& origin);

TOROUTER_END_NAMESPACE
