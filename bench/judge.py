"""Throughput of the judge client against a local server: `python -m bench.judge` (about a minute).

The server (tests/reward/server.py, in its own process so it does not share the client's CPU or GIL) answers
after a log-normal delay (median 0.5 s) and answers 2% of requests with 429 + Retry-After. Figures:

- throughput / Little's-law bound: a client that always keeps `concurrency` requests in flight completes
  concurrency / mean-latency requests per second. The latency is the client-observed one (send to reply);
  the ratio against the server's injected delay alone is given too. Given for the whole run, which includes
  the ramp-down while the last requests' long tail finishes (a simulated zero-overhead client on the same
  workload gives that figure's ceiling), and for the steady state (10th to 90th percentile replies).
- throughput / naive: the same client driven by a loop that awaits batches of 50 with asyncio.gather.
- client CPU seconds per request (this process's CPU time only).
- a cached re-run's wall time as a fraction of the first run's.
Writes bench/results/judge.json.
"""

from __future__ import annotations

import argparse
import asyncio
import heapq
import json
import logging
import math
import random
import subprocess
import sys
import tempfile
import time
import urllib.request
from pathlib import Path

from reward.cache import ChatCache
from reward.client import ChatClient, ChatRequest, ChatResult

ROOT = Path(__file__).resolve().parents[1]
QUESTION = "宝宝两岁，发烧三天，体温最高39度，精神尚可，需要去医院吗？请根据评分标准给出1到5分。"


def start_server(median: float, p429: float, retry_after: float) -> tuple[subprocess.Popen, str]:
    proc = subprocess.Popen(
        [sys.executable, "-m", "tests.reward.server", "--median", str(median), "--sigma", "0.5",
         "--p429", str(p429), "--retry-after", str(retry_after)],
        cwd=ROOT, stdout=subprocess.PIPE, text=True)
    line = proc.stdout.readline() if proc.stdout else ""
    if not line.startswith("PORT "):
        proc.kill()
        raise RuntimeError(f"server did not start: {line!r}")
    return proc, f"http://127.0.0.1:{int(line.split()[1])}/v1"


def ideal_ratio(n: int, c: int, p429: float, retry_after: float, runs: int = 5) -> float:
    """Whole-run throughput / Little's-law bound of a zero-overhead client on the same workload (simulated).

    A finite job ends with a ramp-down - the last requests' log-normal tail finishes while most slots are
    already empty - so even a perfect client stays below 1 at a thousand requests; this is the ceiling for the
    measured whole-run figure."""
    ratios = []
    for seed in range(runs):
        rng = random.Random(seed)
        free, ready = [0.0] * c, [(0.0, i) for i in range(n)]  # slot free-at times; (ready-at, request)
        busy = end = 0.0
        sent = 0
        while ready:
            ready_at, i = heapq.heappop(ready)
            start = max(heapq.heappop(free), ready_at)
            latency = rng.lognormvariate(math.log(0.5), 0.5)
            busy, sent = busy + latency, sent + 1
            heapq.heappush(free, start + latency)
            if rng.random() < p429:
                heapq.heappush(ready, (start + latency + retry_after, i))
            else:
                end = max(end, start + latency)
        ratios.append((n / end) / (c / (busy / sent)))
    return sum(ratios) / len(ratios)


def server_stats(base_url: str) -> dict:
    with urllib.request.urlopen(base_url + "/stats", timeout=10) as resp:
        return json.load(resp)


def make_requests(n: int, tag: str, done_at: list[float] | None = None) -> list[ChatRequest]:
    """n distinct judge requests; with done_at, each reply's arrival time is appended to it (via the parser)."""

    def stamp(text: str) -> str:
        if done_at is not None:
            done_at.append(time.perf_counter())
        return text

    return [ChatRequest([{"role": "system", "content": "你是儿科评审。"},
                         {"role": "user", "content": f"{QUESTION}（{tag}-{i}）"}], parse=stamp,
                        sampling={"temperature": 0}) for i in range(n)]


def phase(base_url: str, run) -> dict:
    """Run one measured phase; returns wall, CPU and the server's view of it."""
    before = server_stats(base_url)
    cpu, start = time.process_time(), time.perf_counter()
    results = asyncio.run(run())
    wall, cpu = time.perf_counter() - start, time.process_time() - cpu
    after = server_stats(base_url)
    n_lat = after["latency_n"] - before["latency_n"]
    ok = sum(isinstance(r, ChatResult) for r in results)
    return {"requests": len(results), "ok": ok, "wall_s": wall, "cpu_s": cpu, "sent": n_lat,
            "mean_latency_s": (after["latency_sum"] - before["latency_sum"]) / n_lat if n_lat else 0.0}


