"""LoRA/QLoRA supervised fine-tuning with TRL's SFTTrainer: presets from the notebook's recipe to the fastest on
a big GPU, evaluation that never materialises the logits, early stopping, and resume after a kill.

    writemypaper train --config cpu-demo --data prepared --out runs/demo
    accelerate launch -m writemypaper train --config fast --data prepared --out runs/fast     # several GPUs
"""

from __future__ import annotations

import dataclasses
import math
import os
import re
import shutil
import time
from pathlib import Path

from writemypaper.errors import UserError

# Our own keys; everything under `training:` goes to TRL's SFTConfig, everything under `lora:` to PEFT's LoraConfig.
TOP_KEYS = {
    "kind", "open_sections", "source", "model", "precision", "attn_implementation", "quantization", "compile_layers",
    "instruction", "max_train_samples", "max_eval_samples", "early_stopping_patience", "lora", "training",
}
CHECKPOINTS = "checkpoints"
COMPLETE = "writemypaper-complete"  # written into a checkpoint once the Trainer has finished saving it


# ---------------------------------------------------------------------------------------------------------------------
# validation: every problem found before any model is loaded


def eval_enabled(training) -> bool:
    """YAML reads an unquoted `no` as false, so `eval_strategy=no` may arrive as False."""
    return training.get("eval_strategy", "no") not in (False, None, "no")


def validate(cfg, data_dir: str, out_dir: str, resume: bool) -> None:
    from peft import LoraConfig
    from trl import SFTConfig

    from writemypaper.config import to_dict

    problems = []
    c = to_dict(cfg)
    for k in set(c) - TOP_KEYS:
        problems.append(f"unknown key '{k}'")
    sft_fields = {f.name for f in dataclasses.fields(SFTConfig)}
    for k in set(c.get("training") or {}) - sft_fields:
        problems.append(f"training.{k} is not an SFTConfig option")
    for k in ("output_dir", "resume_from_checkpoint", "bf16", "fp16"):
        if k in (c.get("training") or {}):
            problems.append(f"training.{k} is set by writemypaper (use --out, --resume, precision=...)")
    lora_fields = {f.name for f in dataclasses.fields(LoraConfig)}
    for k in set(c.get("lora") or {}) - lora_fields:
        problems.append(f"lora.{k} is not a LoraConfig option")
    lora = c.get("lora") or {}
    if lora.get("r", 1) <= 0:
        problems.append(f"lora.r={lora.get('r')} must be positive")
    if not 0 <= lora.get("lora_dropout", 0) < 1:
        problems.append(f"lora.lora_dropout={lora.get('lora_dropout')} must be in [0, 1)")
    t = c.get("training") or {}
    if t.get("learning_rate", 1e-4) <= 0:
        problems.append(f"training.learning_rate={t.get('learning_rate')} must be positive")
    if (t.get("max_length") or 1) < 16:
        problems.append(f"training.max_length={t.get('max_length')} is too small (at least 16)")
    for k in ("per_device_train_batch_size", "gradient_accumulation_steps"):
        if k in t and t[k] < 1:
            problems.append(f"training.{k}={t[k]} must be at least 1")
    if c.get("precision", "auto") not in ("auto", "bf16", "fp16", "fp32"):
        problems.append(f"precision={c.get('precision')} is not one of auto, bf16, fp16, fp32")
    if c.get("quantization") not in (None, "nf4", "4bit"):
        problems.append(f"quantization={c.get('quantization')} is not nf4 or null")
    if c.get("compile_layers", False) not in (True, False, "auto"):
        problems.append(f"compile_layers={c.get('compile_layers')} is not true, false or auto")
    patience = c.get("early_stopping_patience")
    if patience and not eval_enabled(t):
        problems.append("early_stopping_patience needs evaluation: set training.eval_strategy=steps")
    if not Path(data_dir).is_dir():
        problems.append(f"--data {data_dir}: no such directory (make one with `writemypaper prepare`)")
    elif not (Path(data_dir) / "train.parquet").is_file():
        problems.append(f"--data {data_dir}: no train.parquet; not a directory written by `writemypaper prepare`")
    out = Path(out_dir)
    if out.exists() and not resume:
        if (out / CHECKPOINTS).is_dir() or (out / "adapter_config.json").is_file():
            problems.append(f"--out {out_dir} already holds a run: add --resume to continue it, or pick another --out")
    if resume and not out.is_dir():
        problems.append(f"--resume: {out_dir} does not exist")
    if problems:
        raise UserError("; ".join(problems))


# ---------------------------------------------------------------------------------------------------------------------
# data


