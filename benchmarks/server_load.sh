#!/usr/bin/env bash
# Load run of torouter-server with wrk, on loopback only: requests per second
# and the latency the router adds (p50, p99) at 1, 16 and 64 connections.
# The server routes with the default router (nine experts) in front of a
# stand-in upstream that answers at once; the stand-in alone, measured in the
# same run, is the baseline. "Added" is server minus baseline. The server's
# CPU time per request (user and system) is read from /proc alongside.
#
#   benchmarks/server_load.sh                 # 10 s per run, build/ programs
#   DURATION=5 BUILD_DIR=build-server benchmarks/server_load.sh
#   SERVER_CPUS=0 LOAD_CPUS=1 benchmarks/server_load.sh
#   SERVER_BIN=OLD/build/bin/torouter-server MODEL_DIR=OLD/examples/default_router \
#     benchmarks/server_load.sh    # another server (with its own default router), same stand-in
#
# By default the server, wrk and the stand-in share every core. SERVER_CPUS
# and LOAD_CPUS (taskset lists) give the server cores of its own, apart from
# the load generator and the stand-in, as a service would have them.
# IO_THREADS sets the server's listen.io_threads (unset: the server's default, one per core
# it may run on).
#
# Needs wrk (Debian: apt-get install wrk; installed here when run as root).
# Not run by CI.
set -euo pipefail
cd "$(dirname "$0")/.."
root=$(pwd)
build=${BUILD_DIR:-build}
duration=${DURATION:-10}
connections=${CONNECTIONS:-"1 16 64"}
server_pin=()
load_pin=()
if [ -n "${SERVER_CPUS:-}" ]; then server_pin=(taskset -c "$SERVER_CPUS"); fi
if [ -n "${LOAD_CPUS:-}" ]; then load_pin=(taskset -c "$LOAD_CPUS"); fi
server_bin="${SERVER_BIN:-$build/bin/torouter-server}"
stand_in_bin="$build/bin/torouter-stand-in"

if ! command -v wrk >/dev/null; then
  if [ "$(id -u)" -eq 0 ]; then
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq wrk >/dev/null
  else
    echo "server_load.sh: wrk is missing; run: sudo apt-get install -y wrk" >&2
    exit 1
  fi
fi
for b in "$server_bin" "$stand_in_bin"; do
  [ -x "$b" ] || { echo "server_load.sh: $b not built (needs libboost1.74-dev and libssl-dev)" >&2; exit 1; }
done

work=$(mktemp -d)
pids=()
cleanup() {
  for p in "${pids[@]}"; do kill "$p" 2>/dev/null || true; done
  for p in "${pids[@]}"; do wait "$p" 2>/dev/null || true; done
  rm -rf "$work"
}
trap cleanup EXIT

# Waits for a program's "listening on http://127.0.0.1:PORT" line; prints PORT.
wait_port() {
  local log=$1
  for _ in $(seq 1 200); do
    if grep -q "listening on" "$log" 2>/dev/null; then
      sed -n 's/.*listening on http:\/\/127\.0\.0\.1:\([0-9]*\).*/\1/p' "$log" | head -1
      return 0
    fi
    sleep 0.05
  done
  echo "server_load.sh: no listening line in $log" >&2
  cat "$log" >&2
  return 1
}

"${load_pin[@]}" "$stand_in_bin" --port 0 --threads 1 >"$work/stand_in.log" 2>&1 &
pids+=($!)
upstream_port=$(wait_port "$work/stand_in.log")

model_dir=${MODEL_DIR:-$root/examples/default_router}
experts=$(sed -n 's/.*"name": "\([^"]*\)".*/\1/p' "$model_dir/experts.json")
{
  # io_threads only when asked for: servers before it (SERVER_BIN) refuse the field.
  echo "{\"listen\": {\"host\": \"127.0.0.1\", \"port\": 0, \"threads\": 160${IO_THREADS:+, \"io_threads\": $IO_THREADS}},"
  echo " \"router_model\": \"$model_dir/llmrouter14.tormodel\","
  echo " \"experts_file\": \"$model_dir/experts.json\","
  echo ' "policy": {"lambda_cost": 100},'
  echo ' "experts": ['
  sep=""
  for e in $experts; do
    echo "  $sep{\"name\": \"$e\", \"base_url\": \"http://127.0.0.1:$upstream_port/v1\", \"max_concurrent_calls\": 0}"
    sep=","
  done
  echo ' ]}'
} >"$work/config.json"
"${server_pin[@]}" "$server_bin" --config "$work/config.json" >"$work/server.log" 2>&1 &
server_pid=$!
pids+=("$server_pid")
server_port=$(wait_port "$work/server.log")

