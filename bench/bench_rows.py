"""How the length of a packed row changes the cost of Gemma-2-2B's layers: two full-size decoder layers (one
sliding-window, one global, as the model alternates them) with frozen random weights, forward and backward over one
padding-free row of L tokens (sequences of 250-512 tokens told apart by their position ids, as `train` packs them).
Reports the first call (mask and kernel compilation included) and the steady per-token time, per attention kernel.

    python bench/bench_rows.py --length 4096 --attn flex_attention --out rows.jsonl
    python bench/bench_rows.py --table rows.jsonl

A variant that hangs prints every thread's stack after --stacks-after seconds, to show where it is stuck.
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402


def packed_positions(length: int, seed: int = 0) -> list[int]:
    import random

    rng, pos = random.Random(seed), []
    while len(pos) < length:
        pos += list(range(rng.randint(250, 512)))
    return pos[:length]


def run(a) -> dict:
    import torch
    from transformers import Gemma2Config, Gemma2Model

    faulthandler.dump_traceback_later(a.stacks_after, exit=False)
    cfg = Gemma2Config(**dict(common.GEMMA2_2B, num_hidden_layers=2, vocab_size=1024), dtype="bfloat16")
    cfg._attn_implementation = a.attn
    dev = "cuda" if torch.cuda.is_available() else "cpu"  # CPU: only to smoke-test the script
    sync = torch.cuda.synchronize if dev == "cuda" else (lambda: None)
    torch.manual_seed(0)
    with torch.device(dev):
        model = Gemma2Model(cfg).to(torch.bfloat16).train()
    model.requires_grad_(False)
    if a.compile_layers:
        for layer in model.layers:
            layer.compile()
    pos = torch.tensor([packed_positions(a.length)], device=dev)
    x = torch.randn(1, a.length, cfg.hidden_size, device=dev, dtype=torch.bfloat16, requires_grad=True)

    def step():
        out = model(inputs_embeds=x, position_ids=pos, use_cache=False).last_hidden_state
        out.float().square().mean().backward()
        x.grad = None

    sync()
    t = time.perf_counter()
    step()
    sync()
    first = time.perf_counter() - t
    faulthandler.cancel_dump_traceback_later()
    for _ in range(2):
        step()
    sync()
    t = time.perf_counter()
    for _ in range(a.reps):
        step()
    sync()
    per_call = (time.perf_counter() - t) / a.reps
    r = {"attn": a.attn, "compile_layers": a.compile_layers, "length": a.length, "first_call_s": first,
         "call_s": per_call, "us_per_token_per_layer": per_call / a.length / 2 * 1e6,
         "peak_gib": torch.cuda.max_memory_allocated() / 2**30 if dev == "cuda" else 0, **common.environment()}
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(r) + "\n")
    print(f"{a.attn} L={a.length}: first call {first:.1f} s, then {per_call * 1e3:.1f} ms "
          f"({r['us_per_token_per_layer']:.3f} us/token/layer), peak {r['peak_gib']:.1f} GiB")
    return r


def table(path: str) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    out = ["| attention | compiled layers | row tokens | first call s | call ms | us/token/layer | peak GiB |",
           "|---|---|---:|---:|---:|---:|---:|"]
    for r in rows:
        out.append(f"| {r['attn']} | {'yes' if r['compile_layers'] else 'no'} | {r['length']:,} | "
                   f"{r['first_call_s']:.1f} | {r['call_s'] * 1e3:.1f} | {r['us_per_token_per_layer']:.3f} | "
                   f"{r['peak_gib']:.1f} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--length", type=int, default=4096, help="tokens in the packed row")
    ap.add_argument("--attn", default="flex_attention", choices=["flex_attention", "eager"])
    ap.add_argument("--compile-layers", action="store_true", help="torch.compile each layer, as compile_layers=true")
    ap.add_argument("--reps", type=int, default=5)
    ap.add_argument("--stacks-after", type=float, default=100.0, metavar="S")
    ap.add_argument("--out", default="rows.jsonl")
    ap.add_argument("--table", metavar="JSONL", help="print the table of a results file and exit")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
    else:
        run(a)


if __name__ == "__main__":
    main()
