#!/usr/bin/python3
"""The same MLP and transformer-lite shapes as torouter's, in PyTorch.

One thread, inference mode, timed one query at a time on the prompts that
speed_bench wrote (their sizes: sparse features per prompt for the MLP, words
for the transformer-lite) and in batches of 1, 32 and 1,024 of the natural
mix. Weights are random: speed does not depend on them. Inputs are made into
tensors before the clock starts, so PyTorch is timed on the network alone
(plus softmax and argmax), while torouter's route also featurizes the text.

    /usr/bin/python3 benchmarks/torch_peer.py --prompts build/speed/prompts.jsonl \
        --experts 9 --out build/speed/torch.json
"""

import os

for _var in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_var] = "1"

import argparse
import json
import time

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

torch.set_num_threads(1)
torch.manual_seed(1)


class Mlp(nn.Module):
    """torouter's "mlp:64,buckets=16384": embedding bag + dense features -> 64 -> heads."""

    def __init__(self, buckets, hidden, dense, experts):
        super().__init__()
        self.bag = nn.EmbeddingBag(buckets, hidden, mode="sum")
        self.dense_in = nn.Linear(dense, hidden)
        self.quality = nn.Linear(hidden, experts)
        self.tokens = nn.Linear(hidden, experts)

    def forward(self, indices, offsets, weights, dense):
        h = torch.relu(self.bag(indices, offsets, per_sample_weights=weights) + self.dense_in(dense))
        return torch.softmax(self.quality(h), dim=1), torch.expm1(self.tokens(h))


class Tlite(nn.Module):
    """torouter's "tlite": token + position embeddings, pre-norm encoder, mean pool, heads."""

    def __init__(self, buckets, d, heads, ff, layers, max_tokens, experts):
        super().__init__()
        self.token = nn.Embedding(buckets + 1, d)
        self.position = nn.Embedding(max_tokens, d)
        layer = nn.TransformerEncoderLayer(d, heads, ff, dropout=0.0, activation="gelu",
                                           batch_first=True, norm_first=True)
        self.encoder = nn.TransformerEncoder(layer, layers, enable_nested_tensor=False)
        self.norm = nn.LayerNorm(d)
        self.quality = nn.Linear(d, experts)
        self.tokens = nn.Linear(d, experts)

    def forward(self, ids, padding):
        # ids: batch x length; padding: batch x length, True where padded.
        positions = torch.arange(ids.shape[1]).unsqueeze(0)
        x = self.token(ids) + self.position(positions)
        x = self.norm(self.encoder(x, src_key_padding_mask=padding if padding.any() else None))
        keep = (~padding).unsqueeze(2).to(x.dtype)
        pooled = (x * keep).sum(1) / keep.sum(1)
        return torch.softmax(self.quality(pooled), dim=1), torch.expm1(self.tokens(pooled))


def mlp_input(rows, buckets, rng):
    sizes = [max(r["sparse_features"], 1) for r in rows]
    indices = torch.from_numpy(rng.integers(0, buckets, sum(sizes)).astype(np.int64))
    weights = torch.from_numpy(rng.random(sum(sizes)).astype(np.float32))
    offsets = torch.tensor([0] + list(np.cumsum(sizes)[:-1]), dtype=torch.int64)
    dense = torch.from_numpy(rng.standard_normal((len(rows), 10)).astype(np.float32))
    return indices, offsets, weights, dense


def tlite_input(rows, buckets, max_tokens, rng):
    lengths = [min(max(r["words"], 1), max_tokens) for r in rows]
    width = max(lengths)
    ids = torch.from_numpy(rng.integers(0, buckets, (len(rows), width)).astype(np.int64))
    padding = torch.arange(width).unsqueeze(0) >= torch.tensor(lengths).unsqueeze(1)
    return ids, padding


def per_query(model, inputs, repeats):
    """p50/p99 in microseconds of one query at a time (model, softmax, argmax)."""
    for x in inputs[:20]:
        model(*x)[0].argmax(1)
    us = []
    for _ in range(repeats):
        for x in inputs:
            start = time.perf_counter_ns()
            model(*x)[0].argmax(1)
            us.append((time.perf_counter_ns() - start) / 1e3)
    return {"p50": float(np.percentile(us, 50)), "p99": float(np.percentile(us, 99)),
            "mean": float(np.mean(us)), "queries": len(us)}


