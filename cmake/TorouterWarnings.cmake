# torouter_set_warnings(target): the house warning set, as errors when
# TOROUTER_WARNINGS_AS_ERRORS is ON (scripts/test and CI turn it on).
function(torouter_set_warnings target)
  target_compile_options(${target} PRIVATE -Wall -Wextra -Wpedantic)
  if(TOROUTER_WARNINGS_AS_ERRORS)
    target_compile_options(${target} PRIVATE -Werror)
  endif()
endfunction()
