#!/usr/bin/python3
"""Writes docs/RESULTS.md (to stdout) from the JSON files benchmarks/quality.sh
collects: one table per dataset, one row per router, with the figures of the
shared data README and the training time."""
import json
import os
import platform
import subprocess
import sys

from closed_loop import BEGIN, END
from ece_noise import ece_noise

DATASETS = ["routerbench3", "llmrouter14"]
OURS = [("default", "torouter default (`torouter train`, chosen by CV)"),
        ("gbt", "torouter gbt (boosted trees)"), ("linear", "torouter linear (ridge per expert)"),
        ("task", "torouter task (which training task, and its mean quality per expert)"),
        ("mlp-bce", "torouter MLP, BCE"), ("mlp-soft", "torouter MLP, soft labels"),
        ("mlp-soft-int8", "torouter MLP, soft labels, int8 table"),
        ("knn", "torouter kNN, k=40"),
        ("knn-dense", "torouter kNN, k=40, dense projection (dims=32)"), ("tlite-soft", "torouter transformer-lite, soft labels")]
PEERS = [("sklearn-knn", "scikit-learn TF-IDF + kNN, k=40"),
         ("sklearn-ridge", "scikit-learn TF-IDF + ridge")]
# The tuned peers of issue 15 (benchmarks/peers/tuned_peers.py), each with the
# per-query cost model and with each expert's mean training cost.
TEXT = "TF-IDF word 1-2 + char_wb 3-5"
for _key, _label in [("xgb", f"XGBoost per expert, SVD-256 of {TEXT} + log length"),
                     ("ridge-cv", f"ridge per expert (alpha by CV), {TEXT}"),
                     ("knn-cv", f"kNN, cosine, k by CV, {TEXT}"),
                     ("mf", f"matrix factorisation (RouteLLM-style), SVD-256 of {TEXT} + log length")]:
    PEERS += [(_key, f"{_label}; per-query cost"),
              (f"{_key}-meancost", f"{_label}; mean cost")]


def fmt(value, digits=4, suffix=""):
    if value is None:
        return "—"
    return f"{value:.{digits}f}{suffix}"


def machine():
    model = "unknown CPU"
    try:
        for line in open("/proc/cpuinfo"):
            if line.startswith("model name"):
                model = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    return f"{os.cpu_count()} cores ({model}), {platform.system()} {platform.release()}"


def row(label, report):
    r = report["router"]
    q0 = r["curve"][0]["quality"]
    c_at_q = r["cost_at_best_quality_pct"]
    return ("| " + " | ".join([
        label, fmt(q0), fmt(r["quality_at_best_cost"]),
        "not reached" if c_at_q is None else fmt(c_at_q, 1, "%"),
        fmt(r["gap_won"], 3), fmt(r["aiq"]), fmt(r["quality_at_10pct"]),
        fmt(r["quality_at_30pct"]), fmt(r["quality_at_70pct"]),
        fmt(r.get("ece"), 3),
        fmt(report.get("train_seconds"), 1, " s"),
        f"{r['routes_per_second']:.0f}"]) + " |")


def cross_validation_table(path):
    """The candidates `torouter train` printed: spec, AIQ, its folds' standard
    error, gap won, ECE, seconds."""
    if not os.path.exists(path):
        return []
    lines = ["| candidate | CV AIQ | folds' SE | CV gap won | CV ECE | seconds |",
             "| --- | --- | --- | --- | --- | --- |"]
    chosen = None
    for text in open(path, encoding="utf-8"):
        parts = text.split()
        if text.startswith("chose "):
            chosen = parts[1].rstrip(":")
        if "AIQ" not in parts or "ECE" not in parts:
            continue
        name = " ".join(parts[:parts.index("AIQ")])
        aiq, gap = parts[parts.index("AIQ") + 1], parts[parts.index("won") + 1]
        ece, seconds = parts[parts.index("ECE") + 1], parts[parts.index("ECE") + 2]
        error = parts[parts.index("SE") + 1].rstrip(")") if "SE" in parts else "—"
        lines.append(f"| `{name}` | {aiq} | {error} | {gap} | {ece} | {seconds} |")
    if chosen:
        lines += ["", f"Chosen: `{chosen}`."]
    return lines


