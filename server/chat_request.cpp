// torouter-server's reading of a chat completion request (chat_request.hpp).
#include "chat_request.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <charconv>
#include <cmath>
#include <cstdint>
#include <cstdlib>
#include <optional>
#include <string>
#include <system_error>
#include <vector>

#include "json_parsers.hpp"
#include "json_text.hpp"
#include "torouter/cost_model.hpp"

namespace torouter::server {

namespace {

using detail::json_string;

constexpr std::size_t kNone = static_cast<std::size_t>(-1);
constexpr std::size_t kSystemBytes = 2000;
constexpr std::size_t kUserHeadBytes = 6000;
constexpr std::size_t kUserTailBytes = 2000;

bool is_continuation(char c) { return (static_cast<unsigned char>(c) & 0xC0) == 0x80; }

// The first at most `max` bytes of `text`, not splitting a UTF-8 sequence.
std::string_view utf8_head(std::string_view text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t end = max;
  while (end > 0 && is_continuation(text[end])) --end;
  return text.substr(0, end);
}

// The last at most `max` bytes of `text`, starting on a character.
std::string_view utf8_tail(std::string_view text, std::size_t max) {
  if (text.size() <= max) return text;
  std::size_t start = text.size() - max;
  while (start < text.size() && is_continuation(text[start])) ++start;
  return text.substr(start);
}

// The text of a message's `content`: a string, or the `text` of its parts
// joined with line ends. A string is seen where the parser holds it; only
// parts are copied, into `parts`.
std::string_view content_text(simdjson::dom::element content, std::string& parts) {
  std::string_view text;
  if (!content.get(text)) return text;
  parts.clear();
  simdjson::dom::array list;
  if (content.get(list)) return {};
  for (simdjson::dom::element part : list) {
    if (!part["text"].get(text)) {
      if (!parts.empty()) parts.push_back('\n');
      parts.append(text);
    }
  }
  return parts;
}

// A message's text kept past the next message's: a view of the parsed
// request when it is one, else a copy.
struct KeptText {
  std::string_view text;
  std::string copy;

