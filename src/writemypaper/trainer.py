"""Building the trainer every run uses, `train` and the benchmarks alike (TRL's SFTTrainer): precision, attention and compiled layers from the device policy, LoRA from the config's
`lora:`, TRL's SFTConfig from its `training:`, and our callbacks (checkpoints marked complete once written, a
progress bar with the losses, early stopping).

    python -c "from writemypaper.trainer import build_trainer; help(build_trainer)"
"""

from __future__ import annotations

import os
import re
from pathlib import Path

from writemypaper.errors import UserError

CHECKPOINTS = "checkpoints"
COMPLETE = "writemypaper-complete"  # written into a checkpoint once the Trainer has finished saving it


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


def close_progress(trainer) -> None:
    """Close the progress bars of a run that failed: the Trainer only closes them when training ends, and a bar left
    open is drawn again at exit, after the error."""
    for cb in trainer.callback_handler.callbacks:
        for name in ("training_bar", "prediction_bar"):
            if getattr(cb, name, None) is not None:
                getattr(cb, name).close()
                setattr(cb, name, None)


# ---------------------------------------------------------------------------------------------------------------------
# the trainer


def count_parameters(model) -> tuple[int, int]:
    trainable = sum(p.numel() for p in model.parameters() if p.requires_grad)
    total = sum(p.numel() for p in model.parameters())
    return trainable, total


def lora_config(cfg, model_type: str | None = None):
    """PEFT's LoraConfig from `lora:`. `target_modules: auto` is the model family's own list (families.py), and an
    explicit list must name modules of the family (one line naming both where it does not). Without `model_type`
    (validation, before any model is read) `auto` is left to PEFT, so the other fields are checked all the same."""
    from peft import LoraConfig

    from writemypaper import families
    from writemypaper.config import to_dict

    kw = to_dict(cfg.lora)
    kw.setdefault("task_type", "CAUSAL_LM")
    if model_type is not None:
        kw["target_modules"] = families.target_modules(families.family(model_type), kw.get("target_modules"))
    elif kw.get("target_modules") == "auto":
        kw["target_modules"] = None
    return LoraConfig(**kw)


def sft_config(cfg, out: Path, dtype):
    import torch
    from trl import SFTConfig

    from writemypaper.config import eval_enabled, to_dict, user_set

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
        if not user_set(cfg, "training.save_steps"):  # the user's own value is kept: validate refuses a conflict
            kw["save_steps"] = kw.get("eval_steps") or kw.get("save_steps")
    if kw.get("gradient_checkpointing"):
        kw.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    kw.setdefault("ddp_find_unused_parameters", False)
    return SFTConfig(**kw)


def dry_run_parameters(ref: str, cfg) -> tuple[int, int]:
    """Trainable and total parameters, counted on a model with no weights (meta device): no download, no memory."""
    import torch
    from peft import get_peft_model
    from transformers import AutoModelForCausalLM

    from writemypaper import models

    config = models.load_model_config(ref)
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(config)
    model = get_peft_model(model, lora_config(cfg, config.model_type))
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


def build_trainer(cfg, ref: str, out_dir: Path, train_ds, eval_ds, tokenizer, callbacks: list | None = None,
                  policy=None):
    """The SFTTrainer every run uses (the benchmarks too): precision, attention and compiled layers resolved for this
    device (policy.resolve_policy, which says on stderr what it stepped down and why; `policy` passes one already
    resolved, as `train` does to record it), the model loaded with them and the quantization, LoRA from `lora:`,
    SFTConfig from `training:`, and our callbacks."""
    import torch
    from transformers.trainer_callback import ProgressCallback
    from trl import SFTTrainer

    from writemypaper import models
    from writemypaper.policy import resolve_policy

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir) / "tensorboard")
    model_config = models.load_model_config(ref)
    peft_config = lora_config(cfg, model_config.model_type)  # before loading: a list that does not fit fails fast
    if policy is None:
        policy = resolve_policy(cfg.precision, cfg.get("attn_implementation"), cfg.get("compile_layers"),
                                config=model_config)
        policy.announce()
    base = models.load_model(ref, quantization=cfg.get("quantization"), tokenizer=tokenizer, policy=policy)
    args = sft_config(cfg, Path(out_dir), policy.dtype)
    trainer = SFTTrainer(
        model=base, args=args, train_dataset=train_ds, eval_dataset=eval_ds, processing_class=tokenizer,
        peft_config=peft_config, callbacks=_callbacks(cfg.get("early_stopping_patience")) + list(callbacks or []),
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
    return trainer
