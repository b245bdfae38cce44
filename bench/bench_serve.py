"""Load test of the server with the embedded model: many clients at once on loopback, every request answered, and
the latency percentiles and generated tokens/s they saw.

    python bench/bench_serve.py --requests 32 --max-tokens 32
    python bench/bench_serve.py --requests 32 --max-tokens 32 --max-batch-size 1     # no batching, to compare
    python bench/bench_serve.py --requests 32 --max-tokens 32 --stream 8             # 8 of the 32 stream
    python bench/bench_serve.py --model /tmp/g2 --requests 64 --no-fact-check        # on the GPU machine

The server runs in this process (uvicorn in a thread on a free 127.0.0.1 port, the same app `writemypaper serve`
builds) and the clients are one httpx.AsyncClient with a connection per request, all sent at the same instant. The
summaries are the section summaries of data/sample, in turn. Latency runs from sending a request to reading the
last byte of its answer; tokens/s is the sum of `usage.completion_tokens` over the wall time from the first request
sent to the last answer read. One warm-up request runs first and is not counted.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import statistics
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts src/ on the path too)

SAMPLE = common.REPO / "data" / "sample"


def summaries() -> list[str]:
    """Every section summary in data/sample, shortest first up to the longest."""
    found: list[str] = []

    def walk(x):
        if isinstance(x, dict):
            if isinstance(x.get("summary_text"), str) and x["summary_text"].strip():
                found.append(x["summary_text"].strip())
            for v in x.values():
                walk(v)
        elif isinstance(x, list):
            for v in x:
                walk(v)

    for path in sorted(SAMPLE.glob("*.json")):
        walk(json.loads(path.read_text(encoding="utf-8")))
    if not found:
        raise SystemExit(f"no summaries in {SAMPLE}")
    return list(dict.fromkeys(found))


async def one(client, url: str, summary: str, max_tokens: int, stream: bool, model: str) -> dict:
    body = {"model": model, "messages": [{"role": "user", "content": summary}], "max_tokens": max_tokens,
            "stream": stream, "stream_options": {"include_usage": True} if stream else None}
    start = time.perf_counter()
    first = None
    if not stream:
        r = await client.post(f"{url}/v1/chat/completions", json=body)
        end = time.perf_counter()
        tokens = r.json()["usage"]["completion_tokens"] if r.status_code == 200 else 0
        return {"status": r.status_code, "latency": end - start, "end": end, "tokens": tokens, "ttft": None}
    tokens, status = 0, None
    async with client.stream("POST", f"{url}/v1/chat/completions", json=body) as r:
        status = r.status_code
        async for line in r.aiter_lines():
            if not line.startswith("data: ") or line == "data: [DONE]":
                continue
            chunk = json.loads(line[6:])
            if "error" in chunk:  # a failure after the stream began comes as an error event: not an answer
                status = chunk["error"].get("code") or chunk["error"].get("type") or "error"
            elif chunk.get("usage"):
                tokens = chunk["usage"]["completion_tokens"]
            elif first is None and chunk["choices"] and chunk["choices"][0]["delta"].get("content"):
                first = time.perf_counter() - start
    end = time.perf_counter()
    return {"status": status, "latency": end - start, "end": end, "tokens": tokens, "ttft": first}


async def load(url: str, texts: list[str], n: int, n_stream: int, max_tokens: int) -> tuple[list[dict], float]:
    import httpx

    limits = httpx.Limits(max_connections=n + 1, max_keepalive_connections=n + 1)
    async with httpx.AsyncClient(timeout=3600, limits=limits) as client:
        model = (await client.get(f"{url}/v1/models")).json()["data"][0]["id"]  # the name it serves under
        await one(client, url, texts[0], max_tokens, False, model)  # warm-up: first-call costs stay out of the figures
        # Streams are spread evenly among the plain requests.
        kinds = [i * n_stream // n != (i + 1) * n_stream // n for i in range(n)]
        t0 = time.perf_counter()
        results = await asyncio.gather(*(one(client, url, texts[i % len(texts)], max_tokens, s, model)
                                         for i, s in enumerate(kinds)))
    return list(results), t0


def percentile(values: list[float], p: int) -> float:
    return statistics.quantiles(values, n=100, method="inclusive")[p - 1] if len(values) > 1 else values[0]


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="gemma3-270m",
                    help="what the server loads: the embedded model, a run, an export, or a model directory "
                         "(python bench/common.py make-model DIR, on the GPU machine)")
    ap.add_argument("--requests", type=int, default=32, help="requests sent at once")
    ap.add_argument("--stream", type=int, default=0, help="how many of them stream")
    ap.add_argument("--max-tokens", type=int, default=32, help="max_tokens of every request")
    ap.add_argument("--max-batch-size", type=int, default=8, help="the server's --max-batch-size")
    ap.add_argument("--no-fact-check", action="store_true",
                    help="serve without the fact check, as `serve --no-fact-check` (no Kiwi: for the GPU machine)")
    ap.add_argument("--out", help="append the result as one JSON line to this file")
    a = ap.parse_args()
    if not 1 <= a.requests <= 1024 or not 0 <= a.stream <= a.requests:
        raise SystemExit("--requests must be in [1, 1024] and --stream in [0, --requests]")

    from writemypaper import engines
    from writemypaper.serve import Limits, create_app, serving

    generator = engines.load(a.model)
    limits = Limits(max_new_tokens=max(a.max_tokens, 1), queue_depth=a.requests + 1, max_batch_size=a.max_batch_size)
    app = create_app(generator, limits, **({"fact_check": False} if a.no_fact_check else {}))
    texts = summaries()
    with serving(app) as url:  # 127.0.0.1 only
        results, t0 = asyncio.run(load(url, texts, a.requests, a.stream, a.max_tokens))
        served = app.state.scheduler.stats
        left = app.state.scheduler.active
    wall = max(r["end"] for r in results) - t0
    ok = [r for r in results if r["status"] == 200]
    if not ok:
        raise SystemExit(f"none of the {a.requests} requests was answered (status {results[0]['status']})")
    latencies = sorted(r["latency"] for r in ok)
    tokens = sum(r["tokens"] for r in ok)
    ttft = [r["ttft"] for r in ok if r["ttft"] is not None]
    row = {
        "requests": a.requests, "streaming": a.stream, "answered": len(ok), "lost": a.requests - len(ok),
        "model": a.model, "max_tokens": a.max_tokens, "max_batch_size": a.max_batch_size,
        "fact_check": not a.no_fact_check,
        "model_calls": served["model_calls"] - 1, "largest_batch": served["largest_batch"], "left_in_queue": left,
        "wall_s": round(wall, 1), "generated_tokens": tokens, "tokens_per_s": round(tokens / wall, 2),
        "p50_s": round(percentile(latencies, 50), 2), "p90_s": round(percentile(latencies, 90), 2),
        "p99_s": round(percentile(latencies, 99), 2),
        "stream_ttft_p50_s": round(percentile(ttft, 50), 2) if ttft else None,
        **common.environment(),
    }
    import importlib.metadata as md
    import os

    row["versions"] |= {name: md.version(name) for name in ("fastapi", "uvicorn", "sse-starlette", "httpx")}
    row["load_average_1m"] = round(os.getloadavg()[0], 1)  # other jobs on the machine share its cores
    print(json.dumps(row, ensure_ascii=False))
    print(f"| {a.requests} | {a.stream} | {a.max_batch_size} | {len(ok)}/{a.requests} | {row['model_calls']} | "
          f"{row['wall_s']} | {row['p50_s']} | {row['p90_s']} | {row['p99_s']} | {tokens} | {row['tokens_per_s']} |")
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")
    if len(ok) != a.requests or left:
        raise SystemExit(f"{a.requests - len(ok)} requests were not answered; {left} left in the queue")


if __name__ == "__main__":
    main()
