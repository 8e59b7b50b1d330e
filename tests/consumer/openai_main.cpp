// Calls an upstream through torouter::openai's transport. Nothing listens on
// port 1, so the call must fail as a server error that cannot connect: that
// takes the HTTP client, linked through the package, all the way to a socket.
#include <chrono>
#include <future>
#include <iostream>
#include <memory>
#include <torouter/openai/upstream.hpp>

int main() {
  torouter::openai::UpstreamOptions options;
  options.base_url = "http://127.0.0.1:1/v1";
  options.model = "any";
  options.connect_timeout = std::chrono::seconds(5);
  auto upstream = std::make_shared<const torouter::openai::Upstream>(options);
  const torouter::Transport transport = torouter::openai::make_transport(upstream);

  torouter::Request request;
  request.expert = "any";
  request.prompt = "hello";
  std::promise<torouter::Response> answered;
  transport.call_async(request, [&answered](torouter::Response r) { answered.set_value(r); });
  const torouter::Response response = answered.get_future().get();
  std::cout << "torouter::openai: " << torouter::to_string(response.failure) << ": "
            << response.error_message << "\n";
  return response.failure == torouter::FailureKind::ServerError &&
                 response.error_message.find("cannot connect") != std::string::npos
             ? 0
             : 1;
}
