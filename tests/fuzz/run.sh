#!/usr/bin/env bash
# Builds the libFuzzer targets with clang (ASan + UBSan) in build-asan/
# (scripts/configure-asan, shared with scripts/sanitize) and runs each for
# SECONDS (default 60), as many at once as there are cores, starting from
# its seed corpus in tests/fuzz/corpus/.
# New inputs go to build-asan/corpus/, never into the repository. Exits
# non-zero on any crash, leak or sanitizer report; the crashing input
# is left in build-asan/ (turn it into a regression seed).
#
#   tests/fuzz/run.sh 60                    # every target, 60 s each
#   tests/fuzz/run.sh 600 fuzz_model_file   # one target, 10 minutes
set -euo pipefail
cd "$(dirname "$0")/../.."
seconds="${1:-60}"
shift || true
targets=("$@")
[ ${#targets[@]} -gt 0 ] || targets=(fuzz_expert_registry fuzz_model_file fuzz_dataset_lines
                                     fuzz_featurizer fuzz_collect_prompts fuzz_server_request)
scripts/configure-asan  # the tree scripts/sanitize tests in: the library is built once
cmake --build build-asan -j"$(nproc)" --target "${targets[@]}"
# One target's run; prints its summary in one piece, since targets run side
# by side.
run_target() {
  local target="$1" corpus="build-asan/corpus/$1" log="build-asan/$1.log" status=0
  mkdir -p "$corpus"
  (cd build-asan && ASAN_OPTIONS=detect_leaks=1 UBSAN_OPTIONS=print_stacktrace=1 \
    "bin/$target" -max_total_time="$seconds" -timeout=10 -rss_limit_mb=4096 \
    -print_final_stats=1 "corpus/$target" "../tests/fuzz/corpus/$target") >"$log" 2>&1 || status=$?
  local summary
  summary="$(grep -E "(DONE|stat::number_of_executed_units|stat::peak_rss_mb)" "$log" | tail -3 || true)"
  if [ "$status" -ne 0 ]; then
    summary+=$'\n'"$(grep -E "ERROR|SUMMARY|Test unit written" "$log" | head -5)"
    summary+=$'\n'"$target failed (status $status); full output in $log"
  fi
  printf '== %s: %s s\n%s\n' "$target" "$seconds" "$summary"
  return "$status"
}

# As many targets at once as there are cores: each fuzzes on one thread, so
# every target still gets its SECONDS of a core.
failed=0
running=()
for target in "${targets[@]}"; do
  run_target "$target" &
  running+=($!)
  if [ ${#running[@]} -ge "$(nproc)" ]; then
    wait "${running[0]}" || failed=1
    running=("${running[@]:1}")
  fi
done
for pid in "${running[@]}"; do wait "$pid" || failed=1; done
exit "$failed"
