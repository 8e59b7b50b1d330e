#!/usr/bin/python3
"""Builds, in PyTorch, the network tlite_peer_bench wrote (its weights, by
torouter's parameter names), checks that its outputs equal torouter's, and
exports it to ONNX for benchmarks/onnx_peer/time_ort.js.

The module follows torouter's packed forward pass (src/tlite_packed.hpp) op
for op: token plus position embeddings; per layer a LayerNorm, the Q, K and V
projections, scaled dot-product attention per head (padded keys masked), the
output projection and residual, a LayerNorm, the feed-forward with tanh GELU
and residual; a final LayerNorm; the mean over real positions; the quality
and output-token heads.

    /usr/bin/python3 benchmarks/onnx_peer/export_tlite.py --dir DIR --shape tlite

Writes DIR/NAME.single.onnx (one prompt, no mask), DIR/NAME.batch.onnx
(padded prompts with a mask), DIR/gemm1024.onnx (a 1024^3 MatMul) and
DIR/identity.onnx (one float through Identity: the cost of a call).
"""

import argparse
import json
import pathlib

import numpy as np
import onnx
from onnx import TensorProto, helper
import torch
import torch.nn.functional as F

torch.set_num_threads(1)
OPSET = 17  # LayerNormalization is an operator of its own from opset 17


def load_tensors(stem):
    index = json.loads(pathlib.Path(f"{stem}.tensors.json").read_text())
    flat = np.fromfile(f"{stem}.tensors.bin", dtype="<f4")
    return {t["name"]: torch.from_numpy(
        flat[t["offset"]:t["offset"] + t["rows"] * t["cols"]].reshape(t["rows"], t["cols"]).copy())
        for t in index}


class Tlite(torch.nn.Module):
    def __init__(self, t, heads, masked):
        super().__init__()
        self.t = {k.replace(".", "_"): v for k, v in t.items()}
        for name, value in self.t.items():
            self.register_buffer(name, value)
        self.layers = sum(1 for k in t if k.endswith(".norm1.gain"))
        self.heads = heads
        self.masked = masked

    def w(self, name):
        return getattr(self, name.replace(".", "_"))

    def linear(self, x, name):  # torouter keeps weights as inputs x outputs
        return x @ self.w(name + ".weight") + self.w(name + ".bias")[0]

    def norm(self, x, name):
        gain = self.w(name + ".gain")[0]
        return F.layer_norm(x, gain.shape, gain, self.w(name + ".bias")[0], 1e-5)

    def forward(self, ids, mask=None):
        batch, length = ids.shape
        d = self.w("tlite.position_embedding").shape[1]
        hd = d // self.heads
        x = self.w("tlite.token_embedding")[ids] + self.w("tlite.position_embedding")[:length]
        for k in range(1, self.layers + 1):
            p = f"tlite.layer{k}."
            h = self.norm(x, p + "norm1")
            q, kk, v = (self.linear(h, p + "attn." + n).reshape(batch, length, self.heads, hd)
                        .transpose(1, 2) for n in ("q", "k", "v"))
            scores = (q @ kk.transpose(2, 3)) * (1.0 / hd ** 0.5)
            if self.masked:
                scores = scores + ((mask - 1.0) * 1e9)[:, None, None, :]
            context = (torch.softmax(scores, dim=-1) @ v).transpose(1, 2).reshape(batch, length, d)
            residual = x + self.linear(context, p + "attn.out")
            h = self.norm(residual, p + "norm2")
            x = residual + self.linear(F.gelu(self.linear(h, p + "ff1"), approximate="tanh"), p + "ff2")
        x = self.norm(x, "tlite.final_norm")
        if self.masked:
            pooled = (x * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True)
        else:
            pooled = x.mean(1)
        return self.linear(pooled, "tlite.quality_head"), self.linear(pooled, "tlite.tokens_head")


def padded(prompts, length):
    ids = np.zeros((len(prompts), length), dtype=np.int64)
    mask = np.zeros((len(prompts), length), dtype=np.float32)
    for i, p in enumerate(prompts):
        ids[i, :len(p)] = p
        mask[i, :len(p)] = 1.0
    return torch.from_numpy(ids), torch.from_numpy(mask)


def check(single, batch, inputs, expected):
    worst = 0.0
    with torch.no_grad():
        for length, ids in inputs["single"].items():
            logits, tokens = single(torch.tensor([ids], dtype=torch.int64))
            want = expected["single"][length]
            worst = max(worst, float((logits - torch.tensor(want["logits"])).abs().max()),
                        float((tokens - torch.tensor(want["tokens"])).abs().max()))
        rows = inputs["batch"][:len(expected["batch_logits"])]
        ids, mask = padded(rows, max(len(r) for r in rows))
        logits, _ = batch(ids, mask)
        worst = max(worst, float((logits - torch.tensor(expected["batch_logits"])).abs().max()))
    return worst


def export_identity(path):
    """One float through Identity: what a call costs ONNX Runtime in Node."""
    graph = helper.make_graph(
        [helper.make_node("Identity", ["x"], ["y"])], "identity",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def export_gemm(path):
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["a", "b"], ["c"])], "gemm",
        [helper.make_tensor_value_info(n, TensorProto.FLOAT, [1024, 1024]) for n in ("a", "b")],
        [helper.make_tensor_value_info("c", TensorProto.FLOAT, [1024, 1024])])
    onnx.save(helper.make_model(graph, opset_imports=[helper.make_opsetid("", OPSET)]), path)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--dir", required=True)
    parser.add_argument("--shape", required=True, help="the NAME tlite_peer_bench used")
    parser.add_argument("--heads", type=int, default=4)
    args = parser.parse_args()
    stem = f"{args.dir}/{args.shape}"
    tensors = load_tensors(stem)
    inputs = json.loads(pathlib.Path(f"{stem}.inputs.json").read_text())
    expected = json.loads(pathlib.Path(f"{stem}.expected.json").read_text())
    single = Tlite(tensors, args.heads, masked=False).eval()
    batch = Tlite(tensors, args.heads, masked=True).eval()
    difference = check(single, batch, inputs, expected)
    print(json.dumps({"shape": args.shape, "pytorch_vs_torouter_max_abs": difference}))
    if difference > 1e-4:
        raise SystemExit(f"{args.shape}: PyTorch and torouter differ by {difference:.3g}")
    ids, mask = padded([p[:8] for p in inputs["batch"][:2]], 8)  # example inputs for the trace
    axes = {"ids": {0: "batch", 1: "length"}, "mask": {0: "batch", 1: "length"},
            "quality": {0: "batch"}, "tokens": {0: "batch"}}
    single_axes = {k: v for k, v in axes.items() if k != "mask"}
    torch.onnx.export(single, (ids[:1],), f"{stem}.single.onnx", input_names=["ids"],
                      output_names=["quality", "tokens"], dynamic_axes=single_axes,
                      opset_version=OPSET)
    torch.onnx.export(batch, (ids, mask), f"{stem}.batch.onnx", input_names=["ids", "mask"],
                      output_names=["quality", "tokens"], dynamic_axes=axes, opset_version=OPSET)
    export_gemm(str(pathlib.Path(args.dir, "gemm1024.onnx")))
    export_identity(str(pathlib.Path(args.dir, "identity.onnx")))


if __name__ == "__main__":
    main()
