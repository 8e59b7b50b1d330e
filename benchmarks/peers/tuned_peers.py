#!/usr/bin/python3
"""Tuned peer routers of issue 15 (item 3), judged like sklearn_peers.py.

Four quality models over TF-IDF of word 1-2-grams + char_wb 3-5-grams
(peer_features.py), each tuned on the training split only
(quality_models.py, mf_model.py):
  xgb       XGBoost regressor per expert on SVD-256 + log length
  ridge-cv  ridge per expert on the sparse TF-IDF, alpha by LOO-CV
  knn-cv    kNN, cosine on the sparse TF-IDF, k by 5-fold CV
  mf        RouteLLM-style matrix factorisation (PyTorch) on SVD-256 + log length
Each is written twice: with the per-query cost model (a ridge per expert on
log cost, peer_features.CostModel) as OUT_DIR/<dataset>-<peer>.json, and with
each expert's mean training cost as OUT_DIR/<dataset>-<peer>-meancost.json;
the predicted quality per test row goes to OUT_DIR/<dataset>-<peer>.csv.

    /usr/bin/python3 benchmarks/peers/tuned_peers.py \
        --data ../shared/data/llmrouter14 --out-dir build/quality/peers

`--peers xgb --seed N` trains the XGBoost peer with another seed (of the
SVD, the train-internal split and XGBoost's sampling), written as
<dataset>-xgb-seedN.*: how much of a difference between routers a seed alone
makes, beside torouter's default trained with other seeds.
"""

import os

# One thread everywhere. On these two cores shared by several jobs, two
# OpenMP/BLAS threads spin-wait on each other: XGBoost trained 7x slower with
# nthread=2 than with 1 (benchmarks/peers/README.md). Must precede numpy.
for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import time

import numpy as np
from threadpoolctl import threadpool_limits

import routing_eval as ev
from peer_features import CostModel, Featurizer
from quality_models import KnnModel, RidgeModel, XgbModel

TEXT = "TF-IDF word 1-2-grams + char_wb 3-5-grams"
PEERS = {  # name: (input features, description, default timing queries)
    "xgb": ("dense", f"XGBoost per expert on SVD-256 of {TEXT} + log length", 200),
    "ridge-cv": ("sparse", f"ridge per expert (LOO-CV alpha) on {TEXT}", 500),
    "knn-cv": ("sparse", f"kNN, cosine, k by 5-fold CV, on {TEXT}", 500),
    "mf": ("dense", f"RouteLLM-style MF (PyTorch) on SVD-256 of {TEXT} + log length", 200),
}


def make_model(name, seed):
    if name == "mf":
        from mf_model import MfModel  # torch is slow to import: only when needed
        return MfModel()
    if name == "xgb":
        return XgbModel(seed=seed)
    return {"ridge-cv": RidgeModel, "knn-cv": KnnModel}[name]()


def timed(fn, *args):
    start = time.perf_counter()
    value = fn(*args)
    return value, time.perf_counter() - start


def build_features(d, seed):
    """Featurizer and cost model fitted on train; features of the test rows."""
    feat = Featurizer(seed=seed)
    start = time.perf_counter()
    x_train = feat.sparse_fit(d["train_prompts"])
    tfidf_s = time.perf_counter() - start
    z_train, svd_s = timed(feat.dense_fit, d["train_prompts"], x_train)
    cost_model, cost_s = timed(CostModel().fit, z_train, d["train_cost"])
    x_test = feat.sparse(d["test_prompts"])
    z_test = feat.dense(d["test_prompts"], x_test)
    return {"feat": feat, "cost_model": cost_model,
            "train": {"sparse": x_train, "dense": z_train},
            "test": {"sparse": x_test, "dense": z_test},
            "seconds": {"tfidf": tfidf_s, "svd": svd_s, "cost_model": cost_s},
            "test_cost": cost_model.predict(z_test),
            "mean_cost": np.nanmean(d["train_cost"], axis=0)}


