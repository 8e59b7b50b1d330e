#!/usr/bin/env python3
"""The learning loop, closed (issue 14, item 7): a simulated service learns
its router from its own traffic through torouter-server.

    benchmarks/closed_loop.sh                      # llmrouter14, 3 passes of 5 rounds, gbt
    benchmarks/closed_loop.py --rounds 3 --scorer knn:40,dims=32 --json out.json

The service: torouter-server in front of the stand-in upstream, which
answers for every expert of a shared dataset; the dataset's quality of the
expert that answered is the user's verdict, sent to POST /v1/feedback. The
server routes at lambda = 0 with exploration on and writes the decision log.

1. A seeded shuffle of the training split: the first --seed-fraction of it
   trains the first live model (`torouter train --data`); the rest is served
   in --rounds rounds of equal size.
2. Each round: every prompt through the server (--clients at a time), each
   answer's verdict fed back. Then a candidate is trained on the seed rows
   and the log (`torouter train --log --data`), leaving out a --holdout share
   of this round's calls; its off-policy estimate on those held-out calls
   (`torouter eval --log`) is set next to the true value, its routed quality
   on the same prompts by the dataset. Then it replaces the live model
   (POST /admin/reload) and is judged on the test split (`torouter eval
   --data`): AIQ and routed quality at lambda = 0.
3. Beside it, the same scorer trained offline on the whole training split.
The loop runs --repeats times, each pass with its own seed split (the
server's exploration and the clients' order differ between passes too);
the table gives each figure's median over the passes.

Nothing of the dataset is written into the repository: the seed split and
the held-out prompts go to a temporary folder, removed at the end. With
--write-results the table replaces the closed-loop section of
docs/RESULTS.md. Not run by CI.
"""
import argparse
import concurrent.futures
import hashlib
import http.client
import json
import os
import random
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time

from server_concurrency import start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
API_KEY = "closed-loop-key"
BEGIN, END = "<!-- closed-loop: begin -->", "<!-- closed-loop: end -->"


def run(command, log):
    """Runs a torouter program, its output appended to `log`; exits on failure."""
    with open(log, "a") as out:
        out.write("$ " + " ".join(command) + "\n")
        out.flush()
        if subprocess.run(command, stdout=out, stderr=subprocess.STDOUT).returncode != 0:
            sys.exit(f"closed_loop: failed: {' '.join(command)} (see {log})")


def read_jsonl(path):
    with open(path, encoding="utf-8") as f:
        return [json.loads(line) for line in f if line.strip()]


def write_dataset(folder, experts_json, train_rows, test_rows):
    """A dataset folder in the shared format, in the temporary work folder."""
    os.makedirs(folder, exist_ok=True)
    shutil.copy(experts_json, os.path.join(folder, "experts.json"))
    for name, rows in (("train.jsonl", train_rows), ("test.jsonl", test_rows)):
        with open(os.path.join(folder, name), "w", encoding="utf-8") as f:
            for row in rows:
                f.write(json.dumps(row) + "\n")


def evaluate(args, model, dataset, work, log):
    """`torouter eval --data`: (AIQ, routed quality at lambda = 0)."""
    out = os.path.join(work, "eval.json")
    run([args.torouter, "eval", "--data", dataset, "--model", model, "--json", out], log)
    report = json.load(open(out))
    at_zero = next(p for p in report["router"]["curve"] if p["lambda"] == 0)
    return report["router"]["aiq"], at_zero["quality"]


def train(args, out, log, data=None, decision_log=None):
    command = [args.torouter, "train", "--scorer", args.scorer, "--seed", "1", "--threads",
               str(args.threads), "--out", out]
    if data:
        command += ["--data", data]
    if decision_log:
        command += ["--log", decision_log]
    started = time.monotonic()
    run(command, log)
    return time.monotonic() - started


