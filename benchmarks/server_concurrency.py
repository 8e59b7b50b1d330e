#!/usr/bin/env python3
"""torouter-server at LLM concurrency, on loopback: many streaming chat
requests at once against a stand-in upstream that streams each answer over
about 2 s, and a normal request while many connections idle or trickle.

    benchmarks/server_concurrency.py                         # build/ programs
    benchmarks/server_concurrency.py --old-server OLD/bin/torouter-server

For each server (and the stand-in alone, the baseline, in the same run):
every request answered or not, the latency of a whole stream at p50 and
p99, "added" (through the server minus the stand-in alone, at the same
percentile), the server's threads (most seen), its peak RSS (VmHWM) and
CPU per request (the stand-in's too, in its own row).
Then, with --idle and --trickle connections open (one header byte a second
for the trickling ones), the time a normal request takes.

The stand-in serves every stream on one I/O thread (its waits are timers).
Not run by CI.
"""
import argparse
import asyncio
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROMPT = "Write a Python function that returns the n-th Fibonacci number."


def wait_port(log_path, proc):
    for _ in range(400):
        with open(log_path) as log:
            match = re.search(r"listening on http://127\.0\.0\.1:(\d+)", log.read())
        if match:
            return int(match.group(1))
        if proc.poll() is not None:
            break
        time.sleep(0.05)
    sys.exit(f"{os.path.basename(sys.argv[0])}: no listening line in {log_path}:\n"
             + open(log_path).read())


def start(command, log_path):
    proc = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    return proc, wait_port(log_path, proc)


def write_config(path, upstream_port, workers, io_threads, root=ROOT):
    """`root`: the tree whose default router the server loads."""
    with open(os.path.join(root, "examples/default_router/experts.json")) as f:
        names = [e["name"] for e in json.load(f)["experts"]]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0, "threads": workers},
        "router_model": os.path.join(root, "examples/default_router/llmrouter14.tormodel"),
        "experts_file": os.path.join(root, "examples/default_router/experts.json"),
        "policy": {"lambda_cost": 100},
        "retry": {"attempt_timeout_ms": 60000, "invoke_timeout_ms": 120000},
        "experts": [{"name": n, "base_url": f"http://127.0.0.1:{upstream_port}/v1",
                     "max_concurrent_calls": 0} for n in names],
    }
    if io_threads > 0:  # (a field the bcfa3bc server does not know)
        config["listen"]["io_threads"] = io_threads
    with open(path, "w") as f:
        json.dump(config, f)


def request_bytes(stream):
    body = json.dumps({"model": "router", "stream": stream,
                       "messages": [{"role": "user", "content": PROMPT}]})
    return (f"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\n"
            f"Content-Type: application/json\r\nConnection: close\r\n"
            f"Content-Length: {len(body)}\r\n\r\n{body}").encode()


async def one_call(port, payload, timeout, stream=True):
    """Seconds for one whole answer, or None when it failed."""
    start = time.monotonic()
    try:
        reader, writer = await asyncio.wait_for(
            asyncio.open_connection("127.0.0.1", port), timeout)
        writer.write(payload)
        data = await asyncio.wait_for(reader.read(-1), timeout)  # Connection: close
        writer.close()
    except (OSError, asyncio.TimeoutError):
        return None
    ok = data.startswith(b"HTTP/1.1 200") and (b"[DONE]" in data or not stream)
    return time.monotonic() - start if ok else None


class Sampler:
    """The most threads a process had while sampling ran."""

    def __init__(self, pid):
        self.pid, self.most, self.running = pid, 0, True

    async def run(self):
        while self.running:
            try:
                self.most = max(self.most, len(os.listdir(f"/proc/{self.pid}/task")))
            except FileNotFoundError:
                return
            await asyncio.sleep(0.05)


