#!/usr/bin/env python3
"""torouter-server's instructions per stream or per request, counted by
callgrind, and the share of them spent routing (Router::route_pooled and
what it calls).

    benchmarks/server_callgrind.py stream    # 200 streams opened over 1 s
    benchmarks/server_callgrind.py request   # wrk, 4 connections, 10 s
    benchmarks/server_callgrind.py stream --server OTHER/bin/torouter-server
    benchmarks/server_callgrind.py request --model M.tormodel  # another router

The stand-in, config and requests are those of server_concurrency.py
("stream": 20 pieces 100 ms apart) and server_load.sh ("request": an
instant answer). The server runs under `valgrind --tool=callgrind
--instr-atstart=no`; counting is switched on after a warm-up (32 streams,
or 2 s of wrk) and off before the server stops, so loading the model and
freeing it are not counted. Counts are of user-space instructions: the
kernel's work, most of the server's CPU time, is not in them. Needs
valgrind and, for "request", wrk (`scripts/setup benchmarks`). Not run by
CI.
"""
import argparse
import json
import os
import re
import subprocess
import sys
import tempfile

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import server_concurrency as sc  # noqa: E402

LOAD_BODY = ('{"model":"router","messages":[{"role":"system","content":"You are a helpful '
             'assistant."},{"role":"user","content":"Write a Python function that returns the '
             'n-th Fibonacci number, and explain its time complexity."}]}')


def streams(build, port, work, count):
    """Opens `count` streams over 1 s; returns how many were answered."""
    request = os.path.join(work, "request.http")
    with open(request, "wb") as f:
        f.write(sc.request_bytes(True))
    out = subprocess.run([os.path.join(build, "bin/stream_burst"), "--port", str(port),
                          "--count", str(count), "--request", request, "--expect", "[DONE]",
                          "--timeout", "300", "--ramp", "1"], capture_output=True, check=True)
    return sum(1 for t in json.loads(out.stdout)["seconds"] if t is not None)


def requests(port, work, seconds):
    """wrk with one thread and 4 connections; returns the requests answered."""
    script = os.path.join(work, "post.lua")
    with open(script, "w") as f:
        f.write('wrk.method = "POST"\nwrk.headers["Content-Type"] = "application/json"\n'
                f"wrk.body = '{LOAD_BODY}'\n")
    out = subprocess.run(["wrk", "-t1", "-c4", f"-d{seconds}s", "-s", script,
                          f"http://127.0.0.1:{port}/v1/chat/completions"],
                         capture_output=True, text=True, check=True).stdout
    return int(re.search(r"(\d+) requests in", out).group(1))


def counts(callgrind_out):
    """Total instructions and those under Router::route_pooled."""
    text = subprocess.run(["callgrind_annotate", "--inclusive=yes", callgrind_out],
                          capture_output=True, text=True, check=True).stdout
    total = int(re.search(r"([\d,]+) \([^)]*\)\s+PROGRAM TOTALS", text).group(1).replace(",", ""))
    routing = re.search(r"([\d,]+) \([^)]*\)\s+\S*Router::route_pooled\(", text)
    return total, int(routing.group(1).replace(",", "")) if routing else 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("mode", choices=["stream", "request"])
    parser.add_argument("--build", default=os.path.join(sc.ROOT, "build"))
    parser.add_argument("--server", help="the torouter-server to count (default: the build's)")
    parser.add_argument("--model", help="a model file over the default router's experts, "
                        "loaded instead of the default router (an older server may not read "
                        "the default)")
    parser.add_argument("--streams", type=int, default=200)
    parser.add_argument("--seconds", type=int, default=10)
    args = parser.parse_args()
    server = args.server or os.path.join(args.build, "bin/torouter-server")
    work = tempfile.mkdtemp(prefix="torouter-callgrind-")
    stand_in_args = ["--chunks", "20", "--chunk-gap-ms", "100"] if args.mode == "stream" else []
    stand_in, stand_in_port = sc.start(
        [os.path.join(args.build, "bin/torouter-stand-in"), "--port", "0", "--threads", "1"]
        + stand_in_args, os.path.join(work, "stand_in.log"))
    config = os.path.join(work, "config.json")
    sc.write_config(config, stand_in_port, 64, 0, model=args.model)
    out = os.path.join(work, "callgrind.out")
    proc, port = sc.start(["valgrind", "--tool=callgrind", "--instr-atstart=no",
                           f"--callgrind-out-file={out}", server, "--config", config],
                          os.path.join(work, "server.log"))
    try:
        if args.mode == "stream":
            streams(args.build, port, work, 32)
        else:
            requests(port, work, 2)
        subprocess.run(["callgrind_control", "-i", "on", str(proc.pid)], check=True,
                       capture_output=True)
        if args.mode == "stream":
            done = streams(args.build, port, work, args.streams)
        else:
            done = requests(port, work, args.seconds)
        subprocess.run(["callgrind_control", "-i", "off", str(proc.pid)], check=True,
                       capture_output=True)
    finally:
        proc.terminate()
        proc.wait()
        stand_in.terminate()
        stand_in.wait()
    total, routing = counts(out)
    unit = "stream" if args.mode == "stream" else "request"
    print(f"callgrind's output: {out}")
    print(f"{done} {unit}s answered; {total / done:,.0f} instructions per {unit}, "
          f"{routing / done:,.0f} of them routing ({100 * routing / total:.0f}%)")


if __name__ == "__main__":
    main()
