// Uses torouter::redis through the package: a store pointed at a port where
// nothing listens starts as when Redis is lost, and, failing open, admits a
// call on local state. That links hiredis and reaches a socket.
#include <future>
#include <iostream>
#include <torouter/redis/redis_store.hpp>

int main() {
  torouter::RedisStoreOptions options;
  options.url = "redis://127.0.0.1:1/0";
  options.on_event = [](const std::string& line) { std::cout << "event: " << line << "\n"; };
  torouter::RedisStateStore store(options);
  torouter::ExpertRegistry experts;
  experts.add(torouter::ExpertSpec("any", 1, 1));
  store.configure(experts, {});
  std::promise<torouter::AdmissionOutcome> answered;
  store.admit(torouter::Admission(),
              [&answered](const torouter::AdmissionResult& r) { answered.set_value(r.outcome); });
  const auto outcome = answered.get_future().get();
  const auto counters = store.counters();
  std::cout << "torouter::redis: " << torouter::to_string(outcome) << ", connected "
            << counters.connected << ", admitted locally " << counters.admitted_local << "\n";
  return outcome == torouter::AdmissionOutcome::Admitted && !counters.connected &&
                 counters.admitted_local == 1
             ? 0
             : 1;
}
