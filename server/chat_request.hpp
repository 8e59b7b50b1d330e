// torouter-server's reading of a POST /v1/chat/completions body: the JSON
// checked, and split into what the router needs (the routing text and its
// token estimate, the cost weight or quality floor, what the request needs
// of an expert, or the expert a bypass names) and what goes upstream
// unchanged (the conversation and the client's other fields).
// No HTTP here, so the tests and the fuzzer (tests/fuzz/fuzz_server_request)
// call it directly.
//
//   torouter::server::ChatRequest chat;
//   if (auto error = parse_chat_request(body, router.experts(), 1000.0, chat)) {
//     reply(error->status, *error);            // an OpenAI error object
//   }
#pragma once

#include <cstddef>
#include <optional>
#include <string>
#include <string_view>

#include "torouter/expert.hpp"

namespace torouter::server {

/// An OpenAI-style error: the HTTP status and the `error` object's fields.
struct ApiError {
  int status = 400;
  std::string type = "invalid_request_error";
  /// Machine-readable code ("invalid_json", "model_not_found"); empty for null.
  std::string code;
  /// The request field at fault ("messages[2].role"); empty for null.
  std::string param;
  std::string message;
};

/// What a chat completion request asks for.
struct ChatRequest {
  /// True when `model` names an expert: one call to it, no routing.
  bool bypass = false;
  /// For a bypass: the expert's index in the registry.
  std::size_t expert = 0;
  /// The cost weight: the default, or the number of "router:<lambda>".
  double lambda_cost = 0.0;
  /// True for "router:<lambda>": the client chose cost-weighted routing, so
  /// a floor the server's config sets does not apply.
  bool lambda_given = false;
  /// The floor of "router:q>=<floor>"; unset for other models.
  std::optional<double> quality_floor;
  /// What the request needs of an expert: tools (a non-empty `tools`, or a
  /// conversation that has tool calls or tool results), images (an
  /// `image_url` part in a message's content), JSON output (a
  /// `response_format` of type json_object or json_schema).
  Capabilities needs;
  /// The field each need was read from, for errors ("tools",
  /// "messages[1].content[0]", "response_format.type"); empty when not needed.
  std::string tools_param;
  std::string images_param;
  std::string json_param;
  bool stream = false;
  /// `stream_options.include_usage`: a stream's usage comes in an event of
  /// its own, with no choices, after the last choice's, as OpenAI sends it.
  /// Without it the last choice's event carries the usage.
  bool include_usage = false;
  /// The `messages` array, minified, sent upstream as it is.
  std::string messages_json;
  /// Every other member but `model`, `stream` and `stream_options`, as JSON
  /// members without braces (`tools`, `tool_choice`, `temperature`...).
  std::string extra_json;
  /// What the router scores (see `routing_text`).
  std::string routing_text;
  /// Prompt tokens estimated from every message's content (at least 1).
  std::size_t input_tokens = 0;
  /// `max_tokens` or `max_completion_tokens`; 0 when absent.
  std::size_t max_tokens = 0;
  /// Which of the two the request gave, for errors that name it.
  std::string_view max_tokens_param = "max_tokens";
  /// `n`, the choices asked for; 1 when absent. Above 1 it is refused for
  /// a stream, whose relay passes on one choice.
  std::size_t choices = 1;
};

/// Parses and checks a request body; fills `chat` (a fresh one), or returns
/// the error to answer with (400 for bad input, 404 for an unknown model).
/// `model` is "router", "router:<lambda>" (a finite number >= 0),
/// "router:q>=<floor>" (a finite number in [0, 1]) or the name of one of
/// `experts`; `default_lambda_cost` applies to plain "router". A request no
/// expert could serve is a 400 too: one that needs a capability no expert
/// takes ("no_capable_expert"), or names an expert that lacks it
/// ("capability_not_supported"), or whose prompt plus `max_tokens` fits no
/// context window ("context_length_exceeded"). Experts that declare no
/// capabilities take everything.
std::optional<ApiError> parse_chat_request(std::string_view body, const ExpertRegistry& experts,
                                           double default_lambda_cost, ChatRequest& chat);

/// The text the router scores for a conversation, from the `messages` JSON
/// array: the system prompt (first 2000 bytes) and the last user message
/// (its first 6000 and last 2000 bytes when longer), each cut at UTF-8
/// boundaries; earlier turns and assistant turns do not count. Empty for
/// text that is not a JSON array.
std::string routing_text(std::string_view messages_json);

}  // namespace torouter::server