  void keep(std::string_view t, const std::string& parts) {
    if (t.data() != parts.data()) {
      text = t;
      return;
    }
    copy.assign(t);
    text = copy;
  }
};

// Routing text of a messages array (see routing_text), and the characters of
// every message's content, for the prompt's token estimate. Every request
// comes through here: it copies the prompt once, into the routing text.
std::string routing_text_of(simdjson::dom::array messages, std::size_t& content_chars) {
  std::string system;
  KeptText last_user;
  KeptText last_any;
  std::string parts;
  content_chars = 0;
  for (simdjson::dom::element m : messages) {
    std::string_view role;
    if (m["role"].get(role)) continue;
    simdjson::dom::element content;
    const std::string_view text =
        m["content"].get(content) ? std::string_view() : content_text(content, parts);
    content_chars += count_characters(text) + 16;  // + role and framing
    if (role == "system" || role == "developer") {
      if (!system.empty()) system.push_back('\n');
      system.append(text);
    } else if (role == "user") {
      last_user.keep(text, parts);
    }
    if (!text.empty()) last_any.keep(text, parts);
  }
  const std::string_view user = last_user.text.empty() ? last_any.text : last_user.text;
  const std::string_view head = utf8_head(system, kSystemBytes);
  std::string out;
  out.reserve(head.size() + std::min(user.size(), kUserHeadBytes + kUserTailBytes + 5) + 2);
  out.append(head);
  if (!out.empty() && !user.empty()) out += "\n\n";
  if (user.size() <= kUserHeadBytes + kUserTailBytes) {
    out.append(user);
  } else {
    out.append(utf8_head(user, kUserHeadBytes));
    out += "\n...\n";
    out.append(utf8_tail(user, kUserTailBytes));
  }
  return out;
}

ApiError bad_request(std::string message, std::string param, std::string code = "invalid_request") {
  ApiError e;
  e.message = std::move(message);
  e.param = std::move(param);
  e.code = std::move(code);
  return e;
}

// The index of the first element of `list` that is not an object with a
// string `field`, or kNone.
std::size_t first_without_string(simdjson::dom::array list, std::string_view field) {
  std::size_t i = 0;
  for (simdjson::dom::element e : list) {
    std::string_view value;
    if (e.type() != simdjson::dom::element_type::OBJECT || e[field].get(value)) return i;
    ++i;
  }
  return kNone;
}

// A number that is the whole of `text`, if it is one and finite.
// A decimal number written plainly ("0.5", "1e-3"): no space, sign '+',
// hexadecimal or infinity, which strtod would take.
std::optional<double> finite_number(std::string_view text) {
  double value = 0;
  const char* end = text.data() + text.size();
  const auto [stop, error] = std::from_chars(text.data(), end, value);
  if (text.empty() || error != std::errc() || stop != end || !std::isfinite(value)) {
    return std::nullopt;
  }
  return value;
}

// A key the object holds twice, if any: readers disagree on which counts
// (simdjson's lookup takes the first, a proxy may take the last). Objects
// of a few keys, as every message is, are compared pair by pair, with
// nothing allocated.
std::optional<std::string_view> first_duplicate_key(simdjson::dom::object top) {
  constexpr std::size_t kPairwiseKeys = 16;
  if (top.size() <= kPairwiseKeys) {
    for (auto a = top.begin(); a != top.end(); ++a) {
      auto b = a;
      for (++b; b != top.end(); ++b) {
        if (a.key() == b.key()) return a.key();
      }
    }
    return std::nullopt;
  }
  std::vector<std::string_view> keys;
  keys.reserve(top.size());
  for (auto field : top) keys.push_back(field.key);
  std::sort(keys.begin(), keys.end());
  const auto twice = std::adjacent_find(keys.begin(), keys.end());
  if (twice == keys.end()) return std::nullopt;
  return *twice;
}

// The first key that a message, or a part of a message's content, holds
// twice, as its parameter path ("messages[0].content"), if any: the
// router would read one and the upstream perhaps the other (route and
// check the context window on "hi", send a 600 KB prompt).
std::optional<std::string> first_duplicate_in_messages(simdjson::dom::array messages) {
  std::size_t i = 0;
  for (simdjson::dom::element m : messages) {
    simdjson::dom::object message;
    if (!m.get(message)) {
      if (auto key = first_duplicate_key(message)) return fmt::format("messages[{}].{}", i, *key);
      simdjson::dom::array parts;
      std::size_t j = 0;
      if (!message["content"].get(parts)) {
        for (simdjson::dom::element p : parts) {
          simdjson::dom::object part;
          if (!p.get(part)) {
            if (auto key = first_duplicate_key(part)) {
              return fmt::format("messages[{}].content[{}].{}", i, j, *key);
            }
          }
          ++j;
        }
      }
    }
    ++i;
  }
  return std::nullopt;
}

// Reads `model`: "router", "router:<lambda>", "router:q>=<floor>" or an
// expert's name.
std::optional<ApiError> read_model(std::string_view model, const ExpertRegistry& experts,
                                   ChatRequest& chat) {
  constexpr std::string_view kRouter = "router:";
  constexpr std::string_view kFloor = "router:q>=";
  if (model == "router") return std::nullopt;
  if (model.substr(0, kFloor.size()) == kFloor) {
    const auto floor = finite_number(model.substr(kFloor.size()));
    if (!floor || *floor < 0 || *floor > 1) {
      return bad_request(fmt::format("model \"{}\": the quality floor after \"router:q>=\" must "
                                     "be a finite number in [0, 1]",
                                     model),
                         "model");
    }
    chat.quality_floor = *floor + 0.0;  // -0 is 0 (as the headers show it)
    return std::nullopt;
  }
  if (model.substr(0, kRouter.size()) == kRouter) {
    const auto lambda = finite_number(model.substr(kRouter.size()));
    if (!lambda || *lambda < 0) {
      return bad_request(fmt::format("model \"{}\": the cost weight after \"router:\" must be "
                                     "a finite number >= 0",
                                     model),
                         "model");
    }
    chat.lambda_cost = *lambda;
    chat.lambda_given = true;
    return std::nullopt;
  }
  if (auto index = experts.index_of(model)) {
    chat.bypass = true;
    chat.expert = *index;
    return std::nullopt;
  }
  ApiError e;
  e.status = 404;
  e.code = "model_not_found";
  e.param = "model";
  e.message = fmt::format(
      "model \"{}\" does not exist: use \"router\", \"router:<lambda>\", "
      "\"router:q>=<floor>\" or an expert's name (GET /v1/models)",
      model);
  return e;
}

// `stream_options`: an object whose `include_usage`, when true, asks for
// the usage in an event of its own at the end of a stream. The upstream is
// always asked for its usage, so nothing of it is forwarded. Without
// `stream` it is ignored (OpenAI refuses it; a client that sends it
// anyway loses nothing).
std::optional<ApiError> read_stream_options(simdjson::dom::element value, ChatRequest& chat) {
  simdjson::dom::object options;
  if (value.get(options)) return bad_request("stream_options must be an object", "stream_options");
  if (auto key = first_duplicate_key(options)) {
    return bad_request(fmt::format("the field stream_options.{} appears twice", *key),
                       fmt::format("stream_options.{}", *key));
  }
  for (auto option : options) {
    if (option.key != "include_usage" || option.value.is_null()) continue;
    if (option.value.get(chat.include_usage)) {
      return bad_request("stream_options.include_usage must be true or false",
                         "stream_options.include_usage");
    }
  }
  return std::nullopt;
}

// Checks one top-level field other than model and messages, and notes what
// it needs of an expert. Malformed tools and response formats are refused
// here, not left to the upstreams: each expert would refuse them in turn.
std::optional<ApiError> read_field(std::string_view key, simdjson::dom::element value,
                                   ChatRequest& chat) {
  if (key == "max_tokens" || key == "max_completion_tokens") {
    std::uint64_t n = 0;
    if (value.get(n)) {
      return bad_request(fmt::format("{} must be a whole number", key), std::string(key));
    }
    chat.max_tokens = static_cast<std::size_t>(n);
    chat.max_tokens_param = key == "max_tokens" ? "max_tokens" : "max_completion_tokens";
  } else if (key == "n") {
    std::uint64_t n = 0;
    if (value.get(n) || n == 0) return bad_request("n must be a whole number >= 1", "n");
    chat.choices = static_cast<std::size_t>(n);
  } else if (key == "tools") {
    simdjson::dom::array tools;
    if (value.get(tools)) return bad_request("tools must be an array", "tools");
    if (const std::size_t k = first_without_string(tools, "type"); k != kNone) {
      return bad_request(fmt::format("tools[{}] must be an object with a string type", k),
                         fmt::format("tools[{}].type", k));
    }
    if (tools.size() > 0) chat.tools_param = "tools";
  } else if (key == "functions") {  // the deprecated form of tools
    simdjson::dom::array functions;
    if (!value.get(functions) && functions.size() > 0 && chat.tools_param.empty()) {
      chat.tools_param = "functions";
    }
  } else if (key == "tool_choice" && !value.is_string() && !value.is_object()) {
    return bad_request("tool_choice must be a string or an object", "tool_choice");
  } else if (key == "response_format") {
    std::string_view type;
    if (!value.is_object() || value["type"].get(type)) {
      return bad_request("response_format must be an object with a string type",
                         "response_format.type");
    }
    if (type == "json_object" || type == "json_schema") chat.json_param = "response_format.type";
  }
  return std::nullopt;
}

// The index of the first message whose `content` is there but is neither
// text, a list of parts nor null (an assistant turn that only calls
// tools), or kNone: every upstream refuses such a message.
std::size_t first_with_odd_content(simdjson::dom::array messages) {
  std::size_t i = 0;
  for (simdjson::dom::element m : messages) {
    simdjson::dom::element content;
    if (!m["content"].get(content) && !content.is_string() && !content.is_array() &&
        !content.is_null()) {
      return i;
    }
    ++i;
  }
  return kNone;
}

// Notes what the conversation needs: tool calls or tool results need tools
// (an expert without them refuses the history), an image part needs images.
void read_message_needs(simdjson::dom::array messages, ChatRequest& chat) {
  std::size_t i = 0;
  for (simdjson::dom::element m : messages) {
    std::string_view role;
    simdjson::dom::array calls;
    simdjson::dom::array parts;
    if (chat.tools_param.empty() && !m["role"].get(role) && role == "tool") {
      chat.tools_param = fmt::format("messages[{}].role", i);
    } else if (chat.tools_param.empty() && !m["tool_calls"].get(calls) && calls.size() > 0) {
      chat.tools_param = fmt::format("messages[{}].tool_calls", i);
    }
    if (chat.images_param.empty() && !m["content"].get(parts)) {
      std::size_t j = 0;
      for (simdjson::dom::element part : parts) {
        std::string_view type;
        if (!part["type"].get(type) && type == "image_url") {
          chat.images_param = fmt::format("messages[{}].content[{}]", i, j);
          break;
        }
        ++j;
      }
    }
    ++i;
  }
}

// "tools (from tools), images (from messages[0].content[1])": the needs and
// where they came from.
std::string describe_needs(const ChatRequest& chat) {
  std::string out;
  auto add = [&out](const std::string& param, std::string_view name) {
    if (param.empty()) return;
    out += fmt::format("{}{} (from {})", out.empty() ? "" : ", ", name, param);
  };
  add(chat.tools_param, "tools");
  add(chat.images_param, "images");
  add(chat.json_param, "json_output");
  return out;
}

// The capabilities `expert` declares ("tools, images"); it has a declaration.
std::string capability_list(const ExpertSpec& expert) {
  const Capabilities& has = *expert.capabilities;
  std::string out;
  auto add = [&out](bool declared, std::string_view name) {
    if (declared) out += fmt::format("{}{}", out.empty() ? "" : ", ", name);
  };
  add(has.tools, "tools");
  add(has.images, "images");
  add(has.json_output, "json_output");
  return out;
}

// The field of the first need `expert` cannot take.
const std::string& first_missing_param(const ChatRequest& chat, const ExpertSpec& expert) {
  const Capabilities& has = *expert.capabilities;
  if (chat.needs.tools && !has.tools) return chat.tools_param;
  if (chat.needs.images && !has.images) return chat.images_param;
  return chat.json_param;
}

ApiError context_too_long(const ChatRequest& chat, std::size_t window, std::string_view whose) {
  ApiError e = bad_request(
      fmt::format("the prompt (about {} tokens) plus {} ({}) exceed {} ({} tokens)",
                  chat.input_tokens, chat.max_tokens_param, chat.max_tokens, whose, window),
      chat.max_tokens > 0 ? std::string(chat.max_tokens_param) : "messages",
      "context_length_exceeded");
  return e;
}

// The 400 for a request no expert could serve (see parse_chat_request).
std::optional<ApiError> check_needs(const ChatRequest& chat, const ExpertRegistry& experts) {
  // As doubles: a huge max_tokens must not wrap around.
  const double tokens =
      static_cast<double>(chat.input_tokens) + static_cast<double>(chat.max_tokens);
  auto fits = [tokens](const ExpertSpec& e) {
    return tokens <= static_cast<double>(e.context_window_tokens);
  };
  if (chat.bypass) {
    const ExpertSpec& e = experts[chat.expert];
    if (!e.can_take(chat.needs)) {
      return bad_request(fmt::format("model \"{}\" does not take all this request needs: {}; it "
                                     "declares [{}]",
                                     e.name, describe_needs(chat), capability_list(e)),
                         first_missing_param(chat, e), "capability_not_supported");
    }
    if (!fits(e)) {
      return context_too_long(chat, e.context_window_tokens,
                              fmt::format("the context window of \"{}\"", e.name));
    }
    return std::nullopt;
  }
  std::size_t largest_window = 0;
  bool capable = false;
  for (const ExpertSpec& e : experts.experts()) {
    if (!e.can_take(chat.needs)) continue;
    if (fits(e)) return std::nullopt;
    capable = true;
    largest_window = std::max(largest_window, e.context_window_tokens);
  }
  if (capable) {
    return context_too_long(chat, largest_window,
                            "the largest context window of the experts "
                            "that take the request");
  }
  const std::string& param = !chat.tools_param.empty()    ? chat.tools_param
                             : !chat.images_param.empty() ? chat.images_param
                                                          : chat.json_param;
  return bad_request(
      fmt::format("no expert takes all this request needs: {}", describe_needs(chat)), param,
      "no_capable_expert");
}

}  // namespace

std::optional<ApiError> parse_chat_request(std::string_view body, const ExpertRegistry& experts,
                                           double default_lambda_cost, ChatRequest& chat) {
  simdjson::dom::parser own;
  simdjson::dom::parser& parser = detail::reusable_parser(body.size(), own);
  simdjson::dom::element doc;
  if (auto error = parser.parse(body.data(), body.size()).get(doc)) {
    return bad_request(fmt::format("request body is not valid JSON: {}",
                                   simdjson::error_message(error)),
                       "", "invalid_json");
  }
  simdjson::dom::object top;
  if (doc.get(top)) return bad_request("request body must be a JSON object", "");
  std::string_view model;
  if (top["model"].get(model)) return bad_request("missing or non-string field: model", "model");
  simdjson::dom::array messages;
  if (top["messages"].get(messages)) {
    return bad_request("missing or non-array field: messages", "messages");
  }
  if (messages.size() == 0) return bad_request("messages must not be empty", "messages");
  if (const std::size_t i = first_without_string(messages, "role"); i != kNone) {
    return bad_request(fmt::format("messages[{}] must be an object with a string role", i),
                       fmt::format("messages[{}].role", i));
  }
  if (const std::size_t i = first_with_odd_content(messages); i != kNone) {
    return bad_request(
        fmt::format("messages[{}].content must be a string, an array of parts or null", i),
        fmt::format("messages[{}].content", i));
  }
  if (auto key = first_duplicate_key(top)) {
    return bad_request(fmt::format("the field {} appears twice", *key), std::string(*key));
  }
  if (auto param = first_duplicate_in_messages(messages)) {
    return bad_request(fmt::format("the field {} appears twice", *param), *param);
  }
  for (auto field : top) {
    const std::string_view key = field.key;
    if (key == "model" || key == "messages") continue;
    // OpenAI's optional fields take null for "absent", and clients send it.
    if (field.value.is_null()) continue;
    if (key == "stream") {
      if (field.value.get(chat.stream)) return bad_request("stream must be true or false", "stream");
      continue;
    }
    if (key == "stream_options") {
      if (auto error = read_stream_options(field.value, chat)) return error;
      continue;
    }
    if (auto error = read_field(key, field.value, chat)) return error;
    if (!chat.extra_json.empty()) chat.extra_json.push_back(',');
    chat.extra_json += json_string(key);
    chat.extra_json.push_back(':');
    detail::append_minified(chat.extra_json, field.value);
  }
  if (chat.stream && chat.choices > 1) {
    return bad_request(
        "n above 1 cannot be streamed through this router: ask without stream, or for one "
        "choice at a time",
        "n");
  }
  chat.lambda_cost = default_lambda_cost;
  if (auto error = read_model(model, experts, chat)) return error;
  read_message_needs(messages, chat);
  chat.needs.tools = !chat.tools_param.empty();
  chat.needs.images = !chat.images_param.empty();
  chat.needs.json_output = !chat.json_param.empty();
  chat.messages_json.clear();
  detail::append_minified(chat.messages_json, messages);
  std::size_t chars = 0;
  chat.routing_text = routing_text_of(messages, chars);
  chat.input_tokens = std::max<std::size_t>(1, estimate_tokens_from_characters(chars));
  return check_needs(chat, experts);
}

std::string routing_text(std::string_view messages_json) {
  simdjson::dom::parser parser;
  simdjson::dom::array messages;
  if (parser.parse(messages_json.data(), messages_json.size()).get(messages)) return {};
  std::size_t chars = 0;
  return routing_text_of(messages, chars);
}

}  // namespace torouter::server
