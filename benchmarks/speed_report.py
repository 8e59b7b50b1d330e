#!/usr/bin/python3
"""Merges benchmarks/speed.sh's measurements into results.json and results.md.

    /usr/bin/python3 benchmarks/speed_report.py build/speed
"""

import json
import os
import sys


def load(path, default=None):
    try:
        with open(path, encoding="utf-8") as f:
            return json.load(f)
    except FileNotFoundError:
        return default


def seconds(wall):
    """h:mm:ss or m:ss.ss to seconds."""
    total = 0.0
    for part in wall.split(":"):
        total = total * 60 + float(part)
    return total


def fmt_us(x):
    return "—" if x is None else (f"{x:,.1f}" if x < 100 else f"{x:,.0f}")


def ratio(peer, ours):
    return "—" if not peer or not ours else f"{peer / ours:,.1f}x"


def main():
    out = sys.argv[1]
    machine = {**load(os.path.join(out, "machine.json"), {}),
               **load(os.path.join(out, "machine_end.json"), {})}
    route = load(os.path.join(out, "route.json"), {"models": {}, "classes": []})
    sk = load(os.path.join(out, "sklearn.json"), {"routers": {}})
    torch = load(os.path.join(out, "torch.json"), {"models": {}})
    gemm = load(os.path.join(out, "gemm.json"), {})
    route_low = load(os.path.join(out, "route_baseline.json"), {"models": {}})
    gemm_low = load(os.path.join(out, "gemm_baseline.json"), {})
    rss = {m: load(os.path.join(out, f"rss-{m}.json")) for m in route["models"]}
    training = []
    tsv = os.path.join(out, "training.tsv")
    if os.path.exists(tsv):
        with open(tsv, encoding="utf-8") as f:
            for line in f:
                dataset, name, threads, wall, rss_kb = line.rstrip("\n").split("\t")
                training.append({"dataset": dataset, "scorer": name, "threads": int(threads),
                                 "seconds": seconds(wall), "peak_rss_mb": int(rss_kb) / 1024})
    results = {"machine": machine, "route": route, "sklearn": sk, "torch": torch, "gemm": gemm,
               "route_baseline": route_low, "gemm_baseline": gemm_low, "rss": rss,
               "training": training}
    with open(os.path.join(out, "results.json"), "w", encoding="utf-8") as f:
        json.dump(results, f, indent=1)
        f.write("\n")

    md = []
    md.append(f"Machine: {machine.get('cpu')}, nproc {machine.get('nproc')}, "
              f"{machine.get('compiler')}; timings pinned with `{machine.get('pinned_cpu')}`; "
              f"load average {machine.get('load_average_start')} at the start, "
              f"{machine.get('load_average_end')} at the end; commit {machine.get('commit')}, "
              f"{machine.get('date')}.\n")
    classes = route.get("classes", [])
    md.append("Prompts: " + "; ".join(
        f"{c['prompts']} of about {c['target_chars']} characters (median {c['median_chars']:.0f}"
        + (f", {c['synthesized']} made by joining dataset prompts" if c["synthesized"] else "")
        + ")" for c in classes) + ".\n")

    md.append("### Router::route, one prompt at a time (µs; median of rounds)\n")
    md.append("| router | chars | p50 | p99 | p50 CPU time | allocations per warm route |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: |")
    for name, m in route["models"].items():
        for cls, r in m["route_us"].items():
            md.append(f"| torouter {name} (`{m['spec']}`) | {cls} | {fmt_us(r['p50']['median'])} "
                      f"| {fmt_us(r['p99']['median'])} | {fmt_us(r['thread_cpu_p50']['median'])} "
                      f"| {m['allocations_per_warm_route']:g} |")
    for name, r in sk.get("routers", {}).items():
        for cls in ("100", "500", "4000"):
            x = r["route_us"].get(cls)
            if x:
                md.append(f"| scikit-learn {name} | {cls} | {fmt_us(x['p50'])} | {fmt_us(x['p99'])} | | |")
    for name, t in torch.get("models", {}).items():
        for cls, x in t["route_us"].items():
            md.append(f"| PyTorch {name} (network only) | {cls} | {fmt_us(x['p50'])} "
                      f"| {fmt_us(x['p99'])} | | |")
    md.append("")

    md.append("### Ratios, peer p50 / torouter p50 (same run, same prompts)\n")
    md.append("| torouter | chars | vs scikit-learn ridge | vs scikit-learn kNN | vs PyTorch, same shape |")
    md.append("| --- | ---: | ---: | ---: | ---: |")
    for name, m in route["models"].items():
        for cls, r in m["route_us"].items():
            ours = r["p50"]["median"]
            ridge = sk.get("routers", {}).get("ridge", {}).get("route_us", {}).get(cls, {}).get("p50")
            knn = sk.get("routers", {}).get("knn", {}).get("route_us", {}).get(cls, {}).get("p50")
            tp = torch.get("models", {}).get(name, {}).get("route_us", {}).get(cls, {}).get("p50")
            md.append(f"| {name} | {cls} | {ratio(ridge, ours)} | {ratio(knn, ours)} | {ratio(tp, ours)} |")
    md.append("")

    md.append("### Batch scoring (`Scorer::score`), prompts per second, llmrouter14 test mix\n")
    md.append("| router | batch 1 | batch 32 | batch 1,024 | PyTorch 1 | PyTorch 32 | PyTorch 1,024 |")
    md.append("| --- | ---: | ---: | ---: | ---: | ---: | ---: |")
    for name, m in route["models"].items():
        b = m["batch"]
        t = torch.get("models", {}).get(name, {}).get("batch", {})
        cells = [f"{b[k]['prompts_per_second']['median']:,.0f}" for k in ("1", "32", "1024")]
        tcells = [f"{t[k]['prompts_per_second']['median']:,.0f}" if k in t else "—"
                  for k in ("1", "32", "1024")]
        md.append(f"| {name} | " + " | ".join(cells + tcells) + " |")
    md.append("")

    if route_low["models"]:
        md.append("### At the x86-64 baseline (`TOROUTER_CPU_LEVEL=x86-64`), same run\n")
        md.append("The kernels capped at SSE2, which every CPU ran before they were compiled per "
                  "level: Router::route p50 and p99 (µs), and how many times faster the default "
                  "above is.\n")
        md.append("| router | chars | p50 | p99 | default's speed-up | batch 1,024 (prompts/s) |")
        md.append("| --- | ---: | ---: | ---: | ---: | ---: |")
        for name, m in route_low["models"].items():
            for cls, r in m["route_us"].items():
                picked = route["models"].get(name, {}).get("route_us", {}).get(cls, {}).get("p50", {})
                batch = m["batch"]["1024"]["prompts_per_second"]["median"] if cls == "100" else None
                md.append(f"| {name} | {cls} | {fmt_us(r['p50']['median'])} | {fmt_us(r['p99']['median'])} "
                          f"| {ratio(r['p50']['median'], picked.get('median'))} "
                          f"| {f'{batch:,.0f}' if batch else ''} |")
        md.append("")

    g = gemm.get("gflop_per_second", {}).get("median")
    g3 = gemm_low.get("gflop_per_second", {}).get("median")
    md.append("### The GEMM ceiling\n")
    ceilings = [f"{g:.1f} GFLOP/s at the level picked ({gemm.get('simd')})"] if g else []
    if g3:
        ceilings.append(f"{g3:.1f} GFLOP/s at the baseline ({gemm_low.get('simd')})")
    md.append("torouter's float GEMM 1024³ on one core (its kernels, Eigen): " + "; ".join(ceilings) + "."
              if ceilings else "GEMM: not measured.")
    md.append("")
    for build, models, ceiling in (("default", route["models"], g), ("x86-64 baseline", route_low["models"], g3)):
        for name, m in models.items():
            b = m["batch"].get("1024", {})
            if "useful_gflop_per_second" in b and ceiling:
                md.append(f"- {name}, {build} build, batch 1,024: {b['useful_gflop_per_second']:.1f} useful "
                          f"GFLOP/s ({b['useful_gflop_per_prompt'] * 1e3:.1f} MFLOP per prompt, real "
                          f"positions only) = {b['useful_gflop_per_second'] / ceiling:.0%} of that "
                          f"build's GEMM rate.")
    md.append("")

    md.append("### Training (wall clock, whole CLI run) and peak memory\n")
    md.append("| dataset | scorer | threads | seconds | peak RSS (MB) |")
    md.append("| --- | --- | ---: | ---: | ---: |")
    for t in training:
        md.append(f"| {t['dataset']} | {t['scorer']} | {t['threads']} | {t['seconds']:.1f} "
                  f"| {t['peak_rss_mb']:.0f} |")
    for name, r in sk.get("routers", {}).items():
        md.append(f"| {sk.get('dataset')} | scikit-learn {name} (fit only) | 1 | {r['train_seconds']:.1f} | |")
    md.append("")
    md.append("### A loaded router's memory\n")
    md.append("| router | resident after load and route (MB) | of which the router (MB) |")
    md.append("| --- | ---: | ---: |")
    for name, r in rss.items():
        if r:
            md.append(f"| {name} | {r['rss_loaded_kb'] / 1024:.0f} | {r['router_kb'] / 1024:.0f} |")
    md.append("")

    # Targets of issue 5.
    md.append("### Targets (issue 5)\n")
    ridge = sk.get("routers", {}).get("ridge", {}).get("route_us", {}).get("500", {}).get("p50")
    torch128 = torch.get("models", {}).get("tlite128", {}).get("route_us", {}).get("4000", {}).get("p50")
    mlp_train = [t for t in training if t["dataset"] == "llmrouter14" and t["scorer"] == "mlp"
                 and t["threads"] == 2]
    allocs = [m["allocations_per_warm_route"] for m in route["models"].values()]

    def verdict(ok):
        return "met" if ok else "missed"
    for build, models, ceiling in (("default", route["models"], g), ("x86-64 baseline", route_low["models"], g3)):
        for name in ("mlp", "mlp-int8"):
            mlp = models.get(name, {}).get("route_us", {}).get("500")
            if mlp:
                md.append(f"- MLP route ({name}, {build} build), 500 chars: p50 {mlp['p50']['median']:.1f} µs "
                          f"(≤ 20), p99 {mlp['p99']['median']:.1f} µs (≤ 60): "
                          f"{verdict(mlp['p50']['median'] <= 20 and mlp['p99']['median'] <= 60)}; "
                          f"{ratio(ridge, mlp['p50']['median'])} faster than the ridge peer (≥ 40x): "
                          f"{verdict(ridge and ridge / mlp['p50']['median'] >= 40)}.")
        t128 = models.get("tlite128", {}).get("route_us", {}).get("4000")
        if t128:
            md.append(f"- Transformer-lite route ({models['tlite128']['spec']}, {build} build), 128 tokens: "
                      f"p50 {t128['p50']['median']:.0f} µs (≤ 1,000): {verdict(t128['p50']['median'] <= 1000)}; "
                      f"PyTorch, same shape, {fmt_us(torch128)} µs: "
                      f"{verdict(torch128 and torch128 > t128['p50']['median'])}.")
        tl = models.get("tlite", {}).get("batch", {}).get("1024", {})
        if tl.get("useful_gflop_per_second") and ceiling:
            md.append(f"- Transformer-lite batch 1,024 ({build} build): "
                      f"{tl['useful_gflop_per_second'] / ceiling:.0%} of that build's GEMM rate (≥ 50%): "
                      f"{verdict(tl['useful_gflop_per_second'] / ceiling >= 0.5)}.")
    if mlp_train:
        md.append(f"- MLP training on llmrouter14, 2 threads: {mlp_train[0]['seconds']:.1f} s (< 30): "
                  f"{verdict(mlp_train[0]['seconds'] < 30)}.")
    md.append(f"- Heap allocations per warm route: {', '.join(f'{a:g}' for a in allocs)}: "
              f"{verdict(all(a == 0 for a in allocs))}.")
    with open(os.path.join(out, "results.md"), "w", encoding="utf-8") as f:
        f.write("\n".join(md) + "\n")


if __name__ == "__main__":
    main()
