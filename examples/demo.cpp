// The main job on the embedded default: route a set of varied prompts with
// the default router (an MLP trained on llmrouter14, examples/default_router/),
// call each pick through in-process transports that stand in for the nine
// experts (with realistic latency, scaled down, and a few injected
// failures), and print every decision and what the spend saved.
//
//   build/bin/demo [MODEL [EXPERTS_JSON]] [--lambda-cost X]
#include <torouter/torouter.hpp>

#include <atomic>
#include <chrono>
#include <cstdio>
#include <cstring>
#include <map>
#include <string>
#include <thread>
#include <vector>

namespace {

struct DemoPrompt {
  const char* kind;
  const char* text;
};

const DemoPrompt kPrompts[] = {
    {"math", "Natalia sold clips to 48 of her friends in April, and then she sold half as many "
             "clips in May. How many clips did Natalia sell altogether in April and May?"},
    {"math", "What is the derivative of x^3 * sin(x)? Show each step."},
    {"code", "Write a Python function that returns the longest palindromic substring of a string."},
    {"code", "def add(a, b):\n    return a - b\n# This function is supposed to add. Fix the bug."},
    {"trivia", "Who wrote the novel 'One Hundred Years of Solitude'?"},
    {"trivia", "What is the capital city of Australia?"},
    {"reasoning", "There are 3 houses in a row. The cellist lives left of the truck owner, who "
                  "does not live in house 3. Who lives in house 1 if the pianist owns a sedan?"},
    {"reasoning", "Q: Which gas do plants absorb from the air? A) oxygen B) carbon dioxide "
                  "C) nitrogen D) helium\nAnswer:"},
    {"chit-chat", "hey! how's your day going?"},
    {"chit-chat", "Can you recommend a good book for a long flight?"},
};

// Stand-in for a hosted expert: sleeps for its latency prior (scaled down
// 20x so the demo runs in seconds) and answers; fails as scripted.
class StandInExpert {
 public:
  StandInExpert(const torouter::ExpertSpec& spec, std::map<int, torouter::Response> failures)
      : spec_(spec), failures_(std::move(failures)) {}

  torouter::Response operator()(const torouter::Request& request) {
    const int call = ++calls_;
    const auto scaled_ms = [](double ms) {
      return std::chrono::microseconds(static_cast<long>(ms * 1000 / 20));
    };
    if (auto failure = failures_.find(call); failure != failures_.end()) {
      std::this_thread::sleep_for(scaled_ms(spec_.latency.time_to_first_token_ms));
      return failure->second;
    }
    const std::size_t output_tokens = 60 + request.prompt.size() % 90;
    std::this_thread::sleep_for(scaled_ms(spec_.latency.time_to_first_token_ms +
                                          1000.0 * static_cast<double>(output_tokens) /
                                              spec_.latency.output_tokens_per_second));
    return torouter::Response::answer("(" + spec_.name + "'s answer)",
                                      torouter::estimate_tokens(request.prompt), output_tokens);
  }

 private:
  torouter::ExpertSpec spec_;
  std::map<int, torouter::Response> failures_;
  std::atomic<int> calls_{0};
};

std::string short_text(const char* text, std::size_t width) {
  std::string s(text);
  for (char& c : s) {
    if (c == '\n') c = ' ';
  }
  return s.size() <= width ? s : s.substr(0, width - 3) + "...";
}

}  // namespace

