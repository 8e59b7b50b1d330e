// A self-signed certificate for tests, made at test time by Debian's
// `openssl` (scripts/setup installs it): the tests of TLS never ship a key.
#pragma once

#include <cstdlib>
#include <filesystem>
#include <stdexcept>
#include <string>

namespace torouter::testing {

struct Certificate {
  std::string certificate;  // PEM file, also its own CA
  std::string key;          // PEM file
};

/// A self-signed certificate for `names` (a subjectAltName list such as
/// "IP:127.0.0.1,DNS:localhost"), written into `dir` under `stem`.
inline Certificate make_certificate(const std::filesystem::path& dir, const std::string& names,
                                    const std::string& stem = "server") {
  Certificate out{(dir / (stem + ".crt")).string(), (dir / (stem + ".key")).string()};
  const std::string command =
      "openssl req -x509 -newkey rsa:2048 -nodes -days 1 -subj /CN=torouter-test -keyout '" +
      out.key + "' -out '" + out.certificate + "' -addext 'subjectAltName=" + names +
      "' 2>/dev/null";
  if (std::system(command.c_str()) != 0) {
    throw std::runtime_error(
        "openssl could not make a test certificate (scripts/setup installs it)");
  }
  return out;
}

}  // namespace torouter::testing
