# Every dependency comes from Debian 12's packages (scripts/setup installs
# them); nothing is downloaded at build time.
find_package(Threads REQUIRED)
find_package(Eigen3 3.4 REQUIRED NO_MODULE)
find_package(simdjson REQUIRED)
find_package(fmt REQUIRED)