int main(int argc, char** argv) {
  std::string model_path = TOROUTER_DEFAULT_MODEL;
  std::string experts_path = TOROUTER_DEFAULT_EXPERTS;
  // Quality given up per USD saved: 200 trades 0.04 of predicted quality for
  // the $0.0002 between a 7B and a 49B expert on a short prompt.
  double lambda_cost = 200;
  std::vector<std::string> positional;
  for (int i = 1; i < argc; ++i) {
    if (std::strcmp(argv[i], "--lambda-cost") == 0 && i + 1 < argc) {
      lambda_cost = std::stod(argv[++i]);
    } else {
      positional.emplace_back(argv[i]);
    }
  }
  if (!positional.empty()) model_path = positional[0];
  if (positional.size() > 1) experts_path = positional[1];

  try {
    const torouter::LoadedModel model = torouter::load_model(model_path);
    const torouter::ExpertRegistry experts = torouter::load_expert_registry(experts_path);
    torouter::RouterOptions options;
    options.initial_backoff = std::chrono::milliseconds(20);
    options.failures_before_cooldown = 2;
    torouter::Router router(experts, model.scorer, nullptr, options);

    // Injected failures, by expert and call number. Each is reported at
    // once, with the words a real upstream client would use: the demo does
    // not wait out a timeout it only pretends happened.
    using torouter::FailureKind;
    using torouter::Response;
    std::map<std::string, std::map<int, Response>> failures;
    failures["llama-3.3-nemotron-super-49b-v1"][2] =
        Response::failed_quoting(FailureKind::ServerError, "HTTP 503", "upstream overloaded");
    failures["llama-3.3-nemotron-super-49b-v1"][3] =
        Response::failed_quoting(FailureKind::ServerError, "HTTP 503", "upstream overloaded");
    failures["gemma-2-9b-it"][1] = Response::failed(FailureKind::RateLimited, "HTTP 429",
                                                    std::chrono::milliseconds(50));
    failures["qwen2.5-7b-instruct"][1] =
        Response::failed(FailureKind::Timeout, "no answer in time");
    std::vector<std::unique_ptr<StandInExpert>> stand_ins;
    for (const auto& spec : experts.experts()) {
      stand_ins.push_back(std::make_unique<StandInExpert>(spec, failures[spec.name]));
      StandInExpert* expert = stand_ins.back().get();
      router.set_transport(spec.name, torouter::Transport::sync(
                                          [expert](const torouter::Request& r) { return (*expert)(r); }));
    }

    const torouter::ExpertSpec* dearest = &experts[0];
    for (const auto& spec : experts.experts()) {
      if (spec.input_usd_per_mtok + spec.output_usd_per_mtok >
          dearest->input_usd_per_mtok + dearest->output_usd_per_mtok) {
        dearest = &spec;
      }
    }

    std::printf("torouter %s demo: default router %s, %zu experts, lambda_cost %g\n\n",
                torouter::kVersion, std::string(model.scorer->version()).c_str(), experts.size(),
                lambda_cost);
    torouter::InvokeOptions invoke;
    invoke.route.policy.lambda_cost = lambda_cost;
    double spent = 0, dearest_spend = 0;
    std::map<std::string, int> picks;
    int answered = 0;
    for (const auto& prompt : kPrompts) {
      const torouter::InvokeResult result = router.invoke(prompt.text, invoke);
      const torouter::Candidate* pick = result.decision.pick();
      std::printf("[%s] %s\n", prompt.kind, short_text(prompt.text, 76).c_str());
      if (pick) {
        // The decision's expected quality: for a top pick, its prediction less
        // what held-out top picks fell short of theirs.
        std::printf("  routed to %-33s expected quality %.3f  cost $%.6f  (%s)\n",
                    std::string(pick->name).c_str(), result.decision.expected_quality,
                    pick->cost_usd,
                    std::string(torouter::to_string(result.decision.reason)).c_str());
      }
      for (const auto& a : result.attempts) {
        if (a.outcome == torouter::AttemptOutcome::Answered) continue;
        std::printf("  %s %s attempt %d: %s%s%s\n",
                    a.outcome == torouter::AttemptOutcome::Failed ? "failed" : "skipped",
                    a.expert.c_str(), a.number, std::string(torouter::to_string(a.failure)).c_str(),
                    a.detail.empty() ? "" : ": ", a.detail.c_str());
      }
      if (result.ok()) {
        ++answered;
        ++picks[result.expert];
        spent += result.cost_usd;
        dearest_spend += torouter::CostModel().cost_usd(*dearest, static_cast<double>(result.response.input_tokens),
                                                        static_cast<double>(result.response.output_tokens));
        const bool failed_over = pick && result.expert != pick->name;
        std::printf("  answered by %s%s in %lld ms after %zu attempt(s), $%.6f\n",
                    result.expert.c_str(), failed_over ? " (failed over)" : "",
                    static_cast<long long>(result.attempts.back().latency.count()),
                    result.attempts.size(), result.cost_usd);
      } else {
        std::printf("  FAILED: %s\n", result.error_message.c_str());
      }
      std::printf("\n");
    }
    std::printf("answered %d of %zu prompts; experts used:", answered, std::size(kPrompts));
    for (const auto& [name, count] : picks) std::printf(" %s x%d;", name.c_str(), count);
    std::printf("\nspent $%.6f; always calling the dearest expert (%s) would have cost $%.6f "
                "(%.0f%% saved)\n",
                spent, dearest->name.c_str(), dearest_spend,
                dearest_spend > 0 ? 100 * (1 - spent / dearest_spend) : 0.0);
    return answered == static_cast<int>(std::size(kPrompts)) ? 0 : 1;
  } catch (const std::exception& e) {
    std::fprintf(stderr, "demo: %s\n", e.what());
    return 1;
  }
}
