"""Shared evaluation of the peer routers (sklearn_peers.py, tuned_peers.py).

Reads a dataset of ../shared/data, judges predicted quality and cost with
the definitions of ../shared/data/README.md ("How a router is judged"), times
single-query routing and writes issue 4's JSON plus a predictions CSV.

Predicted cost may be one value per expert (shape [experts], e.g. each
expert's mean training cost) or one per prompt and expert (shape
[prompts, experts], a per-query cost model); every function takes both.
"""

import csv
import json
import math
import os
import sys
import time

import numpy as np

CURVE_POINTS = 200  # log-spaced lambdas after lambda = 0; README asks >= 100
LAMBDA_OVERSHOOT = 1.01  # "just past" the lambda where all picks are cheapest
ECE_BINS = 10


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


def load_split(data_dir, script):
    """Train and judged-test matrices; exits 1 naming the folder if it is absent."""
    if not os.path.isdir(data_dir):
        sys.exit(f"{script}: data folder not found: {data_dir}")
    experts, prices, train, test = load_dataset(data_dir)
    train_quality, train_cost = outcome_matrices(train, experts, prices)
    # Judged only on the test rows where every expert has an outcome.
    test = [r for r in test if all(e in r["outcomes"] for e in experts)]
    test_quality, test_cost = outcome_matrices(test, experts, prices)
    return {"experts": experts, "train": train, "test": test,
            "train_prompts": [r["prompt"] for r in train],
            "test_prompts": [r["prompt"] for r in test],
            "train_quality": train_quality, "train_cost": train_cost,
            "test_quality": test_quality, "test_cost": test_cost}


# ---------------------------------------------------------------- routing


def pick(pred_quality, pred_cost, lam):
    """Per prompt, the expert of highest utility q - lam * c.

    Ties go to the cheaper predicted cost, then to the first expert.
    """
    cost = np.broadcast_to(pred_cost, pred_quality.shape)
    utility = pred_quality - lam * cost
    tied = utility == utility.max(axis=1, keepdims=True)
    tied_cost = np.where(tied, cost, np.inf)
    tied &= tied_cost == tied_cost.min(axis=1, keepdims=True)
    return np.argmax(tied, axis=1)  # the first True


def lambda_range(pred_quality, pred_cost):
    """(smallest lambda that changes a pick, lambda where all picks are cheapest).

    Expert b overtakes a dearer expert a once q_b - lam c_b >= q_a - lam c_a,
    i.e. lam >= (q_a - q_b) / (c_a - c_b).
    """
    cost = np.broadcast_to(pred_cost, pred_quality.shape)
    rows = np.arange(len(pred_quality))
    first = pick(pred_quality, cost, 0.0)
    q_first = pred_quality[rows, first][:, None]
    dearer = cost[rows, first][:, None] - cost  # > 0 where the expert is cheaper
    with np.errstate(divide="ignore", invalid="ignore"):
        change = np.where(dearer > 0, (q_first - pred_quality) / dearer, np.inf)
    lam_lo = float(np.min(change))

    cheapest = np.argmin(cost, axis=1)  # the first of equal cheapest
    gap = cost - cost[rows, cheapest][:, None]
    q_cheapest = pred_quality[rows, cheapest][:, None]
    with np.errstate(divide="ignore", invalid="ignore"):
        needed = np.where(gap > 0, (pred_quality - q_cheapest) / gap, 0.0)
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


# ---------------------------------------------------------------- figures


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


def ece(picked_pred, picked_true, bins=ECE_BINS):
    """Expected calibration error of the lambda-0 picks (shared README).

    A prediction outside [0, 1] is clipped into it first: it is a prediction
    of a quality in [0, 1], and the README's bins cover only that range.
    """
    p = np.clip(picked_pred, 0.0, 1.0)
    which = np.minimum((p * bins).astype(int), bins - 1)  # p = 1 in the last
    total = 0.0
    for b in range(bins):
        inside = which == b
        if inside.any():
            total += inside.mean() * abs(p[inside].mean() - picked_true[inside].mean())
    return float(total)


def baselines(test_quality, test_cost, experts):
    """Experts alone, random, best expert and oracle on the judged test rows."""
    n = len(test_quality)
    mean_q = test_quality.mean(axis=0)
    mean_c = test_cost.mean(axis=0)
    # Best expert: highest mean quality, ties to the cheaper.
    best = min(range(len(experts)), key=lambda j: (-mean_q[j], mean_c[j]))
    # Oracle: per prompt the highest quality, ties to the cheapest.
    oracle = np.array([min(range(len(experts)),
                           key=lambda j: (-test_quality[i, j], test_cost[i, j]))
                       for i in range(n)])
    rows = np.arange(n)
    return {
        "test_rows": n,
        "experts": [{"name": e, "quality": float(q), "cost": float(c)}
                    for e, q, c in zip(experts, mean_q, mean_c)],
        "random": {"quality": float(test_quality.mean()),
                   "cost": float(test_cost.mean())},
        "oracle": {"quality": float(test_quality[rows, oracle].mean()),
                   "cost": float(test_cost[rows, oracle].mean())},
        "best_expert": {"name": experts[best], "quality": float(mean_q[best]),
                        "cost": float(mean_c[best])},
    }


