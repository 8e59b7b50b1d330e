# torouter_set_warnings(target): the house warning set, as errors when
# TOROUTER_WARNINGS_AS_ERRORS is ON (scripts/test and CI turn it on).
function(torouter_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(TOROUTER_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
  if(TOROUTER_MARCH)
    # g++ 12 warns inside its own AVX-512 intrinsics (_mm512_undefined_ps)
    # when Eigen's packing uses them: a false positive in the system header.
    target_compile_options(${target} PRIVATE $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
  endif()
endfunction()
