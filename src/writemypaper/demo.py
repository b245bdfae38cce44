"""The whole job on the embedded defaults, offline: prepare the sample corpus, fine-tune the embedded Gemma 3 270M
with the cpu-demo preset, evaluate base against tuned on held-out pairs, and write the report.

    writemypaper demo --out writemypaper-demo
"""

from __future__ import annotations

import time
from pathlib import Path

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


ENGINES = ("auto", "transformers", "llama.cpp")


def resolve_engine(engine: str) -> str:
    """`auto` is llama.cpp where it is installed and no GPU is (1.4x transformers' tokens/s on a CPU at the same
    quality, bench/RESULTS.md), transformers otherwise."""
    import importlib.util

    from writemypaper.errors import UserError
    from writemypaper.llamacpp import INSTALL

    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    has_llama = importlib.util.find_spec("llama_cpp") is not None
    if engine == "llama.cpp" and not has_llama:
        raise UserError(f"--engine llama.cpp needs the llamacpp extra: {INSTALL}")
    if engine == "auto":
        import torch

        return "llama.cpp" if has_llama and not torch.cuda.is_available() else "transformers"
    return engine


def _gguf_models(out_dir: Path, run_dir: Path) -> dict[str, str]:
    """q8_0 GGUF exports of the base model (made once per OUT) and of the tuned run (made every time: a resumed run
    may have changed), for llama.cpp."""
    from writemypaper import export, weights

    paths = {}
    for name, ref, dest in (("base", weights.EMBEDDED, out_dir / "gguf-base"), ("tuned", str(run_dir),
                                                                                 out_dir / "gguf-tuned")):
        path = dest / export.gguf_name(dest, "q8_0")
        if name == "tuned" or not path.is_file():
            export.export(ref, str(dest), gguf="q8_0", safetensors=False)
        paths[name] = str(path)
    return paths


def demo(out: str = "writemypaper-demo", steps: int | None = None, eval_samples: int = 8, max_new_tokens: int = 192,
         engine: str = "auto", overrides: list[str] | None = None) -> dict:
    from rich.console import Console

    from writemypaper import config, data, evaluate, train, weights

    console = Console()
    out_dir = Path(out)
    engine = resolve_engine(engine)
    total = 6 if engine == "llama.cpp" else 5
    t0 = time.time()
    n = iter(range(1, total + 1))

    def step(text: str) -> None:
        console.rule(f"[bold][{next(n)}/{total}] {text}[/bold]  ({time.time() - t0:.0f} s)")

    step("prepare the sample corpus (section pairs)")
    stats = data.prepare([str(SAMPLE_DIR)], out_dir / "prepared", granularity="section", progress=True)
    data.print_stats(stats, out_dir / "prepared", console=console)

    step(f"fine-tune the embedded {weights.EMBEDDED} with the cpu-demo preset")
    weights.embedded_model_dir()  # the one-time GGUF conversion, outside the training progress bar
    train_overrides = list(overrides or [])
    if steps:
        train_overrides.append(f"training.max_steps={steps}")
    cfg = config.load_config("cpu-demo", train_overrides, kind="train")
    run_dir = out_dir / "run"
    metrics = train.train(cfg, data=str(out_dir / "prepared"), out=str(run_dir), resume=run_dir.exists())
    console.print(f"train loss {metrics['train_loss_first']:.3f} → {metrics['train_loss_last']:.3f} in "
                  f"{metrics['global_step']} steps; validation loss {metrics['eval_loss']:.3f}")

    models = {"base": weights.EMBEDDED, "tuned": str(run_dir)}
    if engine == "llama.cpp":
        step("export base and tuned to q8_0 GGUF for llama.cpp")
        models = _gguf_models(out_dir, run_dir)

    step(f"evaluate base vs tuned on {eval_samples} test pairs, {engine}")
    # Two decodings: plain, and with numbers grounded in the summary (the default of generate and serve), so the
    # report shows what grounding changes; best-of-N candidates cost N times the decoding and stay out of the demo.
    ecfg = config.load_config("evaluate", [f"n_samples={eval_samples}", f"generation.max_new_tokens={max_new_tokens}",
                                           "decodings=[plain,grounded]"], kind="evaluate")
    scores = evaluate.evaluate(ecfg, out=str(out_dir / "eval"), data=str(out_dir / "prepared"), models=models)

    step("write the report")
    report = (out_dir / "eval" / "report.html").resolve()
    console.print(f"scores: {out_dir / 'eval' / 'scores.json'}")

    step("done")
    # plain print: a path wrapped by the console would not open when clicked
    print(evaluate.summary_table(scores))
    if engine == "llama.cpp":
        print(f"\ntuned GGUF: {models['tuned']}  (Ollama: ollama create writemypaper -f "
              f"{Path(models['tuned']).parent / 'Modelfile'})")
    print(f"\nreport: file://{report}\n(finished in {time.time() - t0:.0f} s)")
    return {"scores": scores, "metrics": metrics, "report": str(report), "engine": engine}
