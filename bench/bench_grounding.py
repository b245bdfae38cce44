"""Faithful generation, measured: how often the summary's numbers are copied and how many are invented, with the
repetition penalty over the prompt (transformers' own, as before) against over the generated tokens only, then with
grounded numbers and with N candidates; and the tokens/s each costs.

    python bench/bench_grounding.py --data prepared --split test --model gemma3-270m --out bench/raw/grounding.jsonl

Every setting samples with the same seed over the same pairs, so the rows compare pair for pair.
"""

from __future__ import annotations

import argparse
import json
import platform
import re
import time
from dataclasses import replace
from datetime import datetime, timezone
from decimal import Decimal

NUMBER = re.compile(r"[0-9][0-9,]*(?:\.[0-9]+)?")


def values(text: str) -> set[Decimal]:
    return {Decimal(m.group().rstrip(",").replace(",", "")) for m in NUMBER.finditer(text)}


def run_setting(gen, summaries, settings, prompt_wide_penalty=False):
    """Texts, generated tokens and seconds for one setting. `prompt_wide_penalty`: what generate did before, the
    penalty handed to transformers, which applies it to every prompt token as well."""
    import torch

    start = time.perf_counter()
    if not prompt_wide_penalty:
        texts = [o[0] for o in gen.generate(summaries, settings, batch_size=len(summaries))]
    else:
        torch.manual_seed(settings.seed)
        enc = gen._encode(summaries)
        kw = settings.generate_kwargs(gen.tokenizer) | {"repetition_penalty": settings.repetition_penalty}
        with torch.inference_mode():
            out = gen.model.generate(**enc, **kw)
        texts = [gen.decode(row) for row in out[:, enc["input_ids"].shape[1]:]]
    seconds = time.perf_counter() - start
    # Tokens of the abstracts returned: with candidates, the others were written too, and that is the cost measured.
    tokens = sum(len(gen.tokenizer(t, add_special_tokens=False)["input_ids"]) for t in texts)
    return texts, tokens, seconds


def score(summaries, texts) -> dict:
    from writemypaper.factcheck import extract_facts, unsupported_facts

    copied, invented, facts, unsupported, with_invented = [], 0, 0, 0, 0
    for s, t in zip(summaries, texts):
        src = values(s)
        copied.append(len(src & values(t)) / len(src) if src else 1.0)
        bad = [f for f in unsupported_facts(s, t) if f.kind in ("number", "year")]
        invented += len(bad)
        with_invented += bool(bad)
        facts += len(extract_facts(t))
        unsupported += len(unsupported_facts(s, t))
    n = len(summaries)
    return {"copied_share": round(sum(copied) / n, 3), "invented_numbers_per_abstract": round(invented / n, 3),
            "abstracts_with_invented_numbers": with_invented,
            "unsupported_rate_micro": round(unsupported / max(facts, 1), 3), "facts": facts}


def timing(gen, summaries, base, candidates: int, reps: int) -> list[dict]:
    """Tokens/s of plain, grounded and grounded-with-candidates decoding, run in turn `reps` times so that a shared
    machine's load falls on all three alike; the median of each."""
    from statistics import median

    kinds = {"plain (ungrounded)": replace(base, grounded=False), "grounded": base,
             f"grounded + {candidates} candidates": replace(base, candidates=candidates)}
    seen: dict[str, list[float]] = {k: [] for k in kinds}
    for _ in range(reps):
        for name, s in kinds.items():
            _, tokens, seconds = run_setting(gen, summaries, s)
            seen[name].append(tokens / seconds)
    plain = median(seen["plain (ungrounded)"])
    return [{"setting": name, "tokens_per_s": round(median(v), 2), "runs": [round(x, 2) for x in v],
             "vs_plain": round(median(v) / plain, 3)} for name, v in seen.items()]


def main() -> None:
    import torch
    import transformers

    from writemypaper.data import load_split
    from writemypaper import engines
    from writemypaper.settings import GenerationSettings

    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--data", required=True)
    p.add_argument("--split", default="test")
    p.add_argument("--model", default="gemma3-270m")
    p.add_argument("--max-new-tokens", type=int, default=128)
    p.add_argument("--candidates", type=int, default=4)
    p.add_argument("--limit", type=int, default=None)
    p.add_argument("--threads", type=int, default=None, help="torch threads (default: torch's)")
    p.add_argument("--timing", type=int, default=0, metavar="REPS",
                   help="only time plain/grounded/candidates decoding, in turn, REPS times each")
    p.add_argument("--out", default=None)
    a = p.parse_args()
    if a.threads:
        torch.set_num_threads(a.threads)

    rows = list(load_split(a.data, a.split))[: a.limit]
    summaries = [r["summary"] for r in rows]
    gen = engines.load(a.model)
    base = GenerationSettings(max_new_tokens=a.max_new_tokens, seed=0)
    settings = {
        "penalty over prompt, ungrounded (before)": (replace(base, grounded=False), True),
        "penalty over generated only, ungrounded": (replace(base, grounded=False), False),
        "generated-only penalty + grounded": (base, False),
        f"grounded + {a.candidates} candidates": (replace(base, candidates=a.candidates), False),
    }
    gen.generate(summaries[:2], replace(base, max_new_tokens=4), batch_size=2)  # warm-up, and the grounding table
    if a.timing:
        for row in timing(gen, summaries, base, a.candidates, a.timing):
            print(json.dumps(row, ensure_ascii=False), flush=True)
        return
    meta = {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "device": str(gen.device),
            "cpu": platform.processor() or platform.machine(), "threads": torch.get_num_threads(),
            "torch": torch.__version__, "transformers": transformers.__version__, "model": a.model,
            "pairs": len(summaries), "max_new_tokens": a.max_new_tokens}
    results = []
    for name, (s, wide) in settings.items():
        texts, tokens, seconds = run_setting(gen, summaries, s, prompt_wide_penalty=wide)
        row = {"setting": name, **score(summaries, texts), "tokens": tokens, "seconds": round(seconds, 1),
               "tokens_per_s": round(tokens / seconds, 1), "texts": texts, **meta}
        results.append(row)
        print(json.dumps({k: v for k, v in row.items() if k != "texts"}, ensure_ascii=False), flush=True)
    plain = results[1]["tokens_per_s"]
    print(f"\n{meta}\n| setting | numbers copied | invented numbers / abstract | abstracts with one | unsupported "
          "rate (micro) | abstract tokens/s | vs plain |\n|---|---|---|---|---|---|---|")
    for r in results:
        print(f"| {r['setting']} | {r['copied_share']:.1%} | {r['invented_numbers_per_abstract']:.2f} | "
              f"{r['abstracts_with_invented_numbers']}/{len(summaries)} | {r['unsupported_rate_micro']:.3f} | "
              f"{r['tokens_per_s']} | {r['tokens_per_s'] / plain:.2f}x |")
    if a.out:
        from writemypaper.atomic import atomic_write_jsonl

        atomic_write_jsonl(a.out, results)


if __name__ == "__main__":
    main()
