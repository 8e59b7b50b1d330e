// libFuzzer target: model files, header and tensors, and the scorer that
// loads them (including the recorded-prediction checks).
#include <cstddef>
#include <cstdint>
#include <string>

#include "torouter/error.hpp"
#include "torouter/model_io.hpp"
#include "torouter/trainable_scorer.hpp"

extern "C" int LLVMFuzzerTestOneInput(const std::uint8_t* data, std::size_t size) {
  try {
    const auto reader =
        torouter::ModelReader::parse(std::string(reinterpret_cast<const char*>(data), size), "fuzz");
    torouter::load_model(reader);
  } catch (const torouter::Error&) {
  }
  return 0;
}
