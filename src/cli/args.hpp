// Internal to the torouter program: its argument parsing.
#pragma once

#include <fmt/format.h>

#include <exception>
#include <initializer_list>
#include <map>
#include <string>
#include <vector>

#include "torouter/abi.hpp"
#include "torouter/error.hpp"

TOROUTER_BEGIN_NAMESPACE
namespace cli {

// Options after the command: "--name value" pairs and positional arguments.
struct Arguments {
  std::map<std::string, std::string> named;
  std::vector<std::string> positional;

  static Arguments parse(int argc, char** argv, int first) {
    Arguments out;
    for (int i = first; i < argc; ++i) {
      const std::string arg = argv[i];
      if (arg.rfind("--", 0) == 0) {
        if (i + 1 >= argc) throw Error(fmt::format("{} needs a value", arg));
        out.named[arg.substr(2)] = argv[++i];
      } else {
        out.positional.push_back(arg);
      }
    }
    return out;
  }
  std::string required(const std::string& name) const {
    auto it = named.find(name);
    if (it == named.end()) throw Error(fmt::format("missing --{}", name));
    return it->second;
  }
  std::string get(const std::string& name, const std::string& fallback) const {
    auto it = named.find(name);
    return it == named.end() ? fallback : it->second;
  }
  void allow_only(std::initializer_list<const char*> names) const {
    for (const auto& [name, value] : named) {
      bool known = false;
      for (const char* n : names) known = known || name == n;
      if (!known) throw Error(fmt::format("unknown option --{}", name));
    }
  }
};

inline double parse_number(const std::string& text, const std::string& what) {
  try {
    std::size_t used = 0;
    const double v = std::stod(text, &used);
    if (used == text.size()) return v;
  } catch (const std::exception&) {
  }
  throw Error(fmt::format("--{}: expected a number, got \"{}\"", what, text));
}

inline long long parse_whole(const std::string& text, const std::string& what, long long minimum) {
  const double v = parse_number(text, what);
  if (v != static_cast<double>(static_cast<long long>(v)) || v < static_cast<double>(minimum)) {
    throw Error(fmt::format("--{}: expected a whole number >= {}, got \"{}\"", what,
                                      minimum, text));
  }
  return static_cast<long long>(v);
}




int train(const Arguments& args);
int route(const Arguments& args);
int evaluate(const Arguments& args);
int calibrate(const Arguments& args);
int collect(const Arguments& args);

}  // namespace cli
TOROUTER_END_NAMESPACE
