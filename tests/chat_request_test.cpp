// torouter-server's reading of a chat completion body, without HTTP (the
// same requests over HTTP are in router_server_test): what it keeps for the
// router, what it forwards, and the errors it answers with.
#include <catch2/catch.hpp>

#include <string>

#include "chat_request.hpp"

using Catch::Matchers::Contains;
using torouter::server::ApiError;
using torouter::server::ChatRequest;
using torouter::server::parse_chat_request;
using torouter::server::routing_text;

namespace {

torouter::ExpertRegistry experts() {
  torouter::ExpertRegistry registry;
  registry.add(torouter::ExpertSpec("small", 0.2, 0.2));
  registry.add(torouter::ExpertSpec("large", 3.0, 15.0));
  return registry;
}

// The error `body` is refused with; fails the test when it is accepted.
ApiError refusal(const std::string& body) {
  ChatRequest chat;
  auto error = parse_chat_request(body, experts(), 7.0, chat);
  INFO(body);
  REQUIRE(error.has_value());
  return *error;
}

}  // namespace

TEST_CASE("chat request: what the router gets and what goes upstream") {
  const std::string body = R"({"model": "router", "stream": true, "stream_options": {"include_usage": true},
    "messages": [{"role": "system", "content": "Be brief."}, {"role": "user", "content": "Hi there"}],
    "max_tokens": 64, "temperature": 0.5, "tool_choice": "auto",
    "tools": [{"type": "function", "function": {"name": "f", "parameters": {}}}]})";
  ChatRequest chat;
  REQUIRE_FALSE(parse_chat_request(body, experts(), 7.0, chat).has_value());
  CHECK_FALSE(chat.bypass);
  CHECK(chat.lambda_cost == 7.0);
  CHECK(chat.stream);
  CHECK(chat.max_tokens == 64);
  CHECK(chat.messages_json ==
        R"([{"role":"system","content":"Be brief."},{"role":"user","content":"Hi there"}])");
  CHECK(chat.extra_json ==
        R"("max_tokens":64,"temperature":0.5,"tool_choice":"auto",)"
        R"("tools":[{"type":"function","function":{"name":"f","parameters":{}}}])");
  CHECK(chat.routing_text == "Be brief.\n\nHi there");
  CHECK(chat.input_tokens >= 1);

  ChatRequest weighted;
  REQUIRE_FALSE(parse_chat_request(R"({"model":"router:0.25","messages":[{"role":"user","content":"x"}]})",
                                   experts(), 7.0, weighted)
                    .has_value());
  CHECK(weighted.lambda_cost == 0.25);
  CHECK_FALSE(weighted.stream);
  CHECK(weighted.extra_json.empty());

  ChatRequest bypass;
  REQUIRE_FALSE(parse_chat_request(R"({"model":"large","messages":[{"role":"user","content":""}]})",
                                   experts(), 7.0, bypass)
                    .has_value());
  CHECK(bypass.bypass);
  CHECK(bypass.expert == 1);
  CHECK(bypass.routing_text.empty());
  CHECK(bypass.input_tokens == 4);  // an empty message still counts its role and framing
}

TEST_CASE("chat request: errors say the status, the code and the field") {
  const ApiError not_json = refusal(R"({"model":"router",)");
  CHECK(not_json.status == 400);
  CHECK(not_json.code == "invalid_json");
  CHECK(not_json.type == "invalid_request_error");

  const ApiError unknown = refusal(R"({"model":"gpt-17","messages":[{"role":"user","content":"x"}]})");
  CHECK(unknown.status == 404);
  CHECK(unknown.code == "model_not_found");
  CHECK(unknown.param == "model");
  CHECK_THAT(unknown.message, Contains("gpt-17"));

  const ApiError weight = refusal(R"({"model":"router:nan","messages":[{"role":"user","content":"x"}]})");
  CHECK(weight.status == 400);
  CHECK(weight.param == "model");

  const ApiError role = refusal(R"({"model":"router","messages":[{"role":"user"},{"role":3}]})");
  CHECK(role.param == "messages[1].role");

  const ApiError tool = refusal(
      R"({"model":"router","tools":[{"type":"function"},7],"messages":[{"role":"user","content":"x"}]})");
  CHECK(tool.param == "tools[1].type");
}

TEST_CASE("chat request: the routing text is the system prompt and the last user turn") {
  CHECK(routing_text(R"([{"role":"system","content":"S"},{"role":"user","content":"old"},)"
                     R"({"role":"assistant","content":"A"},{"role":"user","content":"new"}])") ==
        "S\n\nnew");
  CHECK(routing_text(R"([{"role":"user","content":[{"type":"text","text":"a"},)"
                     R"({"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}])") ==
        "a\nb");
  const std::string long_text = std::string(7000, 'h') + std::string(3000, 't');
  const std::string cut = routing_text("[{\"role\":\"user\",\"content\":\"" + long_text + "\"}]");
  CHECK(cut == std::string(6000, 'h') + "\n...\n" + std::string(2000, 't'));
  // A cut never splits a UTF-8 character.
  std::string accents;
  for (int i = 0; i < 5000; ++i) accents += "\xc3\xa9";
  const std::string cut2 = routing_text("[{\"role\":\"user\",\"content\":\"" + accents + "\"}]");
  CHECK(cut2.size() == 6000 + 5 + 2000);
  CHECK(routing_text("not json") == "");
}