def server_config(path, experts_json, model, upstream, decision_log, args):
    experts = json.load(open(experts_json))["experts"]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0},
        "router_model": model,
        "api_keys": [API_KEY],
        "policy": {"lambda_cost": 0},
        "exploration": {"epsilon": args.epsilon, "max_cost_ratio": args.max_cost_ratio},
        "decision_log": {"path": decision_log, "max_bytes": 0},
        "experts": [{"name": name, "base_url": f"http://127.0.0.1:{upstream}/v1",
                     "input_usd_per_mtok": spec.get("input_usd_per_mtok", 0),
                     "output_usd_per_mtok": spec.get("output_usd_per_mtok", 0),
                     "max_concurrent_calls": 0} for name, spec in experts.items()],
    }
    with open(path, "w") as f:
        json.dump(config, f)


class Client:
    """One keep-alive connection to the server (one per client thread)."""

    def __init__(self, port):
        self.port = port
        self.connection = None

    def post(self, path, body):
        for attempt in range(2):  # once more on a connection the server closed
            try:
                if self.connection is None:
                    self.connection = http.client.HTTPConnection("127.0.0.1", self.port, timeout=60)
                self.connection.request("POST", path, json.dumps(body),
                                        {"Content-Type": "application/json",
                                         "Authorization": f"Bearer {API_KEY}"})
                response = self.connection.getresponse()
                return response.status, json.loads(response.read() or b"null")
            except (http.client.HTTPException, ConnectionError):
                self.connection = None
                if attempt == 1:
                    raise


def serve_round(port, rows, clients):
    """Every row's prompt through the server, its verdict fed back (when the
    dataset has the answering expert's outcome). Returns the ids of the
    calls, how many verdicts were sent, and their mean."""
    local = threading.local()

    def one(row):
        if not hasattr(local, "client"):
            local.client = Client(port)
        client = local.client
        status, answer = client.post("/v1/chat/completions", {
            "model": "router", "messages": [{"role": "user", "content": row["prompt"]}]})
        if status != 200:
            sys.exit(f"closed_loop: chat answered {status}: {answer}")
        outcome = row["outcomes"].get(answer["model"])
        if outcome is None:
            return answer["id"], None
        status, recorded = client.post("/v1/feedback",
                                       {"id": answer["id"], "quality": outcome["quality"]})
        if status != 200:
            sys.exit(f"closed_loop: feedback answered {status}: {recorded}")
        return answer["id"], outcome["quality"]

    with concurrent.futures.ThreadPoolExecutor(clients) as pool:
        results = list(pool.map(one, rows))
    verdicts = [q for _, q in results if q is not None]
    served_quality = sum(verdicts) / len(verdicts) if verdicts else float("nan")
    return [i for i, _ in results], len(verdicts), served_quality


def wait_logged(path, decisions, feedbacks):
    """The log is written off the call path: waits until it holds the lines."""
    for _ in range(600):
        text = open(path, encoding="utf-8").read() if os.path.exists(path) else ""
        if (text.count('"type": "decision"') >= decisions
                and text.count('"type": "feedback"') >= feedbacks):
            return
        time.sleep(0.05)
    sys.exit(f"closed_loop: {path} never held {decisions} decisions and {feedbacks} verdicts")


def held_out(call_id, share):
    """Whether a call is held out of the candidate's training: by its id's hash."""
    return int(hashlib.sha256(call_id.encode()).hexdigest()[:8], 16) < share * 2**32


def split_log(path, holdout_ids, training_path, holdout_path):
    """The log's lines into those of held-out calls and the rest."""
    with open(path, encoding="utf-8") as log, open(training_path, "w", encoding="utf-8") as train, \
            open(holdout_path, "w", encoding="utf-8") as holdout:
        for line in log:
            if line.strip():
                (holdout if json.loads(line)["id"] in holdout_ids else train).write(line)


def off_policy(args, model, log_path, work, log):
    out = os.path.join(work, "off_policy.json")
    run([args.torouter, "eval", "--log", log_path, "--model", model, "--json", out], log)
    return json.load(open(out))