def router_for(f, model, kind, per_query):
    """route_one(prompt): featurize one prompt, predict, pick at lambda 0."""
    feat, cost_model, mean_cost = f["feat"], f["cost_model"], f["mean_cost"]

    def route_one(prompt):
        x = feat.sparse([prompt])
        z = feat.dense([prompt], x) if (kind == "dense" or per_query) else None
        quality = model.predict(z if kind == "dense" else x)
        cost = cost_model.predict(z) if per_query else mean_cost
        return ev.pick(quality, cost, 0.0)
    return route_one


def run_peer(name, d, f, args, dataset):
    kind, description, default_queries = PEERS[name]
    model, fit_s = timed(make_model(name, args.seed).fit, f["train"][kind], d["train_quality"])
    pred_quality = model.predict(f["test"][kind])
    if args.seed != 1:
        name += f"-seed{args.seed}"
    ev.write_predictions(os.path.join(args.out_dir, f"{dataset}-{name}.csv"),
                         d["test"], d["experts"], pred_quality)
    s = f["seconds"]
    feature_s = s["tfidf"] + (s["svd"] if kind == "dense" else 0.0)
    variants = [("", True, feature_s + s["svd"] * (kind == "sparse") + s["cost_model"]),
                ("-meancost", False, feature_s)]
    for suffix, per_query, extra_s in variants:
        pred_cost = f["test_cost"] if per_query else f["mean_cost"]
        figures = ev.evaluate(d["test_quality"], d["test_cost"], pred_quality,
                              pred_cost, d["experts"])
        with threadpool_limits(1):
            if hasattr(model, "set_threads"):
                model.set_threads(1)
            timing = ev.time_routes(router_for(f, model, kind, per_query),
                                    d["test_prompts"], args.timing_queries or default_queries)
        figures["router"]["routes_per_second"] = timing.pop("routes_per_second")
        cost_text = ("per-query cost: ridge per expert on log cost over SVD-256 + log length"
                     if per_query else "cost: each expert's mean training cost")
        ev.write_report(os.path.join(args.out_dir, f"{dataset}-{name}{suffix}.json"), figures, {
            "dataset": dataset, "model": f"{description}; {cost_text}",
            "peer": name + suffix, "train_seconds": extra_s + fit_s,
            "train_seconds_parts": {"features_and_cost": extra_s, "quality_model": fit_s},
            "hyper_parameters": model.hyper_parameters(),
            **({"cost_model_alpha_per_expert": f["cost_model"].alphas} if per_query else {}),
            **timing,
            "experts_alone_aiq": ev.experts_alone_aiq(d["test_quality"], d["test_cost"])})
        print(ev.summary(dataset, name + suffix, figures, extra_s + fit_s, timing), flush=True)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--data", required=True, help="dataset folder")
    parser.add_argument("--out-dir", required=True, help="folder for the JSON and CSV files")
    parser.add_argument("--peers", default=",".join(PEERS),
                        help=f"comma-separated, of {','.join(PEERS)}")
    parser.add_argument("--timing-queries", type=int,
                        help="queries timed one at a time (default 200 for xgb and mf, else 500)")
    parser.add_argument("--seed", type=int, default=1,
                        help="seed of the SVD and the xgb peer (another than 1: --peers xgb only)")
    args = parser.parse_args()
    names = args.peers.split(",")
    unknown = [n for n in names if n not in PEERS]
    if unknown:
        parser.error(f"unknown peer(s): {','.join(unknown)}")
    if args.seed != 1 and names != ["xgb"]:
        parser.error("--seed other than 1 is for --peers xgb alone")

    d = ev.load_split(args.data, "tuned_peers.py")
    os.makedirs(args.out_dir, exist_ok=True)
    dataset = os.path.basename(os.path.normpath(args.data))
    f = build_features(d, args.seed)
    print(f"{dataset}: features {f['seconds']}", flush=True)
    for name in names:
        run_peer(name, d, f, args, dataset)


if __name__ == "__main__":
    main()
