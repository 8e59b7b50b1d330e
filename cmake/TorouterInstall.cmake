# Install rules: headers, the library, and a relocatable package config with
# a version file, so `find_package(torouter)` works from any prefix.
include(GNUInstallDirs)
include(CMakePackageConfigHelpers)

set(TOROUTER_CMAKE_DIR "${CMAKE_INSTALL_LIBDIR}/cmake/torouter")

install(TARGETS torouter EXPORT torouterTargets
        ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR}
        LIBRARY DESTINATION ${CMAKE_INSTALL_LIBDIR}
        RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR}
        INCLUDES DESTINATION ${CMAKE_INSTALL_INCLUDEDIR})
install(EXPORT torouterTargets NAMESPACE torouter::
        DESTINATION ${TOROUTER_CMAKE_DIR})

# torouter::openai and torouter-server, when Boost and OpenSSL were found
# (src/openai, server). The transport has an export set of its own,
# loaded only for a consumer that asks for the `openai` component, so one
# that does not needs neither.
# The headers, less those of the components not built.
set(_torouter_header_excludes "")
if(NOT TARGET torouter_openai)
  list(APPEND _torouter_header_excludes PATTERN "openai" EXCLUDE)
endif()
if(NOT TARGET torouter_redis)
  list(APPEND _torouter_header_excludes PATTERN "redis" EXCLUDE)
endif()
install(DIRECTORY "${PROJECT_SOURCE_DIR}/include/torouter"
        DESTINATION ${CMAKE_INSTALL_INCLUDEDIR} ${_torouter_header_excludes})

if(TARGET torouter_openai)
  install(TARGETS torouter_openai EXPORT torouterOpenaiTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(EXPORT torouterOpenaiTargets NAMESPACE torouter::
          DESTINATION ${TOROUTER_CMAKE_DIR})
  if(TARGET torouter_server)
    install(TARGETS torouter_server RUNTIME DESTINATION ${CMAKE_INSTALL_BINDIR})
  endif()
endif()

# torouter::redis, when hiredis was found (src/redis): an export set of its
# own, loaded only for a consumer that asks for the `redis` component.
if(TARGET torouter_redis)
  install(TARGETS torouter_redis EXPORT torouterRedisTargets
          ARCHIVE DESTINATION ${CMAKE_INSTALL_LIBDIR})
  install(EXPORT torouterRedisTargets NAMESPACE torouter::
          DESTINATION ${TOROUTER_CMAKE_DIR})
endif()

configure_package_config_file(
  "${PROJECT_SOURCE_DIR}/cmake/torouterConfig.cmake.in"
  "${PROJECT_BINARY_DIR}/torouterConfig.cmake"
  INSTALL_DESTINATION ${TOROUTER_CMAKE_DIR})
write_basic_package_version_file(
  "${PROJECT_BINARY_DIR}/torouterConfigVersion.cmake"
  COMPATIBILITY SameMinorVersion)
install(FILES "${PROJECT_BINARY_DIR}/torouterConfig.cmake"
              "${PROJECT_BINARY_DIR}/torouterConfigVersion.cmake"
        DESTINATION ${TOROUTER_CMAKE_DIR})