TOKENIZE_VERSION = 2  # part of the tokenization cache key: bump it whenever tokenize_split's output changes
DROP_WARN = 0.05  # warn when more than this share of a split is longer than max_length


def stratified_subset(ds, n: int | None, seed: int, column: str = "ipc"):
    """`n` rows of `ds` drawn by a seeded shuffle, stratified by `column` (the field of study): within each field
    the rows are shuffled and spread evenly over [0, 1) from a random offset, and the n lowest positions over all
    fields are kept, so every field gets its share within one row (as `prepare` splits by document). Kept rows stay
    in their original order. Without `n`, or with n >= len(ds), `ds` itself."""
    import random
    from collections import defaultdict

    if not n or n >= len(ds):
        return ds
    groups: dict[str, list[int]] = defaultdict(list)
    keys = ds[column] if column in ds.column_names else [""] * len(ds)
    for i, key in enumerate(keys):
        groups[key].append(i)
    rng = random.Random(seed)
    keyed = []
    for key in sorted(groups):
        rows = groups[key]
        rng.shuffle(rows)
        offset = rng.random()
        keyed += [((j + offset) / len(rows), key, i) for j, i in enumerate(rows)]
    keyed.sort()
    return ds.select(sorted(i for _, _, i in keyed[:n]))


def _prompt_length(prompt_ids: list[int], ids: list[int]) -> int:
    """As prompts.encode_example: the prompt's own length when the pair's ids start with it, else the longest common
    prefix (the tokenizer merged "model\n" with the answer's first characters), so no answer token is masked."""
    n = len(prompt_ids)
    if ids[:n] == prompt_ids:
        return n
    n = 0
    while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
        n += 1
    return n


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """`tokenizer(texts, add_special_tokens=False)["input_ids"]`, through the Rust tokenizer's encode_batch_fast where
    there is one: the same ids, in parallel, without the offsets and masks (a third of the time) that we never use."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation or backend.padding:  # a left-over truncation would change the ids
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _encode_batch(batch, tokenizer, instruction, max_length):
    """prompts.encode_example for a batch of pairs, with the tokenizer called once per list (the fast tokenizer
    encodes a list in parallel), dropping the pairs longer than max_length."""
    from writemypaper import prompts

    bos, eos = tokenizer.bos_token, tokenizer.eos_token_id
    pairs = list(zip(batch["summary"], batch["original"]))
    prompt_ids = _encode_texts(tokenizer, [prompts.render_prompt(s, instruction, bos) for s, _ in pairs])
    full_ids = _encode_texts(tokenizer, [prompts.render_example(s, o, instruction, bos) for s, o in pairs])
    out = {"input_ids": [], "labels": []}
    for p, ids in zip(prompt_ids, full_ids):
        ids = ids + [eos]
        if max_length and len(ids) > max_length:
            continue
        n = _prompt_length(p, ids)
        out["input_ids"].append(ids)
        out["labels"].append([-100] * n + ids[n:])
    return out


def _tokenizer_key(tokenizer) -> str:
    """A digest of everything about the tokenizer that changes the ids, computed once per tokenizer. Hashing the
    tokenizer object itself (what datasets does for a map's arguments) took 12 s on the embedded Gemma 3 tokenizer
    here; hashing its serialized form takes about 1 s."""
    import hashlib

    key = getattr(tokenizer, "_writemypaper_key", None)
    if key is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            h = hashlib.sha256(backend.to_str().encode("utf-8"))
        else:  # a slow (Python) tokenizer: datasets' own hash of it
            from datasets.fingerprint import Hasher

            h = hashlib.sha256(Hasher.hash(tokenizer).encode("utf-8"))
        h.update(repr((tokenizer.bos_token, tokenizer.eos_token_id, type(tokenizer).__name__)).encode("utf-8"))
        key = h.hexdigest()
        tokenizer._writemypaper_key = key
    return key


def tokenize_split(ds, tokenizer, instruction, max_length: int | None, limit: int | None = None, seed: int = 42):
    """Token ids and prompt-masked labels, in one batched map. Pairs longer than max_length are dropped, not
    truncated: a truncated example would lose its `<end_of_turn>` and teach the model never to stop. `limit` takes a
    seeded subset stratified by field (stratified_subset). Returns (dataset, pairs dropped for length).

    A dataset read from disk (load_split) caches the result in the datasets cache under a key made of the source's
    fingerprint, the tokenizer's content, the instruction and max_length, so a second run (or another rank, see
    main_process_first) loads it instead of tokenizing again."""
    from datasets.fingerprint import Hasher

    ds = stratified_subset(ds, limit, seed)
    before = len(ds)
    if before == 0:  # nothing to tokenize (the caller refuses an empty split)
        return ds, 0
    fingerprint = Hasher.hash([ds._fingerprint, TOKENIZE_VERSION, _tokenizer_key(tokenizer), instruction, max_length])
    # One process: the Rust tokenizer encodes each batch on every core itself. Worker processes (num_proc) were
    # slower at every count measured, since each one is sent the 262k-entry tokenizer (bench/RESULTS.md: 400k pairs
    # in 84 s with one process on 2 cores against 108 s with 2; 52 s on 8 cores against 131 s with 4 and 123 s with 8)
    ds = ds.map(
        _encode_batch, batched=True, batch_size=1000, remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "instruction": instruction, "max_length": max_length},
        new_fingerprint=fingerprint, desc="tokenizing",
    )
    return ds, before - len(ds)


def main_process_first():
    """Under `accelerate launch`, the main process of each machine tokenizes first and the other ranks wait, then
    load its cached result: the corpus is tokenized once per machine, not once per rank."""
    import contextlib

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def report_dropped(split: str, dropped: int, total: int, max_length: int | None) -> None:
    """One line on stderr with the pairs a split lost to max_length; a warning above DROP_WARN of them."""
    import sys

    if not total or int(os.environ.get("RANK", "0")) != 0:
        return
    share = dropped / total
    line = (f"{split}: {dropped:,} of {total:,} pairs ({100 * share:.1f}%) are longer than max_length={max_length} "
            f"and were dropped")
    if share > DROP_WARN:
        print(f"writemypaper: warning: {line}; raise training.max_length to keep them", file=sys.stderr)
    else:
        print(f"writemypaper: {line}", file=sys.stderr)


# ---------------------------------------------------------------------------------------------------------------------
# checkpoints


def complete_checkpoints(out_dir: str | Path) -> list[Path]:
    """Checkpoints the Trainer finished writing, oldest first. A checkpoint half-written when the process was killed
    has no marker and is never picked."""
    root = Path(out_dir) / CHECKPOINTS
    if not root.is_dir():
        return []
    found = []
    for p in root.iterdir():
        m = re.fullmatch(r"checkpoint-(\d+)", p.name)
        if m and (p / COMPLETE).is_file():
            found.append((int(m.group(1)), p))
    return [p for _, p in sorted(found)]


def _callbacks(patience: int | None):
    from transformers import TrainerCallback
    from transformers.trainer_callback import ProgressCallback

    class MarkComplete(TrainerCallback):
        """on_save runs after the Trainer has written every file of the checkpoint."""

        def on_save(self, args, state, control, **kwargs):
            if state.is_world_process_zero:
                ckpt = Path(args.output_dir) / f"checkpoint-{state.global_step}"
                if ckpt.is_dir():
                    from writemypaper.atomic import atomic_write_text, ordinary_modes

                    ordinary_modes(ckpt)  # safetensors writes its files 0600
                    atomic_write_text(ckpt / COMPLETE, f"{state.global_step}\n")

    class LossBar(ProgressCallback):
        """The Trainer's tqdm bar (with its ETA), showing the latest losses instead of printing dicts."""

        def on_log(self, args, state, control, logs=None, **kwargs):
            if state.is_world_process_zero and self.training_bar is not None and logs:
                post = {k: f"{v:.4f}" for k, v in logs.items() if k in ("loss", "eval_loss") and v is not None}
                if post:
                    self.training_bar.set_postfix(post, refresh=False)

    cbs = [MarkComplete(), LossBar()]
    if patience:
        from transformers import EarlyStoppingCallback

        cbs.append(EarlyStoppingCallback(early_stopping_patience=int(patience)))
    return cbs