def candidate_figures(path):
    """{candidate: (AIQ, gap won, ECE)} as `torouter train` printed them."""
    figures = {}
    if os.path.exists(path):
        for text in open(path, encoding="utf-8"):
            parts = text.split()
            if "AIQ" in parts and "ECE" in parts:
                name = " ".join(parts[:parts.index("AIQ")])
                figures[name] = (parts[parts.index("AIQ") + 1], parts[parts.index("won") + 1],
                                 parts[parts.index("ECE") + 1])
    return figures


def calibration_table(out, dataset):
    """The default's candidates calibrated linearly (the default) and by isotonic regression."""
    linear = candidate_figures(os.path.join(out, f"{dataset}-default.train.log"))
    isotonic = candidate_figures(os.path.join(out, f"{dataset}-isotonic.log"))
    if not linear or not isotonic:
        return []
    lines = ["| candidate | CV AIQ, linear | CV AIQ, isotonic | CV gap won, linear | "
             "CV gap won, isotonic | CV ECE, linear | CV ECE, isotonic |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name in linear:
        if name in isotonic:
            (la, lg, le), (ia, ig, ie) = linear[name], isotonic[name]
            lines.append(f"| `{name}` | {la} | {ia} | {lg} | {ig} | {le} | {ie} |")
    return lines


def not_a_candidate(name):
    """compare_oof.py's rows that are not torouter's candidates: the peer, the
    task bound and the task scorer shrunk toward neighbours."""
    return name.startswith(("xgboost", "task means", "task shrunk"))


def same_folds_table(path):
    """compare_oof.py's figures: every candidate and XGBoost on the same folds."""
    if not os.path.exists(path):
        return []
    results = json.load(open(path, encoding="utf-8"))
    lines = ["| router | AIQ | gap won | Q(λ=0) | ECE | task-balanced AIQ | task-balanced gap won |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, r in results.items():
        p, t = r["pooled"], r["task_balanced"]
        label = name if not_a_candidate(name) else f"torouter `{name}`"
        lines.append(f"| {label} | {fmt(p['aiq'])} | {fmt(p['gap_won'], 3)} | "
                     f"{fmt(p['q_lambda0'])} | {fmt(p['ece'], 3)} | {fmt(t['aiq'])} | "
                     f"{fmt(t['gap_won'], 3)} |")
    return lines


def bootstrap_table(path):
    """paired_bootstrap.py's figures: the default against each tuned peer."""
    if not os.path.exists(path):
        return []
    r = json.load(open(path, encoding="utf-8"))
    labels = dict(PEERS)
    unseen = r.get("aiq_unseen", {})
    lines = ["| peer | AIQ, the default | AIQ, the peer | difference | SD of the difference "
             "| resamples where the default is at least the peer "
             f"| AIQ on the {r.get('unseen_rows', 0)} prompts not in training, the default "
             "/ the peer |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for name, p in r["peers"].items():
        label = labels.get(name, name).split("; ")[0]
        lines.append(f"| {label} | {fmt(r['aiq'][r['ours']])} | {fmt(r['aiq'][name])} | "
                     f"{p['difference']:+.4f} | {p['sd']:.4f} | "
                     f"{100 * p['share_ours_at_least']:.0f}% | "
                     f"{fmt(unseen.get(r['ours']))} / {fmt(unseen.get(name))} |")
    return lines


def split_rows(data_root, dataset, split):
    """The rows of a dataset's split, or None when the dataset is absent."""
    path = os.path.join(data_root or "", dataset, f"{split}.jsonl")
    if not data_root or not os.path.exists(path):
        return None
    return [json.loads(line) for line in open(path, encoding="utf-8") if line.strip()]


def repeated_prompts(data_root, dataset):
    """({task: (test rows whose prompt is in the training split, test rows)},
    repeated rows, test rows, training rows that repeat an earlier training
    row's prompt), or None when the dataset is absent."""
    train, test = split_rows(data_root, dataset, "train"), split_rows(data_root, dataset, "test")
    if train is None or test is None:
        return None
    seen = {r["prompt"] for r in train}
    per_task = {}
    for r in test:
        repeated, total = per_task.get(r["task"], (0, 0))
        per_task[r["task"]] = (repeated + (r["prompt"] in seen), total + 1)
    return (per_task, sum(n for n, _ in per_task.values()),
            sum(t for _, t in per_task.values()), len(train) - len(seen))


def task_shares(data_root, dataset, split):
    """{task: share of the split's rows}, or {} when the dataset is absent."""
    counts = {}
    for row in split_rows(data_root, dataset, split) or []:
        counts[row["task"]] = counts.get(row["task"], 0) + 1
    total = sum(counts.values())
    return {task: n / total for task, n in counts.items()}


def test_split_findings(reports):
    """The default against the peers on the test split."""
    lines = []
    default = reports.get("default")
    peers = [(k, label) for k, label in PEERS if k in reports]
    if default and peers:
        d = default["router"]
        trail_aiq = [label for k, label in peers if reports[k]["router"]["aiq"] >= d["aiq"]]
        trail_gap = [label for k, label in peers
                     if (reports[k]["router"]["gap_won"] or -1e9) >= (d["gap_won"] or -1e9)]
        lines.append(f"- Test split: the default (AIQ {fmt(d['aiq'])}, gap won {fmt(d['gap_won'], 3)}) "
                     f"is above {len(peers) - len(trail_aiq)} of the {len(peers)} peer rows on AIQ "
                     f"and {len(peers) - len(trail_gap)} on gap won"
                     + (f"; at or above it on AIQ: {'; '.join(trail_aiq)}." if trail_aiq else "."))
        lines.append(f"- The default's ECE on the test split: {fmt(d.get('ece'), 3)}"
                     + noise_words(ece_noise(d)) + ".")
        ours = [k for k, _ in OURS if k in reports]
        best = max(ours, key=lambda k: reports[k]["router"]["aiq"])
        if best != "default":
            lines.append(f"- Cross-validation on the training split chose the default; on the "
                         f"test split {dict(OURS)[best]} has the higher AIQ "
                         f"({fmt(reports[best]['router']['aiq'])}).")
    return lines


def same_folds_findings(dataset, out):
    """torouter's candidates and XGBoost on the same cross-validation folds."""
    lines = []
    same = os.path.join(out, f"{dataset}-compare-oof.json")
    if os.path.exists(same):
        results = json.load(open(same, encoding="utf-8"))
        xgb = next((r for name, r in results.items() if name.startswith("xgboost")), None)
        ours = {name: r for name, r in results.items() if not not_a_candidate(name)}
        if xgb and ours:
            for view, words in (("pooled", "pooled"), ("task_balanced", "task-balanced")):
                beat = sum(r[view]["aiq"] > xgb[view]["aiq"] for r in ours.values())
                lines.append(f"- Same folds, {words}: {beat} of the {len(ours)} candidates have a "
                             f"higher AIQ than the XGBoost peer ({fmt(xgb[view]['aiq'])}).")
        shrunk = next((r for name, r in results.items() if name.startswith("task shrunk")), None)
        if shrunk and "task" in results:
            gain = shrunk["pooled"]["aiq"] - results["task"]["pooled"]["aiq"]
            if gain < 0.001:
                verdict = "adds nothing measurable to its task's means"
            elif gain < 0.005:
                verdict = "adds little to its task's means"
            else:
                verdict = "adds to its task's means: a candidate `torouter train` does not have"
            lines.append(f"- Same folds: pulling the `task` candidate toward each prompt's most "
                         f"similar training prompts changes its AIQ by {gain:+.4f} at its best "
                         f"setting: what one prompt's neighbours scored {verdict}.")
    return lines


def seed_findings(dataset, out):
    """The default's and the XGBoost peer's spread over training seeds."""
    lines = []
    seeded = [json.load(open(report, encoding="utf-8"))["router"]
              for _, report, _ in seed_runs(out, dataset)]
    if len(seeded) > 1:
        aiq = [r["aiq"] for r in seeded]
        ece = [r["ece"] for r in seeded if r.get("ece") is not None]
        shares = [n["share_at_or_above"] for n in map(ece_noise, seeded) if n]
        lines.append(f"- Over {len(seeded)} seeds the default's test AIQ is {fmt(min(aiq))} to "
                     f"{fmt(max(aiq))}" + (f", its ECE {fmt(min(ece), 3)} to {fmt(max(ece), 3)}"
                                          if ece else "")
                     + (f"; a perfectly calibrated router would show an ECE at least as high in "
                        f"{100 * min(shares):.0f}% to {100 * max(shares):.0f}% of draws"
                        if shares else "") + ".")
    xgb = [r for r in (xgb_seed_report(out, dataset, seed) for seed in (1,) + SEEDS) if r]
    if len(xgb) > 1:
        lines.append(f"- Over {len(xgb)} seeds the XGBoost peer's test AIQ is "
                     f"{fmt(min(r['aiq'] for r in xgb))} to {fmt(max(r['aiq'] for r in xgb))}.")
    return lines


def data_findings(dataset, data_root):
    """What the splits themselves hold: tasks, and prompts in both."""
    lines = []
    train, test = task_shares(data_root, dataset, "train"), task_shares(data_root, dataset, "test")
    if train and test:
        rare = sorted(t for t, share in test.items() if train.get(t, 0.0) < share / 2)
        absent = sorted(t for t in train if t not in test)
        lines.append(f"- Tasks: {len(train)} in the training split, {len(test)} in the test split; "
                     f"{len(rare)} test tasks have under half their test share in training"
                     + (f" ({', '.join(rare)})" if rare else "")
                     + (f"; absent from the test split: {', '.join(absent)}" if absent else "") + ".")
    repeats = repeated_prompts(data_root, dataset)
    if repeats and repeats[1]:
        per_task, repeated, total, train_repeats = repeats
        tasks = ", ".join(f"{t} {n} of {m}" for t, (n, m) in sorted(per_task.items()) if n)
        lines.append(f"- {repeated} of the test split's {total} prompts "
                     f"({100 * repeated / total:.0f}%) appear verbatim in the training split "
                     f"({tasks}), where {train_repeats} training prompts repeat another: a "
                     f"router that memorises its training rows gains on the test split in a way "
                     f"cross-validation cannot see. The paired bootstrap's last column leaves "
                     f"those prompts out.")
    return lines


def findings(dataset, reports, out, data_root):
    """Sentences computed from this dataset's figures, so none goes stale."""
    return (test_split_findings(reports) + same_folds_findings(dataset, out)
            + seed_findings(dataset, out) + data_findings(dataset, data_root))


def section(title, table, *intro):
    """A "###" section: its title, its introduction, then the table; nothing
    when the table is empty (its benchmark did not run)."""
    if not table:
        return []
    return ["", f"### {title}", "", *intro, ""] + table


def closed_loop_section():
    """The section benchmarks/closed_loop.py wrote into docs/RESULTS.md, kept
    as it is: that benchmark, not this one, measures it."""
    path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                        "docs/RESULTS.md")
    text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
    if BEGIN not in text or END not in text:
        return []
    return text[text.index(BEGIN):text.index(END) + len(END)].split("\n") + [""]


# The seeds benchmarks/quality.sh trains the default with besides 1 (its
# "for seed in" loop).
SEEDS = (2, 3, 4)


def noise_words(noise):
    """The ECE a perfectly calibrated router would show on the same bins
    (benchmarks/ece_noise.py), in words, or nothing without an ECE."""
    if noise is None:
        return ""
    return (f"; a perfectly calibrated router's on the same bins, from the sampling of "
            f"outcomes alone, would be {fmt(noise['calibrated_median'], 3)} (median; 95th "
            f"percentile {fmt(noise['calibrated_p95'], 3)}), and "
            f"{100 * noise['share_at_or_above']:.0f}% of such draws reach "
            f"{fmt(noise['ece'], 3)}")


def seed_runs(out, dataset):
    """(seed, eval JSON, train log) of each run of the default that
    quality.sh made: seed 1 (the tables' own) and SEEDS."""
    runs = []
    for seed in (1,) + SEEDS:
        stem = os.path.join(out, f"{dataset}-default" + (f"-seed{seed}" if seed != 1 else ""))
        if os.path.exists(f"{stem}.json") and os.path.exists(f"{stem}.train.log"):
            runs.append((seed, f"{stem}.json", f"{stem}.train.log"))
    return runs


def chosen_spec(train_log):
    """The candidate `torouter train` chose, from its "chose SPEC:" line."""
    for text in open(train_log, encoding="utf-8"):
        if text.startswith("chose "):
            return text.split()[1].rstrip(":")
    return "—"


def xgb_seed_report(out, dataset, seed):
    """The XGBoost peer's test figures (`router`) with `seed` (quality.sh's
    tuned_peers.py --seed runs; seed 1 is check_peers.sh's), or None."""
    path = os.path.join(out, "peers", f"{dataset}-xgb" + (f"-seed{seed}" if seed != 1 else "")
                        + ".json")
    return json.load(open(path, encoding="utf-8"))["router"] if os.path.exists(path) else None


def seed_table(out, dataset):
    """The default trained with seed 1 (the table above) and SEEDS: its
    choice and test figures, and the XGBoost peer's with the same seed where
    quality.sh trained it with other seeds (llmrouter14)."""
    with_peer = any(xgb_seed_report(out, dataset, seed) for seed in SEEDS)
    lines = ["| seed | chosen | AIQ | gap won | ECE | a calibrated router's ECE, median (95%) "
             "| its draws at or above |" + (" the XGBoost peer's AIQ / gap won |" if with_peer
                                            else ""),
             "| --- | --- | --- | --- | --- | --- | --- |" + (" --- |" if with_peer else "")]
    for seed, report, log in seed_runs(out, dataset):
        r = json.load(open(report, encoding="utf-8"))["router"]
        noise = ece_noise(r)
        floor = (f"{fmt(noise['calibrated_median'], 3)} ({fmt(noise['calibrated_p95'], 3)}) | "
                 f"{100 * noise['share_at_or_above']:.0f}%" if noise else "— | —")
        xgb = xgb_seed_report(out, dataset, seed)
        peer = f" {fmt(xgb['aiq'])} / {fmt(xgb['gap_won'], 3)} |" if xgb else " — |"
        lines.append(f"| {seed} | `{chosen_spec(log)}` | {fmt(r['aiq'])} | "
                     f"{fmt(r['gap_won'], 3)} | {fmt(r.get('ece'), 3)} | {floor} |"
                     + (peer if with_peer else ""))
    return lines if len(lines) > 3 else []


def introduction():
    """The page's title and what every table below shares."""
    return ["# Routing quality on the shared datasets", "",
            "Regenerate everything here, plots included, with `benchmarks/quality.sh`",
            "(from a clean build; about 55 minutes on 2 cores), except the closed-loop",
            "section, which `benchmarks/closed_loop.sh --write-results` measures and",
            "writes (about 2 minutes; quality.sh keeps it as it is). Figures follow the",
            "definitions of `../shared/data/README.md` on each dataset's test split",
            "(rows where every expert has an outcome). Our routers' cost weighs their",
            "own per-query cost prediction (estimated input tokens, predicted output",
            "tokens, prices; on routerbench3 the prices are fitted from `cost_usd`);",
            "the scikit-learn peers' cost weighs each expert's mean training cost, as",
            "in the README's reference; the tuned peers (benchmarks/peers/README.md)",
            "appear twice, with their per-query cost model and with the mean cost.",
            "All trained with seed 1 and at most 2 threads; `routes/s` is one query at",
            "a time on one thread (ours: `Router::route`; peers: featurize + predict",
            "in Python). ECE: the shared README's calibration error at λ = 0; ours",
            "weighs each pick's expected quality (a trained model corrects its top",
            "picks for the winner's curse, docs/ARCHITECTURE.md), the peers' their",
            "predicted quality. On a few hundred rows an ECE is mostly sampling",
            "noise: each dataset's findings give what a perfectly calibrated router",
            "would show on the same rows (`benchmarks/ece_noise.py`).", "",
            f"Machine: {machine()}.", ""]


def load_reports(dataset, out):
    """This dataset's reports, ours and the peers', by key."""
    reports = {}
    for key, _ in OURS:
        path = os.path.join(out, f"{dataset}-{key}.json")
        if os.path.exists(path):
            reports[key] = json.load(open(path))
    for key, _ in PEERS:
        path = os.path.join(out, "peers", f"{dataset}-{key}.json")
        if os.path.exists(path):
            reports[key] = json.load(open(path))
    return reports


def results_table(dataset, reports):
    """The test split's table of every router, and the plot of our best."""
    lines = []
    any_report = next(iter(reports.values()))
    best = any_report["best_expert"]
    lines += [f"## {dataset}", "",
              f"{any_report['test_rows']} test prompts, {len(any_report['experts'])} experts. "
              f"Best expert: {best['name']}, Q* {best['quality']:.4f} at C* ${best['cost']:.3g}. "
              f"Oracle {any_report['oracle']['quality']:.4f}; random {any_report['random']['quality']:.4f}; "
              f"experts alone AIQ {any_report.get('experts_alone_aiq', float('nan')):.4f}.", "",
              "| router | Q(λ=0) | Q@C* | C@Q* | gap won | AIQ | Q@10% | Q@30% | Q@70% | ECE | training | routes/s |",
              "| --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- | --- |"]
    for key, label in OURS + PEERS:
        if key in reports:
            lines.append(row(label, reports[key]))
    best_ours = max((k for k, _ in OURS if k in reports), key=lambda k: reports[k]["router"]["aiq"],
                    default=None)
    if best_ours:
        lines += ["", f"Our best router here by AIQ: {dict(OURS)[best_ours]}.",
                  f"![cost-quality plane, {dataset}](plots/{dataset}-{best_ours}.svg)"]
    return lines


def choice_sections(dataset, out):
    """How `torouter train` chose the default, and against XGBoost on its folds."""
    lines = []
    lines += section(
        f"How the default was chosen ({dataset})",
        cross_validation_table(os.path.join(out, f"{dataset}-default.train.log")),
        "`torouter train` with no scorer: each candidate's figures on out-of-fold",
        "predictions of 5-fold cross-validation on the training split, each",
        "fold calibrated on the others, then stacks of the best. Trained on",
        "every row: the fewest members among the candidates whose AIQ is",
        "below the best's by at most the standard error of their fold-by-fold",
        "differences (the one-standard-error rule, paired by fold). The SE",
        "column is each candidate's own folds' standard error.")
    lines += section(
        f"Linear against isotonic calibration ({dataset})", calibration_table(out, dataset),
        "The default's candidates, cross-validated as above, calibrated",
        "linearly (the default) and by isotonic regression (`torouter train",
        "--calibration isotonic`). Each fold's rows are calibrated on the",
        "other folds' out-of-fold predictions, so the figures judge the",
        "calibration on rows it did not see.")
    lines += section(
        f"torouter and XGBoost on the same folds ({dataset})",
        same_folds_table(os.path.join(out, f"{dataset}-compare-oof.json")),
        "`benchmarks/peers/compare_oof.py`: the default's candidates'",
        "out-of-fold predictions (`torouter train --out-of-fold`) and the",
        "XGBoost peer trained on the very same 5 folds of the training split,",
        "all judged with one cost prediction (the peers' per-query cost",
        "model), so only the quality models differ; pooled over the training",
        "rows, and again with every task weighted equally. The ECE here is of",
        "the picks' per-expert calibrated prediction, before the top-pick map",
        "(the CV ECE above is after it). The last two rows are not routers.",
        "\"task means\": each held-out row's own task's mean quality per expert",
        "on the other folds, its task given, the most that routing by the task",
        "alone could win. \"task shrunk\": the `task` candidate's predictions",
        "pulled toward the outcomes of each row's k most similar training",
        "prompts of the other folds (cosine of TF-IDF), weighted by similarity",
        "to the power p, the task's prediction counted as w such prompts; the",
        "best of a grid of settings on these same rows, so an optimistic figure:",
        "what a prompt's own neighbourhood adds to its task.")
    return lines


def robustness_sections(dataset, reports, out, data_root):
    """How sure the figures are: bootstrap, seeds, ablation, and the findings."""
    lines = []
    lines += section(
        f"How sure the test split is ({dataset})",
        bootstrap_table(os.path.join(out, f"{dataset}-bootstrap.json")),
        "`benchmarks/peers/paired_bootstrap.py`: the default's and each tuned",
        "peer's test predictions judged with one cost prediction (the peers'",
        "per-query cost model), so only the quality models differ, then the",
        "test rows resampled within each task, the same resample for every",
        "router (200 resamples).")
    lines += section(
        f"The default with other seeds ({dataset})", seed_table(out, dataset),
        f"`torouter train` with no scorer and `--seed` {', '.join(map(str, SEEDS[:-1]))} "
        f"and {SEEDS[-1]} besides",
        "the seed 1 of every other figure here (the seed draws the folds,",
        "the projections' sketches and the networks' first weights), each",
        "judged on the test split. Beside each ECE, what sampling alone",
        "makes on these rows (`benchmarks/ece_noise.py`): the ECE of",
        "outcomes drawn as a perfectly calibrated router's would be, on the",
        "same bins (0/1 draws, an upper bound on the noise where scores",
        "are fractional; 4,000 draws), and the share of those draws at or",
        "above the observed ECE: a small share says the router is not",
        "calibrated, a large one that the test split cannot tell. On",
        "llmrouter14 the last column is the XGBoost peer trained with the",
        "same seed (of its SVD, its train-internal split and its sampling;",
        "`tuned_peers.py --seed`).")
    ablation = cross_validation_table(os.path.join(out, f"{dataset}-ablation.log"))
    lines += section(
        f"Ablation by cross-validation ({dataset})",
        [l for l in ablation if not l.startswith("Chosen")],
        "The same 5-fold cross-validation on the training split alone, one",
        "change at a time from each scorer's defaults (see `benchmarks/quality.sh`).")
    lines += section(
        f"What the figures say ({dataset})", findings(dataset, reports, out, data_root),
        "Computed by benchmarks/write_results.py from the tables above.")
    return lines


def notes():
    # Method only: every sentence with a figure is computed above.
    return ["## Notes", "",
            "- The scikit-learn rows are rebuilt by `benchmarks/peers/` with the shared",
            "  definitions; how they compare with the shared README's reference table,",
            "  and what carries the XGBoost peer's gain, is in benchmarks/peers/README.md.",
            "- Every choice of the default is made on the training split; the test split",
            "  only judges.",
            "- Every torouter router is calibrated: per expert, a line of quality on the",
            "  raw output (`--calibration linear`, the default) fitted on 5-fold",
            "  out-of-fold predictions; the calibration table compares it with",
            "  isotonic regression. A second isotonic map, fitted on held-out top",
            "  picks and kept where cross-validation shows it lowers their ECE, gives",
            "  a top pick's expected quality; the ECE columns weigh that,",
            "  on the test split (tables of the test split) or cross-fitted by fold",
            "  (the CV tables).",
            "- The int8 table (`table=int8`) quantizes the MLP's embedding table after",
            "  training, a quarter of the bytes per row read when routing; its row is",
            "  the same training as \"MLP, soft labels\".",
            ""]


def main(out, data_root=None):
    lines = introduction()
    for dataset in DATASETS:
        reports = load_reports(dataset, out)
        if not reports:
            continue
        lines += results_table(dataset, reports)
        lines += choice_sections(dataset, out)
        lines += robustness_sections(dataset, reports, out, data_root)
        lines.append("")
    lines += closed_loop_section()
    lines += notes()
    print("\n".join(lines))

if __name__ == "__main__":
    main(sys.argv[1], sys.argv[2] if len(sys.argv) > 2 else os.environ.get("TOROUTER_DATA", "../shared/data"))
