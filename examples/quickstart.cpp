#include <torouter/torouter.hpp>

#include <iostream>

// A scorer predicts each expert's quality on a prompt. torouter's trained
// scorers do this from data; here, a rule of thumb.
class RuleOfThumb : public torouter::Scorer {
 public:
  const std::vector<std::string>& expert_names() const override { return names_; }
  std::string_view version() const override { return "rule-of-thumb-1"; }
  void score(const std::string_view* prompts, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace*) const override {
    out.resize(count, names_.size());
    out.clear_output_tokens();
    for (std::size_t i = 0; i < count; ++i) {
      const bool hard = prompts[i].find("prove") != std::string_view::npos;
      out.quality(i, 0) = hard ? 0.3f : 0.80f;  // small
      out.quality(i, 1) = hard ? 0.9f : 0.85f;  // large
    }
  }

 private:
  std::vector<std::string> names_{"small", "large"};
};

int main() {
  torouter::ExpertRegistry experts;
  torouter::ExpertSpec small("small", 0.2, 0.2);  // USD per million tokens in, out
  torouter::ExpertSpec large("large", 3.0, 15.0);
  experts.add(small);
  experts.add(large);

  torouter::Router router(experts, std::make_shared<RuleOfThumb>());
  for (const char* name : {"small", "large"}) {
    router.set_transport(name, torouter::Transport::sync([name](const torouter::Request& r) {
      return torouter::Response::answer(std::string(name) + " answers: " + r.prompt);
    }));
  }

  torouter::InvokeOptions options;
  options.route.policy.lambda_cost = 20;  // quality given up per USD saved
  for (const char* prompt : {"What is the capital of France?", "prove that sqrt(2) is irrational"}) {
    torouter::InvokeResult result = router.invoke(prompt, options);
    const torouter::Candidate& pick = *result.decision.pick();
    std::cout << prompt << "\n  -> " << pick.name << " (predicted quality "
              << pick.predicted_quality << ", cost $" << pick.cost_usd << ", "
              << torouter::to_string(result.decision.reason) << ")\n  "
              << result.response.text << "\n";
  }
  std::cout << "spent $" << router.spent_usd() << "\n";
}
