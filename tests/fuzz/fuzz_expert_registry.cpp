// libFuzzer target: the expert registry JSON loader. Any input either loads
// or throws torouter::Error; nothing else (no crash, leak or UB report).
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "torouter/error.hpp"
#include "torouter/expert.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    torouter::parse_expert_registry(
        std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const torouter::Error&) {
  }
  return 0;
}
