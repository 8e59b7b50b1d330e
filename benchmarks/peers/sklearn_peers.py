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
import time

import numpy as np
from sklearn.feature_extraction.text import TfidfVectorizer
from sklearn.linear_model import Ridge
from sklearn.neighbors import NearestNeighbors

import routing_eval as ev

# Hyper-parameters, chosen so the figures reproduce the reference table of
# the shared data README (see benchmarks/peers/README.md for how close): of
# min_df 1/2/3/5, sublinear_tf on/off and alpha 0.1..10, only this setting
# reproduces the reference ridge rows on both datasets.
TFIDF_PARAMS = dict(ngram_range=(1, 2), min_df=2, sublinear_tf=True)
KNN_K = 40
RIDGE_ALPHA = 1.0


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


# ---------------------------------------------------------------- main


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--router", required=True, choices=sorted(ROUTERS))
    parser.add_argument("--out", required=True, help="JSON file to write")
    parser.add_argument("--predictions", help="CSV of predicted quality per test row")
    parser.add_argument("--timing-queries", type=int, default=500)
    args = parser.parse_args()

    d = ev.load_split(args.data, "sklearn_peers.py")
    # lambda weighs each expert's mean training cost (over its outcomes).
    pred_cost = np.nanmean(d["train_cost"], axis=0)

    start = time.perf_counter()
    router = ROUTERS[args.router]().fit(d["train_prompts"], d["train_quality"])
    train_seconds = time.perf_counter() - start

    pred_quality = router.predict(d["test_prompts"])
    figures = ev.evaluate(d["test_quality"], d["test_cost"], pred_quality,
                          pred_cost, d["experts"])
    timing = ev.time_routes(lambda p: ev.pick(router.predict([p]), pred_cost, 0.0),
                            d["test_prompts"], args.timing_queries)
    figures["router"]["routes_per_second"] = timing.pop("routes_per_second")

    name = f"sklearn-{args.router}" + (f"{KNN_K}" if args.router == "knn" else "")
    dataset = os.path.basename(os.path.normpath(args.data))
    ev.write_report(args.out, figures, {
        "dataset": dataset, "model": f"{name} on TF-IDF word 1-2-grams",
        "peer": name, "train_seconds": train_seconds, **timing,
        "experts_alone_aiq": ev.experts_alone_aiq(d["test_quality"], d["test_cost"])})
    if args.predictions:
        ev.write_predictions(args.predictions, d["test"], d["experts"], pred_quality)
    print(ev.summary(dataset, name, figures, train_seconds, timing))


if __name__ == "__main__":
    main()
