#!/usr/bin/env bash
# What the Redis state store adds to a call (issue 13): starts a
# redis-server on a free loopback port (no persistence), and runs
# state_store_bench against it beside the in-process store. Prints a
# Markdown table (docs/BENCHMARKS.md, "Shared state").
#
#   benchmarks/state_store.sh [--calls N] [--rounds R]
set -euo pipefail
cd "$(dirname "$0")/.."
scripts/build >/dev/null
build="${TOROUTER_BUILD_DIR:-build}"
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1", 0)); print(s.getsockname()[1])')
redis-server --port "$port" --bind 127.0.0.1 --save "" --appendonly no --loglevel warning >/dev/null &
redis=$!
trap 'kill $redis 2>/dev/null; wait $redis 2>/dev/null || true' EXIT
for _ in $(seq 100); do
  (exec 3<>"/dev/tcp/127.0.0.1/$port") 2>/dev/null && break
  sleep 0.05
done
"$build/bin/state_store_bench" --redis "redis://127.0.0.1:$port/0" "$@"
