# Installs torouter from the build tree into a temporary prefix, then builds
# and runs tests/consumer against it with find_package, and again with
# add_subdirectory of the source tree. Run by ctest (package_consumers).
# With -DWITH_OPENAI=ON (torouter::openai was built), the consumers also
# link torouter::openai, through the package's `openai` component, and the
# install must hold torouter-server. With -DWITH_REDIS=ON, the same for
# torouter::redis and its `redis` component.
# LAUNCHER (the build's compiler launcher, one program, may be empty) and
# WARNINGS_AS_ERRORS are handed on to the consumers' builds.
foreach(var TOROUTER_SOURCE_DIR TOROUTER_BINARY_DIR WORK_DIR BUILD_TYPE WITH_OPENAI WITH_REDIS
            LAUNCHER WARNINGS_AS_ERRORS)
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
set(expected include/torouter/torouter.hpp lib/cmake/torouter/torouterConfig.cmake
             lib/cmake/torouter/torouterConfigVersion.cmake)
if(WITH_OPENAI)
  list(APPEND expected include/torouter/openai/upstream.hpp
                       lib/cmake/torouter/torouterOpenaiTargets.cmake bin/torouter-server)
endif()
if(WITH_REDIS)
  list(APPEND expected include/torouter/redis/redis_store.hpp
                       lib/cmake/torouter/torouterRedisTargets.cmake)
endif()
foreach(file ${expected})
  if(NOT EXISTS "${prefix}/${file}")
    message(FATAL_ERROR "install did not write ${file}")
  endif()
endforeach()

set(consumer "${TOROUTER_SOURCE_DIR}/tests/consumer")
# Configured only: with a CPU level, the subproject must not hand it on.
run(${CMAKE_COMMAND} -S "${consumer}" -B "${WORK_DIR}/march" -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
    -DTOROUTER_CONSUMER_MODE=subdirectory -DTOROUTER_MARCH=x86-64-v3
    "-DTOROUTER_SOURCE_DIR=${TOROUTER_SOURCE_DIR}")
cmake_host_system_information(RESULT cores QUERY NUMBER_OF_LOGICAL_CORES)
foreach(mode package subdirectory)
  set(warnings "")
  if(mode STREQUAL "subdirectory")  # what builds torouter's own sources
    set(warnings -DTOROUTER_WARNINGS_AS_ERRORS=${WARNINGS_AS_ERRORS})
  endif()
  run(${CMAKE_COMMAND} -S "${consumer}" -B "${WORK_DIR}/${mode}" -DCMAKE_BUILD_TYPE=${BUILD_TYPE}
      -DTOROUTER_CONSUMER_MODE=${mode} -DTOROUTER_CONSUMER_WITH_OPENAI=${WITH_OPENAI}
      -DTOROUTER_CONSUMER_WITH_REDIS=${WITH_REDIS}
      "-DCMAKE_CXX_COMPILER_LAUNCHER=${LAUNCHER}" ${warnings}
      "-DCMAKE_PREFIX_PATH=${prefix}" "-DTOROUTER_SOURCE_DIR=${TOROUTER_SOURCE_DIR}")
  run(${CMAKE_COMMAND} --build "${WORK_DIR}/${mode}" --parallel ${cores})
  run("${WORK_DIR}/${mode}/consumer")
  if(WITH_OPENAI)
    run("${WORK_DIR}/${mode}/openai_consumer")
  endif()
  if(WITH_REDIS)
    run("${WORK_DIR}/${mode}/redis_consumer")
  endif()
endforeach()
