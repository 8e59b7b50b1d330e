#!/usr/bin/python3
"""How sure a test split is of each comparison: a paired bootstrap.

Each router's predicted quality on the test rows (`torouter eval
--predictions`, the peers' `--predictions` CSVs) is judged with one cost
prediction, the peers' per-query CostModel fitted on the training split, so
only the quality models differ. The test rows are then resampled with
replacement within each task (the split's task mix kept), the same resample
for every router. For each peer: our AIQ minus the peer's, the standard
deviation of that difference over the resamples, and the share of resamples
in which ours is at least the peer's. Besides, each router's AIQ on the test
rows whose prompt does not appear verbatim in the training split (a test
split may repeat training prompts: llmrouter14's repeats about a quarter).

    /usr/bin/python3 benchmarks/peers/paired_bootstrap.py \\
        --data ../shared/data/llmrouter14 --ours default=default.csv \\
        --peer xgb=xgb.csv [--peer ridge=ridge.csv ...] [--resamples 500] [--out F.json]
"""
import argparse
import csv
import json

import numpy as np

import routing_eval as ev
from peer_features import CostModel, Featurizer


def read_predictions(path, ids, experts):
    """Rows x experts of predicted quality, in `ids` order."""
    by_id = {}
    with open(path, encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        missing = [e for e in experts if e not in header]
        if missing:
            raise SystemExit(f"{path}: no column for expert {missing[0]}")
        columns = [header.index(e) for e in experts]
        for line in reader:
            by_id[line[0]] = [float(line[c]) for c in columns]
    absent = [i for i in ids if i not in by_id]
    if absent:
        raise SystemExit(f"{path}: no prediction for test row {absent[0]}")
    return np.array([by_id[i] for i in ids])


def named_paths(values, flag):
    out = {}
    for value in values:
        name, sep, path = value.partition("=")
        if not sep or not name or not path:
            raise SystemExit(f"{flag} {value}: expected NAME=FILE.csv")
        out[name] = path
    return out


def resamples(tasks, count, seed=1):
    """`count` index arrays, each the rows drawn with replacement per task."""
    rng = np.random.default_rng(seed)
    groups = [np.where(tasks == t)[0] for t in np.unique(tasks)]
    for _ in range(count):
        yield np.concatenate([rng.choice(g, len(g), replace=True) for g in groups])


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--ours", required=True, help="NAME=FILE.csv of our router")
    parser.add_argument("--peer", action="append", default=[], help="NAME=FILE.csv, repeatable")
    parser.add_argument("--resamples", type=int, default=500)
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    d = ev.load_split(args.data, "paired_bootstrap.py")
    experts, quality, cost = d["experts"], d["test_quality"], d["test_cost"]
    rows = np.where(~np.isnan(quality).any(axis=1))[0]
    ids = [d["test"][r]["id"] for r in rows]
    tasks = np.array([d["test"][r].get("task", "") for r in rows])
    quality, cost = quality[rows], cost[rows]
    featurizer = Featurizer()
    z = featurizer.dense_fit(d["train_prompts"], featurizer.sparse_fit(d["train_prompts"]))
    model = CostModel().fit(z, d["train_cost"])
    pred_c = model.predict(featurizer.dense([d["test_prompts"][r] for r in rows]))
    ours_name, ours_path = next(iter(named_paths([args.ours], "--ours").items()))
    routers = {ours_name: read_predictions(ours_path, ids, experts)}
    peers = named_paths(args.peer, "--peer")
    for name, path in peers.items():
        routers[name] = read_predictions(path, ids, experts)

    def aiq(pred_q, picked):
        return ev.evaluate(quality[picked], cost[picked], pred_q[picked], pred_c[picked],
                           experts)["router"]["aiq"]

    everything = np.arange(len(rows))
    full = {name: aiq(p, everything) for name, p in routers.items()}
    in_train = set(d["train_prompts"])
    unseen = np.array([i for i, r in enumerate(rows) if d["test_prompts"][r] not in in_train])
    on_unseen = {name: aiq(p, unseen) for name, p in routers.items()} if len(unseen) else {}
    drawn = {name: [] for name in routers}
    for picked in resamples(tasks, args.resamples):
        for name, p in routers.items():
            drawn[name].append(aiq(p, picked))
    ours = np.array(drawn[ours_name])
    results = {"ours": ours_name, "resamples": args.resamples, "rows": len(rows),
               "aiq": full, "unseen_rows": len(unseen), "aiq_unseen": on_unseen, "peers": {}}
    print(f"{'peer':40s} {'AIQ ours':>9s} {'peer':>7s} {'diff':>8s} {'SD':>7s} {'ours >=':>8s}")
    for name in peers:
        diff = ours - np.array(drawn[name])
        entry = {"difference": full[ours_name] - full[name], "sd": float(diff.std(ddof=1)),
                 "share_ours_at_least": float((diff >= 0).mean())}
        results["peers"][name] = entry
        print(f"{name:40s} {full[ours_name]:9.4f} {full[name]:7.4f} {entry['difference']:+8.4f} "
              f"{entry['sd']:7.4f} {entry['share_ours_at_least']:8.1%}", flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
