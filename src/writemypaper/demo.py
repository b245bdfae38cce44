"""The whole job on the embedded defaults, offline: prepare the sample corpus, fine-tune an embedded model (Gemma 3
270M, or SmolLM2-135M-Instruct) with the cpu-demo preset, evaluate base against tuned on held-out pairs, and write
the report.

    writemypaper demo --out writemypaper-demo [model=smollm2-135m]
"""

from __future__ import annotations

import os
import shutil
import time
from pathlib import Path

from writemypaper import engines

SAMPLE_DIR = Path(__file__).resolve().parent / "sample"


ENGINES = ("auto", *engines.NAMES)


def resolve_engine(engine: str) -> str:
    """`auto` is llama.cpp where it is installed and no GPU is (1.4x transformers' tokens/s on a CPU at the same
    quality, bench/RESULTS.md), transformers otherwise."""
    from writemypaper.errors import UserError

    if engine not in ENGINES:
        raise UserError(f"--engine {engine}: choose one of {', '.join(ENGINES)}")
    if engine == "auto":
        import torch

        return "llama.cpp" if engines.missing("llama.cpp") is None and not torch.cuda.is_available() else "transformers"
    install = engines.missing(engine)
    if install:
        raise UserError(f"--engine {engine} is not installed: {install}")
    return engine


# What the cpu-demo preset changes per embedded model. SmolLM2's English byte-level BPE spends two to three tokens
# on a Hangul syllable, so the sample's section pairs need a longer max_length than Gemma's (pairs are dropped, never
# cut); its small vocabulary keeps a step cheap all the same.
MODEL_OVERRIDES = {"smollm2-135m": ["training.max_length=768"]}


def demo_model(model: str | None, overrides: list[str] | None) -> tuple[str, list[str]]:
    """The embedded model to demo (the argument, else a `model=` override, else the default) and the overrides
    without that one. The demo runs offline, so only an embedded model will do."""
    from writemypaper import weights
    from writemypaper.errors import UserError

    rest = [o for o in overrides or [] if not o.startswith("model=")]
    named = [o.split("=", 1)[1] for o in overrides or [] if o.startswith("model=")]
    model = model or (named[-1] if named else weights.EMBEDDED)
    if model not in weights.EMBEDDED_MODELS:
        raise UserError(f"--model {model}: the demo runs offline on an embedded model: "
                        f"{', '.join(weights.EMBEDDED_MODELS)}")
    return model, rest


def _gguf_models(out_dir: Path, run_dir: Path, base: str) -> dict[str, str]:
    """q8_0 GGUF exports of the base model (made once per OUT) and of the tuned run (made every time: a resumed run
    may have changed), for llama.cpp."""
    from writemypaper import export

    paths = {}
    for name, ref, dest in (("base", base, out_dir / "gguf-base"), ("tuned", str(run_dir), out_dir / "gguf-tuned")):
        path = dest / export.gguf_name(dest, "q8_0")
        if name == "tuned" or not path.is_file():
            export.export(ref, str(dest), gguf="q8_0", safetensors=False, overwrite=True)  # OUT is the demo's own
        paths[name] = str(path)
    return paths


def start(out_dir: Path, overwrite: bool, model: str | None = None):
    """The output policy for the demo's OUT, before any work: a new or empty folder starts a demo; our own
    unfinished demo (killed, or failed) is carried on (its training resumes); a finished one is started again only
    with --overwrite; any other folder is never touched. Returns the demo's record, written unfinished."""
    from writemypaper import record
    from writemypaper.outputs import out_state
    from writemypaper.errors import UserError
    from writemypaper.weights import EMBEDDED

    model = model or EMBEDDED
    state = out_state(out_dir, "demo")
    if state == "ours":
        rec = record.read(out_dir)
        if rec is not None and not rec.finished and rec.base_model != model:
            # its run would resume from another model's adapter
            raise UserError(f"--out {out_dir} holds an unfinished demo of {rec.base_model}; carry it on with that "
                            f"model, or pick another --out for {model}")
        if rec is None or not rec.finished:
            print(f"writemypaper: carrying on the unfinished demo in {out_dir}")
        elif not overwrite:
            raise UserError(f"--out {out_dir} already holds a finished demo; add --overwrite to run it again, or pick "
                            f"another --out")
        else:
            aside = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")  # clean_stale finishes a killed removal
            os.rename(out_dir, aside)
            shutil.rmtree(aside, ignore_errors=True)
    rec = record.RunRecord(kind="demo", base_model=model, preset="cpu-demo", versions=record.versions())
    out_dir.mkdir(parents=True, exist_ok=True)
    record.write(out_dir, rec)
    return rec


