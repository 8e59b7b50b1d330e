// Chooses the kernels this process runs (kernel_table.hpp): what the CPU
// offers, read with cpuid, among the levels this build compiled.
#include "kernels/kernel_table.hpp"

#include <algorithm>
#include <cstdlib>
#include <stdexcept>
#include <string>

#include "torouter/cpu_level.hpp"
#include "torouter/error.hpp"

#if defined(__x86_64__) && (defined(__GNUC__) || defined(__clang__))
#include <cpuid.h>
#define TOROUTER_READS_CPUID 1
#endif

// The copies of level_kernels.cpp: the baseline always; the others where
// cmake/TorouterCpuLevels.cmake could build them.
extern "C" const torouter::detail::KernelTable* torouter_kernels_baseline();
#ifdef TOROUTER_HAVE_KERNELS_X86_64_V3
extern "C" const torouter::detail::KernelTable* torouter_kernels_x86_64_v3();
#endif
#ifdef TOROUTER_HAVE_KERNELS_X86_64_V4
extern "C" const torouter::detail::KernelTable* torouter_kernels_x86_64_v4();
#endif

TOROUTER_BEGIN_NAMESPACE
namespace detail {
namespace {

#ifdef TOROUTER_READS_CPUID
bool has_bits(unsigned value, unsigned bits) { return (value & bits) == bits; }

// The x86-64 micro-architecture levels of the psABI, as the CPU and the
// operating system (which must save the wider registers: XCR0) offer them.
CpuLevel read_cpu_level() {
  unsigned a = 0, b = 0, c = 0, d = 0;
  if (__get_cpuid(1, &a, &b, &c, &d) == 0) return CpuLevel::baseline;
  const unsigned leaf1_c = c;
  constexpr unsigned kFma = 1u << 12, kMovbe = 1u << 22, kOsxsave = 1u << 27, kAvx = 1u << 28,
                     kF16c = 1u << 29;
  if (!has_bits(leaf1_c, kFma | kMovbe | kOsxsave | kAvx | kF16c)) return CpuLevel::baseline;
  unsigned xcr0_low = 0, xcr0_high = 0;
  __asm__("xgetbv" : "=a"(xcr0_low), "=d"(xcr0_high) : "c"(0));
  constexpr unsigned kSseAvxState = 0x6, kAvx512State = 0xe0;
  if (!has_bits(xcr0_low, kSseAvxState)) return CpuLevel::baseline;
  if (__get_cpuid_count(7, 0, &a, &b, &c, &d) == 0) return CpuLevel::baseline;
  const unsigned leaf7_b = b;
  constexpr unsigned kBmi1 = 1u << 3, kAvx2 = 1u << 5, kBmi2 = 1u << 8;
  if (!has_bits(leaf7_b, kBmi1 | kAvx2 | kBmi2)) return CpuLevel::baseline;
  if (__get_cpuid(0x80000001u, &a, &b, &c, &d) == 0 || !has_bits(c, 1u << 5 /* LZCNT */)) {
    return CpuLevel::baseline;
  }
  constexpr unsigned kAvx512 = (1u << 16) | (1u << 17) | (1u << 28) | (1u << 30) | (1u << 31);
  if (has_bits(leaf7_b, kAvx512) && has_bits(xcr0_low, kAvx512State)) return CpuLevel::x86_64_v4;
  return CpuLevel::x86_64_v3;
}
#else
CpuLevel read_cpu_level() { return CpuLevel::baseline; }
#endif

const KernelTable* compiled_kernels(CpuLevel level) {
  switch (level) {
    case CpuLevel::baseline:
      return torouter_kernels_baseline();
#ifdef TOROUTER_HAVE_KERNELS_X86_64_V3
    case CpuLevel::x86_64_v3:
      return torouter_kernels_x86_64_v3();
#endif
#ifdef TOROUTER_HAVE_KERNELS_X86_64_V4
    case CpuLevel::x86_64_v4:
      return torouter_kernels_x86_64_v4();
#endif
    default:
      return nullptr;
  }
}

constexpr CpuLevel kLevels[] = {CpuLevel::baseline, CpuLevel::x86_64_v3, CpuLevel::x86_64_v4};

// TOROUTER_CPU_LEVEL, when set: the highest level to run (tests and
// benchmarks run the lower ones on a CPU that has more).
CpuLevel requested_ceiling() {
  const char* text = std::getenv("TOROUTER_CPU_LEVEL");
  if (text == nullptr || *text == '\0') return CpuLevel::x86_64_v4;
  for (const CpuLevel level : kLevels) {
    if (cpu_level_name(level) == text) return level;
  }
  throw Error(std::string("TOROUTER_CPU_LEVEL: expected x86-64, x86-64-v3 or x86-64-v4, got \"") +
              text + "\"");
}

const KernelTable& choose_kernels() {
  const CpuLevel ceiling = std::min(cpu_level(), requested_ceiling());
  const KernelTable* chosen = compiled_kernels(CpuLevel::baseline);
  for (const CpuLevel level : kLevels) {
    const KernelTable* table = compiled_kernels(level);
    if (level <= ceiling && table != nullptr) chosen = table;
  }
  if (!(chosen->layout == compiled_kernels(CpuLevel::baseline)->layout)) {
    // A build fault (an Eigen alignment that differs between the copies),
    // never a user's: refuse rather than read objects of another layout.
    throw std::logic_error(std::string("torouter: the ") + chosen->name +
                           " kernels were built with another object layout than the library");
  }
  return *chosen;
}

}  // namespace

std::string_view cpu_level_name(CpuLevel level) {
  switch (level) {
    case CpuLevel::x86_64_v3:
      return "x86-64-v3";
    case CpuLevel::x86_64_v4:
      return "x86-64-v4";
    case CpuLevel::baseline:
      break;
  }
  return "x86-64";
}

CpuLevel cpu_level() {
  static const CpuLevel level = read_cpu_level();
  return level;
}

const KernelTable& kernels() {
  static const KernelTable& chosen = choose_kernels();
  return chosen;
}

const KernelTable* kernels_for(CpuLevel level) {
  return level <= cpu_level() ? compiled_kernels(level) : nullptr;
}

}  // namespace detail

std::string_view kernel_level() { return detail::kernels().name; }
TOROUTER_END_NAMESPACE
