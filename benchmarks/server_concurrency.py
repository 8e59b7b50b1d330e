#!/usr/bin/env python3
"""torouter-server at LLM concurrency, on loopback: many streaming chat
requests at once against a stand-in upstream that streams each answer over
about 2 s, and a normal request while many connections idle or trickle.

    benchmarks/server_concurrency.py                         # build/ programs
    benchmarks/server_concurrency.py --old-server OLD/bin/torouter-server
    benchmarks/server_concurrency.py --router-model MODEL   # another router too

Twice: every stream opened at the same instant, then their starts spread
evenly over --ramp seconds (all of them still in flight at once at the
end). For each server (and the stand-in alone, the baseline, in the same
run): every request answered or not, the latency of a whole stream at p50
and p99, "added" (through the server minus the stand-in alone, at the same
percentile), the added p99 to the first byte (a slow start, where the
whole stream's adds a slow relay too), the server's threads (most seen),
its peak RSS (VmHWM) and CPU per stream (the stand-in's too, in its own row). Beside them, when
nginx is installed, nginx as a plain streaming reverse proxy of the same
stand-in (no routing, no JSON): what relaying alone costs on this machine.
Then, with --idle and --trickle connections open (one header byte a second
for the trickling ones), the time a normal request takes.

The streams are opened and read by the stream_burst program (one thread).
The stand-in serves every stream on one I/O thread (its waits are timers).
By default every process shares every core; --server-cpus and --load-cpus
(taskset lists) give the server, and nginx in its turn, cores of their own,
apart from the client, the stand-in and this script, as a service would
have them.
Not run by CI.
"""
import argparse
import asyncio
import json
import os
import re
import shutil
import socket
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


def pinned(cpus, command):
    """`command` run on the cores in the taskset list `cpus` (None: any)."""
    return (["taskset", "-c", cpus] if cpus else []) + command


def start(command, log_path):
    proc = subprocess.Popen(command, stdout=open(log_path, "w"), stderr=subprocess.STDOUT)
    return proc, wait_port(log_path, proc)


