#!/usr/bin/env python3
"""torouter-server with large request bodies, on loopback: rounds of
concurrent chat requests of about 1 MB each against a stand-in upstream
that answers at once (it echoes the prompt, so each answer is about 1 MB
too), and the server's resident memory after each round. The experts'
context windows are set to the body's length in bytes, so the prompt fits.

    benchmarks/server_bodies.py                         # build/ programs
    benchmarks/server_bodies.py --old-server OLD/bin/torouter-server

For each server: per round, the requests answered with 200 out of
--clients, every status seen (or "timeout" / "closed" for no answer), the
round's wall time and the server's RSS (VmRSS) a second after the round;
then its peak RSS (VmHWM) and the growth of RSS from after round 2 to after
the last round, which should be near zero if memory levels off, and its
RSS after --settle idle seconds (what it keeps of the burst). Issue 12:
"32 clients sending 1 MB bodies, 6 rounds: RSS levels off (the old server
grew from 262 to 653 MB)". Not run by CI.
"""
import argparse
import asyncio
import collections
import json
import os
import re
import sys
import tempfile
import time

# The servers are started the same way as for the concurrency benchmark.
from server_concurrency import start

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
# Ordinary prose, repeated up to the body size, so the router featurizes
# words and sentences rather than one repeated character.
SENTENCES = [
    "The quarterly report shows that revenue grew by twelve percent while costs stayed flat.",
    "Please summarise the main arguments of the attached design document in plain language.",
    "Our team moved the billing service to a new cluster last week and saw fewer timeouts.",
    "Write a Python function that parses a CSV file and returns the average of each column.",
    "The river rose after three days of rain, and the old bridge was closed to traffic.",
    "Explain why the cache hit rate dropped after we changed the eviction policy to LRU.",
    "She compared the two translations line by line and marked every place they disagreed.",
    "List the steps needed to rotate the database credentials without any downtime.",
]


def write_config(path, upstream_port, workers, max_request_bytes, context_tokens, root=ROOT):
    """`root`: the tree whose default router the server loads."""
    with open(os.path.join(root, "examples/default_router/experts.json")) as f:
        names = [e["name"] for e in json.load(f)["experts"]]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0, "threads": workers},
        "router_model": os.path.join(root, "examples/default_router/llmrouter14.tormodel"),
        "experts_file": os.path.join(root, "examples/default_router/experts.json"),
        "policy": {"lambda_cost": 100},
        "retry": {"attempt_timeout_ms": 60000, "invoke_timeout_ms": 120000},
        "max_request_bytes": max_request_bytes,
        # A 1 MB prompt is about 250,000 tokens, beyond every default
        # expert's window (the server answers 400 context_length_exceeded),
        # so the experts here take one as long as the body.
        "experts": [{"name": n, "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                     "max_concurrent_calls": 0, "context_window_tokens": context_tokens}
                    for n in names],
    }
    with open(path, "w") as f:
        json.dump(config, f)


