// Routes one prompt with a registry parsed from JSON; exits 0 when the pick
// is the expected one.
#include <torouter/torouter.hpp>

#include <iostream>
#include <memory>

namespace {

class Fixed : public torouter::Scorer {
 public:
  const std::vector<std::string>& expert_names() const override { return names_; }
  std::string_view version() const override { return "fixed"; }
  void score(const std::string_view*, std::size_t count, torouter::ScoreBatch& out,
             torouter::ScorerWorkspace*) const override {
    out.resize(count, 2);
    out.clear_output_tokens();
    for (Eigen::Index i = 0; i < out.quality.rows(); ++i) {
      out.quality(i, 0) = 0.4f;
      out.quality(i, 1) = 0.8f;
    }
  }

 private:
  std::vector<std::string> names_{"small", "large"};
};

}  // namespace

int main() {
  const auto experts = torouter::parse_expert_registry(
      R"({"experts": [{"name": "small", "input_usd_per_mtok": 0.2},
                      {"name": "large", "input_usd_per_mtok": 3}]})",
      "inline");
  torouter::Router router(experts, std::make_shared<Fixed>());
  const auto decision = router.route("hello");
  std::cout << "torouter " << torouter::kVersion << ": " << torouter::to_json(decision) << "\n";
  return decision.pick() && decision.pick()->name == "large" ? 0 : 1;
}