def main() -> None:
    ap = argparse.ArgumentParser(description="judge client throughput bench")
    ap.add_argument("--n", type=int, default=1000, help="requests in the concurrent run")
    ap.add_argument("--naive-n", type=int, default=500, help="requests in the naive batch-of-50 run")
    ap.add_argument("--concurrency", type=int, default=128)
    ap.add_argument("--out", type=Path, default=ROOT / "bench" / "results" / "judge.json")
    args = ap.parse_args()
    logging.basicConfig(level=logging.WARNING)
    proc, base_url = start_server(median=0.5, p429=0.02, retry_after=0.5)
    c = args.concurrency
    try:
        with tempfile.TemporaryDirectory() as cache_dir:
            done_at: list[float] = []
            reqs = make_requests(args.n, "main", done_at)
            client = ChatClient(base_url, "judge-bench", api_key_env=None, max_concurrency=c,
                                cache=ChatCache(cache_dir), progress=True)
            main_run = phase(base_url, lambda: client.chat_many(reqs, desc="concurrent"))
            done_at = list(done_at)  # the cached re-run below calls the parsers again
            stats = client.stats.as_dict()
            client.cache.close()

            naive_client = ChatClient(base_url, "judge-bench", api_key_env=None, max_concurrency=c, progress=False)

            async def naive() -> list:
                out: list = []
                for i in range(0, args.naive_n, 50):
                    batch = make_requests(args.naive_n, "naive")[i:i + 50]
                    out += await asyncio.gather(*(naive_client.chat(r.messages, **r.sampling) for r in batch),
                                                return_exceptions=True)
                return out

            naive_run = phase(base_url, naive)

            open_start = time.perf_counter()
            cached_client = ChatClient(base_url, "judge-bench", api_key_env=None, max_concurrency=c,
                                       cache=ChatCache(cache_dir, shard="1"), progress=False)
            open_s = time.perf_counter() - open_start
            cached_run = phase(base_url, lambda: cached_client.chat_many(reqs))
    finally:
        proc.kill()
        proc.wait()

    observed = stats["request_seconds"] / stats["requests_sent"]  # client-side, send to reply, per request
    bound = c / observed
    service_bound = c / main_run["mean_latency_s"]
    rps = main_run["ok"] / main_run["wall_s"]
    # Steady state: the completion rate between the 10th and 90th percentile replies, leaving out the ramp-up
    # and the ramp-down, when the last requests' long tail finishes with most slots already empty.
    t = sorted(done_at)
    lo, hi = len(t) // 10, len(t) * 9 // 10
    steady = (hi - lo) / (t[hi] - t[lo])
    naive_rps = naive_run["ok"] / naive_run["wall_s"]
    figures = {
        "concurrency": c, "requests": args.n, "mean_observed_latency_s": round(observed, 4),
        "mean_injected_latency_s": round(main_run["mean_latency_s"], 4),
        "littles_law_bound_rps": round(bound, 1), "rps": round(rps, 1),
        "rps_over_bound": round(rps / bound, 3), "steady_state_rps_over_bound": round(steady / bound, 3),
        "rps_over_injected_latency_bound": round(rps / service_bound, 3),
        "ideal_client_rps_over_bound": round(ideal_ratio(args.n, c, 0.02, 0.5), 3),
        "naive_batch50_rps": round(naive_rps, 1), "rps_over_naive": round(rps / naive_rps, 2),
        "cpu_s_per_request": round(main_run["cpu_s"] / main_run["sent"], 5),
        "first_run_wall_s": round(main_run["wall_s"], 3), "cached_rerun_wall_s": round(cached_run["wall_s"], 4),
        "cached_over_first": round(cached_run["wall_s"] / main_run["wall_s"], 4),
        "cache_open_s": round(open_s, 4), "cached_requests_sent": cached_run["sent"],
        "client_stats": stats,
    }
    print(json.dumps(figures, indent=2, ensure_ascii=False))
    args.out.parent.mkdir(parents=True, exist_ok=True)
    args.out.write_text(json.dumps(figures, indent=2, ensure_ascii=False) + "\n", encoding="utf-8")
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main()