def write_config(path, upstream_port, workers, io_threads, root=ROOT, model=None):
    """`root`: the tree whose default router (and its experts) the server
    loads; `model`: another model file over those experts, loaded instead."""
    with open(os.path.join(root, "examples/default_router/experts.json")) as f:
        names = [e["name"] for e in json.load(f)["experts"]]
    config = {
        "listen": {"host": "127.0.0.1", "port": 0, "threads": workers},
        "router_model": model or os.path.join(root, "examples/default_router/llmrouter14.tormodel"),
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


async def burst(port, count, pid=None, timeout=120, client=None, ramp=0.0):
    """Seconds of each answered stream of `count` opened at once, sorted; the
    same to each one's first byte (with `client` only), sorted; and the most
    threads process `pid` had meanwhile. `client`: the stream_burst
    program, which opens and reads them (see its header for why not asyncio);
    without it (the warm-up), asyncio does. `ramp`: seconds over which the
    client spreads the streams' starts (0: all at once); `client` is its
    command line without arguments (a taskset prefix, then the program)."""
    sampler = Sampler(pid) if pid else None
    sampling = asyncio.ensure_future(sampler.run()) if sampler else None
    payload = request_bytes(True)
    if client:
        with tempfile.NamedTemporaryFile(suffix=".http") as request:
            request.write(payload)
            request.flush()
            proc = await asyncio.create_subprocess_exec(
                *client, "--port", str(port), "--count", str(count), "--request", request.name,
                "--expect", "[DONE]", "--timeout", str(timeout), "--ramp", str(ramp),
                stdout=asyncio.subprocess.PIPE)
            out, _ = await proc.communicate()
        answer = json.loads(out)
        times, first = answer["seconds"], answer["first_byte_seconds"]
    else:
        times = await asyncio.gather(*(one_call(port, payload, timeout) for _ in range(count)))
        first = []
    if sampler:
        sampler.running = False
        await sampling
    done = sorted(t for t in times if t is not None)
    return done, sorted(first), (sampler.most if sampler else 0)


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


MODES = ("at once", "ramp")


def mode_label(mode, args):
    return "all at once" if mode == "at once" else f"spread over {args.ramp:g} s"


def run_modes(port, args, client, pid=None, cpu=lambda: 0.0):
    """Each mode's burst: (answered seconds, seconds to first byte, most
    threads, CPU ms per stream)."""
    results = {}
    for mode in MODES:
        before = cpu()
        ramp = 0.0 if mode == "at once" else args.ramp
        done, first, threads = asyncio.run(
            burst(port, args.streams, pid, client=client, ramp=ramp))
        results[mode] = (done, first, threads, (cpu() - before) * 1000 / args.streams)
    return results


def measure(name, server_bin, stand_in_port, args, work, root=ROOT, client=None, model=None):
    config = os.path.join(work, f"{name}.json")
    write_config(config, stand_in_port, args.workers, args.io_threads, root, model)
    proc, port = start(pinned(args.server_cpus, [server_bin, "--config", config]),
                       os.path.join(work, f"{name}.log"))
    try:
        asyncio.run(burst(port, 32))  # warm: connections, the router's first routes
        modes = run_modes(port, args, client, proc.pid, lambda: cpu_seconds(proc.pid))
        rss = peak_rss_mb(proc.pid)
        crowd = asyncio.run(slow_crowd(port, args.idle, args.trickle))
    finally:
        proc.terminate()
        proc.wait()
    return modes, rss, crowd


NGINX_CONF = """worker_processes {workers};
error_log {work}/nginx-error.log;
pid {work}/nginx.pid;
worker_rlimit_nofile 20000;
events {{ worker_connections 10000; }}
http {{
  access_log off;
  upstream stand_in {{ server 127.0.0.1:{upstream}; keepalive 64; }}
  server {{
    listen 127.0.0.1:{port} backlog=4096;
    location / {{
      proxy_pass http://stand_in;
      proxy_http_version 1.1;
      proxy_set_header Connection "";
      proxy_buffering off;
    }}
  }}
}}
"""


def cores_of(cpus):
    """The cores of the taskset list `cpus` ("0", "0-3", "0-6:2,9"); every
    core this process may run on when None."""
    if not cpus:
        return set(os.sched_getaffinity(0))
    cores = set()
    for part in cpus.split(","):
        span, _, stride = part.partition(":")
        first, _, last = span.partition("-")
        cores.update(range(int(first), int(last or first) + 1, int(stride or 1)))
    return cores


def usable_cores(cpus):
    """How many cores a process pinned to the taskset list `cpus` may run on."""
    return len(cores_of(cpus))


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def tree_cpu_seconds(root_pid):
    """CPU seconds of a process and its children (nginx's master and workers)."""
    total = cpu_seconds(root_pid)
    for entry in os.listdir("/proc"):
        if not entry.isdigit():
            continue
        try:
            with open(f"/proc/{entry}/stat") as f:
                if int(f.read().rsplit(")", 1)[1].split()[1]) == root_pid:
                    total += cpu_seconds(int(entry))
        except (FileNotFoundError, ProcessLookupError):
            pass
    return total


def measure_nginx(nginx, stand_in_port, args, work, client):
    """nginx as a plain streaming reverse proxy in front of the same stand-in:
    no routing and no JSON, a floor for what relaying costs on this machine."""
    port = free_port()
    conf = os.path.join(work, "nginx.conf")
    with open(conf, "w") as f:
        f.write(NGINX_CONF.format(workers=usable_cores(args.server_cpus), work=work,
                                  upstream=stand_in_port, port=port))
    proc = subprocess.Popen(pinned(args.server_cpus,
                                   [nginx, "-p", work, "-c", conf, "-g", "daemon off;"]),
                            stdout=subprocess.DEVNULL, stderr=subprocess.STDOUT)
    try:
        for _ in range(100):
            try:
                socket.create_connection(("127.0.0.1", port), 0.2).close()
                break
            except OSError:
                time.sleep(0.05)
        asyncio.run(burst(port, 32))
        return run_modes(port, args, client, cpu=lambda: tree_cpu_seconds(proc.pid))
    finally:
        proc.terminate()
        proc.wait()


def print_tables(args, alone, rows, peer):
    """Each mode's table (the stand-in alone, each server, nginx), then the
    normal requests among slow connections."""
    print(f"{args.streams} concurrent streaming chat requests; the stand-in streams each answer "
          f"in {args.chunks} pieces {args.chunk_gap_ms} ms apart; {os.cpu_count()} cores, "
          f"loopback; listen.threads {args.workers}; server (and nginx) on cores "
          f"{args.server_cpus or 'all'}, client and stand-in on {args.load_cpus or 'all'}")
    for mode in MODES:
        print(f"\nStreams opened {mode_label(mode, args)}:\n")
        print("| | answered | p50 s | p99 s | added p50 ms | added p99 ms | "
              "added p99 to first byte ms | threads | peak RSS MB | CPU ms/stream |")
        print("| --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: | ---: |")
        base, base_first, _, base_cpu = alone[mode]
        a50, a99 = percentile(base, 0.5), percentile(base, 0.99)
        f99 = percentile(base_first, 0.99)
        print(f"| stand-in alone | {len(base)}/{args.streams} | {a50:.3f} | {a99:.3f} | | | "
              f"({f99 * 1000:.0f} itself) | | | ({base_cpu:.2f}, the stand-in's) |")
        shown = [(label, modes[mode], f"{rss:.0f}") for label, (modes, rss, _) in rows]
        if peer:
            shown.append(("nginx, plain reverse proxy", peer[mode], ""))
        for label, (done, first, threads, cpu_ms), rss in shown:
            p50, p99 = percentile(done, 0.5), percentile(done, 0.99)
            first99 = (percentile(first, 0.99) - f99) * 1000
            print(f"| {label} | {len(done)}/{args.streams} | {p50:.3f} | {p99:.3f} | "
                  f"{(p50 - a50) * 1000:.0f} | {(p99 - a99) * 1000:.0f} | {first99:.0f} | "
                  f"{threads or ''} | {rss} | {cpu_ms:.2f} |")
    print(f"\nA normal request while {args.idle} connections idle and {args.trickle} trickle "
          "one byte a second (ms, five in a row; - for no answer):")
    for label, (_, _, crowd) in rows:
        shown = ", ".join("-" if t is None else f"{t * 1000:.0f}" for t in crowd)
        print(f"| {label} | {shown} |")


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--build", default=os.path.join(ROOT, "build"))
    parser.add_argument("--old-server", help="another torouter-server to measure beside")
    parser.add_argument("--old-root", default=ROOT,
                        help="the tree whose default router the other server loads (its own "
                             "checkout: an older server may not read today's model format)")
    parser.add_argument("--nginx", default=shutil.which("nginx") or "/usr/sbin/nginx",
                        help="nginx, measured beside as a plain reverse proxy when it exists "
                             "(Debian: nginx-light; scripts/setup benchmarks)")
    parser.add_argument("--router-model",
                        help="also measure the server with this model file (over the default "
                             "router's experts) in place of the default router")
    parser.add_argument("--streams", type=int, default=2000)
    parser.add_argument("--ramp", type=float, default=1.0,
                        help="seconds over which the second burst spreads its starts")
    parser.add_argument("--workers", type=int, default=64, help="the server's listen.threads")
    parser.add_argument("--io-threads", type=int, default=0,
                        help="the server's listen.io_threads (0: one per usable core)")
    parser.add_argument("--chunks", type=int, default=20)
    parser.add_argument("--chunk-gap-ms", type=int, default=100)
    parser.add_argument("--server-cpus", help="taskset list for the server and nginx")
    parser.add_argument("--load-cpus", help="taskset list for the client and the stand-in")
    parser.add_argument("--idle", type=int, default=200)
    parser.add_argument("--trickle", type=int, default=1000)
    args = parser.parse_args()
    if args.load_cpus:  # this script's warm-ups and sampling are load too
        os.sched_setaffinity(0, cores_of(args.load_cpus))
    work = tempfile.mkdtemp(prefix="torouter-concurrency-")
    client = pinned(args.load_cpus, [os.path.join(args.build, "bin/stream_burst")])
    stand_in, stand_in_port = start(
        pinned(args.load_cpus, [os.path.join(args.build, "bin/torouter-stand-in"), "--port", "0",
                                "--threads", "1", "--chunks", str(args.chunks),
                                "--chunk-gap-ms", str(args.chunk_gap_ms)]),
        os.path.join(work, "stand_in.log"))
    try:
        asyncio.run(burst(stand_in_port, 32))
        alone = run_modes(stand_in_port, args, client, cpu=lambda: cpu_seconds(stand_in.pid))
        server_bin = os.path.join(args.build, "bin/torouter-server")
        servers = [("torouter-server", server_bin, ROOT, None)]
        if args.old_server:
            servers.append(("old torouter-server", args.old_server, args.old_root, None))
        if args.router_model:
            label = f"torouter-server, {os.path.basename(args.router_model)}"
            servers.append((label, server_bin, ROOT, os.path.abspath(args.router_model)))
        rows = [(label, measure(f"server{i}", path, stand_in_port, args, work, root, client,
                                model))
                for i, (label, path, root, model) in enumerate(servers)]
        peer = None
        if os.access(args.nginx, os.X_OK):
            peer = measure_nginx(args.nginx, stand_in_port, args, work, client)
    finally:
        stand_in.terminate()
        stand_in.wait()

    print_tables(args, alone, rows, peer)


if __name__ == "__main__":
    main()
