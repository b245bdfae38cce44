"""The whole job on the embedded defaults, offline: prepare the sample corpus, fine-tune the embedded Gemma 3 270M
with the cpu-demo preset, evaluate base against tuned on held-out pairs, and write the report.

    writemypaper demo --out writemypaper-demo
"""

from __future__ import annotations

import time
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


def demo(out: str = "writemypaper-demo", steps: int | None = None, eval_samples: int = 8, max_new_tokens: int = 192,
         overrides: list[str] | None = None) -> dict:
    from rich.console import Console

    from writemypaper import config, data, evaluate, train, weights

    console = Console()
    out_dir = Path(out)
    t0 = time.time()

    def step(n: int, text: str) -> None:
        console.rule(f"[bold][{n}/5] {text}[/bold]  ({time.time() - t0:.0f} s)")

    step(1, "prepare the sample corpus (section pairs)")
    stats = data.prepare([str(SAMPLE_DIR)], out_dir / "prepared", granularity="section", progress=True)
    data.print_stats(stats, out_dir / "prepared", console=console)

    step(2, f"fine-tune the embedded {weights.EMBEDDED} with the cpu-demo preset")
    weights.embedded_model_dir()  # the one-time GGUF conversion, outside the training progress bar
    train_overrides = list(overrides or [])
    if steps:
        train_overrides.append(f"training.max_steps={steps}")
    cfg = config.load_config("cpu-demo", train_overrides, kind="train")
    run_dir = out_dir / "run"
    metrics = train.train(cfg, data=str(out_dir / "prepared"), out=str(run_dir), resume=run_dir.exists())
    console.print(f"train loss {metrics['train_loss_first']:.3f} → {metrics['train_loss_last']:.3f} in "
                  f"{metrics['global_step']} steps; validation loss {metrics['eval_loss']:.3f}")

    step(3, f"evaluate base against tuned on {eval_samples} held-out test pairs")
    # Two decodings: plain, and with numbers grounded in the summary (the default of generate and serve), so the
    # report shows what grounding changes; best-of-N candidates cost N times the decoding and stay out of the demo.
    ecfg = config.load_config("evaluate", [f"n_samples={eval_samples}", f"generation.max_new_tokens={max_new_tokens}",
                                           "decodings=[plain,grounded]"], kind="evaluate")
    scores = evaluate.evaluate(ecfg, out=str(out_dir / "eval"), data=str(out_dir / "prepared"),
                               models={"base": weights.EMBEDDED, "tuned": str(run_dir)})

    step(4, "write the report")
    report = (out_dir / "eval" / "report.html").resolve()
    console.print(f"scores: {out_dir / 'eval' / 'scores.json'}")

    step(5, "done")
    # plain print: a path wrapped by the console would not open when clicked
    print(evaluate.summary_table(scores))
    print(f"\nreport: file://{report}\n(finished in {time.time() - t0:.0f} s)")
    return {"scores": scores, "metrics": metrics, "report": str(report)}
