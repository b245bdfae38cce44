"""The `train` verb: LoRA/QLoRA supervised fine-tuning with TRL's SFTTrainer, from presets for the notebook's recipe
to the fastest on a big GPU, with every config problem found before a model loads, resume after a kill, and the run
directory (adapter, metrics, loss curve) written so that a killed run never looks finished. The examples are built in
examples.py, the trainer in trainer.py.

    writemypaper train --config cpu-demo --data prepared --out runs/demo
    accelerate launch -m writemypaper train --config fast --data prepared --out runs/fast     # several GPUs
"""

from __future__ import annotations

import math
import os
import shutil
import time
from collections.abc import Mapping
from pathlib import Path

from writemypaper.config import eval_enabled
from writemypaper.errors import UserError
from writemypaper.examples import main_process_first, report_dropped, tokenize_split
from writemypaper.trainer import (CHECKPOINTS, build_trainer, close_progress, complete_checkpoints, count_parameters,
                                  lora_config, sft_config)

# Still importable from here, where the tests, the benchmarks and older scripts look for them.

_ADAPTER_TMP = "adapter"  # _write_run's temporary inside RUN_DIR: .adapter.tmp-PID-*


# ---------------------------------------------------------------------------------------------------------------------
# validation: every problem found before any model is loaded


def validate(cfg, data_dir: str, out_dir: str, resume: bool, overwrite: bool = False) -> None:
    """Every problem with a run's paths and config, reported together (one line each) before any model is loaded:
    the output policy for RUN_DIR, keys, types and ranges (config.train_problems), then SFTConfig and LoraConfig
    built as the run will build them, so that TRL's, transformers' and PEFT's own checks run now too."""
    from writemypaper import config

    found = config.train_problems(cfg)
    for section in ("training", "lora"):
        if not found[section] and isinstance(cfg.get(section), Mapping):
            found[section] = _build_problems(section, cfg, out_dir)
    problems = _path_problems(data_dir, out_dir, resume, overwrite) + [p for ps in found.values() for p in ps]
    if problems:
        raise UserError(*problems)


def _path_problems(data_dir: str, out_dir: str, resume: bool, overwrite: bool = False) -> list[str]:
    problems = []
    if not Path(data_dir).is_dir():
        problems.append(f"--data {data_dir}: no such directory (make one with `writemypaper prepare`)")
    elif not (Path(data_dir) / "train.parquet").is_file():
        problems.append(f"--data {data_dir}: no train.parquet; not a directory written by `writemypaper prepare`")
    return problems + _out_problems(Path(out_dir), resume, overwrite)


def _out_problems(out: Path, resume: bool, overwrite: bool) -> list[str]:
    """The output policy for RUN_DIR: a new or empty folder trains from scratch; our own run (its record, or the
    checkpoints of one killed before records were written) continues with --resume or starts again with
    --overwrite; anything else is never touched. Temporaries a killed run left are cleaned first."""
    from writemypaper.outputs import out_state

    if resume and overwrite:
        return ["--resume continues RUN_DIR and --overwrite starts it again: give one of them"]
    try:
        state = out_state(out, "run")
        if state == "ours":
            clean_inside(out)
    except UserError as e:
        return str(e).splitlines()
    if resume and not out.is_dir():
        return [f"--resume: {out} does not exist"]
    if state == "ours" and not resume and not overwrite:
        return [f"--out {out} already holds a run: add --resume to continue it, --overwrite to start it again, or "
                f"pick another --out"]
    return []


def clean_inside(out: Path) -> None:
    """Remove what a run killed while writing its adapter left inside RUN_DIR (_write_run's temporary)."""
    from writemypaper.outputs import clean_stale

    clean_stale(out / _ADAPTER_TMP, "--out")
    # where earlier versions wrote the adapter first, inside a run that is ours
    for p in [out / ".final", *out.glob("..final.tmp-*")]:
        shutil.rmtree(p, ignore_errors=True)


def _build_problems(section: str, cfg, out_dir: str) -> list[str]:
    """One line for the library's complaint about the section, if any; the device's precision is left out."""
    import torch

    try:
        sft_config(cfg, Path(out_dir), torch.float32) if section == "training" else lora_config(cfg)
    except (ValueError, TypeError) as e:
        return [f"{section}: {' '.join(str(e).split())}"]
    return []


# ---------------------------------------------------------------------------------------------------------------------
# the verb


