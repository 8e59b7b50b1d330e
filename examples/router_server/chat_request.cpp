// torouter-server's reading of a chat completion request (chat_request.hpp).
#include "chat_request.hpp"

#include <fmt/format.h>
#include <simdjson.h>

#include <algorithm>
#include <cmath>
#include <cstdint>
#include <cstdlib>

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

// The text of a message's `content`: a string, or the `text` of its parts.
void append_content(simdjson::dom::element content, std::string& out) {
  std::string_view text;
  if (!content.get(text)) {
    out.append(text);
    return;
  }
  simdjson::dom::array parts;
  if (content.get(parts)) return;
  for (simdjson::dom::element part : parts) {
    if (!part["text"].get(text)) {
      if (!out.empty()) out.push_back('\n');
      out.append(text);
    }
  }
}

// Routing text of a messages array (see routing_text), and the characters of
// every message's content, for the prompt's token estimate.
std::string routing_text_of(simdjson::dom::array messages, std::size_t& content_chars) {
  std::string system;
  std::string last_user;
  std::string last_any;
  std::string text;
  content_chars = 0;
  for (simdjson::dom::element m : messages) {
    std::string_view role;
    if (m["role"].get(role)) continue;
    text.clear();
    simdjson::dom::element content;
    if (!m["content"].get(content)) append_content(content, text);
    content_chars += count_characters(text) + 16;  // + role and framing
    if (role == "system" || role == "developer") {
      if (!system.empty()) system.push_back('\n');
      system += text;
    } else if (role == "user") {
      last_user = text;
    }
    if (!text.empty()) last_any = text;
  }
  const std::string& user = last_user.empty() ? last_any : last_user;
  std::string out(utf8_head(system, kSystemBytes));
  if (!out.empty() && !user.empty()) out += "\n\n";
  if (user.size() <= kUserHeadBytes + kUserTailBytes) {
    out += user;
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

}  // namespace

std::optional<ApiError> parse_chat_request(std::string_view body, const ExpertRegistry& experts,
                                           double default_lambda_cost, ChatRequest& chat) {
  simdjson::dom::parser parser;
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
  for (auto field : top) {
    const std::string_view key = field.key;
    if (key == "model" || key == "messages" || key == "stream_options") continue;
    if (key == "stream") {
      if (field.value.get(chat.stream)) return bad_request("stream must be true or false", "stream");
      continue;
    }
    if (key == "max_tokens" || key == "max_completion_tokens") {
      std::uint64_t n = 0;
      if (field.value.get(n)) {
        return bad_request(fmt::format("{} must be a whole number", key), std::string(key));
      }
      chat.max_tokens = static_cast<std::size_t>(n);
    }
    // Checked here, not left to the upstreams: a malformed tool list is a
    // bad request to every expert, and each would be tried in turn.
    if (key == "tools") {
      simdjson::dom::array tools;
      if (field.value.get(tools)) return bad_request("tools must be an array", "tools");
      if (const std::size_t k = first_without_string(tools, "type"); k != kNone) {
        return bad_request(fmt::format("tools[{}] must be an object with a string type", k),
                           fmt::format("tools[{}].type", k));
      }
    }
    if (key == "tool_choice" && !field.value.is_string() && !field.value.is_object()) {
      return bad_request("tool_choice must be a string or an object", "tool_choice");
    }
    if (!chat.extra_json.empty()) chat.extra_json.push_back(',');
    chat.extra_json += json_string(key);
    chat.extra_json.push_back(':');
    chat.extra_json += simdjson::minify(field.value);
  }
  // model: "router", "router:<lambda>", or an expert's name.
  chat.lambda_cost = default_lambda_cost;
  if (model == "router") {
  } else if (model.substr(0, 7) == "router:") {
    const std::string number(model.substr(7));
    char* end = nullptr;
    const double lambda = std::strtod(number.c_str(), &end);
    if (number.empty() || end != number.c_str() + number.size() || !std::isfinite(lambda) ||
        lambda < 0) {
      return bad_request(fmt::format("model \"{}\": the cost weight after \"router:\" must be "
                                     "a finite number >= 0",
                                     model),
                         "model");
    }
    chat.lambda_cost = lambda;
  } else if (auto index = experts.index_of(model)) {
    chat.bypass = true;
    chat.expert = *index;
  } else {
    ApiError e;
    e.status = 404;
    e.code = "model_not_found";
    e.param = "model";
    e.message = fmt::format("model \"{}\" does not exist: use \"router\", \"router:<lambda>\" "
                            "or an expert's name (GET /v1/models)",
                            model);
    return e;
  }
  chat.messages_json = simdjson::minify(messages);
  std::size_t chars = 0;
  chat.routing_text = routing_text_of(messages, chars);
  chat.input_tokens = std::max<std::size_t>(1, estimate_tokens_from_characters(chars));
  return std::nullopt;
}

std::string routing_text(std::string_view messages_json) {
  simdjson::dom::parser parser;
  simdjson::dom::array messages;
  if (parser.parse(messages_json.data(), messages_json.size()).get(messages)) return {};
  std::size_t chars = 0;
  return routing_text_of(messages, chars);
}

}  // namespace torouter::server