def throughput(model, make, natural, batch, rng, seconds=0.4, rounds=3):
    """Prompts per second scoring batches of the natural mix (median round)."""
    rows = [natural[i % len(natural)] for i in range(batch)]
    x = make(rows, rng)
    model(*x)
    rates = []
    for _ in range(rounds):
        calls, start = 0, time.perf_counter()
        while True:
            model(*x)
            calls += 1
            elapsed = time.perf_counter() - start
            if elapsed >= seconds and calls >= (3 if batch < 1024 else 1):
                break
        rates.append(calls * batch / elapsed)
    return {"median": float(np.median(rates)), "min": float(min(rates)), "max": float(max(rates))}


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--prompts", required=True, help="prompts.jsonl from speed_bench")
    parser.add_argument("--experts", type=int, default=9)
    parser.add_argument("--mlp-buckets", type=int, default=16384)
    parser.add_argument("--mlp-hidden", type=int, default=64)
    parser.add_argument("--tlite", nargs="+", metavar="NAME=D,FF,TOKENS",
                        default=["tlite=64,256,64", "tlite128=64,256,128",
                                 "tlite-d128=128,512,128"],
                        help="transformer-lite shapes (4 heads, 2 layers) and their names")
    parser.add_argument("--tlite-queries", type=int, default=60,
                        help="prompts per length class for the transformer-lite")
    parser.add_argument("--out", required=True)
    args = parser.parse_args()

    with open(args.prompts, encoding="utf-8") as f:
        rows = [json.loads(line) for line in f.read().split("\n") if line.strip()]
    sets = {}
    for r in rows:
        sets.setdefault(r["set"], []).append(r)
    natural = sets.pop("natural")
    rng = np.random.default_rng(1)
    result = {"torch": torch.__version__, "threads": torch.get_num_threads(), "models": {}}

    with torch.inference_mode():
        mlp = Mlp(args.mlp_buckets, args.mlp_hidden, 10, args.experts).eval()
        make = lambda rs, g: mlp_input(rs, args.mlp_buckets, g)  # noqa: E731
        entry = {"shape": f"EmbeddingBag({args.mlp_buckets}, {args.mlp_hidden}) + "
                          f"Linear(10, {args.mlp_hidden}), heads {args.experts}",
                 "route_us": {}, "batch": {}}
        for name, rs in sets.items():
            entry["route_us"][name] = per_query(mlp, [make([r], rng) for r in rs], 3)
        for b in (1, 32, 1024):
            entry["batch"][str(b)] = {"prompts_per_second": throughput(mlp, make, natural, b, rng)}
        result["models"]["mlp"] = entry
        print(f"torch mlp: 500-char p50 {entry['route_us']['500']['p50']:.0f} us")

        for named in args.tlite:
            key, sizes = named.split("=")
            d, ff, tokens = (int(x) for x in sizes.split(","))
            model = Tlite(16384, d, 4, ff, 2, tokens, args.experts).eval()
            make = lambda rs, g, t=tokens: tlite_input(rs, 16384, t, g)  # noqa: E731
            entry = {"shape": f"d {d}, 4 heads, ff {ff}, 2 layers, {tokens} tokens",
                     "route_us": {}, "batch": {}}
            for name, rs in sets.items():
                # Fewer queries: Debian's torch multiplies with a generic BLAS.
                entry["route_us"][name] = per_query(
                    model, [make([r], rng) for r in rs[:args.tlite_queries]], 1)
            for b in (1, 32, 1024):
                entry["batch"][str(b)] = {
                    "prompts_per_second": throughput(model, make, natural, b, rng)}
            result["models"][key] = entry
            print(f"torch {key}: 4000-char p50 {entry['route_us']['4000']['p50']:.0f} us")

    with open(args.out, "w", encoding="utf-8") as f:
        json.dump(result, f, indent=1)
        f.write("\n")


if __name__ == "__main__":
    main()
