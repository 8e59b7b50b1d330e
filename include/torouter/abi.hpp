// torouter/abi.hpp: the versioned namespace every torouter name lives in.
// `torouter::Router` is `torouter::v0::Router` to the linker, so two builds
// of different (incompatible) versions linked into one process fail to link
// instead of mixing silently, as fmt does with its `fmt::v9`. Code names
// `torouter::...` and never the inner namespace; a forward declaration of
// a torouter type must sit inside these macros too.
#pragma once

/// Changes with each release that breaks the ABI (0.x: each minor version).
#define TOROUTER_ABI_NAMESPACE v0

#define TOROUTER_BEGIN_NAMESPACE \
  namespace torouter {           \
  inline namespace TOROUTER_ABI_NAMESPACE {
#define TOROUTER_END_NAMESPACE \
  }                            \
  }
