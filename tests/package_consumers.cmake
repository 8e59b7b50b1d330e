# Installs torouter from the build tree into a temporary prefix, then builds
# and runs tests/consumer against it with find_package, and again with
# add_subdirectory of the source tree. Run by ctest (package_consumers).
foreach(var TOROUTER_SOURCE_DIR TOROUTER_BINARY_DIR WORK_DIR BUILD_TYPE)
  if(NOT DEFINED ${var})
    message(FATAL_ERROR "package_consumers.cmake needs -D${var}=...")
  endif()
endforeach()

function(run)
  execute_process(COMMAND ${ARGN} RESULT_VARIABLE result OUTPUT_VARIABLE out ERROR_VARIABLE out)
  if(NOT result EQUAL 0)
    message(FATAL_ERROR "failed (${result}): ${ARGN}\n${out}")
  endif()
  message(STATUS "ok: ${ARGN}")
endfunction()

file(REMOVE_RECURSE "${WORK_DIR}")
set(prefix "${WORK_DIR}/prefix")
run(${CMAKE_COMMAND} --install "${TOROUTER_BINARY_DIR}" --prefix "${prefix}")
foreach(file include/torouter/torouter.hpp lib/cmake/torouter/torouterConfig.cmake
             lib/cmake/torouter/torouterConfigVersion.cmake)
  if(NOT EXISTS "${prefix}/${file}")
    message(FATAL_ERROR "install did not write ${file}")
  endif()
endforeach()

set(consumer "${TOROUTER_SOURCE_DIR}/tests/consumer")
run(${CMAKE_COMMAND} -S "${consumer}" -B "${WORK_DIR}/package" -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DTOROUTER_CONSUMER_MODE=package "-DCMAKE_PREFIX_PATH=${prefix}")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/package")
run("${WORK_DIR}/package/consumer")

run(${CMAKE_COMMAND} -S "${consumer}" -B "${WORK_DIR}/subdirectory" -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DTOROUTER_CONSUMER_MODE=subdirectory "-DTOROUTER_SOURCE_DIR=${TOROUTER_SOURCE_DIR}")
run(${CMAKE_COMMAND} --build "${WORK_DIR}/subdirectory")
run("${WORK_DIR}/subdirectory/consumer")
