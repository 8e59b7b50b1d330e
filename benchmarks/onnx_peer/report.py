#!/usr/bin/python3
"""The tables of docs/BENCHMARKS.md's ONNX Runtime section, from what
benchmarks/onnx_peer.sh measured in DIR (markdown on standard output).

    /usr/bin/python3 benchmarks/onnx_peer/report.py DIR NAME...
"""
import json
import pathlib
import sys


def load(path):
    return json.loads(pathlib.Path(path).read_text())


def main():
    out, names = pathlib.Path(sys.argv[1]), sys.argv[2:]
    ours = load(out / "torouter.json")
    lower = {level: load(out / f"torouter-{level}.json") for level in ("x86-64", "x86-64-v3")
             if (out / f"torouter-{level}.json").exists()}
    ort = load(out / "onnxruntime.json")
    machine = load(out / "machine.json")
    picked = ours["level"]
    print(f"Machine: {machine['cpu']}, nproc {machine['nproc']}, pinned with "
          f"`{machine['pinned']}`; load average {machine['load_average']} at the end; "
          f"commit {machine['commit']}, {machine['date']}. onnxruntime-node {ort['onnxruntime']}, "
          f"one intra-op and one inter-op thread. torouter picked `{picked}` on this CPU.\n")
    levels = [level for level in lower if level != picked]
    head = " | ".join(f"torouter `{level}`" for level in levels)
    overhead = ort["call_overhead_us"]
    print(f"A call of ONNX Runtime through Node costs {overhead:.0f} us with nothing to compute "
          "(an Identity graph); the last ratio takes it off the peer's time.\n")
    print(f"| shape, tokens | torouter default build (`{picked}`) | {head} | ONNX Runtime | "
          "ORT p50 / torouter p50 | same, less the call's cost | outputs differ by |")
    print("| --- | ---: |" + " ---: |" * len(levels) + " ---: | ---: | ---: | ---: |")
    for name in names:
        mine, theirs = ours["shapes"][name], ort["shapes"][name]
        check = load(out / f"{name}.check.json")["pytorch_vs_torouter_max_abs"]
        for length, us in mine["single_p50_us"].items():
            cells = " | ".join(f"{lower[level]['shapes'][name]['single_p50_us'][length]:,.0f} us"
                               for level in levels)
            peer = theirs["single_p50_us"][length]
            print(f"| {name}, {length} | {us:,.0f} us | {cells} | {peer:,.0f} us | {peer / us:.2f} | "
                  f"{(peer - overhead) / us:.2f} | {max(check, theirs['max_abs_difference']):.1g} |")
    print()
    print("1,024 llmrouter14 prompts (test split, then training split, cut at each shape's "
          "tokens): torouter packs their real tokens in chunks of 512 rows; ONNX Runtime pads "
          "them, in one batch or sorted by length into buckets, and its best is taken.\n")
    print("| shape | torouter (`" + picked + "`) | ONNX Runtime padded | ORT best (buckets) | "
          "torouter prompts/s | ORT best prompts/s | torouter speed-up |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name in names:
        mine, theirs = ours["shapes"][name], ort["shapes"][name]
        best_key = min(theirs["batch_ms"], key=theirs["batch_ms"].get)
        print(f"| {name} | {mine['batch_ms']:,.1f} ms | {theirs['batch_ms']['padded']:,.1f} ms | "
              f"{theirs['best_batch_ms']:,.1f} ms ({best_key.replace('_', ' ')}) | "
              f"{mine['batch_prompts_per_second']:,.0f} | {theirs['batch_prompts_per_second']:,.0f} | "
              f"{theirs['best_batch_ms'] / mine['batch_ms']:.2f}x |")
    print()
    rates = ", ".join(f"`{level}` {lower[level]['gemm_1024_gflops']:.1f}" for level in levels)
    print(f"Float GEMM 1024³, one core, GFLOP/s: torouter `{picked}` {ours['gemm_1024_gflops']:.1f} "
          f"({rates}); ONNX Runtime {ort['gemm_1024_gflops']:.1f}; torouter / ORT "
          f"{ours['gemm_1024_gflops'] / ort['gemm_1024_gflops']:.0%}.")


if __name__ == "__main__":
    main()
