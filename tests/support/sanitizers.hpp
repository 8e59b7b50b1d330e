// Whether the test program was built with a sanitizer whose allocator
// replaces the C library's (AddressSanitizer, ThreadSanitizer): memory
// figures (resident memory, what glibc's malloc holds) then say nothing of
// a normal build's. gcc defines __SANITIZE_*__; clang answers __has_feature.
#pragma once

#if defined(__SANITIZE_ADDRESS__)
#define TOROUTER_TEST_ASAN 1
#elif defined(__has_feature)
#if __has_feature(address_sanitizer)
#define TOROUTER_TEST_ASAN 1
#endif
#endif

#if defined(__SANITIZE_THREAD__)
#define TOROUTER_TEST_TSAN 1
#elif defined(__has_feature)
#if __has_feature(thread_sanitizer)
#define TOROUTER_TEST_TSAN 1
#endif
#endif

namespace torouter::testing {

#ifdef TOROUTER_TEST_ASAN
constexpr bool kAddressSanitizer = true;
#else
constexpr bool kAddressSanitizer = false;
#endif

}  // namespace torouter::testing
