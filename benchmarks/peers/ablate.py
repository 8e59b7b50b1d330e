#!/usr/bin/python3
"""What carries the XGBoost peer's gain? 5-fold CV AIQ on the training split.

Each variant changes one thing of tuned_peers.py's xgb peer (features,
depth, cost model) and is judged by routing_eval on each held-out fold of
train.jsonl (rows where every expert has an outcome); the figures are the
mean over the folds. The test split is never read.

Shortcuts, to keep the run to minutes on two shared cores: TF-IDF and SVD
are fitted once on all training prompts (no labels: they only see text),
SVD-64 is the first 64 columns of SVD-256, and each expert's booster is the
early-stopped one (80/20 split of the fitting folds), not refitted.

    /usr/bin/python3 benchmarks/peers/ablate.py --data ../shared/data/llmrouter14 \
        [--variants base,depth2,...] [--out ablation.json]
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"  # see tuned_peers.py: more threads spin-wait here

import argparse
import json
import time

import numpy as np
from sklearn.linear_model import RidgeCV
from sklearn.model_selection import KFold

import routing_eval as ev
from peer_features import RIDGE_ALPHAS, CostModel, Featurizer, log_length
from quality_models import SEED, XGB_MAX_ROUNDS, XgbModel, train_valid_split

# name: (TF-IDF used, quality-model columns, learner, cost model). Learner
# "xgb<depth>" or "ridge" (RidgeCV on the same columns: is it the trees or the
# features?); cost "per-query" is CostModel on SVD-256 + length,
# "per-query-nolength" CostModel on SVD-256 alone, "mean" each expert's mean.
VARIANTS = {
    "base": ("both", "svd256+len", "xgb4", "per-query"),
    "meancost": ("both", "svd256+len", "xgb4", "mean"),
    "depth2": ("both", "svd256+len", "xgb2", "per-query"),
    "depth6": ("both", "svd256+len", "xgb6", "per-query"),
    "svd64": ("both", "svd64+len", "xgb4", "per-query"),
    "nolength": ("both", "svd256", "xgb4", "per-query"),
    "nolength-anywhere": ("both", "svd256", "xgb4", "per-query-nolength"),
    "length-only": ("both", "len", "xgb4", "per-query"),
    "word-only": ("word", "svd256+len", "xgb4", "per-query"),
    "char-only": ("char", "svd256+len", "xgb4", "per-query"),
    "ridge-dense": ("both", "svd256+len", "ridge", "per-query"),
    "ridge-dense-meancost": ("both", "svd256+len", "ridge", "mean"),
    # Nearest to the scikit-learn peers (word n-grams, no length, mean cost).
    "ridge-word-meancost": ("word", "svd256", "ridge", "mean"),
    # torouter's view: word and character n-grams in one vector with one
    # norm, not two blocks normalised apart; and its 32-wide projection.
    "merged": ("merged", "svd256+len", "xgb4", "per-query"),
    "svd32": ("both", "svd32+len", "xgb4", "per-query"),
    "merged-svd32": ("merged", "svd32+len", "xgb4", "per-query"),
}
FEATURIZERS = {"both": dict(words=True, chars=True), "word": dict(chars=False),
               "char": dict(words=False), "merged": dict(merged=True)}


def dense_features(prompts, which, cache):
    """Standardised [SVD-256 | log length] of the prompts, one fit per featurizer."""
    if which not in cache:
        feat = Featurizer(with_length=False, **FEATURIZERS[which])
        z = feat.dense_fit(prompts, feat.sparse_fit(prompts))
        length = log_length(prompts)
        cache[which] = np.hstack([z, (length - length.mean()) / length.std()])
    return cache[which]


def columns(z, kept):
    return {"svd256+len": z, "svd64+len": np.hstack([z[:, :64], z[:, -1:]]),
            "svd32+len": np.hstack([z[:, :32], z[:, -1:]]),
            "svd256": z[:, :-1], "len": z[:, -1:]}[kept]


def quality_predictions(z_fit, q_fit, z_held, learner):
    """Predicted quality of the held rows: early-stopped XGBoost or RidgeCV."""
    if learner == "ridge":
        out = []
        for j in range(q_fit.shape[1]):
            has = ~np.isnan(q_fit[:, j])
            out.append(RidgeCV(alphas=RIDGE_ALPHAS).fit(z_fit[has], q_fit[has, j]).predict(z_held))
        return np.column_stack(out)
    depth = int(learner[3:])
    model = XgbModel(depth)
    fit, valid = train_valid_split(len(z_fit))  # 80% fit, 20% to stop early
    out = []
    for j in range(q_fit.shape[1]):
        f = fit[~np.isnan(q_fit[fit, j])]
        v = valid[~np.isnan(q_fit[valid, j])]
        booster = model._booster(z_fit[f], q_fit[f, j], depth, XGB_MAX_ROUNDS,
                                 valid=(z_fit[v], q_fit[v, j]))
        out.append(booster.inplace_predict(
            z_held, iteration_range=(0, booster.best_iteration + 1)))
    return np.column_stack(out)


def fold_figures(z, quality, cost, fit, held, variant):
    """(AIQ, gap won, Q(lambda=0), ECE) of one variant on one held-out fold."""
    _, kept, learner, cost_kind = variant
    held = held[~np.isnan(quality[held]).any(axis=1)]  # judged rows only
    x = columns(z, kept)
    pred_q = quality_predictions(x[fit], quality[fit], x[held], learner)
    if cost_kind == "mean":
        pred_c = np.nanmean(cost[fit], axis=0)
    else:
        zc = z if cost_kind == "per-query" else z[:, :-1]
        pred_c = CostModel().fit(zc[fit], cost[fit]).predict(zc[held])
    experts = [str(j) for j in range(quality.shape[1])]
    r = ev.evaluate(quality[held], cost[held], pred_q, pred_c, experts)["router"]
    return r["aiq"], r["gap_won"], r["curve"][0]["quality"], r["ece"]


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--variants", default=",".join(VARIANTS))
    parser.add_argument("--folds", type=int, default=5)
    parser.add_argument("--out", help="JSON file for the per-variant figures")
    args = parser.parse_args()
    d = ev.load_split(args.data, "ablate.py")
    prompts, quality, cost = d["train_prompts"], d["train_quality"], d["train_cost"]
    cache, results = {}, {}
    folds = list(KFold(args.folds, shuffle=True, random_state=SEED).split(prompts))
    alone = [ev.experts_alone_aiq(quality[h], cost[h])
             for h in (h[~np.isnan(quality[h]).any(axis=1)] for _, h in folds)]
    print(f"experts alone      AIQ {np.mean(alone):.4f}", flush=True)
    for name in args.variants.split(","):
        start = time.perf_counter()
        z = dense_features(prompts, VARIANTS[name][0], cache)
        per_fold = np.array([fold_figures(z, quality, cost, fit, held, VARIANTS[name])
                             for fit, held in folds], dtype=float)
        mean, sd = per_fold.mean(axis=0), per_fold.std(axis=0)
        results[name] = {"variant": VARIANTS[name], "aiq": mean[0], "aiq_sd": sd[0],
                         "gap_won": mean[1], "q_lambda0": mean[2], "ece": mean[3],
                         "aiq_per_fold": per_fold[:, 0].tolist(),
                         "seconds": time.perf_counter() - start}
        print(f"{name:18s} AIQ {mean[0]:.4f} (sd {sd[0]:.4f}) gap won {mean[1]:+.3f} "
              f"Q(0) {mean[2]:.4f} ECE {mean[3]:.3f} [{time.perf_counter() - start:.0f} s]",
              flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump({"experts_alone_aiq": float(np.mean(alone)), "variants": results},
                      f, indent=1)


if __name__ == "__main__":
    main()
