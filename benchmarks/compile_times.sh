#!/usr/bin/env bash
# Times every translation unit of a fresh build (the figures of
# docs/TESTING.md's "Where the compile time goes"): configures BUILD_DIR
# with this script as the compiler launcher, builds everything on all
# cores, and prints the total CPU seconds and the slowest units.
#
#   benchmarks/compile_times.sh                 # Release, g++
#   CXX=clang++-14 CXXFLAGS="-fsanitize=address,undefined" \
#     benchmarks/compile_times.sh build-times-asan RelWithDebInfo
#   # CI's ASan tree (scripts/configure-asan): further arguments go to cmake
#   CXX=clang++-14 CXXFLAGS="-fsanitize=fuzzer-no-link,address,undefined \
#     -fno-sanitize-recover=all -fno-omit-frame-pointer" \
#     benchmarks/compile_times.sh build-times-asan RelWithDebInfo \
#     -DCMAKE_CXX_FLAGS_RELWITHDEBINFO="-O2 -gline-tables-only -DNDEBUG" \
#     -DTOROUTER_BUILD_BENCHMARKS=OFF -DTOROUTER_BUILD_FUZZERS=ON
set -euo pipefail
if [ "${1:-}" = --time-one ]; then  # launcher mode: time one compiler call
  shift
  log="$1"
  shift
  start=$(date +%s.%N)
  status=0
  "$@" || status=$?
  source=""
  for arg in "$@"; do case "$arg" in *.cpp) source="$arg" ;; esac; done
  echo "$(echo "$(date +%s.%N) - $start" | bc) $source" >>"$log"
  exit "$status"
fi
cd "$(dirname "$0")/.."
build_dir="${1:-build-times}"
build_type="${2:-Release}"
shift $(($# < 2 ? $# : 2))
rm -rf "$build_dir"
log="$(realpath -m "$build_dir")/compile_times.log"
cmake -S . -B "$build_dir" -DCMAKE_BUILD_TYPE="$build_type" \
  -DCMAKE_CXX_COMPILER_LAUNCHER="$PWD/benchmarks/compile_times.sh;--time-one;$log" "$@" >/dev/null
start=$SECONDS
cmake --build "$build_dir" -j"$(nproc)" >/dev/null
echo "wall: $((SECONDS - start)) s"
awk '{ total += $1 } END { printf "CPU: %.0f s in %d units\n", total, NR }' "$log"
sort -rn "$log" | head -15
