// torouter/error.hpp: the exception thrown for broken input at load time.
//
// Errors that are normal control flow (an expert timed out, every candidate
// failed) are values: see `FailureKind` in transport.hpp and `InvokeResult`
// in router.hpp. Input that cannot be used at all (a malformed registry file,
// a router built over experts its scorer does not know) throws `Error`, whose
// message names the file and the field or line.
//
//   try {
//     auto registry = torouter::load_expert_registry("experts.json");
//   } catch (const torouter::Error& e) {
//     std::cerr << e.what() << "\n";  // experts.json: experts[2].input_usd_per_mtok: ...
//   }
#pragma once

#include <stdexcept>
#include <string>

namespace torouter {

/// Thrown for input that cannot be used: its message says where and why.
class Error : public std::runtime_error {
 public:
  using std::runtime_error::runtime_error;
};

}  // namespace torouter
