#!/usr/bin/python3
"""Per-query speed of the scikit-learn peers on speed_bench's prompts.

Reuses benchmarks/peers/sklearn_peers.py (its routers, its data loading and
its one-query-at-a-time timing: vectorize, predict, pick at lambda 0) and
times it on exactly the prompts torouter's routers were timed on, so the
ratios in docs/BENCHMARKS.md compare like with like.

    /usr/bin/python3 benchmarks/sklearn_speed.py --data ../shared/data/llmrouter14 \
        --prompts build/speed/prompts.jsonl --out build/speed/sklearn.json
"""

import argparse
import json
import os
import sys
import time

# sklearn_peers sets one BLAS thread before numpy is imported. No
# __pycache__ is left in the peers' folder.
sys.dont_write_bytecode = True
sys.path.insert(0, os.path.join(os.path.dirname(os.path.abspath(__file__)), "peers"))
import sklearn_peers  # noqa: E402
import numpy as np  # noqa: E402


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder the peers train on")
    parser.add_argument("--prompts", required=True, help="prompts.jsonl from speed_bench")
    parser.add_argument("--out", required=True)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()

    with open(args.prompts, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f.read().split("\n") if line.strip()]
    sets = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r["prompt"])

    experts, prices, train, _ = sklearn_peers.load_dataset(args.data)
    train_quality, train_cost = sklearn_peers.outcome_matrices(train, experts, prices)
    pred_cost = np.nanmean(train_cost, axis=0)
    result = {"dataset": os.path.basename(os.path.normpath(args.data)), "routers": {}}
    for name in ("ridge", "knn"):
        start = time.perf_counter()
        router = sklearn_peers.ROUTERS[name]().fit([r["prompt"] for r in train], train_quality)
        entry = {"train_seconds": time.perf_counter() - start, "route_us": {}}
        for set_name, prompts in sets.items():
            rounds = [sklearn_peers.time_routes(router, prompts, pred_cost, len(prompts))
                      for _ in range(args.rounds)]
            entry["route_us"][set_name] = {
                key: float(np.median([r[f"latency_us_{key}"] for r in rounds]))
                for key in ("p50", "p99")}
            entry["route_us"][set_name]["routes_per_second"] = float(
                np.median([r["routes_per_second"] for r in rounds]))
        result["routers"][name] = entry
        print(f"sklearn {name}: 500-char p50 {entry['route_us']['500']['p50']:.0f} us")
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
