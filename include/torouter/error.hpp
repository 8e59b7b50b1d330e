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
//     if (e.code() == torouter::ErrorCode::FileAccess) { ... }
//   }
#pragma once

#include <stdexcept>
#include <string>

#include "torouter/abi.hpp"

TOROUTER_BEGIN_NAMESPACE

/// What kind of problem an `Error` is, for a program to branch on.
enum class ErrorCode {
  InvalidInput,       ///< a file or text that is malformed or out of range (the default)
  FileAccess,         ///< a file that cannot be opened, read, written or renamed
  IncompatibleModel,  ///< a model this build cannot use: a newer format, recorded checks
                      ///< that fail, experts its registry does not match
  Misuse,             ///< a call the API does not allow: options out of range, a null
                      ///< scorer, an unknown expert name
};

/// "invalid_input", "file_access", "incompatible_model", "misuse".
inline const char* to_string(ErrorCode code) noexcept {
  switch (code) {
    case ErrorCode::FileAccess:
      return "file_access";
    case ErrorCode::IncompatibleModel:
      return "incompatible_model";
    case ErrorCode::Misuse:
      return "misuse";
    case ErrorCode::InvalidInput:
      break;
  }
  return "invalid_input";
}

/// Thrown for input that cannot be used: its message says where and why,
/// its code what kind of problem it is.
class Error : public std::runtime_error {
 public:
  explicit Error(const std::string& message, ErrorCode code = ErrorCode::InvalidInput)
      : std::runtime_error(message), code_(code) {}
  ErrorCode code() const noexcept { return code_; }

 private:
  ErrorCode code_;
};

TOROUTER_END_NAMESPACE