def demo(out: str = "writemypaper-demo", steps: int | None = None, eval_samples: int = 8, max_new_tokens: int = 192,
         engine: str = "auto", overrides: list[str] | None = None, overwrite: bool = False,
         model: str | None = None) -> dict:
    from rich.console import Console

    from writemypaper import config, data, evaluate, record, train, weights

    console = Console()
    out_dir = Path(out)
    model, overrides = demo_model(model, overrides)
    engine = resolve_engine(engine)
    rec = start(out_dir, overwrite, model)
    total = 6 if engine == "llama.cpp" else 5
    t0 = time.time()
    n = iter(range(1, total + 1))

    def step(text: str) -> None:
        console.rule(f"[bold][{next(n)}/{total}] {text}[/bold]  ({time.time() - t0:.0f} s)")

    step("prepare the sample corpus (section pairs)")
    # OUT/prepared, OUT/run and OUT/eval are the demo's own: each is replaced (or the run resumed) as it goes
    stats = data.prepare([str(SAMPLE_DIR)], out_dir / "prepared", granularity="section", progress=True,
                         overwrite=True)
    data.print_stats(stats, out_dir / "prepared", console=console)

    step(f"fine-tune the embedded {model} with the cpu-demo preset")
    weights.embedded_model_dir(model)  # the one-time GGUF conversion, outside the training progress bar
    train_overrides = [f"model={model}", *MODEL_OVERRIDES.get(model, []), *overrides]
    if steps:
        train_overrides.append(f"training.max_steps={steps}")
    cfg = config.load_config("cpu-demo", train_overrides, kind="train")
    run_dir = out_dir / "run"
    metrics = train.train(cfg, data=str(out_dir / "prepared"), out=str(run_dir), resume=run_dir.exists() and any(
        run_dir.iterdir()))
    console.print(f"train loss {metrics['train_loss_first']:.3f} → {metrics['train_loss_last']:.3f} in "
                  f"{metrics['global_step']} steps; validation loss {metrics['eval_loss']:.3f}")

    models = {"base": model, "tuned": str(run_dir)}
    if engine == "llama.cpp":
        step("export base and tuned to q8_0 GGUF for llama.cpp")
        models = _gguf_models(out_dir, run_dir, model)

    step(f"evaluate base vs tuned on {eval_samples} test pairs, {engine}")
    # Two decodings: plain, and with numbers grounded in the summary (the default of generate and serve), so the
    # report shows what grounding changes; best-of-N candidates cost N times the decoding and stay out of the demo.
    ecfg = config.load_config("evaluate", [f"n_samples={eval_samples}", f"generation.max_new_tokens={max_new_tokens}",
                                           "decodings=[plain,grounded]"], kind="evaluate")
    scores = evaluate.evaluate(ecfg, out=str(out_dir / "eval"), data=str(out_dir / "prepared"), models=models,
                               overwrite=True)

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
    rec.data_fingerprint = record.data_fingerprint(out_dir / "prepared")
    rec.steps, rec.train_loss, rec.eval_loss = metrics["global_step"], metrics["train_loss_last"], metrics["eval_loss"]
    rec.finished = True
    record.write(out_dir, rec)  # last: a demo stopped before here is carried on by the next `demo`
    return {"scores": scores, "metrics": metrics, "report": str(report), "engine": engine}
