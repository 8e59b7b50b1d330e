#!/usr/bin/env python3
"""Router::route latency of two builds side by side, alternating.

The machines we measure on are shared, and their speed moves by a third or
more from one minute to the next, so two builds timed one after the other
can differ by more than the change between them. This runs each build's
`speed_bench route` in turn, several times (A, B, A, B, ...), pinned to one
core, and reports for every model and prompt length the median over the
runs of each build's p50, and the median of the paired ratios B / A (each
pair measured a few seconds apart).

  benchmarks/route_ab.py --a OLD/bin/speed_bench --b build/bin/speed_bench \\
      --model mlp=MODEL.tormodel [--model ...] [--runs 8] [--json out.json]
"""
import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile


def run_once(binary, models, data, rounds, cpu, out_path):
    command = [binary, "route", "--data", data, "--rounds", str(rounds), "--json", out_path]
    for model in models:
        command += ["--model", model]
    if shutil.which("taskset"):
        command = ["taskset", "-c", str(cpu)] + command
    subprocess.run(command, check=True, stdout=subprocess.DEVNULL)
    with open(out_path) as f:
        result = json.load(f)["models"]
    return {
        name: {
            "p50": {chars: r["p50"]["median"] for chars, r in m["route_us"].items()},
            "allocations": m["allocations_per_warm_route"],
        }
        for name, m in result.items()
    }


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--a", required=True, help="speed_bench of the build to compare against")
    parser.add_argument("--b", required=True, help="speed_bench of the build measured")
    parser.add_argument("--model", action="append", required=True, help="NAME=PATH, repeatable")
    parser.add_argument("--data", default=os.environ.get("TOROUTER_DATA", "../shared/data"))
    parser.add_argument("--runs", type=int, default=8, help="runs of each build (default 8)")
    parser.add_argument("--rounds", type=int, default=3, help="speed_bench rounds per run")
    parser.add_argument("--cpu", type=int, default=1, help="core to pin to (default 1)")
    parser.add_argument("--json", help="write every run's figures here")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"route_ab.py: no datasets at {args.data} (set TOROUTER_DATA or --data)")

    runs = {"a": [], "b": []}
    with tempfile.TemporaryDirectory() as tmp:
        for i in range(args.runs):
            for side in ("a", "b"):
                binary = getattr(args, side)
                out = os.path.join(tmp, f"{side}.json")
                runs[side].append(run_once(binary, args.model, args.data, args.rounds, args.cpu, out))
            print(f"run {i + 1} of {args.runs} done", file=sys.stderr)

    print(f"Router::route p50 in µs, median of {args.runs} alternating runs; B/A is the median "
          "of the paired ratios.\n")
    print("| model | chars | A p50 | B p50 | B/A | allocations A, B |")
    print("| --- | ---: | ---: | ---: | ---: | --- |")
    summary = {}
    for name in runs["a"][0]:
        for chars in runs["a"][0][name]["p50"]:
            a = [r[name]["p50"][chars] for r in runs["a"]]
            b = [r[name]["p50"][chars] for r in runs["b"]]
            ratio = statistics.median(y / x for x, y in zip(a, b))
            allocations = (max(r[name]["allocations"] for r in runs["a"]),
                           max(r[name]["allocations"] for r in runs["b"]))
            summary.setdefault(name, {})[chars] = {
                "a_p50": statistics.median(a), "b_p50": statistics.median(b), "ratio": ratio,
                "a_runs": a, "b_runs": b}
            print(f"| {name} | {chars} | {statistics.median(a):.2f} | {statistics.median(b):.2f} "
                  f"| {ratio:.3f} | {allocations[0]}, {allocations[1]} |")
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"runs": args.runs, "a": args.a, "b": args.b, "models": summary}, f, indent=1)


if __name__ == "__main__":
    main()