# The server's CPU time so far (user and system, in clock ticks), from /proc:
# per request it is the figure the latency under load follows, and it holds
# steadier than latency on a shared machine.
server_ticks() { awk '{ print $14, $15 }' "/proc/$server_pid/stat"; }

# One chat request, the same every time; done() prints the figures in us.
cat >"$work/post.lua" <<'LUA'
wrk.method = "POST"
wrk.headers["Content-Type"] = "application/json"
wrk.body = '{"model":"router","messages":[{"role":"system","content":"You are a helpful assistant."},' ..
           '{"role":"user","content":"Write a Python function that returns the n-th Fibonacci number, ' ..
           'and explain its time complexity."}]}'
done = function(summary, latency, requests)
  local e = summary.errors
  io.write(string.format("RESULT %d %.1f %d %d %d\n", summary.requests,
    summary.requests / (summary.duration / 1e6), latency:percentile(50), latency:percentile(99),
    e.connect + e.read + e.write + e.timeout + e.status))
end
LUA

run() {  # run PORT CONNECTIONS -> "requests rps p50_us p99_us errors"
  local threads=$(( $2 < 2 ? 1 : 2 ))
  "${load_pin[@]}" wrk -t"$threads" -c"$2" -d"${duration}s" --timeout 10s -s "$work/post.lua" \
      "http://127.0.0.1:$1/v1/chat/completions" | sed -n 's/^RESULT //p'
}

# Warm both (connections, the router's first routes).
wrk -t1 -c4 -d1s -s "$work/post.lua" "http://127.0.0.1:$server_port/v1/chat/completions" >/dev/null
wrk -t1 -c4 -d1s -s "$work/post.lua" "http://127.0.0.1:$upstream_port/v1/chat/completions" >/dev/null
warm=$(curl -s "http://127.0.0.1:$server_port/metrics" | sed -n 's/^torouter_http_responses_total{code="200"} //p')

echo "torouter-server load ($duration s per run, $(nproc) cores, loopback; latency in ms;" \
     "server on cores ${SERVER_CPUS:-all}, wrk and stand-in on ${LOAD_CPUS:-all})"
printf "%-5s | %-26s | %-26s | %-15s | %-19s | %s\n" "conns" "stand-in alone: req/s p50 p99" \
  "through torouter: req/s p50 p99" "added p50 p99" "server CPU us/req" "errors"
total=0
for c in $connections; do
  read -r bn brps bp50 bp99 berr <<<"$(run "$upstream_port" "$c")"
  read -r user0 system0 <<<"$(server_ticks)"
  read -r sn srps sp50 sp99 serr <<<"$(run "$server_port" "$c")"
  read -r user1 system1 <<<"$(server_ticks)"
  total=$((total + sn))
  awk -v c="$c" -v brps="$brps" -v bp50="$bp50" -v bp99="$bp99" -v srps="$srps" \
      -v sp50="$sp50" -v sp99="$sp99" -v berr="$berr" -v serr="$serr" -v n="$sn" \
      -v user_ticks=$((user1 - user0)) -v sys_ticks=$((system1 - system0)) -v hz="$(getconf CLK_TCK)" 'BEGIN {
    printf "%-5s | %9.0f %7.3f %7.3f | %9.0f %7.3f %7.3f | %7.3f %7.3f | %5.1f user %5.1f sys | %d / %d\n",
      c, brps, bp50/1000, bp99/1000, srps, sp50/1000, sp99/1000, (sp50-bp50)/1000,
      (sp99-bp99)/1000, user_ticks/hz/n*1e6, sys_ticks/hz/n*1e6, berr, serr }'
done
answered=$(curl -s "http://127.0.0.1:$server_port/metrics" | sed -n 's/^torouter_http_responses_total{code="200"} //p')
failures=$(curl -s "http://127.0.0.1:$server_port/metrics" |
  awk '/^torouter_expert_failures_total/ { s += $2 } END { print s + 0 }')
echo "wrk completed $total requests through torouter; the server answered $((answered - warm)) with 200" \
     "(some may be cut off at the end of a run); upstream failures: $failures"
# What the server held at its most (VmHWM) and holds now (VmRSS): what
# stays per request shows over a run longer than its timeouts.
awk '/^VmHWM/ { hwm = $2 } /^VmRSS/ { rss = $2 }
     END { printf "server memory: peak RSS %.1f MB, RSS at the end %.1f MB\n", hwm / 1024, rss / 1024 }' \
  "/proc/$server_pid/status"
