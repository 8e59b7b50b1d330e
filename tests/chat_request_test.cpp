// torouter-server's reading of a chat completion body, without HTTP (the
// same requests over HTTP are in router_server_test): what it keeps for the
// router, what it forwards, and the errors it answers with.
#include "chat_request.hpp"

#include <catch2/catch.hpp>
#include <cmath>
#include <string>

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

// Experts that declare what they take: "small" text only (a 1000-token
// window), "tools" tools and JSON output, "vision" images.
torouter::ExpertRegistry declared_experts() {
  torouter::ExpertRegistry registry;
  torouter::ExpertSpec small("small", 0.2, 0.2);
  small.capabilities = torouter::Capabilities{};
  small.context_window_tokens = 1000;
  torouter::ExpertSpec tools("tools", 1.0, 2.0);
  tools.capabilities = torouter::Capabilities{};
  tools.capabilities->tools = tools.capabilities->json_output = true;
  tools.context_window_tokens = 8000;
  torouter::ExpertSpec vision("vision", 3.0, 15.0);
  vision.capabilities = torouter::Capabilities{};
  vision.capabilities->images = true;
  vision.context_window_tokens = 128000;
  registry.add(small);
  registry.add(tools);
  registry.add(vision);
  return registry;
}

// The error `body` is refused with; fails the test when it is accepted.
ApiError refusal(const std::string& body, const torouter::ExpertRegistry& registry = experts()) {
  ChatRequest chat;
  auto error = parse_chat_request(body, registry, 7.0, chat);
  INFO(body);
  REQUIRE(error.has_value());
  return *error;
}

// The request `body` reads as; fails the test when it is refused.
ChatRequest accepted(const std::string& body,
                     const torouter::ExpertRegistry& registry = experts()) {
  ChatRequest chat;
  auto error = parse_chat_request(body, registry, 7.0, chat);
  INFO(body);
  INFO((error ? error->message : ""));
  REQUIRE_FALSE(error.has_value());
  return chat;
}

const std::string kUser = R"("messages":[{"role":"user","content":"x"}])";

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
  CHECK(chat.include_usage);
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
  CHECK_FALSE(weighted.include_usage);
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

  const ApiError content = refusal(
      R"({"model":"router","messages":[{"role":"user","content":"x"},{"role":"user","content":5}]})");
  CHECK(content.param == "messages[1].content");
  accepted(
      R"({"model":"router","messages":[{"role":"user","content":[{"type":"text","text":"x"}]},)"
      R"({"role":"assistant","content":null,"tool_calls":[]},{"role":"user","content":"y"}]})");

  const ApiError tool = refusal(
      R"({"model":"router","tools":[{"type":"function"},7],"messages":[{"role":"user","content":"x"}]})");
  CHECK(tool.param == "tools[1].type");

  // n choices are relayed whole in a plain answer; a stream passes on one.
  const ApiError streamed_n = refusal(
      R"({"model":"router","n":2,"stream":true,"messages":[{"role":"user","content":"x"}]})");
  CHECK(streamed_n.status == 400);
  CHECK(streamed_n.param == "n");
  CHECK(refusal(R"({"model":"router","n":0,"messages":[{"role":"user","content":"x"}]})").param ==
        "n");
  // stream_options is an object, and its include_usage a boolean.
  CHECK(refusal(std::string(R"({"model":"router","stream":true,"stream_options":1,)") + kUser + "}")
            .param == "stream_options");
  CHECK(refusal(std::string(R"({"model":"router","stream":true,"stream_options":)") +
                R"({"include_usage":"yes"},)" + kUser + "}")
            .param == "stream_options.include_usage");
  CHECK(refusal(std::string(R"({"model":"router","stream":true,"stream_options":)") +
                R"({"include_usage":false,"include_usage":true},)" + kUser + "}")
            .param == "stream_options.include_usage");
  CHECK_FALSE(accepted(std::string(R"({"model":"router","stream":true,"stream_options":)") +
                       R"({"include_usage":false},)" + kUser + "}")
                  .include_usage);
  // A field twice is refused: readers disagree on which one counts.
  const ApiError twice = refusal(
      R"({"model":"nonsense","model":"router","messages":[{"role":"user","content":"x"}]})");
  CHECK(twice.param == "model");
  CHECK_THAT(twice.message, Contains("twice"));
  // So is a key twice in a message or a part of one: the router would
  // route and price one content and the upstream perhaps be sent the other.
  CHECK(refusal(R"({"model":"router","messages":[{"role":"user","content":"x"},)"
                R"({"role":"user","content":"hi","content":"a long prompt"}]})")
            .param == "messages[1].content");
  CHECK(refusal(R"({"model":"router","messages":[{"role":"user","content":[)"
                R"({"type":"text","text":"a"},{"type":"text","text":"b","text":"c"}]}]})")
            .param == "messages[0].content[1].text");
  std::string many_keys = R"({"model":"router","messages":[{"role":"user","content":"x")";
  for (int k = 0; k < 20; ++k) many_keys += ",\"k" + std::to_string(k) + "\":1";
  CHECK(accepted(many_keys + "}]}").routing_text == "x");
  CHECK(refusal(many_keys + R"(,"k7":2}]})").param == "messages[0].k7");
  // A cost weight or floor is a plain decimal number.
  for (const char* model : {"router: 5", "router:0x10", "router:+1", "router:q>= 0.5"}) {
    INFO(model);
    CHECK(refusal(std::string(R"({"model":")") + model + R"(",)" + kUser + "}").param == "model");
  }
  CHECK(accepted(std::string(R"({"model":"router:1e-3",)") + kUser + "}").lambda_cost == 1e-3);

  // null is "absent" for an optional field, as OpenAI takes it.
  const ChatRequest nulls = accepted(
      R"({"model":"router","max_tokens":null,"stream":null,"n":null,"tools":null,)"
      R"("tool_choice":null,"response_format":null,"messages":[{"role":"user","content":"x"}]})");
  CHECK_FALSE(nulls.stream);
  CHECK(nulls.max_tokens == 0);
  CHECK(nulls.extra_json.empty());
  const ChatRequest plain_n =
      accepted(R"({"model":"router","n":2,"messages":[{"role":"user","content":"x"}]})");
  CHECK(plain_n.choices == 2);
  CHECK_THAT(plain_n.extra_json, Contains("\"n\":2"));
}

