#!/usr/bin/python3
"""torouter's cross-validated predictions against XGBoost's on the same folds.

`torouter train --out-of-fold FILE.csv` writes each candidate's calibrated
out-of-fold quality for every training row, with the row's fold. This script
trains the XGBoost peer of `ablate.py` ("base": SVD-256 of word and char_wb
TF-IDF plus log length, depth 4, early stopping on 20% of each fold's
training rows) on exactly those folds, and judges every router with one cost
prediction (the peers' per-query CostModel, fitted per fold), so that only
the quality models differ. Training split only; the test split is not read.

    /usr/bin/python3 benchmarks/peers/compare_oof.py \\
        --data ../shared/data/llmrouter14 --oof oof.csv [--out compare.json]

Prints, per router: AIQ, gap won, Q(lambda=0) and ECE on every training row
with all outcomes (pooled over folds), and the same with each task weighted
equally (rows resampled so that every task counts as much as the others),
which shows how a router would fare on traffic whose task mix differs from
the training split's. Two rows are not routers: each row's true task's mean
quality per expert (a bound for routing by task), and the task scorer's
predictions shrunk toward what the most similar training prompts scored,
at the best of a grid of settings (does a prompt's own neighbourhood add
anything to its task?).
"""
import argparse
import csv
import json

import numpy as np

import ablate
import routing_eval as ev
from peer_features import CostModel, merged_analyzer
from sklearn.feature_extraction.text import TfidfVectorizer


# The name of task_means_out_of_fold's row.
TASK_BOUND = "task means, each row's true task given (a bound, not a router)"
# The start of neighbour_shrunk_out_of_fold's row's name (the number of
# settings tried and the best one follow).
NEIGHBOUR_ROW = "task shrunk toward similar prompts' outcomes"
# Its settings: neighbours k, similarity power p, and the task prediction's
# weight w (as that many neighbours of similarity 1).
NEIGHBOUR_SETTINGS = [(k, p, w) for k in (10, 40) for p in (1, 2, 4, 8)
                      for w in (0.3, 1, 3, 10)]


def read_out_of_fold(path, ids, experts):
    """{candidate: rows x experts}, and each row's fold, in `ids` order.

    Each candidate's lines are the training rows in order (ids may repeat in
    a dataset, so the position, checked against the id, says which row)."""
    predictions, fold, seen = {}, np.full(len(ids), -1), {}
    with open(path, encoding="utf-8") as f:
        reader = csv.reader(f)
        header = next(reader)
        columns = [header.index(e) for e in experts]
        for number, line in enumerate(reader, start=2):
            name = line[0]
            row = seen.get(name, 0)
            seen[name] = row + 1
            if row >= len(ids) or line[1] != ids[row]:
                raise SystemExit(f"{path}:{number}: expected training row {row} "
                                 f"({ids[row] if row < len(ids) else 'none'}), got {line[1]}")
            if name not in predictions:
                predictions[name] = np.full((len(ids), len(experts)), np.nan)
            predictions[name][row] = [float(line[c]) for c in columns]
            fold[row] = int(line[2])
    if (fold < 0).any() or any(n != len(ids) for n in seen.values()):
        raise SystemExit(f"{path}: not every candidate has every training row")
    return predictions, fold


def xgboost_out_of_fold(prompts, quality, cost, fold):
    """XGBoost's ("base") and the cost model's predictions for every row."""
    z = ablate.dense_features(prompts, "both", {})
    pred_q = np.full(quality.shape, np.nan)
    pred_c = np.full(quality.shape, np.nan)
    for k in np.unique(fold):
        fit, held = np.where(fold != k)[0], np.where(fold == k)[0]
        pred_q[held] = ablate.quality_predictions(z[fit], quality[fit], z[held], "xgb4")
        pred_c[held] = CostModel().fit(z[fit], cost[fit]).predict(z[held])
    return pred_q, pred_c


def task_means_out_of_fold(quality, tasks, fold):
    """Each row's task's mean quality per expert over the other folds' rows.

    Not a router (it is told each held-out row's task): the bound of any
    router that routes by the task alone, such as torouter's `task`."""
    pred = np.full(quality.shape, np.nan)
    for k in np.unique(fold):
        fit, held = fold != k, fold == k
        overall = np.nanmean(quality[fit], axis=0)
        for task in np.unique(tasks[held]):
            rows = fit & (tasks == task)
            pred[held & (tasks == task)] = (np.nanmean(quality[rows], axis=0)
                                            if rows.any() else overall)
    return pred


