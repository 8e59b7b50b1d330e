#!/usr/bin/env bash
# The transformer-lite beside ONNX Runtime (issue 17), measured in one run on
# one core: the same network (seeded weights written by tlite_peer_bench,
# rebuilt in PyTorch and exported to ONNX, outputs checked against
# torouter's), timed one prompt at a time at 18, 64 and 128 tokens and on
# 1,024 llmrouter14 prompts, plus each side's 1024^3 float GEMM. torouter
# runs at the level it picks on this CPU and again at each lower level
# (TOROUTER_CPU_LEVEL); ONNX Runtime picks its own kernels.
#
#   benchmarks/onnx_peer.sh        # about 5 minutes; writes $BUILD/onnx_peer/results.md
#
# Needs node and npm (onnxruntime-node 1.30.0 is installed into
# $BUILD/onnx_peer with --ignore-scripts: its CPU library is inside the npm
# package; the install script only fetches GPU files), and Debian's
# python3-torch, python3-onnx and python3-numpy for the export: all of them
# come with `scripts/setup peers`.
# Environment: TOROUTER_DATA (default ../shared/data), TOROUTER_BUILD_DIR
# (default build), TOROUTER_SPEED_CPU (the core, default 1), ROUNDS (5).
set -euo pipefail
cd "$(dirname "$0")/.."
data_root="${TOROUTER_DATA:-../shared/data}"
build="${TOROUTER_BUILD_DIR:-build}"
cpu="${TOROUTER_SPEED_CPU:-1}"
rounds="${ROUNDS:-5}"
[ -d "$data_root/llmrouter14" ] || { echo "benchmarks/onnx_peer.sh: no llmrouter14 at $data_root (set TOROUTER_DATA)" >&2; exit 1; }
out="$build/onnx_peer"
mkdir -p "$out"
pin=()
if command -v taskset >/dev/null && taskset -c "$cpu" true 2>/dev/null; then pin=(taskset -c "$cpu"); fi

cmake -S . -B "$build" -DCMAKE_BUILD_TYPE=Release >/dev/null
cmake --build "$build" -j"$(nproc)" --target tlite_peer_bench >/dev/null
cp benchmarks/onnx_peer/package.json benchmarks/onnx_peer/package-lock.json "$out/"
if [ ! -d "$out/node_modules/onnxruntime-node" ]; then
  (cd "$out" && npm ci --ignore-scripts --no-audit --no-fund >/dev/null)
fi

shapes=(tlite=64,256,64 tlite128=64,256,128 tlite-d128=128,512,128)
names=()
for s in "${shapes[@]}"; do names+=("${s%%=*}"); done
shape_args=()
for s in "${shapes[@]}"; do shape_args+=(--shape "$s"); done

echo "== torouter, the level it picks"
"${pin[@]}" "$build/bin/tlite_peer_bench" --data "$data_root" --out "$out" --rounds "$rounds" \
  "${shape_args[@]}" --json "$out/torouter.json" >/dev/null
for level in x86-64 x86-64-v3; do
  echo "== torouter, TOROUTER_CPU_LEVEL=$level"
  TOROUTER_CPU_LEVEL=$level "${pin[@]}" "$build/bin/tlite_peer_bench" --data "$data_root" \
    --out "$out" --rounds "$rounds" "${shape_args[@]}" --json "$out/torouter-$level.json" >/dev/null
done

echo "== export to ONNX (PyTorch), outputs checked"
for name in "${names[@]}"; do
  /usr/bin/python3 benchmarks/onnx_peer/export_tlite.py --dir "$out" --shape "$name" | tee "$out/$name.check.json"
done

echo "== ONNX Runtime"
# Node looks for modules beside the script; the package is in $out.
NODE_PATH="$out/node_modules" "${pin[@]}" node benchmarks/onnx_peer/time_ort.js "$out" "$rounds" \
  "${names[@]}" >/dev/null

{
  echo "{\"cpu\": \"$(lscpu | sed -n 's/^Model name: *//p' | head -1)\", \"nproc\": $(nproc),"
  echo " \"pinned\": \"${pin[*]:-none}\", \"load_average\": \"$(cut -d' ' -f1-3 /proc/loadavg)\","
  echo " \"commit\": \"$(git rev-parse --short HEAD 2>/dev/null || echo unknown)\", \"date\": \"$(date -u +%Y-%m-%dT%H:%M:%SZ)\"}"
} > "$out/machine.json"
/usr/bin/python3 benchmarks/onnx_peer/report.py "$out" "${names[@]}" | tee "$out/results.md"