# ---------------------------------------------------------------------------------------------------------------------
# outputs


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


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def _lora_config(cfg):
    from peft import LoraConfig

    from writemypaper.config import to_dict

    kw = to_dict(cfg.lora)
    kw.setdefault("task_type", "CAUSAL_LM")
    return LoraConfig(**kw)


def _sft_config(cfg, out: Path, dtype):
    import torch
    from trl import SFTConfig

    from writemypaper.config import to_dict

    kw = to_dict(cfg.training)
    kw.update(
        output_dir=str(out / CHECKPOINTS),
        bf16=dtype == torch.bfloat16,
        fp16=dtype == torch.float16,
        prediction_loss_only=True,  # evaluation keeps the loss only, never the (batch, seq, 256k) logits
    )
    if not eval_enabled(kw):
        kw["eval_strategy"] = "no"
    if kw.get("save_strategy") is False:  # YAML reads an unquoted `no` as false, as for eval_strategy
        kw["save_strategy"] = "no"
    if not torch.cuda.is_available() and int(os.environ.get("WORLD_SIZE", "1")) > 1:
        # `accelerate launch` of several processes on a machine without a GPU: train on the CPU through gloo, as one
        # job. Without it each process would train alone and all of them would write the same --out.
        kw.setdefault("use_cpu", True)
    kw.setdefault("report_to", ["tensorboard"])
    kw.setdefault("save_strategy", "steps")
    kw.setdefault("disable_tqdm", False)
    kw.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    if eval_enabled(kw) and cfg.get("early_stopping_patience"):
        kw.update(load_best_model_at_end=True, metric_for_best_model="eval_loss", greater_is_better=False)
        kw["save_steps"] = kw.get("eval_steps") or kw.get("save_steps")
    if kw.get("gradient_checkpointing"):
        kw.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    kw.setdefault("ddp_find_unused_parameters", False)
    return SFTConfig(**kw)


