#!/usr/bin/env bash
# Speed of torouter's routers on one thread, side by side with the peers
# (issue 5): Router::route p50/p99 per scorer and prompt length, batch
# scoring throughput, training time and memory, heap allocations per warm
# route, the scikit-learn and PyTorch peers, and the Eigen GEMM ceiling.
# Writes $BUILD/speed/results.json and results.md (docs/BENCHMARKS.md quotes
# them). The routes and the GEMM ceiling are measured twice in one build:
# with the kernels at the CPU level the library picks (src/kernels/), and
# capped at the x86-64 baseline (SSE2; TOROUTER_CPU_LEVEL=x86-64), which is
# what every CPU ran before the kernels were compiled per level.
#
#   benchmarks/speed.sh                 # about 20 minutes on 2 shared cores
#   TOROUTER_SPEED_TRAIN=quick benchmarks/speed.sh   # 2-thread training only
#
# Environment: TOROUTER_DATA (default ../shared/data), TOROUTER_BUILD_DIR
# (default build), TOROUTER_SPEED_CPU (the core timings are pinned to,
# default 1), TOROUTER_SPEED_TRAIN (full | quick | none: none reuses the
# models and timings already in $BUILD/speed), TOROUTER_SPEED_ROUNDS (3).
# Needs Debian's python3-sklearn and python3-torch for the peers
# (`scripts/setup peers`).
set -euo pipefail
cd "$(dirname "$0")/.."
data_root="${TOROUTER_DATA:-../shared/data}"
build="${TOROUTER_BUILD_DIR:-build}"
cpu="${TOROUTER_SPEED_CPU:-1}"
train_mode="${TOROUTER_SPEED_TRAIN:-full}"
rounds="${TOROUTER_SPEED_ROUNDS:-3}"
[ -d "$data_root" ] || { echo "benchmarks/speed.sh: no datasets at $data_root (set TOROUTER_DATA)" >&2; exit 1; }
out="$build/speed"
mkdir -p "$out/models" "$out/logs"
pin=()
if command -v taskset >/dev/null && taskset -c "$cpu" true 2>/dev/null; then pin=(taskset -c "$cpu"); fi
py=/usr/bin/python3

echo "== build ($build, Release)"
scripts/setup
cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release -DTOROUTER_WARNINGS_AS_ERRORS=ON >/dev/null
cmake --build "$build" -j"$(nproc)" --target torouter_cli speed_bench gemm_bench >/dev/null
bin="$build/bin"

# The machine, and how busy it is (the figures are medians on a shared host).
{
  echo "{\"nproc\": $(nproc), \"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\","
  echo " \"kernel\": \"$(uname -r)\", \"compiler\": \"$(c++ --version | head -1)\","
  echo " \"load_average_start\": \"$(cut -d' ' -f1-3 /proc/loadavg)\", \"pinned_cpu\": \"${pin[*]:-none}\","
  echo " \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\", \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\"}"
} > "$out/machine.json"