def curve_points(test_quality, test_cost, pred_quality, pred_cost):
    rows = np.arange(len(test_quality))
    curve = []
    for lam in sweep_lambdas(pred_quality, pred_cost):
        chosen = pick(pred_quality, pred_cost, lam)
        curve.append({"lambda": float(lam),
                      "quality": float(test_quality[rows, chosen].mean()),
                      "cost": float(test_cost[rows, chosen].mean())})
    return curve


def evaluate(test_quality, test_cost, pred_quality, pred_cost, experts):
    """Every figure of the shared README's 'How a router is judged'."""
    figures = baselines(test_quality, test_cost, experts)
    q_star = figures["best_expert"]["quality"]
    c_star = figures["best_expert"]["cost"]
    q_oracle = figures["oracle"]["quality"]
    curve = curve_points(test_quality, test_cost, pred_quality, pred_cost)

    def quality_within(budget):
        ok = [p["quality"] for p in curve if p["cost"] <= budget]
        return max(ok) if ok else None

    q_at_c = quality_within(c_star)
    reached = [p["cost"] for p in curve if p["quality"] >= q_star]
    gap_won = None
    if q_at_c is not None and q_oracle > q_star:
        gap_won = (q_at_c - q_star) / (q_oracle - q_star)
    mean_c = test_cost.mean(axis=0)
    rows = np.arange(len(test_quality))
    first = pick(pred_quality, pred_cost, 0.0)
    figures["router"] = {
        "curve": curve,
        "aiq": aiq([(p["cost"], p["quality"]) for p in curve],
                   float(mean_c.min()), float(mean_c.max())),
        "quality_at_best_cost": q_at_c,
        "cost_at_best_quality_pct": 100.0 * min(reached) / c_star if reached else None,
        "gap_won": gap_won,
        "quality_at_10pct": quality_within(0.1 * c_star),
        "quality_at_30pct": quality_within(0.3 * c_star),
        "quality_at_70pct": quality_within(0.7 * c_star),
        "ece": ece(pred_quality[rows, first], test_quality[rows, first]),
        "routes_per_second": None,
    }
    return figures


def experts_alone_aiq(test_quality, test_cost):
    """AIQ of the single experts' own hull (the README quotes it)."""
    mean_c = test_cost.mean(axis=0)
    points = list(zip(mean_c, test_quality.mean(axis=0)))
    return aiq(points, float(mean_c.min()), float(mean_c.max()))


# ---------------------------------------------------------------- timing


def time_routes(route_one, prompts, n_queries, warmup=50):
    """One query at a time: route_one(prompt) featurizes, predicts and picks.

    The caller limits the threads (one BLAS / XGBoost / torch thread) so the
    figure is single-core like torouter's.
    """
    prompts = prompts[:n_queries]
    for prompt in prompts[:min(warmup, len(prompts))]:
        route_one(prompt)
    latencies = []
    for prompt in prompts:
        start = time.perf_counter_ns()
        route_one(prompt)
        latencies.append(time.perf_counter_ns() - start)
    latencies_us = np.array(latencies) / 1e3
    return {"routes_per_second": len(prompts) / (latencies_us.sum() / 1e6),
            "latency_us_p50": float(np.percentile(latencies_us, 50)),
            "latency_us_p99": float(np.percentile(latencies_us, 99)),
            "timing_queries": len(prompts)}


# ---------------------------------------------------------------- output


def write_report(path, figures, extra):
    """Issue 4's JSON: dataset, test_rows, model, experts, ... then the extras."""
    result = {**figures, **extra}
    order = ["dataset", "test_rows", "model", "experts", "random", "oracle",
             "best_expert", "router"]
    result = {k: result[k] for k in order + [k for k in result if k not in order]}
    with open(path, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


def write_predictions(path, test_rows, experts, pred_quality):
    """CSV id,<expert>,...: each test row's predicted quality per expert."""
    with open(path, "w", encoding="utf-8", newline="") as f:
        writer = csv.writer(f)
        writer.writerow(["id"] + experts)
        for row, qualities in zip(test_rows, pred_quality):
            writer.writerow([row["id"]] + [repr(float(q)) for q in qualities])


def summary(dataset, name, figures, train_seconds, timing):
    r = figures["router"]
    return (f"{dataset} {name}: Q(0)={r['curve'][0]['quality']:.4f} "
            f"Q@C*={r['quality_at_best_cost']} AIQ={r['aiq']:.4f} "
            f"gap_won={r['gap_won']} ECE={r['ece']:.4f} train={train_seconds:.1f}s "
            f"p50={timing['latency_us_p50']:.0f}us")
