"""What the demo's step times do not separate when it decodes with llama.cpp instead of transformers, measured on a
finished demo's OUT: the q8_0 export of the tuned run, each engine's reference loss on the demo's held-out pairs
(load and scoring apart), and transformers' decoding of the tuned run with its LoRA unmerged (as `evaluate` runs it)
and merged into the weights.

    writemypaper demo --out DEMO --engine transformers
    python bench/bench_demo_engine.py --demo DEMO --out demo-engine.jsonl
"""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (puts src/ on the path too)


def timed(fn):
    t = time.perf_counter()
    out = fn()
    return out, round(time.perf_counter() - t, 2)


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--demo", required=True, help="a finished demo's OUT (its run/ and eval/scores.json are read)")
    ap.add_argument("--max-new-tokens", type=int, default=192, help="as the demo decodes")
    ap.add_argument("--out", help="append one JSON line here")
    a = ap.parse_args()

    from writemypaper import export, models, transformers_engine
    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import Generator
    from writemypaper.llamacpp import LlamaCppGenerator

    demo = Path(a.demo)
    run = demo / "run"
    scores = json.loads((demo / "eval" / "scores.json").read_text(encoding="utf-8"))
    samples = [{"summary": s["summary"], "reference": s["reference"]} for s in scores["samples"]]
    row: dict = {"demo": str(demo), "n": len(samples)}
    with tempfile.TemporaryDirectory() as tmp:
        dest = Path(tmp) / "gguf-tuned"
        _, row["export_q8_0_s"] = timed(lambda: export.export(str(run), str(dest), gguf="q8_0", safetensors=False))
        cpp, row["llamacpp_load_s"] = timed(lambda: LlamaCppGenerator.load(str(dest / export.gguf_name(dest, "q8_0"))))
        losses, row["llamacpp_loss_s"] = timed(lambda: cpp.reference_losses(samples))
        row["llamacpp_loss"] = sum(t for t, _ in losses) / sum(n for _, n in losses)
    (model, tok), row["transformers_load_s"] = timed(lambda: models.load_for_inference(str(run), precision="fp32",
                                                                                       device="cpu"))
    losses, row["transformers_loss_s"] = timed(lambda: transformers_engine.reference_losses(model, tok, samples))
    row["transformers_loss"] = sum(t for t, _ in losses) / sum(n for _, n in losses)
    del model

    gen = Generator.load(str(run), precision="fp32", device="cpu")
    settings = GenerationSettings(max_new_tokens=a.max_new_tokens, do_sample=False, grounded=False)
    summaries = [s["summary"] for s in samples]
    gen.generate(summaries[:1], settings)  # warm-up, untimed
    texts = {}
    for name in ("unmerged", "merged", "unmerged again"):
        if name == "merged":
            unmerged = gen.model
            gen.model = unmerged.merge_and_unload(safe_merge=True)
        elif name == "unmerged again":  # merge_and_unload changed the base in place: reload for the repeat
            gen = Generator.load(str(run), precision="fp32", device="cpu")
        outs, row[f"decode_{name}_s"] = timed(lambda: gen.generate(summaries, settings, batch_size=8))
        texts[name] = [o[0] for o in outs]
    row["merged_texts_identical"] = sum(x == y for x, y in zip(texts["unmerged"], texts["merged"]))
    row["merged_speedup"] = round((row["decode_unmerged_s"] + row["decode_unmerged again_s"]) / 2
                                  / row["decode_merged_s"], 3)
    row.update(common.environment())
    print(json.dumps(row, ensure_ascii=False, indent=1))
    if a.out:
        with open(a.out, "a", encoding="utf-8") as f:
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


if __name__ == "__main__":
    main()