def train(cfg, data: str, out: str, model: str | None = None, resume: bool = False, dry_run: bool = False,
          overwrite: bool = False) -> dict:
    """The `train` verb. Returns the metrics written to RUN_DIR/metrics.json (or the dry-run summary)."""
    from writemypaper import models, weights

    if model:
        cfg.model = model
    validate(cfg, data, out, resume, overwrite)
    out_dir = Path(out)
    ref = weights.resolve_model(cfg.model)
    tokenizer = models.load_tokenizer(ref, padding_side="right")
    train_ds, eval_ds, sizes = _examples(cfg, data, tokenizer)
    if dry_run:
        return _dry_run(cfg, ref, sizes)

    run_record = _start_run(cfg, data, out_dir, overwrite and not resume)
    checkpoint = _resume_from(out_dir) if resume else None
    policy = _policy(cfg, ref)
    trainer = build_trainer(cfg, ref, out_dir, train_ds, eval_ds, tokenizer, policy=policy)
    parameters = count_parameters(trainer.model)
    start = time.time()
    result = _fit(trainer, checkpoint, cfg.get("compile_layers"))
    runtime = time.time() - start

    metrics: dict = {}
    if trainer.is_world_process_zero():
        metrics = _run_metrics(trainer, result, cfg, checkpoint, runtime, sizes, parameters, policy)
        _write_run(trainer, tokenizer, out_dir, data, metrics, trainer.state.log_history, run_record)
    return metrics


