# torouter_add_cpu_levels(target source): compiles `source` (the kernels,
# src/kernels/level_kernels.cpp) into `target` once per CPU level, so that
# one build runs the best code the CPU offers (src/kernels/kernel_table.cpp
# picks it with cpuid when the library starts).
#
# The baseline copy is an ordinary source of the target. Each higher level
# is compiled with its own -march into an object whose every symbol but its
# entry point is then made local (objcopy), COMDAT groups removed: otherwise
# the linker would keep one copy of each Eigen function the levels share by
# name, and AVX2 code could run for a caller on a CPU without it, or SSE2
# code for the AVX2 kernels. Higher levels need x86-64, an ELF toolchain and
# g++ or clang; elsewhere the baseline alone is built.
#
# TOROUTER_CPU_LEVELS lists the higher levels to build (default: both);
# set it empty to build the baseline alone.
set(TOROUTER_CPU_LEVELS "x86-64-v3;x86-64-v4" CACHE STRING
    "CPU levels compiled beside the x86-64 baseline and chosen at run time (x86-64-v3, x86-64-v4)")

function(torouter_add_cpu_levels target source)
  target_sources(${target} PRIVATE ${source})

  if(NOT CMAKE_SYSTEM_PROCESSOR MATCHES "^(x86_64|AMD64|amd64)$" OR APPLE OR WIN32
     OR NOT CMAKE_CXX_COMPILER_ID MATCHES "^(GNU|Clang)$" OR NOT CMAKE_OBJCOPY)
    return()
  endif()
  include(CheckCXXCompilerFlag)
  foreach(level IN LISTS TOROUTER_CPU_LEVELS)
    if(NOT level MATCHES "^x86-64-v[34]$")
      message(FATAL_ERROR "TOROUTER_CPU_LEVELS: unknown level \"${level}\" (x86-64-v3, x86-64-v4)")
    endif()
    string(REPLACE "-" "_" id "${level}")
    string(TOUPPER "${id}" ID)
    check_cxx_compiler_flag(-march=${level} TOROUTER_COMPILER_TAKES_${id})
    if(NOT TOROUTER_COMPILER_TAKES_${id})
      continue()
    endif()
    set(objects torouter_kernels_${id})
    add_library(${objects} OBJECT ${source})
    set_target_properties(${objects} PROPERTIES POSITION_INDEPENDENT_CODE ON CXX_EXTENSIONS OFF
                                                INTERPROCEDURAL_OPTIMIZATION OFF)
    target_compile_features(${objects} PRIVATE cxx_std_17)
    target_include_directories(${objects} PRIVATE "${PROJECT_SOURCE_DIR}/include"
                                                  "${PROJECT_SOURCE_DIR}/src")
    target_link_libraries(${objects} PRIVATE Eigen3::Eigen)
    # objcopy needs machine code, not LTO bytecode; and g++ would make the
    # static locals of inline functions "unique" symbols, which stay global.
    # Eigen may assume no more alignment than the baseline's (16 bytes) of
    # what it is given, since the library allocates it; its own buffers are
    # aligned for the level all the same.
    target_compile_options(${objects} PRIVATE -march=${level} -fno-lto
                           $<$<CXX_COMPILER_ID:GNU>:-fno-gnu-unique>
                           $<$<CXX_COMPILER_ID:GNU>:-Wno-maybe-uninitialized>)
    target_compile_definitions(${objects} PRIVATE
      EIGEN_MAX_ALIGN_BYTES=16 TOROUTER_KERNEL_LEVEL=${id} TOROUTER_KERNEL_LEVEL_NAME="${level}"
      TOROUTER_KERNEL_ENTRY=torouter_kernels_${id})
    torouter_set_warnings(${objects})

    set(private "${CMAKE_CURRENT_BINARY_DIR}/torouter_kernels_${id}${CMAKE_CXX_OUTPUT_EXTENSION}")
    add_custom_command(OUTPUT "${private}"
      COMMAND "${CMAKE_OBJCOPY}" --keep-global-symbol=torouter_kernels_${id}
              --remove-section=.group "$<TARGET_OBJECTS:${objects}>" "${private}"
      DEPENDS ${objects} "$<TARGET_OBJECTS:${objects}>"
      COMMENT "Making the ${level} kernels' symbols private"
      VERBATIM)
    target_sources(${target} PRIVATE "${private}")
    set_source_files_properties("${private}" PROPERTIES EXTERNAL_OBJECT TRUE GENERATED TRUE)
    target_compile_definitions(${target} PRIVATE TOROUTER_HAVE_KERNELS_${ID})
  endforeach()
endfunction()