def reload(port):
    status, answer = Client(port).post("/admin/reload", {})
    if status != 200:
        sys.exit(f"closed_loop: reload answered {status}: {answer}")
    return answer


def rounds_of(rows, count):
    size = -(-len(rows) // count)
    return [rows[i:i + size] for i in range(0, len(rows), size)]


class Service:
    """torouter-server with the live model, in front of the stand-in."""

    def __init__(self, args, experts_json, live, work):
        self.decision_log = os.path.join(work, "decisions.jsonl")
        config = os.path.join(work, "server.json")
        self.stand_in, upstream = start(
            [os.path.join(args.build, "bin/torouter-stand-in"), "--port", "0"],
            os.path.join(work, "stand_in.log"))
        server_config(config, experts_json, live, upstream, self.decision_log, args)
        self.server, self.port = start(
            [os.path.join(args.build, "bin/torouter-server"), "--config", config],
            os.path.join(work, "server.log"))

    def stop(self):
        for proc in (self.server, self.stand_in):
            proc.terminate()
            proc.wait()


class Run:
    """One pass of the loop: a seed split, a service, its rounds."""

    def __init__(self, args, seed, work, log):
        self.args, self.work, self.log = args, work, log
        self.experts_json = os.path.join(args.data, "experts.json")
        rows = read_jsonl(os.path.join(args.data, "train.jsonl"))
        random.Random(seed).shuffle(rows)
        seed_size = round(args.seed_fraction * len(rows))
        self.seed_rows, self.served = rows[:seed_size], rows[seed_size:]
        self.seed_dir = os.path.join(work, "seed")
        write_dataset(self.seed_dir, self.experts_json, self.seed_rows,
                      read_jsonl(os.path.join(args.data, "test.jsonl")))
        self.live = os.path.join(work, "live.tormodel")
        self.calls = 0
        self.verdicts = 0

    def first_model(self):
        train(self.args, self.live, self.log, data=self.seed_dir)
        aiq, quality = evaluate(self.args, self.live, self.args.data, self.work, self.log)
        return {"round": 0, "calls": 0, "aiq": aiq, "quality": quality}

    def round(self, number, batch, service):
        """Serves `batch`, retrains with a held-out share, estimates, reloads."""
        args, work, log = self.args, self.work, self.log
        started = time.monotonic()
        ids, verdicts, served_quality = serve_round(service.port, batch, args.clients)
        self.calls += len(ids)
        self.verdicts += verdicts
        wait_logged(service.decision_log, self.calls, self.verdicts)
        serve_seconds = time.monotonic() - started
        holdout_ids = {i for i in ids if held_out(i, args.holdout)}
        training_log = os.path.join(work, "training_log.jsonl")
        holdout_log = os.path.join(work, "holdout_log.jsonl")
        split_log(service.decision_log, holdout_ids, training_log, holdout_log)
        candidate = os.path.join(work, "candidate.tormodel")
        train_seconds = train(args, candidate, log, data=self.seed_dir, decision_log=training_log)
        estimate = off_policy(args, candidate, holdout_log, work, log)
        # The true value: the candidate's routed quality on the held-out prompts.
        truth_dir = os.path.join(work, "holdout_prompts")
        write_dataset(truth_dir, self.experts_json, self.seed_rows,
                      [row for i, row in zip(ids, batch) if i in holdout_ids])
        _, true_quality = evaluate(args, candidate, truth_dir, work, log)
        os.replace(candidate, self.live)
        reloaded = reload(service.port)
        aiq, quality = evaluate(args, self.live, args.data, work, log)
        return {"round": number, "calls": self.calls, "served_quality": served_quality,
                "aiq": aiq, "quality": quality, "held_out": len(holdout_ids),
                "off_policy_matching": estimate["matching"],
                "doubly_robust": estimate["quality"]["doubly_robust"],
                "inverse_propensity": estimate["quality"]["ips"], "true_quality": true_quality,
                "serve_seconds": serve_seconds, "train_seconds": train_seconds,
                "model_version": reloaded.get("model_version")}

    def rounds(self):
        results = [self.first_model()]
        service = Service(self.args, self.experts_json, self.live, self.work)
        try:
            for number, batch in enumerate(rounds_of(self.served, self.args.rounds), start=1):
                results.append(self.round(number, batch, service))
                print_round(results[-1])
        finally:
            service.stop()
        return results


def print_round(r):
    dr = r["doubly_robust"]
    print(f"  round {r['round']} ({r['calls']} calls, served Q {r['served_quality']:.4f}): "
          f"AIQ {r['aiq']:.4f}, Q(λ=0) {r['quality']:.4f}; held out {r['held_out']}: "
          f"DR {dr['value']:.4f} [{dr['low']:.4f}, {dr['high']:.4f}], "
          f"true {r['true_quality']:.4f}; served in {r['serve_seconds']:.1f}s, "
          f"trained in {r['train_seconds']:.1f}s", file=sys.stderr)


def measure(args, work, log):
    """The offline model once, then --repeats passes of the loop."""
    offline = os.path.join(work, "offline.tormodel")
    offline_seconds = train(args, offline, log, data=args.data)
    offline_aiq, offline_quality = evaluate(args, offline, args.data, work, log)
    print(f"offline: AIQ {offline_aiq:.4f}, Q(λ=0) {offline_quality:.4f}", file=sys.stderr)
    report = {"dataset": os.path.basename(os.path.normpath(args.data)), "scorer": args.scorer,
              "epsilon": args.epsilon, "max_cost_ratio": args.max_cost_ratio,
              "holdout": args.holdout, "seed_fraction": args.seed_fraction,
              "offline": {"aiq": offline_aiq, "quality": offline_quality,
                          "train_seconds": offline_seconds}, "runs": []}
    for repeat in range(args.repeats):
        print(f"pass {repeat + 1} of {args.repeats} (seed {args.seed + repeat})", file=sys.stderr)
        run_work = os.path.join(work, f"pass{repeat + 1}")
        os.makedirs(run_work, exist_ok=True)
        one = Run(args, args.seed + repeat, run_work, log)
        report["seed_rows"], report["served_rows"] = len(one.seed_rows), len(one.served)
        report["runs"].append(one.rounds())
    return report


def median(values):
    return statistics.median(values)


def intro(report, command):
    return [f"`{command}`: torouter-server in front of the stand-in, on {report['dataset']}'s",
            f"training split, {len(report['runs'])} passes. In each, the first live model is "
            f"`{report['scorer']}` trained on",
            f"{report['seed_rows']} rows (a seeded {round(100 * report['seed_fraction'])}% of "
            f"the split, another each pass); the other {report['served_rows']} prompts are",
            "served in rounds at λ = 0 with exploration on (ε "
            f"{report['epsilon']}, uniform over the experts within "
            f"{report['max_cost_ratio']:g}x the best's cost), each",
            "answer's dataset quality fed back as the verdict. After each round a",
            "candidate is trained on the seed rows and the log (`torouter train --log",
            "--data`), one label per logged call, then reloaded (`POST /admin/reload`).",
            "AIQ and Q(λ=0) are the live model's on the test split (median over the",
            "passes, and their range); served quality is the mean verdict of the",
            "round's answers, exploration included. Seconds are wall time on the",
            "machine of the tables above, client and stand-in included. The logged",
            "rows carry the stand-in's answer lengths as output tokens, which the",
            "dataset does not record: the live models learn lengths the offline",
            "one never sees (at λ = 0 they do not move a pick)."]


def learning_table(report):
    off = report["offline"]
    runs = report["runs"]
    lines = ["| round | calls served | served quality | AIQ (range over passes) | Q(λ=0) | serve s | train s |",
             "| --- | --- | --- | --- | --- | --- | --- |"]
    for number in range(len(runs[0])):
        rs = [run[number] for run in runs]
        m = lambda key: median([r[key] for r in rs])
        aiq = f"{m('aiq'):.4f} ({min(r['aiq'] for r in rs):.4f}–{max(r['aiq'] for r in rs):.4f})"
        if number == 0:
            lines.append(f"| 0 (seed model) | 0 | | {aiq} | {m('quality'):.4f} | | |")
            continue
        lines.append(f"| {number} | {m('calls'):.0f} | {m('served_quality'):.4f} | {aiq} | "
                     f"{m('quality'):.4f} | {m('serve_seconds'):.1f} | {m('train_seconds'):.1f} |")
    lines.append(f"| offline, all {report['seed_rows'] + report['served_rows']} rows labelled "
                 f"by every expert | | | {off['aiq']:.4f} | {off['quality']:.4f} | | "
                 f"{off['train_seconds']:.1f} |")
    return lines


def error(r, key="doubly_robust"):
    return r[key]["value"] - r["true_quality"]


def off_policy_table(report):
    runs = report["runs"]
    lines = ["| round | held out | supporting calls | true Q | DR − true, each pass | median abs. error DR / IPS | DR interval width | covered |",
             "| --- | --- | --- | --- | --- | --- | --- | --- |"]
    for number in range(1, len(runs[0])):
        rs = [run[number] for run in runs]
        m = lambda key: median([r[key] for r in rs])
        errors = ", ".join(f"{error(r):+.3f}" for r in rs)
        dr_abs = median([abs(error(r)) for r in rs])
        ips_abs = median([abs(error(r, "inverse_propensity")) for r in rs])
        width = median([r["doubly_robust"]["high"] - r["doubly_robust"]["low"] for r in rs])
        lines.append(f"| {number} | {m('held_out'):.0f} | {m('off_policy_matching'):.0f} | "
                     f"{m('true_quality'):.4f} | {errors} | {dr_abs:.3f} / {ips_abs:.3f} | "
                     f"{width:.2f} | {sum(covers(r) for r in rs)} of {len(rs)} |")
    return lines


def markdown(report, command):
    lines = [BEGIN, "## Learning from live traffic (closed loop)", ""] + intro(report, command)
    lines += [""] + learning_table(report)
    lines += ["", "### Off-policy estimates in the loop", "",
              f"{round(100 * report['holdout'])}% of each round's calls are held out of that "
              "round's candidate's training; its",
              "off-policy estimate on them (`torouter eval --log`) is set beside its true",
              "routed quality on the same prompts (the dataset's). Supporting calls are",
              "those where the candidate picks what was logged; the interval is the",
              "doubly robust one's 95% (it is not clipped to [0, 1]).", ""]
    lines += off_policy_table(report)
    lines += [""] + findings(report) + ["", END]
    return "\n".join(lines)


def covers(r):
    return r["doubly_robust"]["low"] <= r["true_quality"] <= r["doubly_robust"]["high"]


def findings(report):
    """What the tables say, computed from them."""
    runs = report["runs"]
    by_round = [median([run[n]["aiq"] for run in runs]) for n in range(len(runs[0]))]
    spread = max(max(run[n]["aiq"] for run in runs) - min(run[n]["aiq"] for run in runs)
                 for n in range(len(runs[0])))
    seed, last, offline = by_round[0], by_round[-1], report["offline"]["aiq"]
    best = max(range(1, len(by_round)), key=lambda n: by_round[n])
    rounds = [r for run in runs for r in run[1:]]
    widths = [r["doubly_robust"]["high"] - r["doubly_robust"]["low"] for r in rounds]
    return [
        f"- Median AIQ by round: {', '.join(f'{a:.4f}' for a in by_round)}; after "
        f"{runs[0][-1]['calls']} logged calls it is {100 * (last - seed) / (offline - seed):.0f}% "
        f"of the way from the seed model to the offline model's {offline:.4f} (its best, "
        f"round {best}: {100 * (by_round[best] - seed) / (offline - seed):.0f}%). Passes "
        f"differ by up to {spread:.4f} AIQ within a round; from round to round the median "
        f"moves by up to {max(abs(b - a) for a, b in zip(by_round[1:], by_round[2:])):.4f} "
        "after the first.",
        f"- A round took {min(r['serve_seconds'] for r in rounds):.1f} to "
        f"{max(r['serve_seconds'] for r in rounds):.1f} s to serve and "
        f"{min(r['train_seconds'] for r in rounds):.1f} to "
        f"{max(r['train_seconds'] for r in rounds):.1f} s to retrain.",
        f"- The doubly robust estimate misses the true value by "
        f"{median([abs(error(r)) for r in rounds]):.3f} (median; "
        f"{max(abs(error(r)) for r in rounds):.3f} at most), the inverse-propensity one by "
        f"{median([abs(error(r, 'inverse_propensity')) for r in rounds]):.3f}. Its interval "
        f"holds the true value in {sum(map(covers, rounds))} of {len(rounds)} rounds, but "
        f"its median width is {median(widths):.2f}: with about "
        f"{median([r['held_out'] for r in rounds]):.0f} held-out calls, "
        f"{median([r['off_policy_matching'] for r in rounds]):.0f} of them supporting, and "
        f"exploration spread over every expert, an estimate tells a candidate's quality only "
        "to within a few tenths; telling two close candidates apart needs far more logged "
        "calls (the width shrinks as one over the square root of their number)."]


def write_results(section):
    path = os.path.join(ROOT, "docs/RESULTS.md")
    text = open(path, encoding="utf-8").read()
    if BEGIN in text:
        text = text[:text.index(BEGIN)] + section + text[text.index(END) + len(END):]
    else:
        text = text.replace("## Notes", section + "\n\n## Notes", 1)
    open(path, "w", encoding="utf-8").write(text)


def shown_command(arguments):
    """The command that gives the figures: without the options that only say
    where to write them."""
    shown, skip = [], False
    for a in arguments:
        if skip:
            skip = False
        elif a in ("--json", "--keep"):
            skip = True
        elif a != "--write-results" and not a.startswith(("--json=", "--keep=")):
            shown.append(a)
    return " ".join(["benchmarks/closed_loop.sh"] + shown)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    data_root = os.environ.get("TOROUTER_DATA", os.path.join(ROOT, "../shared/data"))
    parser.add_argument("--data", default=os.path.join(data_root, "llmrouter14"))
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--scorer", default="gbt")
    parser.add_argument("--rounds", type=int, default=5)
    parser.add_argument("--seed-fraction", type=float, default=0.1)
    parser.add_argument("--epsilon", type=float, default=0.2)
    parser.add_argument("--max-cost-ratio", type=float, default=10.0)
    parser.add_argument("--holdout", type=float, default=0.2)
    parser.add_argument("--clients", type=int, default=8)
    parser.add_argument("--threads", type=int, default=2)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3, help="passes, each with its own seed")
    parser.add_argument("--json", help="write the figures here too")
    parser.add_argument("--write-results", action="store_true",
                        help="replace the closed-loop section of docs/RESULTS.md")
    parser.add_argument("--keep", help="keep the work folder here (default: a temporary one)")
    args = parser.parse_args()
    if not os.path.isdir(args.data):
        sys.exit(f"closed_loop: no dataset at {args.data} (set TOROUTER_DATA or --data)")
    args.torouter = os.path.join(args.build, "bin/torouter")
    work = args.keep or tempfile.mkdtemp(prefix="torouter_closed_loop_")
    os.makedirs(work, exist_ok=True)
    log = os.path.join(work, "commands.log")
    try:
        report = measure(args, work, log)
    except BaseException:
        print(f"closed_loop: the work folder is kept for a look: {work}", file=sys.stderr)
        raise
    if not args.keep:
        shutil.rmtree(work, ignore_errors=True)
    section = markdown(report, shown_command(sys.argv[1:]))
    print(section)
    if args.json:
        json.dump(report, open(args.json, "w"), indent=1)
    if args.write_results:
        write_results(section)


if __name__ == "__main__":
    main()
