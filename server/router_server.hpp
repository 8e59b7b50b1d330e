// torouter-server: an OpenAI-compatible Chat Completions endpoint that
// routes each request with a trained router and calls the chosen upstream.
//
//   auto config = torouter::server::load_server_config("server.json");
//   torouter::server::RouterServer server(config);   // loads the model, checks the experts
//   int port = server.bind();                        // config.port, or a free one if 0
//   server.run();                                    // until stop()
//
// Endpoints: POST /v1/chat/completions, GET /v1/models, GET /health,
// GET /metrics. docs/ARCHITECTURE.md ("Deployment server") describes the
// request forms, the decision headers and the metrics.
#pragma once

#include <cstddef>
#include <memory>
#include <string>
#include <string_view>

#include "config.hpp"

namespace torouter::server {

/// One server: its router, upstreams, metrics and HTTP listener.
/// What a reload did.
struct ReloadOutcome {
  bool ok = false;
  std::string model_version;     ///< the version serving now
  std::string previous_version;  ///< the version serving before
  std::string error;             ///< why the file was refused (when not ok)
  bool busy = false;             ///< not tried: another reload was running
};

class RouterServer {
 public:
  /// Loads the router model and the experts file, builds the router and the
  /// upstreams; throws `torouter::Error` naming the configuration file and
  /// the field for an expert the model does not know.
  explicit RouterServer(ServerConfig config);
  ~RouterServer();
  RouterServer(const RouterServer&) = delete;
  RouterServer& operator=(const RouterServer&) = delete;

  /// Binds the listening socket; returns the port (a free one when the
  /// configured port is 0), or throws `torouter::Error`.
  int bind();
  /// Serves until `stop` (call `bind` first).
  void run();
  /// `bind`, then `run` on a background thread; returns the port.
  int start();
  /// Stops serving; safe from any thread, and more than once.
  void stop();

  const ServerConfig& config() const;
  /// Chat requests being routed or called now.
  std::size_t requests_in_flight() const;

  /// Loads `router_model` again and swaps it in while serving (what SIGHUP
  /// and POST /admin/reload do): calls in flight finish on the old model,
  /// per-expert state is kept. A file that does not load, fails its
  /// recorded self-test or lacks an expert is refused, and the current
  /// model keeps serving. Safe from any thread; while one runs, another is
  /// not tried (`busy`).
  ReloadOutcome reload();

 private:
  struct Impl;
  std::unique_ptr<Impl> impl_;
};

}  // namespace torouter::server