def cpu_seconds(pid):
    """User plus system CPU time of a process so far."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def peak_rss_mb(pid):
    with open(f"/proc/{pid}/status") as f:
        for line in f:
            if line.startswith("VmHWM:"):
                return int(line.split()[1]) / 1024
    return float("nan")


async def burst(port, count, pid=None, timeout=120):
    sampler = Sampler(pid) if pid else None
    sampling = asyncio.ensure_future(sampler.run()) if sampler else None
    payload = request_bytes(True)
    times = await asyncio.gather(*(one_call(port, payload, timeout) for _ in range(count)))
    if sampler:
        sampler.running = False
        await sampling
    done = sorted(t for t in times if t is not None)
    return done, (sampler.most if sampler else 0)


def percentile(values, q):
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(q * len(values)))]


async def slow_crowd(port, idle, trickle, normal_requests=5):
    """Opens `idle` silent and `trickle` trickling connections, then times
    normal (non-streaming) requests."""
    held = []
    for _ in range(idle):
        held.append(await asyncio.open_connection("127.0.0.1", port))
    trickling = []
    for _ in range(trickle):
        trickling.append(await asyncio.open_connection("127.0.0.1", port))
    stop = asyncio.Event()

    async def drip(writer):
        line = b"POST /v1/chat/completions HTTP/1.1\r\nHost: bench\r\nX-Slow: "
        i = 0
        while not stop.is_set():
            try:
                writer.write(line[i:i + 1] if i < len(line) else b"a")
                await writer.drain()
            except OSError:
                return
            i += 1
            try:
                await asyncio.wait_for(stop.wait(), 1.0)
            except asyncio.TimeoutError:
                pass

    drips = [asyncio.ensure_future(drip(w)) for _, w in trickling]
    await asyncio.sleep(1.5)  # every slow connection has begun its request
    payload = request_bytes(False)
    times = []
    for _ in range(normal_requests):
        t = await one_call(port, payload, 30, stream=False)
        times.append(t)
    stop.set()
    await asyncio.gather(*drips)
    for _, w in held + trickling:
        w.close()
    return times


def measure(name, server_bin, stand_in_port, args, work, root=ROOT):
    config = os.path.join(work, f"{name}.json")
    write_config(config, stand_in_port, args.workers, args.io_threads, root)
    proc, port = start([server_bin, "--config", config], os.path.join(work, f"{name}.log"))
    try:
        asyncio.run(burst(port, 32))  # warm: connections, the router's first routes
        cpu_before = cpu_seconds(proc.pid)
        done, threads = asyncio.run(burst(port, args.streams, proc.pid))
        cpu_ms = (cpu_seconds(proc.pid) - cpu_before) * 1000 / args.streams
        rss = peak_rss_mb(proc.pid)
        crowd = asyncio.run(slow_crowd(port, args.idle, args.trickle))
    finally:
        proc.terminate()
        proc.wait()
    return done, threads, rss, cpu_ms, crowd


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--old-server", help="another torouter-server to measure beside")
    parser.add_argument("--old-root", default=ROOT,
                        help="the tree whose default router the other server loads (its own "
                             "checkout: an older server may not read today's model format)")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--workers", type=int, default=64, help="the server's listen.threads")
    parser.add_argument("--io-threads", type=int, default=0,
                        help="the server's listen.io_threads (0: one per core)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-gap-ms", type=int, default=100)
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--trickle", type=int, default=1000)
    args = parser.parse_args()
    work = tempfile.mkdtemp(prefix="torouter-concurrency-")
    stand_in, stand_in_port = start(
        [os.path.join(args.build, "bin/torouter-stand-in"), "--port", "0",
         "--threads", "1", "--chunks", str(args.chunks),
         "--chunk-gap-ms", str(args.chunk_gap_ms)], os.path.join(work, "stand_in.log"))
    try:
        asyncio.run(burst(stand_in_port, 32))
        stand_in_cpu = cpu_seconds(stand_in.pid)
        alone, _ = asyncio.run(burst(stand_in_port, args.streams))
        stand_in_ms = (cpu_seconds(stand_in.pid) - stand_in_cpu) * 1000 / args.streams
        servers = [("torouter-server", os.path.join(args.build, "bin/torouter-server"), ROOT)]
        if args.old_server:
            servers.append(("old torouter-server", args.old_server, args.old_root))
        rows = [(label, measure(f"server{i}", path, stand_in_port, args, work, root))
                for i, (label, path, root) in enumerate(servers)]
    finally:
        stand_in.terminate()
        stand_in.wait()

    print(f"{args.streams} concurrent streaming chat requests; the stand-in streams each answer "
          f"in {args.chunks} pieces {args.chunk_gap_ms} ms apart; {os.cpu_count()} cores, "
          f"loopback; listen.threads {args.workers}")
    print("| | answered | p50 s | p99 s | added p50 ms | added p99 ms | threads | peak RSS MB "
          "| server CPU ms/request |")
    print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
    a50, a99 = percentile(alone, 0.5), percentile(alone, 0.99)
    print(f"| stand-in alone | {len(alone)}/{args.streams} | {a50:.3f} | {a99:.3f} | | | | | "
          f"({stand_in_ms:.2f}, the stand-in's) |")
    for label, (done, threads, rss, cpu_ms, _) in rows:
        p50, p99 = percentile(done, 0.5), percentile(done, 0.99)
        print(f"| {label} | {len(done)}/{args.streams} | {p50:.3f} | {p99:.3f} | "
              f"{(p50 - a50) * 1000:.0f} | {(p99 - a99) * 1000:.0f} | {threads} | {rss:.0f} | "
              f"{cpu_ms:.2f} |")
    print(f"\nA normal request while {args.idle} connections idle and {args.trickle} trickle "
          "one byte a second (ms, five in a row; - for no answer):")
    for label, (_, _, _, _, crowd) in rows:
        shown = ", ".join("-" if t is None else f"{t * 1000:.0f}" for t in crowd)
        print(f"| {label} | {shown} |")


if __name__ == "__main__":
    main()