TEST_CASE("chat request: the routing text is the system prompt and the last user turn") {
  CHECK(routing_text(R"([{"role":"system","content":"S"},{"role":"user","content":"old"},)"
                     R"({"role":"assistant","content":"A"},{"role":"user","content":"new"}])") ==
        "S\n\nnew");
  CHECK(routing_text(R"([{"role":"user","content":[{"type":"text","text":"a"},)"
                     R"({"type":"image_url","image_url":{"url":"x"}},{"type":"text","text":"b"}]}])") ==
        "a\nb");
  // A turn given in parts outlives the parts of the turns after it.
  CHECK(routing_text(R"([{"role":"user","content":[{"type":"text","text":"u1"},)"
                     R"({"type":"text","text":"u2"}]},)"
                     R"({"role":"assistant","content":[{"type":"text","text":"a1"}]}])") ==
        "u1\nu2");
  CHECK(routing_text(R"([{"role":"assistant","content":[{"type":"text","text":"x"}]},)"
                     R"({"role":"assistant","content":[{"type":"text","text":""}]},)"
                     R"({"role":"tool","content":""}])") == "x");
  CHECK(routing_text(R"([{"role":"system","content":"S1"},{"role":"developer","content":)"
                     R"([{"type":"text","text":"S2"}]},{"role":"user","content":"U"}])") ==
        "S1\nS2\n\nU");
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

TEST_CASE("chat request: router:q>=<floor> asks for a quality floor") {
  const ChatRequest floor = accepted(R"({"model":"router:q>=0.8",)" + kUser + "}");
  REQUIRE(floor.quality_floor.has_value());
  CHECK(*floor.quality_floor == 0.8);
  CHECK(floor.lambda_cost == 7.0);
  CHECK_FALSE(floor.bypass);
  CHECK(*accepted(R"({"model":"router:q>=0",)" + kUser + "}").quality_floor == 0.0);
  CHECK(*accepted(R"({"model":"router:q>=1",)" + kUser + "}").quality_floor == 1.0);
  CHECK_FALSE(std::signbit(*accepted(R"({"model":"router:q>=-0",)" + kUser + "}").quality_floor));
  CHECK_FALSE(floor.lambda_given);
  const ChatRequest weighted = accepted(R"({"model":"router:0.5",)" + kUser + "}");
  CHECK_FALSE(weighted.quality_floor.has_value());
  CHECK(weighted.lambda_given);  // so a configured floor does not apply
  const ChatRequest plain = accepted(R"({"model":"router",)" + kUser + "}");
  CHECK_FALSE(plain.quality_floor.has_value());
  CHECK_FALSE(plain.lambda_given);

  for (const char* bad : {"router:q>=1.5", "router:q>=-0.1", "router:q>=", "router:q>=nan",
                          "router:q>=0.8x", "router:q>=inf"}) {
    const ApiError e = refusal(std::string(R"({"model":")") + bad + "\"," + kUser + "}");
    CHECK(e.status == 400);
    CHECK(e.param == "model");
    CHECK_THAT(e.message, Contains(bad) && Contains("quality floor") && Contains("[0, 1]"));
  }
}

TEST_CASE("chat request: tools, tool history, image parts and JSON output are needs") {
  const ChatRequest plain = accepted(R"({"model":"router","tools":[],)" + kUser + "}");
  CHECK_FALSE(plain.needs.any());  // an empty tool list needs nothing

  const ChatRequest tools = accepted(
      R"({"model":"router","tools":[{"type":"function","function":{"name":"f"}}],)" + kUser + "}");
  CHECK(tools.needs.tools);
  CHECK(tools.tools_param == "tools");

  const ChatRequest history =
      accepted(R"({"model":"router","messages":[{"role":"user","content":"x"},)"
               R"({"role":"assistant","content":null,"tool_calls":[{"id":"c","type":"function"}]},)"
               R"({"role":"tool","tool_call_id":"c","content":"42"}]})");
  CHECK(history.needs.tools);
  CHECK(history.tools_param == "messages[1].tool_calls");

  const ChatRequest image = accepted(
      R"({"model":"router","messages":[{"role":"system","content":"s"},{"role":"user","content":)"
      R"([{"type":"text","text":"what is this?"},{"type":"image_url","image_url":{"url":"x"}}]}]})");
  CHECK(image.needs.images);
  CHECK_FALSE(image.needs.tools);
  CHECK(image.images_param == "messages[1].content[1]");

  for (const char* type : {"json_object", "json_schema"}) {
    const ChatRequest json =
        accepted(std::string(R"({"model":"router","response_format":{"type":")") + type + "\"}," +
                 kUser + "}");
    CHECK(json.needs.json_output);
    CHECK(json.json_param == "response_format.type");
    CHECK_THAT(json.extra_json, Contains("response_format"));  // still goes upstream
  }
  CHECK_FALSE(accepted(R"({"model":"router","response_format":{"type":"text"},)" + kUser + "}")
                  .needs.json_output);
  const ApiError bad = refusal(R"({"model":"router","response_format":"json",)" + kUser + "}");
  CHECK(bad.status == 400);
  CHECK(bad.param == "response_format.type");
}

TEST_CASE("chat request: a need no expert takes is a 400 naming the field") {
  const auto registry = declared_experts();
  const std::string image_and_tools =
      R"({"model":"router","tools":[{"type":"function"}],"messages":[{"role":"user","content":)"
      R"([{"type":"image_url","image_url":{"url":"x"}}]}]})";
  const ApiError none = refusal(image_and_tools, registry);
  CHECK(none.status == 400);
  CHECK(none.code == "no_capable_expert");
  CHECK(none.param == "tools");
  CHECK_THAT(none.message,
             Contains("tools (from tools)") && Contains("images (from messages[0].content[0])"));
  // Each need alone has an expert; undeclared experts take everything.
  CHECK(accepted(R"({"model":"router","tools":[{"type":"function"}],)" + kUser + "}", registry)
            .needs.tools);
  CHECK(accepted(image_and_tools).needs.images);

  const ApiError direct =
      refusal(R"({"model":"small","tools":[{"type":"function"}],)" + kUser + "}", registry);
  CHECK(direct.code == "capability_not_supported");
  CHECK(direct.param == "tools");
  CHECK_THAT(direct.message, Contains("\"small\""));
  const ApiError json = refusal(
      R"({"model":"vision","response_format":{"type":"json_object"},)" + kUser + "}", registry);
  CHECK(json.param == "response_format.type");
  CHECK_THAT(json.message, Contains("declares [images]"));
}

TEST_CASE("chat request: the prompt plus max_tokens must fit a context window") {
  const auto registry = declared_experts();
  // "small" has 1000 tokens, "vision" 128000.
  CHECK(accepted(R"({"model":"router","max_tokens":100000,)" + kUser + "}", registry).max_tokens ==
        100000);
  const ApiError routed =
      refusal(R"({"model":"router","max_tokens":200000,)" + kUser + "}", registry);
  CHECK(routed.status == 400);
  CHECK(routed.code == "context_length_exceeded");
  CHECK(routed.param == "max_tokens");
  CHECK_THAT(routed.message, Contains("128000"));
  // Only the experts that take the request's needs count.
  CHECK(
      refusal(R"({"model":"router","tools":[{"type":"function"}],"max_tokens":9000,)" + kUser + "}",
              registry)
          .code == "context_length_exceeded");

  const ApiError direct = refusal(R"({"model":"small","max_tokens":2000,)" + kUser + "}", registry);
  CHECK(direct.code == "context_length_exceeded");
  CHECK_THAT(direct.message, Contains("\"small\""));
  const std::string long_prompt(5000, 'a');  // about 1254 tokens with framing
  const ApiError prompt =
      refusal(R"({"model":"small","messages":[{"role":"user","content":")" + long_prompt + "\"}]}",
              registry);
  CHECK(prompt.param == "messages");
  // A huge max_tokens does not wrap around to a small sum.
  CHECK(refusal(R"({"model":"router","max_tokens":18446744073709551615,)" + kUser + "}", registry)
            .code == "context_length_exceeded");
}