# Training: name | spec | options. The same settings as benchmarks/quality.sh.
scorers=(
  "gbt|gbt|"
  "mlp|mlp:64,buckets=16384|--loss soft --temperature 0.1"
  "mlp-int8|mlp:64,buckets=16384,table=int8|--loss soft --temperature 0.1"
  "knn|knn:40|"
  "tlite|tlite|--loss soft --temperature 0.1"
)
train() {  # dataset name spec threads options...
  local dataset=$1 name=$2 spec=$3 threads=$4; shift 4
  local model="$out/models/$dataset-$name-t$threads.tormodel"
  local runner=()
  [ "$threads" = 1 ] && runner=("${pin[@]}")
  echo "== train $name on $dataset, $threads thread(s)"
  /usr/bin/time -v "${runner[@]}" "$bin/torouter" train --data "$data_root/$dataset" --scorer "$spec" \
    "$@" --seed 1 --threads "$threads" --out "$model" \
    >"$out/logs/$dataset-$name-t$threads.out" 2>"$out/logs/$dataset-$name-t$threads.time"
  local wall rss
  wall=$(sed -n 's/.*Elapsed (wall clock) time (h:mm:ss or m:ss): //p' "$out/logs/$dataset-$name-t$threads.time")
  rss=$(sed -n 's/.*Maximum resident set size (kbytes): //p' "$out/logs/$dataset-$name-t$threads.time")
  printf '%s\t%s\t%s\t%s\t%s\n' "$dataset" "$name" "$threads" "$wall" "$rss" >> "$out/training.tsv"
}
if [ "$train_mode" != none ]; then
  : > "$out/training.tsv"
  for dataset in llmrouter14 routerbench3; do
    for entry in "${scorers[@]}"; do
      IFS='|' read -r name spec options <<<"$entry"
      for threads in 2 1; do
        [ "$train_mode" = quick ] && [ "$threads" = 1 ] && [ "$name" = tlite ] && continue
        # shellcheck disable=SC2086
        train "$dataset" "$name" "$spec" "$threads" $options
      done
    done
  done
  # Transformer-lites reading 128 tokens, for the 128-token route target: the
  # default shape, and the earlier default (d = 128, ff = 512) beside it.
  # Weights do not change their speed, so two epochs suffice.
  for entry in "tlite128|tlite:64,tokens=128" "tlite-d128|tlite:128,ff=512,tokens=128"; do
    IFS='|' read -r name spec <<<"$entry"
    echo "== train $name ($spec, 2 epochs) for routing"
    "$bin/torouter" train --data "$data_root/llmrouter14" --scorer "$spec" --loss soft \
      --temperature 0.1 --epochs 2 --seed 1 --threads 2 --out "$out/models/$name.tormodel" \
      >"$out/logs/$name.out" 2>&1
  done
fi

models=(default="examples/default_router/llmrouter14.tormodel" gbt="$out/models/llmrouter14-gbt-t2.tormodel"
        mlp="$out/models/llmrouter14-mlp-t2.tormodel" mlp-int8="$out/models/llmrouter14-mlp-int8-t2.tormodel"
        knn="$out/models/llmrouter14-knn-t2.tormodel" tlite="$out/models/llmrouter14-tlite-t2.tormodel"
        tlite128="$out/models/tlite128.tormodel" tlite-d128="$out/models/tlite-d128.tormodel")
model_args=()
for m in "${models[@]}"; do model_args+=(--model "$m"); done

echo "== route latency, batch throughput, allocations (pinned: ${pin[*]:-no})"
"${pin[@]}" "$bin/speed_bench" route --data "$data_root" "${model_args[@]}" --rounds "$rounds" \
  --json "$out/route.json" --prompts-out "$out/prompts.jsonl"
echo "== memory of a loaded router"
for m in "${models[@]}"; do
  "$bin/speed_bench" rss --model "${m#*=}" --json "$out/rss-${m%%=*}.json"
done
echo "== GEMM ceiling"
"${pin[@]}" "$bin/gemm_bench" 1024 7 > "$out/gemm.json"

echo "== the same at the x86-64 baseline (TOROUTER_CPU_LEVEL=x86-64)"
low_models=()
for m in "${models[@]}"; do [ "${m%%=*}" = knn ] || low_models+=(--model "$m"); done
TOROUTER_CPU_LEVEL=x86-64 "${pin[@]}" "$bin/speed_bench" route --data "$data_root" "${low_models[@]}" \
  --rounds "$rounds" --json "$out/route_baseline.json"
TOROUTER_CPU_LEVEL=x86-64 "${pin[@]}" "$bin/gemm_bench" 1024 7 > "$out/gemm_baseline.json"
echo "== scikit-learn peers"
"${pin[@]}" "$py" benchmarks/sklearn_speed.py --data "$data_root/llmrouter14" \
  --prompts "$out/prompts.jsonl" --rounds "$rounds" --out "$out/sklearn.json"
echo "== PyTorch peer"
"${pin[@]}" "$py" benchmarks/torch_peer.py --prompts "$out/prompts.jsonl" \
  --tlite tlite=64,256,64 tlite128=64,256,128 tlite-d128=128,512,128 \
  --experts "$(grep -c '"input_usd_per_mtok"' "$data_root/llmrouter14/experts.json" || echo 9)" \
  --out "$out/torch.json"
echo "{\"load_average_end\": \"$(cut -d' ' -f1-3 /proc/loadavg)\"}" > "$out/machine_end.json"

"$py" benchmarks/speed_report.py "$out"
echo "wrote $out/results.json and $out/results.md"
