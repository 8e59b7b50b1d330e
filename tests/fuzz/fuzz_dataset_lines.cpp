// libFuzzer target: routing dataset JSONL lines.
#include <cstddef>
#include <cstdint>
#include <string>
#include <string_view>
#include <vector>

#include "torouter/dataset.hpp"
#include "torouter/error.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  static const std::vector<std::string> experts{"a", "b", "gpt-4-1106-preview"};
  try {
    torouter::parse_dataset_rows(std::string_view(reinterpret_cast<const char*>(data), size),
                                 "fuzz", experts);
  } catch (const torouter::Error&) {
  }
  return 0;
}
