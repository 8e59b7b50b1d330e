#!/usr/bin/python3
"""How much ECE sampling alone makes: the expected calibration error a
perfectly calibrated router would show on the same test rows.

`torouter eval --json` reports `router.ece` with its reliability bins (the
count and mean predicted quality of each of 10 equal-width bins). On a few
hundred rows an ECE is noisy even where the predictions are exactly the
expected quality: each bin's observed mean is a sample mean. This draws, for
every bin, outcomes whose expectation is the bin's mean prediction and
recomputes the ECE, many times.

The outcomes are drawn as 0/1 (Bernoulli), the most variable outcome with
that mean: right for the 0/1 tasks (routerbench3's every score, about 90%
of llmrouter14's test outcomes) and an overstatement of the noise for
fractional scores, so the floor it gives is an upper bound and the share
of draws at or above the observed ECE errs toward calling a router
calibrated. Each bin's rows are taken to share its mean prediction; within
a bin 0.1 wide that changes the variance by under 1%.

    benchmarks/ece_noise.py build/quality/llmrouter14-default.json ...   # Debian's python3-numpy
"""
import json
import sys

import numpy as np


def calibrated_ece_draws(bins, draws=4000, seed=1):
    """ECEs of `draws` outcome sets drawn as a calibrated router's would be
    on `bins` (dicts with `count` and `predicted`, as in the eval JSON)."""
    rng = np.random.default_rng(seed)
    full = [b for b in bins if b["count"] > 0]
    rows = sum(b["count"] for b in full)
    ece = np.zeros(draws)
    for b in full:
        observed = rng.binomial(b["count"], b["predicted"], size=draws) / b["count"]
        ece += b["count"] / rows * np.abs(observed - b["predicted"])
    return ece


def ece_noise(router, draws=4000, seed=1):
    """For an eval JSON's `router` object: its ECE, the median and 95th
    percentile of a calibrated router's on the same bins, and the share of
    those at or above the observed ECE. None where the report has no ECE."""
    if router.get("ece") is None or not router.get("reliability"):
        return None
    simulated = calibrated_ece_draws(router["reliability"], draws, seed)
    return {"ece": router["ece"], "calibrated_median": float(np.median(simulated)),
            "calibrated_p95": float(np.percentile(simulated, 95)),
            "share_at_or_above": float(np.mean(simulated >= router["ece"]))}


def main(paths):
    if not paths:
        print("usage: ece_noise.py EVAL_JSON...", file=sys.stderr)
        return 2
    for path in paths:
        with open(path, encoding="utf-8") as f:
            figures = ece_noise(json.load(f)["router"])
        if figures is None:
            print(f"{path}: no ECE in the report")
            continue
        print(f"{path}: ECE {figures['ece']:.3f}; a calibrated router on these bins: median "
              f"{figures['calibrated_median']:.3f}, 95th percentile {figures['calibrated_p95']:.3f}, "
              f"{100 * figures['share_at_or_above']:.0f}% of draws at or above {figures['ece']:.3f}")
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
