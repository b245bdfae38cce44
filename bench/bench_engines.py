"""llama.cpp against transformers on CPU, through the product's own path (`engines.load` of a training run and of
its GGUF export), interleaved so that both see the same load: the held-out summaries go in chunks, and each chunk is
written by every engine in turn (the order rotating from chunk to chunk). Greedy, grounded, the generated-only
repetition penalty, as `evaluate` decodes. Tokens are counted by re-tokenizing each output with the run's tokenizer,
the same way for every engine.

    writemypaper export RUN --out EXPORT --gguf q8_0
    python bench/bench_engines.py --run RUN --gguf EXPORT/EXPORT-q8_0.gguf --data PREPARED --n 16 --out engines.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts src/ on the path too)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--run", required=True, help="a training run (or export) for transformers")
    ap.add_argument("--gguf", required=True, help="its GGUF export, for llama.cpp")
    ap.add_argument("--data", required=True, help="a prepared directory; its test split's summaries are used")
    ap.add_argument("--n", type=int, default=16, help="summaries")
    ap.add_argument("--chunk", type=int, default=8, help="summaries per chunk (transformers' batch)")
    ap.add_argument("--max-new-tokens", type=int, default=96)
    ap.add_argument("--out", help="append one JSON line here")
    a = ap.parse_args()

    import torch

    from writemypaper.data import load_split
    from writemypaper import engines
    from writemypaper.settings import GenerationSettings

    summaries = [r["summary"] for r in load_split(a.data, "test")][: a.n]
    hf = engines.load(a.run, precision="fp32", device="cpu")
    cpp = engines.load(a.gguf)
    settings = GenerationSettings(max_new_tokens=a.max_new_tokens, do_sample=False)  # grounded, penalty 1.15
    engines = {
        f"transformers fp32, batch {a.chunk}": lambda xs: hf.generate(xs, settings, batch_size=a.chunk),
        "transformers fp32, batch 1": lambda xs: hf.generate(xs, settings, batch_size=1),
        "llama.cpp (q8_0 export), one at a time": lambda xs: cpp.generate(xs, settings),
    }
    for run in engines.values():  # warm-up, untimed
        run(summaries[:1])
    totals = {name: {"seconds": 0.0, "tokens": 0, "texts": []} for name in engines}
    names = list(engines)
    chunks = [summaries[i:i + a.chunk] for i in range(0, len(summaries), a.chunk)]
    for k, chunk in enumerate(chunks):
        for name in names[k % len(names):] + names[:k % len(names)]:  # rotate who goes first
            t = time.perf_counter()
            texts = [c[0] for c in engines[name](chunk)]
            totals[name]["seconds"] += time.perf_counter() - t
            totals[name]["tokens"] += sum(len(hf.tokenizer(x, add_special_tokens=False)["input_ids"]) for x in texts)
            totals[name]["texts"] += texts
        print(f"chunk {k + 1}/{len(chunks)} done", flush=True)
    base = totals[names[0]]
    rows = []
    for name, t in totals.items():
        same = sum(x == y for x, y in zip(t["texts"], base["texts"]))
        rows.append({"engine": name, "seconds": round(t["seconds"], 1), "tokens": t["tokens"],
                     "tokens_per_s": t["tokens"] / t["seconds"], "identical_to_first": same})
    result = {"run": a.run, "gguf": a.gguf, "n": len(summaries), "chunk": a.chunk, "max_new_tokens": a.max_new_tokens,
              "torch_threads": torch.get_num_threads(), "rows": rows, **common.environment()}
    ref = rows[0]["tokens_per_s"]
    print("| engine | output tokens | s | tokens/s | × first row | outputs identical to the first row's |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        print(f"| {r['engine']} | {r['tokens']:,} | {r['seconds']} | {r['tokens_per_s']:.1f} | "
              f"{r['tokens_per_s'] / ref:.2f}× | {r['identical_to_first']}/{len(summaries)} |")
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(result, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
