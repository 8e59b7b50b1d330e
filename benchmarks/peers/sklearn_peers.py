#!/usr/bin/python3
"""scikit-learn peer routers for torouter's results table.

The routers a Python user would build first: TF-IDF of word 1-2-grams with
either kNN (k=40, cosine, mean of the neighbours' per-expert quality) or one
multi-output ridge regression. They are judged with the definitions of
../shared/data/README.md and write the JSON of issue 4, so docs/RESULTS.md
can put them next to torouter's routers.

Run with Debian's Python (it has scikit-learn, numpy):
    /usr/bin/python3 benchmarks/peers/sklearn_peers.py \
        --data ../shared/data/llmrouter14 --router ridge --out ridge.json
"""

import os

# One BLAS thread, so the timings are single-core like torouter's. This must
# happen before numpy is imported. OPENBLAS_CORETYPE is left as the machine
# sets it.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import csv
import json
import math
import sys
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors

# Hyper-parameters, chosen so the figures reproduce the reference table of
# the shared data README (see benchmarks/peers/README.md for how close): of
# min_df 1/2/3/5, sublinear_tf on/off and alpha 0.1..10, only this setting
# reproduces the reference ridge rows on both datasets.
TFIDF_PARAMS = dict(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
KNN_K = 40
RIDGE_ALPHA = 1.0
CURVE_POINTS = 200  # log-spaced lambdas after lambda = 0; README asks >= 100
LAMBDA_OVERSHOOT = 1.01  # "just past" the lambda where all picks are cheapest


# ---------------------------------------------------------------- data


def read_jsonl(path):
    # Split on "\n" only: prompts may hold U+2028, which splitlines() breaks on.
    with open(path, encoding="utf-8", newline="") as f:
        text = f.read()
    return [json.loads(line) for line in text.split("\n") if line.strip()]


def query_cost(prompt, outcome, prices):
    """Cost of one query by the README's rule."""
    if "cost_usd" in outcome:
        return float(outcome["cost_usd"])
    input_tokens = math.ceil(len(prompt) / 4)
    output_tokens = math.ceil(outcome.get("output_chars", 0) / 4)
    return (input_tokens * prices.get("input_usd_per_mtok", 0.0)
            + output_tokens * prices.get("output_usd_per_mtok", 0.0)) / 1e6


def outcome_matrices(rows, experts, prices):
    """Quality and cost, rows x experts; NaN where an expert has no outcome."""
    quality = np.full((len(rows), len(experts)), np.nan)
    cost = np.full((len(rows), len(experts)), np.nan)
    for i, row in enumerate(rows):
        for j, name in enumerate(experts):
            outcome = row["outcomes"].get(name)
            if outcome is not None:
                quality[i, j] = float(outcome["quality"])
                cost[i, j] = query_cost(row["prompt"], outcome, prices[name])
    return quality, cost


def load_dataset(data_dir):
    with open(os.path.join(data_dir, "experts.json"), encoding="utf-8") as f:
        prices = json.load(f)["experts"]
    experts = list(prices)
    train = read_jsonl(os.path.join(data_dir, "train.jsonl"))
    test = read_jsonl(os.path.join(data_dir, "test.jsonl"))
    return experts, prices, train, test


# ---------------------------------------------------------------- routers


class KnnRouter:
    """Mean per-expert quality of the k nearest training prompts (cosine)."""

    def __init__(self, k=KNN_K):
        self.vectorizer = TfidfVectorizer(**TFIDF_PARAMS)
        self.index = NearestNeighbors(n_neighbors=k, metric="cosine",
                                      algorithm="brute")

    def fit(self, prompts, quality):
        self.index.fit(self.vectorizer.fit_transform(prompts))
        # A neighbour without an outcome for an expert does not vote for it:
        # keep a 0/1 mask so the mean is over the neighbours that have one.
        self.has = ~np.isnan(quality)
        self.quality = np.where(self.has, quality, 0.0)
        return self

    def predict(self, prompts):
        _, neighbours = self.index.kneighbors(self.vectorizer.transform(prompts))
        total = self.quality[neighbours].sum(axis=1)
        count = self.has[neighbours].sum(axis=1)
        return total / np.maximum(count, 1)


class RidgeRouter:
    """One multi-output ridge regression predicting every expert's quality."""

    def __init__(self, alpha=RIDGE_ALPHA):
        self.vectorizer = TfidfVectorizer(**TFIDF_PARAMS)
        self.model = Ridge(alpha=alpha)

    def fit(self, prompts, quality):
        # Ridge needs every target: an absent outcome is filled with that
        # expert's mean training quality (a handful of routerbench3 rows).
        filled = np.where(np.isnan(quality), np.nanmean(quality, axis=0), quality)
        self.model.fit(self.vectorizer.fit_transform(prompts), filled)
        return self

    def predict(self, prompts):
        return self.model.predict(self.vectorizer.transform(prompts))


ROUTERS = {"knn": KnnRouter, "ridge": RidgeRouter}


# ---------------------------------------------------------------- evaluation


def pick(pred_quality, pred_cost, lam):
    """Per prompt, the expert of highest utility q - lam * c.

    Ties go to the cheaper predicted cost (then to the first expert): the
    experts are visited cheapest first and argmax keeps the first maximum.
    """
    order = np.argsort(pred_cost, kind="stable")
    utility = pred_quality[:, order] - lam * pred_cost[order]
    return order[np.argmax(utility, axis=1)]


def lambda_range(pred_quality, pred_cost):
    """(smallest lambda that changes a pick, lambda where all picks are cheapest).

    Expert b overtakes a dearer expert a once q_b - lam c_b >= q_a - lam c_a,
    i.e. lam >= (q_a - q_b) / (c_a - c_b).
    """
    rows = np.arange(len(pred_quality))
    first = pick(pred_quality, pred_cost, 0.0)
    q_first = pred_quality[rows, first][:, None]
    c_first = pred_cost[first][:, None]
    dearer = c_first - pred_cost[None, :]  # > 0 where the expert is cheaper
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(dearer > 0, (q_first - pred_quality) / dearer, np.inf)
    lam_lo = float(np.min(change))

    cheapest = int(np.argsort(pred_cost, kind="stable")[0])
    gap = pred_cost - pred_cost[cheapest]
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(gap > 0,
                          (pred_quality - pred_quality[:, [cheapest]]) / gap, 0.0)
    lam_hi = float(np.max(needed))
    return lam_lo, lam_hi


def sweep_lambdas(pred_quality, pred_cost):
    lam_lo, lam_hi = lambda_range(pred_quality, pred_cost)
    # Every prompt already picks its cheapest expert at lambda = 0.
    if not np.isfinite(lam_lo) or lam_hi <= 0:
        return [0.0]
    lam_lo = max(lam_lo, 1e-300)  # a tie at lambda 0 is already counted
    lam_hi = max(lam_hi * LAMBDA_OVERSHOOT, lam_lo * LAMBDA_OVERSHOOT)
    return [0.0] + list(np.geomspace(lam_lo, lam_hi, CURVE_POINTS))


def upper_hull(points):
    """Upper convex hull of (cost, quality) points, cheapest first."""
    best = {}
    for c, q in points:  # at equal cost only the best quality matters
        best[c] = max(q, best.get(c, -np.inf))
    hull = []
    for c, q in sorted(best.items()):
        # Drop the last vertex while it lies on or under the new chord.
        while len(hull) >= 2:
            (c1, q1), (c2, q2) = hull[-2], hull[-1]
            if (q2 - q1) * (c - c1) <= (q - q1) * (c2 - c1):
                hull.pop()
            else:
                break
        hull.append((c, q))
    return hull


def aiq(points, c_min, c_max):
    """RouterBench's AIQ: mean of the non-decreasing upper hull on [c_min, c_max]."""
    hull = upper_hull(points)
    # Non-decreasing: past the hull's peak it stays flat at the peak.
    peak = max(range(len(hull)), key=lambda i: hull[i][1])
    hull = hull[:peak + 1]
    if c_max <= c_min:
        return hull[-1][1]

    def value(c):  # the hull's quality at cost c (0 before, flat after)
        if c < hull[0][0]:
            return 0.0
        if c >= hull[-1][0]:
            return hull[-1][1]
        for (c1, q1), (c2, q2) in zip(hull, hull[1:]):
            if c1 <= c <= c2:
                return q1 + (q2 - q1) * (c - c1) / (c2 - c1)
        raise AssertionError("unreachable")

    # Integrate piecewise: between consecutive breakpoints the function is
    # linear (the step at the hull's cheapest point is a breakpoint too).
    cuts = sorted({c_min, c_max} | {c for c, _ in hull if c_min < c < c_max})
    area = 0.0
    for a, b in zip(cuts, cuts[1:]):
        left = value(a) if a >= hull[0][0] else 0.0
        # Just left of b, approached from inside [a, b].
        right = value(b) if b > hull[0][0] else 0.0
        area += (left + right) / 2 * (b - a)
    return area / (c_max - c_min)


def evaluate(test_quality, test_cost, pred_quality, pred_cost, experts):
    """Every figure of the shared README's 'How a router is judged'."""
    n = len(test_quality)
    rows = np.arange(n)
    mean_q = test_quality.mean(axis=0)
    mean_c = test_cost.mean(axis=0)
    expert_figs = [{"name": e, "quality": float(q), "cost": float(c)}
                   for e, q, c in zip(experts, mean_q, mean_c)]

    # Best expert: highest mean quality, ties to the cheaper.
    best = min(range(len(experts)), key=lambda j: (-mean_q[j], mean_c[j]))
    q_star, c_star = float(mean_q[best]), float(mean_c[best])

    # Oracle: per prompt the highest quality, ties to the cheapest.
    oracle = np.array([min(range(len(experts)),
                           key=lambda j: (-test_quality[i, j], test_cost[i, j]))
                       for i in range(n)])
    q_oracle = float(test_quality[rows, oracle].mean())
    c_oracle = float(test_cost[rows, oracle].mean())

    curve = []
    for lam in sweep_lambdas(pred_quality, pred_cost):
        chosen = pick(pred_quality, pred_cost, lam)
        curve.append({"lambda": float(lam),
                      "quality": float(test_quality[rows, chosen].mean()),
                      "cost": float(test_cost[rows, chosen].mean())})

    def quality_within(budget):
        ok = [p["quality"] for p in curve if p["cost"] <= budget]
        return max(ok) if ok else None

    q_at_c = quality_within(c_star)
    reached = [p["cost"] for p in curve if p["quality"] >= q_star]
    c_at_q = 100.0 * min(reached) / c_star if reached else None
    gap_won = None
    if q_at_c is not None and q_oracle > q_star:
        gap_won = (q_at_c - q_star) / (q_oracle - q_star)

    points = [(p["cost"], p["quality"]) for p in curve]
    return {
        "test_rows": n,
        "experts": expert_figs,
        "random": {"quality": float(test_quality.mean()),
                   "cost": float(test_cost.mean())},
        "oracle": {"quality": q_oracle, "cost": c_oracle},
        "best_expert": {"name": experts[best], "quality": q_star, "cost": c_star},
        "router": {
            "curve": curve,
            "aiq": aiq(points, float(mean_c.min()), float(mean_c.max())),
            "quality_at_best_cost": q_at_c,
            "cost_at_best_quality_pct": c_at_q,
            "gap_won": gap_won,
            "quality_at_10pct": quality_within(0.1 * c_star),
            "quality_at_30pct": quality_within(0.3 * c_star),
            "quality_at_70pct": quality_within(0.7 * c_star),
            "routes_per_second": None,
        },
    }


def experts_alone_aiq(test_quality, test_cost):
    """AIQ of the single experts' own hull (the README quotes it)."""
    mean_c = test_cost.mean(axis=0)
    points = list(zip(mean_c, test_quality.mean(axis=0)))
    return aiq(points, float(mean_c.min()), float(mean_c.max()))


# ---------------------------------------------------------------- timing


def time_routes(router, prompts, pred_cost, n_queries, warmup=50):
    """One query at a time on one thread: featurize, predict, pick at lambda 0."""
    prompts = prompts[:n_queries]
    for prompt in prompts[:warmup]:
        pick(router.predict([prompt]), pred_cost, 0.0)
    latencies = []
    for prompt in prompts:
        start = time.perf_counter_ns()
        pick(router.predict([prompt]), pred_cost, 0.0)
        latencies.append(time.perf_counter_ns() - start)
    latencies_us = np.array(latencies) / 1e3
    return {"routes_per_second": len(prompts) / (latencies_us.sum() / 1e6),
            "latency_us_p50": float(np.percentile(latencies_us, 50)),
            "latency_us_p99": float(np.percentile(latencies_us, 99)),
            "timing_queries": len(prompts)}


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--router", required=True, choices=sorted(ROUTERS))
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--predictions", help="CSV of predicted quality per test row")
    parser.add_argument("--timing-queries", type=int, default=500)
    args = parser.parse_args()

    if not os.path.isdir(args.data):
        sys.exit(f"sklearn_peers.py: data folder not found: {args.data}")

    experts, prices, train, test = load_dataset(args.data)
    train_quality, train_cost = outcome_matrices(train, experts, prices)
    # lambda weighs each expert's mean training cost (over its outcomes).
    pred_cost = np.nanmean(train_cost, axis=0)

    # Judged only on the test rows where every expert has an outcome.
    test = [r for r in test if all(e in r["outcomes"] for e in experts)]
    test_quality, test_cost = outcome_matrices(test, experts, prices)
    test_prompts = [r["prompt"] for r in test]

    start = time.perf_counter()
    router = ROUTERS[args.router]().fit([r["prompt"] for r in train], train_quality)
    train_seconds = time.perf_counter() - start

    pred_quality = router.predict(test_prompts)
    figures = evaluate(test_quality, test_cost, pred_quality, pred_cost, experts)
    timing = time_routes(router, test_prompts, pred_cost, args.timing_queries)
    figures["router"]["routes_per_second"] = timing.pop("routes_per_second")

    name = f"sklearn-{args.router}" + (f"{KNN_K}" if args.router == "knn" else "")
    result = {"dataset": os.path.basename(os.path.normpath(args.data)),
              **figures,
              "model": f"{name} on TF-IDF word 1-2-grams",
              "peer": name,
              "train_seconds": train_seconds,
              **timing,
              "experts_alone_aiq": experts_alone_aiq(test_quality, test_cost)}
    # Keep issue 4's key order: dataset, test_rows, model, experts, ...
    order = ["dataset", "test_rows", "model", "experts", "random", "oracle",
             "best_expert", "router"]
    result = {k: result[k] for k in order + [k for k in result if k not in order]}
    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")

    if args.predictions:
        with open(args.predictions, "w", encoding="utf-8", newline="") as f:
            writer = csv.writer(f)
            writer.writerow(["id"] + experts)
            for row, qualities in zip(test, pred_quality):
                writer.writerow([row["id"]] + [repr(float(q)) for q in qualities])

    r = figures["router"]
    print(f"{result['dataset']} {name}: Q(0)={r['curve'][0]['quality']:.4f} "
          f"Q@C*={r['quality_at_best_cost']} AIQ={r['aiq']:.4f} "
          f"gap_won={r['gap_won']} train={train_seconds:.1f}s "
          f"p50={timing['latency_us_p50']:.0f}us")


if __name__ == "__main__":
    main()