def request_bytes(body_bytes):
    """A non-streaming chat request whose JSON body is about body_bytes long."""
    text, i = [], 0
    size = 0
    while size < body_bytes - 200:
        sentence = SENTENCES[i % len(SENTENCES)] + (" " if i % 7 else "\n")
        text.append(sentence)
        size += len(sentence) + (1 if sentence.endswith("\n") else 0)  # "\n" is 2 bytes in JSON
        i += 1
    body = json.dumps({"model": "router", "stream": False,
                       "messages": [{"role": "user", "content": "".join(text)}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode(), len(body)


async def one_call(port, payload, timeout):
    """The answer's status code as text, or "timeout" / "closed" for none."""

    async def exchange():
        reader, writer = await asyncio.open_connection("127.0.0.1", port)
        try:
            writer.write(payload)
            await writer.drain()
            return await reader.read(-1)  # Connection: close
        finally:
            writer.close()

    try:
        data = await asyncio.wait_for(exchange(), timeout)
    except asyncio.TimeoutError:
        return "timeout"
    except OSError:
        return "closed"
    match = re.match(rb"HTTP/1\.[01] (\d{3})", data)
    return match.group(1).decode() if match else "closed"


async def round_of(port, payload, clients, timeout):
    return await asyncio.gather(*(one_call(port, payload, timeout) for _ in range(clients)))


def status_mb(pid, field):
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) / 1024
    except FileNotFoundError:
        pass
    return float("nan")


def measure(name, server_bin, stand_in_port, args, payload, body_len, work, root=ROOT):
    config = os.path.join(work, f"{name}.json")
    write_config(config, stand_in_port, args.workers, max(2 << 20, 2 * body_len),
                 max(131072, body_len), root)
    log = os.path.join(work, f"{name}.log")
    proc, port = start([server_bin, "--config", config], log)
    rounds = []
    try:
        start_rss = status_mb(proc.pid, "VmRSS")
        for _ in range(args.rounds):
            began = time.monotonic()
            statuses = asyncio.run(round_of(port, payload, args.clients, args.timeout))
            wall = time.monotonic() - began
            time.sleep(1)  # let the server finish closing the round's connections
            rounds.append((collections.Counter(statuses), wall, status_mb(proc.pid, "VmRSS")))
            if proc.poll() is not None:
                print(f"server_bodies.py: {name} exited with {proc.returncode}; log {log}",
                      file=sys.stderr)
                break
        peak = status_mb(proc.pid, "VmHWM")
        time.sleep(args.settle)  # idle: what the server keeps of the burst
        settled = status_mb(proc.pid, "VmRSS")
    finally:
        proc.terminate()
        proc.wait()
    return start_rss, rounds, peak, settled


def shown(counter):
    order = sorted(counter, key=lambda s: (s != "200", s))
    return ", ".join(f"{s}×{counter[s]}" for s in order)


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--old-server", help="another torouter-server to measure beside")
    parser.add_argument("--old-root", default=ROOT,
                        help="the tree whose default router the other server loads (its own "
                             "checkout: an older server may not read today's model format)")
    parser.add_argument("--clients", type=int, default=32)
    parser.add_argument("--rounds", type=int, default=6)
    parser.add_argument("--body-mb", type=float, default=1.0, help="body size, MB (10^6 bytes)")
    parser.add_argument("--workers", type=int, default=64, help="the server's listen.threads")
    parser.add_argument("--timeout", type=float, default=300, help="seconds per request")
    parser.add_argument("--settle", type=float, default=12,
                        help="idle seconds after the last round before the last RSS reading")
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="torouter-bodies-")
    payload, body_len = request_bytes(int(args.body_mb * 1e6))
    stand_in, stand_in_port = start(
        [os.path.join(args.build, "bin/torouter-stand-in"), "--port", "0",
         "--threads", "1"], os.path.join(work, "stand_in.log"))
    try:
        servers = [("torouter-server", os.path.join(args.build, "bin/torouter-server"), ROOT)]
        if args.old_server:
            servers.append(("old torouter-server", args.old_server, args.old_root))
        rows = [(label, measure(f"server{i}", path, stand_in_port, args, payload, body_len, work,
                                root))
                for i, (label, path, root) in enumerate(servers)]
    finally:
        stand_in.terminate()
        stand_in.wait()

    print(f"{args.clients} concurrent non-streaming chat requests of {body_len:,} bytes each, "
          f"{args.rounds} rounds; the stand-in answers at once, echoing the prompt; "
          f"{os.cpu_count()} cores, loopback; listen.threads {args.workers}; logs in {work}")
    head = "| round |" + "".join(f" {label}: answered | statuses | wall s | RSS MB |"
                                 for label, _ in rows)
    print(head)
    print("| ---: |" + " ---: | --- | ---: | ---: |" * len(rows))
    print("| start |" + "".join(f" | | | {start_rss:.0f} |" for _, (start_rss, *_) in rows))
    for r in range(args.rounds):
        line = f"| {r + 1} |"
        for _, (_, rounds, *_) in rows:
            if r < len(rounds):
                counter, wall, rss = rounds[r]
                line += (f" {counter.get('200', 0)}/{args.clients} | {shown(counter)} | "
                         f"{wall:.1f} | {rss:.0f} |")
            else:
                line += " - | - | - | - |"
        print(line)
    print(f"| {args.settle:.0f} s idle |" + "".join(f" | | | {settled:.0f} |"
                                                   for _, (*_, settled) in rows))
    print()
    for label, (_, rounds, peak, _) in rows:
        growth = ""
        if len(rounds) > 2:
            second, last = rounds[1][2], rounds[-1][2]
            growth = (f"; RSS after round {len(rounds)} minus after round 2: "
                      f"{last - second:+.0f} MB ({(last - second) / second * 100:+.0f}%)")
        print(f"{label}: peak RSS (VmHWM) {peak:.0f} MB{growth}")


if __name__ == "__main__":
    main()
