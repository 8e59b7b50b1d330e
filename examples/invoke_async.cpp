// Many calls in flight on one thread: Router::invoke_async on a RunLoop.
// Each expert answers after 300 ms through an asynchronous transport (a
// timer stands in for an HTTP client), so 100 calls take about 300 ms on the
// single loop thread rather than 30 s; one more call is cancelled while in
// flight, as when a client hangs up.
#include <atomic>
#include <chrono>
#include <iostream>
#include <thread>
#include <torouter/torouter.hpp>

// Predicts the same quality for every prompt: the large expert wins.
class Fixed : public torouter::Scorer {
 public:
  const std::vector<std::string>& expert_names() const override { return names_; }
  std::string_view version() const override { return "fixed-1"; }
  void score(const std::string_view*, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace*) const override {
    out.resize(count, names_.size());
    out.clear_output_tokens();
    for (std::size_t i = 0; i < count; ++i) {
      out.quality(static_cast<Eigen::Index>(i), 0) = 0.6f;
      out.quality(static_cast<Eigen::Index>(i), 1) = 0.9f;
    }
  }

 private:
  std::vector<std::string> names_{"small", "large"};
};

int main() {
  torouter::ExpertRegistry experts;
  experts.add(torouter::ExpertSpec("small", 0.2, 0.2));
  experts.add(torouter::ExpertSpec("large", 3.0, 15.0));
  torouter::Router router(experts, std::make_shared<Fixed>());

  auto loop = std::make_shared<torouter::RunLoop>();  // the router's events
  torouter::RunLoop network;                          // stands in for an HTTP client
  std::thread network_thread([&] { network.run(); });
  for (const char* name : {"small", "large"}) {
    router.set_transport(
        name, torouter::Transport::async([&, name](const torouter::Request& r,
                                                   torouter::CompletionCallback done) {
          std::string answer = std::string(name) + " answers: " + r.prompt;
          network.post_after(std::chrono::milliseconds(300),
                             [done, answer] { done(torouter::Response::answer(answer, 10, 20)); });
        }));
  }

  const int calls = 100;
  std::atomic<int> answered{0}, finished{0};
  const auto start = std::chrono::steady_clock::now();
  auto on_done = [&](torouter::InvokeResult result) {
    if (result.ok()) ++answered;
    if (++finished == calls + 1) loop->stop();
  };
  for (int i = 0; i < calls; ++i) {
    router.invoke_async("question " + std::to_string(i), {}, loop, on_done);
  }
  torouter::InvokeOptions cancelled;
  cancelled.cancel = std::make_shared<torouter::CancelSignal>();
  router.invoke_async(
      "a question nobody waits for", cancelled, loop, [&](torouter::InvokeResult result) {
        std::cout << "cancelled call: " << torouter::to_string(result.error) << "\n";
        on_done(std::move(result));
      });
  loop->post([&] { cancelled.cancel->cancel(); });
  loop->run();  // this thread is the router's only one

  const auto ms = std::chrono::duration_cast<std::chrono::milliseconds>(
                      std::chrono::steady_clock::now() - start)
                      .count();
  std::cout << answered << " of " << calls << " calls answered in " << ms
            << " ms on one thread; spent $" << router.spent_usd() << "\n";
  network.stop();
  network_thread.join();
  return answered == calls ? 0 : 1;
}