def _dry_run_params(ref: str, cfg) -> tuple[int, int]:
    """Trainable and total parameters, counted on a model with no weights (meta device): no download, no memory."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from writemypaper import models

    config = models.load_model_config(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, _lora_config(cfg))
    return count_parameters(model)


def compile_layers(model) -> int:
    """torch.compile each decoder layer in place (regional compilation): the layers share one compiled graph per
    layer kind, so compiling costs about one layer's time, and parameter names and checkpoints stay as they are.
    Inside a compiled layer, flex attention is generated with the rest of the layer. Returns the layers compiled."""
    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    kinds = set(getattr(base, "_no_split_modules", None) or [])
    layers = [m for m in base.modules() if type(m).__name__ in kinds]
    if not layers:
        raise UserError(f"compile_layers: no decoder layers found in {type(base).__name__}; set compile_layers=false")
    for layer in layers:
        layer.compile()
    return len(layers)


def build_trainer(cfg, ref: str, out_dir: Path, train_ds, eval_ds, tokenizer, callbacks: list | None = None):
    """The SFTTrainer every run uses (the benchmarks too): precision, attention and compiled layers resolved for this
    device (models.resolve_policy, which says on stderr what it stepped down and why), the model loaded with them
    and the quantization, LoRA from `lora:`, SFTConfig from `training:`, and our callbacks."""
    import torch
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    from writemypaper import models

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir) / "tensorboard")
    policy = models.resolve_policy(cfg.precision, cfg.get("attn_implementation"), cfg.get("compile_layers"),
                                   config=models.load_model_config(ref))
    policy.announce()
    base = models.load_model(ref, quantization=cfg.get("quantization"), tokenizer=tokenizer, policy=policy)
    args = _sft_config(cfg, Path(out_dir), policy.dtype)
    trainer = SFTTrainer(
        model=base, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        peft_config=_lora_config(cfg), callbacks=_callbacks(cfg.get("early_stopping_patience")) + list(callbacks or []),
    )
    # ours (LossBar) replaces the stock bar; remove that very instance, since LossBar is a ProgressCallback too
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb) is ProgressCallback:
            trainer.remove_callback(cb)
    if args.fp16:
        # TRL casts a quantized model's adapter weights to bf16, and fp16's GradScaler cannot unscale bf16 gradients
        # (trl#4901): keep the trainable weights in fp32, as fp16 mixed precision expects.
        for p in trainer.model.parameters():
            if p.requires_grad and p.dtype != torch.float32:
                p.data = p.data.float()
    if policy.compile_layers:  # last: the layers compile at their first call, with the weights as they are now
        compile_layers(trainer.model)
    trainer.writemypaper_policy = policy
    return trainer


def train(cfg, data: str, out: str, model: str | None = None, resume: bool = False, dry_run: bool = False) -> dict:
    """The `train` verb. Returns the metrics written to RUN_DIR/metrics.json (or the dry-run summary)."""
    from writemypaper import models
    from writemypaper.config import save_config
    from writemypaper.data import load_split

    if model:
        cfg.model = model
    validate(cfg, data, out, resume)
    out_dir = Path(out)
    instruction = cfg.get("instruction")
    ref = models.resolve_model(cfg.model)

    tokenizer = models.load_tokenizer(ref, padding_side="right")
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

    if dry_run:
        from omegaconf import OmegaConf

        trainable, total = _dry_run_params(ref, cfg)
        policy = models.resolve_policy(cfg.precision, cfg.get("attn_implementation"), cfg.get("compile_layers"),
                                       config=models.load_model_config(ref))
        policy.announce()
        print(OmegaConf.to_yaml(cfg))
        print(f"on this machine: {policy.describe()}")
        print(f"trainable parameters: {trainable:,} of {total:,} ({100 * trainable / total:.3f}%)")
        print(f"dataset: {sizes['train']:,} train / {sizes['validation']:,} validation pairs "
              f"({dropped_train} train and {dropped_eval} validation pairs dropped as longer than max_length={max_length})")
        return {"trainable_parameters": trainable, "total_parameters": total, "dataset": sizes}

    import torch

    checkpoint = None
    if resume:
        done = complete_checkpoints(out_dir)
        if not done:
            print(f"writemypaper: --resume: no complete checkpoint in {out_dir / CHECKPOINTS}; starting from step 0")
        else:
            checkpoint = str(done[-1])
            print(f"writemypaper: resuming from {checkpoint}")
    out_dir.mkdir(parents=True, exist_ok=True)
    save_config(cfg, out_dir / "config.yaml")
    trainer = build_trainer(cfg, ref, out_dir, train_ds, eval_ds, tokenizer)
    args = trainer.args
    dtype = torch.bfloat16 if args.bf16 else torch.float16 if args.fp16 else torch.float32
    trainable, total = count_parameters(trainer.model)
    start = time.time()
    try:
        result = trainer.train(resume_from_checkpoint=checkpoint)
    except Exception as e:
        # torch.compile's failures (no C compiler, a GPU Triton does not support, an op it cannot trace) come from
        # dynamo or inductor; checkpoints already written stay, and --resume continues from them
        if cfg.get("compile_layers") in (True, "auto") and type(e).__module__.startswith(("torch._dynamo", "torch._inductor")):
            cause = getattr(e, "inner_exception", None) or e  # BackendCompilerFailed wraps the compiler's error
            msg = (str(cause).strip().splitlines() or [""])[0][:300]
            raise UserError(f"compiling the decoder layers failed ({type(cause).__name__}: {msg}); "
                            "add compile_layers=false to train without compiling") from e
        raise
    runtime = time.time() - start

    metrics: dict = {}
    if trainer.is_world_process_zero():
        history = trainer.state.log_history
        train_losses = [h["loss"] for h in history if "loss" in h]
        eval_losses = [h["eval_loss"] for h in history if "eval_loss" in h]
        # With early stopping the best checkpoint was reloaded at the end, so its loss is the run's loss.
        final_eval = trainer.state.best_metric if args.load_best_model_at_end else (eval_losses[-1] if eval_losses else None)
        metrics = {
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
            "trainable_parameters": trainable,
            "total_parameters": total,
            "dataset": sizes,
            "precision": str(dtype).replace("torch.", ""),
            "attn_implementation": getattr(trainer.model.config, "_attn_implementation", None),
            "compile_layers": getattr(getattr(trainer, "writemypaper_policy", None), "compile_layers", None),
            "compute_capability": ".".join(map(str, torch.cuda.get_device_capability()))
            if torch.cuda.is_available() else None,
            "device": torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu",
            "world_size": trainer.args.world_size,
            "versions": _versions(),
        }
        _write_run(trainer, tokenizer, out_dir, cfg, data, instruction, metrics, history)
    return metrics


def _versions() -> dict:
    import peft
    import torch
    import transformers
    import trl

    return {"torch": torch.__version__, "transformers": transformers.__version__, "trl": trl.__version__,
            "peft": peft.__version__}


def _write_run(trainer, tokenizer, out_dir: Path, cfg, data: str, instruction, metrics: dict, history) -> None:
    """The adapter goes into a temporary directory first; adapter_config.json, which marks a finished run, is moved
    in last so a run killed while writing never looks finished."""
    from writemypaper.atomic import atomic_dir, atomic_write_json
    from writemypaper.data import read_stats

    final = out_dir / ".final"
    with atomic_dir(final) as tmp:
        trainer.model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)
    names = sorted(p.name for p in final.iterdir())
    for name in [n for n in names if n != "adapter_config.json"] + ["adapter_config.json"]:
        os.replace(final / name, out_dir / name)
    shutil.rmtree(final, ignore_errors=True)
    atomic_write_json(out_dir / "writemypaper.json", {"base_model": cfg.model, "instruction": instruction})
    atomic_write_json(out_dir / "metrics.json", metrics)
    atomic_write_json(out_dir / "log_history.json", history)
    atomic_write_json(out_dir / "data_stats.json", read_stats(data))
    plot_losses(history, out_dir / "loss_curve.png")