def _start_run(cfg, data: str, out_dir: Path, start_again: bool):
    """Mark RUN_DIR as our run before training starts, with its record unfinished (so a killed run can be resumed,
    and never looks finished); with --overwrite, the earlier run is removed first (validate made sure it is
    ours). Only the main process writes; returns the record that _write_run finishes."""
    import torch

    from writemypaper import record
    from writemypaper.config import save_config

    rec = record.RunRecord(
        kind="run", finished=False, base_model=cfg.model, instruction=cfg.get("instruction"),
        preset=record.preset_name(cfg.get("source")), data_fingerprint=record.data_fingerprint(data),
        settings={"overrides": list(cfg.get("overrides") or []), "max_steps": cfg.training.get("max_steps"),
                  "num_train_epochs": cfg.training.get("num_train_epochs"),
                  "accelerator": "cuda" if torch.cuda.is_available() else "cpu"},
        device=torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu", versions=record.versions())
    if int(os.environ.get("RANK", "0")) == 0:
        if start_again and out_dir.exists():
            aside = out_dir.with_name(f".{out_dir.name}.old-{os.getpid()}")  # clean_stale finishes a killed removal
            os.rename(out_dir, aside)
            shutil.rmtree(aside, ignore_errors=True)
        out_dir.mkdir(parents=True, exist_ok=True)
        record.write(out_dir, rec)
        save_config(cfg, out_dir / "config.yaml")
    return rec


def _examples(cfg, data: str, tokenizer):
    """(train examples, validation examples or None, their sizes for metrics.json), the pairs each split lost to
    max_length said on stderr; a split left empty is refused."""
    from writemypaper.data import load_split

    instruction = cfg.get("instruction")
    max_length = cfg.training.get("max_length")
    seed = cfg.training.get("seed", 42)
    eval_on = eval_enabled(cfg.training)
    eval_ds, dropped_eval = (None, 0)
    with main_process_first():
        train_ds, dropped_train = tokenize_split(load_split(data, "train"), tokenizer, instruction, max_length,
                                                 cfg.get("max_train_samples"), seed)
        if eval_on:
            eval_ds, dropped_eval = tokenize_split(load_split(data, "validation"), tokenizer, instruction,
                                                   max_length, cfg.get("max_eval_samples"), seed)
    report_dropped("train", dropped_train, len(train_ds) + dropped_train, max_length)
    if eval_on:
        report_dropped("validation", dropped_eval, len(eval_ds) + dropped_eval, max_length)
        if len(eval_ds) == 0:
            raise UserError(f"{data}: the validation split is empty after dropping pairs over max_length={max_length}")
    if len(train_ds) == 0:
        raise UserError(f"{data}: no training pairs fit in max_length={max_length}; raise training.max_length")
    sizes = {"train": len(train_ds), "validation": len(eval_ds) if eval_ds is not None else 0,
             "dropped_over_max_length": {"train": dropped_train, "validation": dropped_eval}}
    return train_ds, eval_ds, sizes


def _policy(cfg, ref: str):
    """Precision, attention and compiled layers for this device (policy.resolve_policy), said on stderr."""
    from writemypaper import models
    from writemypaper.policy import resolve_policy

    policy = resolve_policy(cfg.precision, cfg.get("attn_implementation"), cfg.get("compile_layers"),
                            config=models.load_model_config(ref))
    policy.announce()
    return policy


def _dry_run(cfg, ref: str, sizes: dict) -> dict:
    """--dry-run: the resolved config, what this device would use, and what would train, without loading weights."""
    from omegaconf import OmegaConf

    from writemypaper.trainer import dry_run_parameters

    trainable, total = dry_run_parameters(ref, cfg)
    policy = _policy(cfg, ref)
    max_length = cfg.training.get("max_length")
    dropped = sizes["dropped_over_max_length"]
    print(OmegaConf.to_yaml(cfg))
    print(f"on this machine: {policy.describe()}")
    print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
    print(f"dataset: {sizes['train']:,} train / {sizes['validation']:,} validation pairs "
          f"({dropped['train']} train and {dropped['validation']} validation pairs dropped as longer than "
          f"max_length={max_length})")
    return {"trainable_parameters": trainable, "total_parameters": total, "dataset": sizes}


def _resume_from(out_dir: Path) -> str | None:
    """The newest complete checkpoint of an interrupted run; None (from step 0) when it has none."""
    done = complete_checkpoints(out_dir)
    if not done:
        print(f"writemypaper: --resume: no complete checkpoint in {out_dir / CHECKPOINTS}; starting from step 0")
        return None
    print(f"writemypaper: resuming from {done[-1]}")
    return str(done[-1])


def _fit(trainer, checkpoint: str | None, compile_requested):
    """trainer.train(), with a failure of torch.compile turned into one line that says how to train without it."""
    try:
        return trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as e:
        close_progress(trainer)  # so the error starts a line of its own, not the end of the bar's
        # torch.compile's failures (no C compiler, a GPU Triton does not support, an op it cannot trace) come from
        # dynamo or inductor; checkpoints already written stay, and --resume continues from them
        if compile_requested in (True, "auto") and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            cause = getattr(e, "inner_exception", None) or e  # BackendCompilerFailed wraps the compiler's error
            msg = (str(cause).strip().splitlines() or [""])[0][:300]
            raise UserError(f"compiling the decoder layers failed ({type(cause).__name__}: {msg}); "
                            "add compile_layers=false to train without compiling") from e
        raise


# ---------------------------------------------------------------------------------------------------------------------
# outputs


def _run_metrics(trainer, result, cfg, checkpoint: str | None, runtime: float, sizes: dict,
                 parameters: tuple[int, int], policy) -> dict:
    """metrics.json: the losses, the run's size and speed, and what it ran on."""
    import torch

    args, history = trainer.args, trainer.state.log_history
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    train_losses = [h["loss"] for h in history if "loss" in h]
    eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
    # With early stopping the best checkpoint was reloaded at the end, so its loss is the run's loss.
    final_eval = (trainer.state.best_metric if args.load_best_model_at_end
                  else eval_losses[-1] if eval_losses else None)
    return {
        "base_model": cfg.model,
        "global_step": trainer.state.global_step,
        "resumed_from": checkpoint,
        "train_loss_first": train_losses[0] if train_losses else None,
        "train_loss_last": train_losses[-1] if train_losses else None,
        "train_loss_mean": result.training_loss,
        "eval_losses": eval_losses,
        "eval_loss": final_eval,
        "eval_perplexity": math.exp(final_eval) if final_eval is not None and final_eval < 50 else None,
        "best_checkpoint": trainer.state.best_model_checkpoint,
        "train_runtime_s": runtime,
        "train_samples_per_second": result.metrics.get("train_samples_per_second"),
        "train_tokens": trainer._total_train_tokens if hasattr(trainer, "_total_train_tokens") else None,
        "trainable_parameters": parameters[0],
        "total_parameters": parameters[1],
        "dataset": sizes,
        "precision": str(dtype).replace("torch.", ""),
        "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
        "compile_layers": policy.compile_layers,
        "compute_capability": ".".join(map(str, torch.cuda.get_device_capability()))
        if torch.cuda.is_available() else None,
        "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
        "world_size": trainer.args.world_size,
        "versions": _versions(),
    }


def plot_losses(log_history: list[dict], path: Path) -> Path | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    train = [(h["step"], h["loss"]) for h in log_history if "loss" in h and "step" in h]
    val = [(h["step"], h["eval_loss"]) for h in log_history if "eval_loss" in h and "step" in h]
    if not train and not val:
        return None
    fig, ax = plt.subplots(figsize=(6, 3.5), dpi=120)
    if train:
        ax.plot(*zip(*train), label="train", marker="." if len(train) < 50 else None)
    if val:
        ax.plot(*zip(*val), label="validation", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss (model turn only)")
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    tmp = path.with_name(f".{path.name}.tmp.png")
    fig.savefig(tmp)
    plt.close(fig)
    os.replace(tmp, path)
    return path


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def _write_run(trainer, tokenizer, out_dir: Path, data: str, metrics: dict, history, rec) -> None:
    """The adapter goes into a temporary folder first and is moved in with adapter_config.json last; then the
    metrics, the curve, and the record, finished, last of all: a run killed at any point never looks finished."""
    import tempfile

    from writemypaper import record
    from writemypaper.atomic import atomic_write_json, ordinary_modes
    from writemypaper.data import read_stats

    tmp = Path(tempfile.mkdtemp(prefix=f".{_ADAPTER_TMP}.tmp-{os.getpid()}-", dir=out_dir))
    try:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
        ordinary_modes(tmp)
        names = sorted(p.name for p in tmp.iterdir())
        for name in [n for n in names if n != "adapter_config.json"] + ["adapter_config.json"]:
            os.replace(tmp / name, out_dir / name)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_json(out_dir / "log_history.json", history)
    atomic_write_json(out_dir / "data_stats.json", read_stats(data))
    plot_losses(history, out_dir / "loss_curve.png")
    rec.steps = metrics.get("global_step")
    rec.train_loss = metrics.get("train_loss_last")
    rec.eval_loss = metrics.get("eval_loss")
    rec.finished = True
    record.write(out_dir, rec)
