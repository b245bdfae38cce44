"""CPU generation speed: llama.cpp (llama-cpp-python) on the embedded model's original Q4_K_M GGUF and on our f16 and
q8_0 exports of it, against transformers in fp32 (transformers_engine.Generator, at batch 1 and batch 8), greedy, on the same
held-out summaries of the sample corpus. Also how many greedy outputs agree with transformers' token for token.

    python bench/bench_llamacpp.py --n 8 --max-new-tokens 32 --out bench/raw/llamacpp.jsonl
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts src/ on the path too)


def held_out(n: int) -> list[str]:
    """The first n summaries of the sample corpus's test split, as `prepare` splits it by default."""
    from writemypaper import data

    out = Path(tempfile.mkdtemp()) / "prepared"
    data.prepare(inputs=[str(common.REPO / "data/sample")], out=str(out), granularity="entire", val_fraction=0.1,
                 test_fraction=0.1, seed=42, min_chars=10, max_chars=4000, progress=False)
    return [r["summary"] for r in data.load_split(str(out), "test")][:n]


def bench_transformers(summaries, max_new_tokens, batch_size, want_ids: bool):
    import torch

    from writemypaper import prompts
    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import Generator

    gen = Generator.load("gemma3-270m", precision="fp32", device="cpu")
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0)
    gen.generate(summaries[:1], settings, batch_size=1)  # warm-up
    t = time.perf_counter()
    texts = gen.generate(summaries, settings, batch_size=batch_size)
    wall = time.perf_counter() - t
    stops = set(prompts.stop_token_ids(gen.tokenizer))
    ids = []
    for s in summaries if want_ids else []:  # token ids of the greedy answers at batch 1, for agreement (untimed)
        enc = torch.tensor([prompts.encode_prompt(gen.tokenizer, s)])
        with torch.no_grad():
            out = gen.model.generate(enc, max_new_tokens=max_new_tokens, do_sample=False, repetition_penalty=1.0,
                                     eos_token_id=list(stops), pad_token_id=gen.tokenizer.pad_token_id)
        ids.append([t for t in out[0, enc.shape[1]:].tolist() if t not in stops])
    # Tokens written: the decoded text re-tokenized (a batch's rows stop at different lengths; padding not counted)
    tokens = sum(len(gen.tokenizer(t[0], add_special_tokens=False)["input_ids"]) for t in texts)
    return {"wall_s": wall, "tokens": sum(len(i) for i in ids) if ids else tokens, "text_tokens": tokens}, ids, \
        gen.tokenizer


def bench_llamacpp(path, summaries, tokenizer, max_new_tokens):
    from writemypaper import prompts
    from writemypaper.llamacpp import greedy_ids, load_llama

    t = time.perf_counter()
    llm = load_llama(path, n_ctx=2048)
    load_s = time.perf_counter() - t
    prompts_ids = [prompts.encode_prompt(tokenizer, s) for s in summaries]
    greedy_ids(llm, prompts_ids[0], 4)  # warm-up
    t = time.perf_counter()
    ids = [greedy_ids(llm, p, max_new_tokens) for p in prompts_ids]
    wall = time.perf_counter() - t
    return {"wall_s": wall, "tokens": sum(len(i) for i in ids), "load_s": load_s}, ids


def main() -> None:
    ap = argparse.ArgumentParser()
    ap.add_argument("--n", type=int, default=8)
    ap.add_argument("--max-new-tokens", type=int, default=32)
    ap.add_argument("--out", default=None)
    a = ap.parse_args()

    import llama_cpp
    import torch
    import transformers

    from writemypaper import gguf_export, models, prompts

    summaries = held_out(a.n)
    rows = []
    env = {"cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads(), "machine": platform.machine(),
           "torch": torch.__version__, "transformers": transformers.__version__,
           "llama_cpp_python": llama_cpp.__version__, "load_avg": os.getloadavg()[0]}
    ref_ids = None
    for bs in (1, 8):
        r, ids, tok = bench_transformers(summaries, a.max_new_tokens, bs, want_ids=ref_ids is None)
        ref_ids = ref_ids or ids
        rows.append({"engine": f"transformers fp32, batch {bs}", **r})
    model, tok = models.load_for_inference("gemma3-270m", precision="fp32", device="cpu")
    work = Path(tempfile.mkdtemp())
    vocab = gguf_export.vocabulary(tok)
    files = {"llama.cpp, original Q4_K_M": gguf_export.embedded_gguf_path()}
    for kind in ("q8_0", "f16"):
        files[f"llama.cpp, our {kind} export"] = gguf_export.write_gguf(
            model, tok, work / f"base-{kind}.gguf", kind, prompts.export_chat_template(), vocab)
    del model
    for name, path in files.items():
        r, ids = bench_llamacpp(path, summaries, tok, a.max_new_tokens)
        same = sum(x == y for x, y in zip(ids, ref_ids))
        rows.append({"engine": name, **r, "greedy_equal_to_transformers": f"{same}/{len(ids)}",
                     "size_mib": round(Path(path).stat().st_size / 2**20)})
    base = rows[0]["tokens"] / rows[0]["wall_s"]
    print(f"{a.n} held-out summaries, {a.max_new_tokens} new tokens at most, greedy; {json.dumps(env)}")
    print("| engine | tokens | wall s | tokens/s | x transformers batch 1 | greedy = transformers |")
    print("|---|---:|---:|---:|---:|---:|")
    for r in rows:
        tps = r["tokens"] / r["wall_s"]
        print(f"| {r['engine']} | {r['tokens']} | {r['wall_s']:.2f} | {tps:.1f} | {tps / base:.2f} | "
              f"{r.get('greedy_equal_to_transformers', '')} |")
    if a.out:
        Path(a.out).parent.mkdir(parents=True, exist_ok=True)
        with open(a.out, "a", encoding="utf-8") as f:
            for r in rows:
                f.write(json.dumps({**r, **env, "n": a.n, "max_new_tokens": a.max_new_tokens,
                                    "date": time.strftime("%Y-%m-%d")}, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