def neighbour_shrunk_out_of_fold(prompts, quality, fold, task_pred):
    """Does anything a prompt's own neighbours say add to its task's means?

    For each setting (k, p, w) of NEIGHBOUR_SETTINGS, each held-out row's
    prediction is (w * task + sum_j s_j^p q_j) / (w + sum_j s_j^p) over its
    k training rows of the other folds most similar to it (cosine of word
    and character TF-IDF, as torouter's featurizer makes them), where
    `task` is the task scorer's own out-of-fold prediction. Returns
    {setting: predictions}; the caller judges them all on the same rows, so
    the best is an optimistic figure for this family."""
    filled, seen = np.nan_to_num(quality), (~np.isnan(quality)).astype(float)
    out = {s: np.array(task_pred, dtype=float) for s in NEIGHBOUR_SETTINGS}
    for k in np.unique(fold):
        fit, held = np.where(fold != k)[0], np.where(fold == k)[0]
        tfidf = TfidfVectorizer(analyzer=merged_analyzer, min_df=2, sublinear_tf=True,
                                dtype=np.float32)
        x_fit = tfidf.fit_transform([prompts[i] for i in fit])
        similarity = (tfidf.transform([prompts[i] for i in held]) @ x_fit.T).toarray()
        for n in {s[0] for s in NEIGHBOUR_SETTINGS}:
            nearest = np.argpartition(-similarity, n, axis=1)[:, :n]
            s_near = np.take_along_axis(similarity, nearest, 1).clip(0)
            for (kk, p, w) in NEIGHBOUR_SETTINGS:
                if kk != n:
                    continue
                weight = s_near ** p
                total = np.einsum("hk,hke->he", weight, filled[fit][nearest])
                count = np.einsum("hk,hke->he", weight, seen[fit][nearest])
                out[(kk, p, w)][held] = (w * task_pred[held] + total) / (w + count)
    return out


def task_balanced_rows(tasks, seed=1):
    """Row indices resampled (with replacement) to equal counts per task."""
    rng = np.random.default_rng(seed)
    by_task = {t: np.where(tasks == t)[0] for t in np.unique(tasks)}
    most = max(len(rows) for rows in by_task.values())
    return np.concatenate([rng.choice(rows, most, replace=True) for rows in by_task.values()])


def figures(quality, cost, pred_q, pred_c, rows, experts):
    r = ev.evaluate(quality[rows], cost[rows], pred_q[rows], pred_c[rows], experts)["router"]
    return {"aiq": r["aiq"], "gap_won": r["gap_won"], "q_lambda0": r["curve"][0]["quality"],
            "ece": r["ece"]}


def shown(value, spec):
    return "—" if value is None else format(value, spec)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--oof", required=True, help="torouter train --out-of-fold CSV")
    parser.add_argument("--out", help="JSON file for the figures")
    args = parser.parse_args()
    d = ev.load_split(args.data, "compare_oof.py")
    experts, quality, cost = d["experts"], d["train_quality"], d["train_cost"]
    ids = [r["id"] for r in d["train"]]
    tasks = np.array([r.get("task", "") for r in d["train"]])
    routers, fold = read_out_of_fold(args.oof, ids, experts)
    routers["xgboost (peer, same folds)"], pred_c = xgboost_out_of_fold(
        d["train_prompts"], quality, cost, fold)
    complete = np.where(~np.isnan(quality).any(axis=1))[0]
    if len(set(tasks)) > 1:
        routers[TASK_BOUND] = task_means_out_of_fold(quality, tasks, fold)
    if "task" in routers:
        shrunk = neighbour_shrunk_out_of_fold(d["train_prompts"], quality, fold, routers["task"])
        best = max(shrunk, key=lambda s: figures(quality, cost, shrunk[s], pred_c, complete,
                                                 experts)["aiq"])
        routers[f"{NEIGHBOUR_ROW}, best of {len(shrunk)} settings (k={best[0]}, p={best[1]}, "
                f"w={best[2]})"] = shrunk[best]
    balanced = complete[task_balanced_rows(tasks[complete])]
    results = {}
    print(f"{'router':70s} {'AIQ':>7s} {'gap':>7s} {'Q(0)':>7s} {'ECE':>6s}   task-balanced:"
          f" {'AIQ':>7s} {'gap':>7s} {'Q(0)':>7s}")
    for name, pred_q in routers.items():
        pooled = figures(quality, cost, pred_q, pred_c, complete, experts)
        even = figures(quality, cost, pred_q, pred_c, balanced, experts)
        results[name] = {"pooled": pooled, "task_balanced": even}
        print(f"{name:70s} {pooled['aiq']:7.4f} {shown(pooled['gap_won'], '+7.3f')} "
              f"{pooled['q_lambda0']:7.4f} {shown(pooled['ece'], '6.3f')}   {'':14s} "
              f"{even['aiq']:7.4f} {shown(even['gap_won'], '+7.3f')} {even['q_lambda0']:7.4f}",
              flush=True)
    if args.out:
        with open(args.out, "w", encoding="utf-8") as f:
            json.dump(results, f, indent=1)


if __name__ == "__main__":
    main()
