"""Generation throughput: the notebook's way (a transformers `pipeline("text-generation")`, one summary at a time,
sampling, max_new_tokens=1024) against `writemypaper generate` (transformers_engine.Generator: batched, left padding), on the
same model with the same max_new_tokens. Random weights never stop early, so every abstract runs the full length.

    python bench/common.py make-model /tmp/g2
    python bench/bench_generate.py --model /tmp/g2 --notebook-samples 2 --batch-sizes 8 64 --out gen.jsonl
    python bench/bench_generate.py --table gen.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts src/ on the path too)

NOTEBOOK_INSTRUCTION = "다음 요약된 글을 한 문단으로 길게 써주세요.:"


def sample_summaries(n: int) -> list[str]:
    """Real summaries from the sample corpus (data/sample), repeated to n."""
    found = []
    for p in sorted((common.REPO / "data/sample").glob("*.json")):
        for wrapper in json.loads(p.read_text(encoding="utf-8")):
            for doc in wrapper["data"]:
                found.append(" ".join(x["summary_text"] for x in doc["summary_entire"]))
    return [found[i % len(found)] for i in range(n)]


def _sync():
    import torch

    if torch.cuda.is_available():
        torch.cuda.synchronize()


def notebook_way(model, tokenizer, summaries, max_new_tokens: int) -> dict:
    """As the notebook did it: the chat template rendered to text, then the pipeline tokenizes it again with special
    tokens (its doubled BOS included), one summary per call."""
    from transformers import pipeline

    pipe = pipeline("text-generation", model=model, tokenizer=tokenizer)

    def one(summary, n):
        messages = [{"role": "user", "content": f"{NOTEBOOK_INSTRUCTION}\n\n{summary}"}]
        prompt = tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=True)
        out = pipe(prompt, do_sample=True, max_new_tokens=n, add_special_tokens=True, return_tensors=True)
        prompt_len = len(tokenizer(prompt, add_special_tokens=True)["input_ids"])
        return len(out[0]["generated_token_ids"]) - prompt_len

    one(summaries[0], 16)  # warm-up
    _sync()
    t = time.perf_counter()
    tokens = sum(one(s, max_new_tokens) for s in summaries)
    _sync()
    return {"seconds": time.perf_counter() - t, "abstracts": len(summaries), "generated_tokens": tokens}


def our_way(model, tokenizer, summaries, max_new_tokens: int, batch_size: int) -> dict:
    from writemypaper import prompts
    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import Generator

    gen = Generator(model, tokenizer)
    stops = set(prompts.stop_token_ids(tokenizer))
    counted = []
    original = model.generate

    def counting_generate(*args, **kwargs):  # counts generated tokens up to each row's first stop token
        out = original(*args, **kwargs)
        for row in out[:, kwargs["input_ids"].shape[1]:].tolist():
            n = next((k for k, t in enumerate(row) if t in stops), len(row))
            counted.append(n)
        return out

    model.generate = counting_generate
    try:
        # Warm-up. A static cache is sized by prompt + max_new_tokens and its decoding step compiles per size, so
        # its warm-up is the measured call itself; the dynamic cache needs only a short one.
        static = model.generation_config.cache_implementation == "static"
        gen.generate(summaries[:batch_size], GenerationSettings(max_new_tokens=max_new_tokens if static else 16),
                     batch_size=batch_size)
        counted.clear()
        _sync()
        t = time.perf_counter()
        gen.generate(summaries, GenerationSettings(max_new_tokens=max_new_tokens), batch_size=batch_size)
        _sync()
        seconds = time.perf_counter() - t
    finally:
        del model.generate
    return {"seconds": seconds, "abstracts": len(summaries), "generated_tokens": sum(counted)}


def continuous_way(model, tokenizer, summaries, max_new_tokens: int) -> dict:
    """transformers' continuous batching (`generate_batch`: paged KV cache, requests scheduled as slots free up), on
    the same prompts and settings, as the candidate backend for `serve`. Experimental in transformers 5.x."""
    from transformers import GenerationConfig

    from writemypaper import prompts

    ids = [prompts.encode_prompt(tokenizer, s) for s in summaries]
    gc = GenerationConfig(max_new_tokens=max_new_tokens, do_sample=True, temperature=0.7, top_p=0.9, top_k=50,
                          eos_token_id=prompts.stop_token_ids(tokenizer), pad_token_id=tokenizer.pad_token_id)
    model.generate_batch(inputs=ids[:8], generation_config=gc, max_new_tokens=16)  # warm-up
    _sync()
    t = time.perf_counter()
    out = model.generate_batch(inputs=ids, generation_config=gc)
    _sync()
    seconds = time.perf_counter() - t
    return {"seconds": seconds, "abstracts": len(summaries),
            "generated_tokens": sum(len(o.generated_tokens) for o in out.values())}


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (python bench/common.py make-model DIR)")
    ap.add_argument("--max-new-tokens", type=int, default=1024)
    ap.add_argument("--notebook-samples", type=int, default=2, help="summaries for the slow way (0: skip it)")
    ap.add_argument("--batch-sizes", type=int, nargs="*", default=[8, 64], help="batch sizes for ours")
    ap.add_argument("--batches", type=int, default=1, help="batches per batch size for ours")
    ap.add_argument("--static-cache", action="store_true",
                    help="ours with a static KV cache (transformers then compiles the decoding step, CUDA graphs)")
    ap.add_argument("--continuous", type=int, default=0, metavar="N",
                    help="also N summaries through transformers' continuous batching (generate_batch)")
    ap.add_argument("--attn", default="auto", help="attention for ours (auto: eager for Gemma 2, keeps its softcap)")
    ap.add_argument("--out", default="bench-generate.jsonl")
    ap.add_argument("--table", metavar="JSONL", help="print the table of a results file and exit")
    a = ap.parse_args()
    if a.table:
        print(table(a.table))
        return

    from writemypaper import models

    t = time.time()
    model, tokenizer = models.load_for_inference(a.model, precision="auto")
    if a.attn != "auto":
        model.set_attn_implementation(a.attn)
    if a.static_cache:
        model.generation_config.cache_implementation = "static"
    env = common.environment()
    base = {"model": a.model, "precision": str(model.dtype).replace("torch.", ""),
            "attn_implementation": model.config._attn_implementation, "max_new_tokens": a.max_new_tokens,
            "load_s": time.time() - t, **env}
    vocab = model.config.vocab_size
    for s in sample_summaries(50):  # the Gemma 3 tokenizer has ids past Gemma 2's 256000; the summaries must not
        assert max(tokenizer(s)["input_ids"]) < vocab, "a summary tokenizes to ids past the model's vocabulary"
    runs = []
    if a.notebook_samples:
        runs.append({"way": "notebook", "batch_size": 1,
                     **notebook_way(model, tokenizer, sample_summaries(a.notebook_samples), a.max_new_tokens)})
        print(json.dumps(runs[-1]))
    for b in a.batch_sizes:
        name = "writemypaper generate" + (" static cache" if a.static_cache else "")
        runs.append({"way": name, "batch_size": b,
                     **our_way(model, tokenizer, sample_summaries(b * a.batches), a.max_new_tokens, b)})
        print(json.dumps(runs[-1]))
    if a.continuous:
        for attn in ("paged|eager", "paged|sdpa"):  # the paged kernels transformers ships; sdpa drops the softcap
            try:
                model.set_attn_implementation(attn)
                runs.append({"way": f"continuous batching ({attn})", "batch_size": a.continuous,
                             **continuous_way(model, tokenizer, sample_summaries(a.continuous), a.max_new_tokens)})
                print(json.dumps(runs[-1]))
            except Exception as e:  # experimental API: record why it did not run
                print(f"continuous batching with {attn} failed: {type(e).__name__}: {str(e)[:300]}")
    with open(a.out, "a", encoding="utf-8") as f:
        for r in runs:
            r.update(base, abstracts_per_s=r["abstracts"] / r["seconds"], tokens_per_s=r["generated_tokens"] / r["seconds"])
            f.write(json.dumps(r) + "\n")
    print(table(a.out))


def table(path: str) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    # Against the notebook's pipeline where it ran, else against the first row (batch 64, dynamic cache, in our runs)
    base = next((r for r in rows if r["way"] == "notebook"), rows[0] if rows else None)
    out = ["| way | batch | abstracts | generated tokens | s | abstracts/s | x notebook | tokens/s | x notebook |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|"]
    for r in rows:
        ra = f"{r['abstracts_per_s'] / base['abstracts_per_s']:.1f}x" if base else "-"
        rt = f"{r['tokens_per_s'] / base['tokens_per_s']:.1f}x" if base else "-"
        out.append(f"| {r['way']} | {r['batch_size']} | {r['abstracts']} | {r['generated_tokens']:,} | "
                   f"{r['seconds']:.1f} | {r['abstracts_per_s']:.3f} | {ra} | {r['tokens_per_s']:,.0f} | {rt} |")
    return "\n".join(out)


if __name__ == "__main__":
    main()
