// libFuzzer target: the prompts files `torouter collect` reads.
#include <cstddef>
#include <cstdint>
#include <string_view>

#include "torouter/collect.hpp"
#include "torouter/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    torouter::parse_prompts(std::string_view(reinterpret_cast<const char*>(data), size), "fuzz");
  } catch (const torouter::Error&) {
  }
  return 0;
}
