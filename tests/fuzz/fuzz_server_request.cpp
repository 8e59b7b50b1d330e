// libFuzzer target: torouter-server's reading of a POST /v1/chat/completions
// body (parse_chat_request). Any input is either refused with a 400 or 404
// and a message, or accepted with what the router and the upstream need in
// their documented shape: valid JSON to forward, a routing text that is
// valid UTF-8 within its size and the same when read again from the
// forwarded conversation, a finite cost weight, a quality floor in [0, 1],
// a known expert that takes what the request needs.
#include <simdjson.h>

#include <cmath>
#include <cstddef>
#include <cstdint>
#include <cstdlib>
#include <string>
#include <string_view>

#include "chat_request.hpp"

namespace {

constexpr std::size_t kMaxRoutingText = 2000 + 2 + 6000 + 5 + 2000;

torouter::ExpertRegistry experts() {
  torouter::ExpertRegistry registry;
  // "small" declares itself text only, with a small window, so the checks
  // of a request's needs run; "large" declares nothing and takes everything.
  torouter::ExpertSpec small("small", 0.2, 0.2);
  small.capabilities = torouter::Capabilities{};
  small.context_window_tokens = 4096;
  registry.add(small);
  registry.add(torouter::ExpertSpec("large", 3.0, 15.0));
  return registry;
}

}  // namespace

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const torouter::ExpertRegistry registry = experts();
  const std::string_view body(reinterpret_cast<const char*>(data), size);
  torouter::server::ChatRequest chat;
  if (const auto error = torouter::server::parse_chat_request(body, registry, 7.0, chat)) {
    if (error->status != 400 && error->status != 404) std::abort();
    if (error->message.empty()) std::abort();
    return 0;
  }
  simdjson::dom::parser parser;
  simdjson::dom::array messages;
  if (parser.parse(chat.messages_json).get(messages) || messages.size() == 0) std::abort();
  const std::string extra_object = "{" + chat.extra_json + "}";
  simdjson::dom::object extra;
  if (parser.parse(extra_object).get(extra)) std::abort();
  if (!std::isfinite(chat.lambda_cost) || chat.lambda_cost < 0) std::abort();
  if (chat.bypass && chat.expert >= registry.size()) std::abort();
  if (chat.bypass && !registry[chat.expert].can_take(chat.needs)) std::abort();
  if (chat.quality_floor && !(*chat.quality_floor >= 0 && *chat.quality_floor <= 1)) std::abort();
  if (chat.needs.tools == chat.tools_param.empty()) std::abort();
  if (chat.needs.images == chat.images_param.empty()) std::abort();
  if (chat.input_tokens < 1) std::abort();
  if (chat.routing_text.size() > kMaxRoutingText) std::abort();
  if (!simdjson::validate_utf8(chat.routing_text.data(), chat.routing_text.size())) std::abort();
  if (torouter::server::routing_text(chat.messages_json) != chat.routing_text) std::abort();
  return 0;
}
