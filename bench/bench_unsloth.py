"""Unsloth on our benchmark's terms: the random-weight Gemma-2-2B shape and the synthetic pairs of bench_train.py,
trained with Unsloth's FastLanguageModel and TRL's SFTTrainer, timed and counted by the same code (bench/timing.py),
one JSON line per run in the same format, so that `bench_train.py --table` puts it beside our presets.

    python bench/bench_unsloth.py --model /tmp/g2 --config 4bit --peak peak.json --out train.jsonl   # on a GPU
    python bench/bench_unsloth.py --model /tmp/g2 --config bf16 --peak peak.json --out train.jsonl
    python bench/bench_unsloth.py --model /tmp/tiny --config bf16 --engine trl --warmup 1 --steps 1 --repeats 1

Configs: `4bit` is Unsloth's Gemma 2 notebook recipe (4-bit QLoRA, r=16 on every projection, alpha 16, no dropout,
its CPU-offloaded gradient checkpointing, batch 2 x accumulation 4, adamw_8bit, padded batches: Unsloth refuses
packing and padding-free batches for Gemma 2); `bf16` is its bf16 LoRA at the settings that favour speed (no
gradient checkpointing, batch 8, fused AdamW). `--engine trl` runs the same recipe through plain transformers, PEFT
and TRL instead of Unsloth: a reference. Unsloth 2026.10.9 falls back to the CPU where there is no GPU (LoRA in bf16,
no 4-bit), so `--config bf16` checks this script on a CPU with either engine (tests/test_bench.py).
Unsloth is no dependency of the product: on the GPU machine it is installed apart (bench/fetch_unsloth.sh).
Offline: HF_HUB_OFFLINE=1 UNSLOTH_OFFLINE=1 UNSLOTH_DISABLE_STATISTICS=1 are set here. UNSLOTH_COMPILE_DISABLE=1 in
the environment turns Unsloth's compiler off (recorded in the row).
"""

from __future__ import annotations

import argparse
import faulthandler
import json
import os
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))
import common  # noqa: E402  (stdlib only at import: Unsloth must be imported before transformers)
import timing  # noqa: E402

TARGETS = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
CONFIGS = {
    "4bit": dict(load_in_4bit=True, batch=2, grad_accum=4, gradient_checkpointing="unsloth", optim="adamw_8bit",
                 r=16, lora_alpha=16, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=5),
    "bf16": dict(load_in_4bit=False, batch=8, grad_accum=1, gradient_checkpointing="none", optim="adamw_torch_fused",
                 r=16, lora_alpha=16, weight_decay=0.01, lr_scheduler_type="linear", warmup_steps=5),
}
OFFLINE = {"HF_HUB_OFFLINE": "1", "UNSLOTH_OFFLINE": "1", "UNSLOTH_DISABLE_STATISTICS": "1",
           "TRANSFORMERS_NO_ADVISORY_WARNINGS": "1"}


def recipe(a) -> dict:
    """The config's settings with the command line's overrides."""
    c = dict(CONFIGS[a.config])
    for key in ("batch", "grad_accum", "gradient_checkpointing", "optim"):
        if getattr(a, key) is not None:
            c[key] = getattr(a, key)
    return c


def load_unsloth(a, c: dict, max_length: int):
    """Unsloth's model and LoRA, as its notebooks make them; fix_tokenizer=False because our bench model pairs Gemma
    3's tokenizer (262k entries) with Gemma 2's 256k vocabulary, which Unsloth's tokenizer check refuses."""
    import torch
    from unsloth import FastLanguageModel

    model, _ = FastLanguageModel.from_pretrained(
        model_name=a.model, max_seq_length=max_length, dtype=torch.bfloat16, load_in_4bit=c["load_in_4bit"],
        load_in_16bit=not c["load_in_4bit"], fix_tokenizer=False)
    gc = {"none": False, "unsloth": "unsloth", "true": True}[c["gradient_checkpointing"]]
    model = FastLanguageModel.get_peft_model(
        model, r=c["r"], target_modules=TARGETS, lora_alpha=c["lora_alpha"], lora_dropout=0, bias="none",
        use_gradient_checkpointing=gc, random_state=3407, max_seq_length=max_length)
    return model, None  # SFTTrainer gets no peft_config: the model is a PeftModel already


def load_trl(a, c: dict):
    """The same recipe without Unsloth: transformers' model (eager attention, which keeps Gemma 2's softcapping), a
    PEFT LoraConfig for SFTTrainer, and bitsandbytes NF4 for the 4-bit config."""
    import torch
    from peft import LoraConfig
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    cuda = torch.cuda.is_available()
    dtype = torch.bfloat16 if cuda else torch.float32
    quant = None
    if c["load_in_4bit"]:
        quant = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=dtype,
                                   bnb_4bit_use_double_quant=True)
    model = AutoModelForCausalLM.from_pretrained(a.model, dtype=dtype, attn_implementation="eager",
                                                 quantization_config=quant, device_map={"": 0} if cuda else None)
    lora = LoraConfig(r=c["r"], lora_alpha=c["lora_alpha"], lora_dropout=0.0, bias="none",
                      target_modules=TARGETS, task_type="CAUSAL_LM")
    return model, lora


def sft_args(a, c: dict, out_dir: str, steps: int, cuda: bool, engine: str):
    from trl import SFTConfig

    optim = c["optim"] if cuda else "adamw_torch"  # the 8-bit and fused optimizers are CUDA-only
    return SFTConfig(
        output_dir=out_dir, max_steps=steps, per_device_train_batch_size=c["batch"],
        gradient_accumulation_steps=c["grad_accum"], learning_rate=2e-4, warmup_steps=c["warmup_steps"],
        lr_scheduler_type=c["lr_scheduler_type"], optim=optim, weight_decay=c["weight_decay"], seed=3407,
        logging_steps=1, save_strategy="no", eval_strategy="no", report_to="none", disable_tqdm=True,
        bf16=cuda, fp16=False, max_length=512, packing=False, padding_free=False, dataloader_num_workers=0,
        # Unsloth checkpoints through get_peft_model; TRL 1.x would otherwise turn the Trainer's own on as well
        gradient_checkpointing=engine == "trl" and c["gradient_checkpointing"] != "none",
    )


def run(a) -> dict:
    for k, v in OFFLINE.items():
        os.environ.setdefault(k, v)
    t_start = time.time()
    c = recipe(a)
    if a.engine == "unsloth":
        import unsloth  # noqa: F401  (first: it patches transformers, PEFT and TRL as they import)
    import torch
    from trl import SFTTrainer

    from writemypaper import models

    cuda = torch.cuda.is_available()
    steps = a.warmup + a.steps * a.repeats
    vocab = models.load_model_config(a.model).vocab_size
    rows = common.synthetic_pairs(a.samples, seed=0, max_length=512, vocab=vocab)  # bench_train.py's data
    stats = common.data_stats(rows)
    tokenizer = models.load_tokenizer(a.model, padding_side="right")
    totals = torch.zeros(3, dtype=torch.long, device="cuda" if cuda else "cpu")
    marks = timing.StepMarks(totals, cuda)
    with tempfile.TemporaryDirectory(prefix="wmp-unsloth-") as out_dir:
        t_build = time.time()
        model, peft_config = load_unsloth(a, c, 512) if a.engine == "unsloth" else load_trl(a, c)
        trainer = SFTTrainer(model=model, args=sft_args(a, c, out_dir, steps, cuda, a.engine),
                             train_dataset=common.dataset(rows), processing_class=tokenizer, peft_config=peft_config,
                             callbacks=[marks.callback(on_end=lambda _: faulthandler.cancel_dump_traceback_later())])
        build_s = time.time() - t_build
        trainer.model.register_forward_pre_hook(timing.counter_hook(totals, tokenizer.pad_token_id), with_kwargs=True)
        trainable = sum(p.numel() for p in trainer.model.parameters() if p.requires_grad)
        if a.stacks_after:
            faulthandler.dump_traceback_later(a.stacks_after)
        marks.begin()
        t_train = time.perf_counter()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        train_wall = time.perf_counter() - t_train
        history = trainer.state.log_history
    return record(a, c, marks, stats, history, build_s=build_s, train_wall_s=train_wall, trainable=trainable,
                  process_s=time.time() - t_start, attn=getattr(trainer.model.config, "_attn_implementation", None))


def record(a, c: dict, marks, stats: dict, history: list, **extra) -> dict:
    """The row, in bench_train.py's format (its --table reads both), appended to --out and printed."""
    import importlib.metadata as md

    import torch

    from writemypaper import models

    n = a.warmup + a.steps * a.repeats
    counts = torch.stack([m[1] for m in marks.marks]).tolist()[:n]
    summary = timing.summarize(marks.seconds()[:n], counts, [m[3] for m in marks.marks][:n], a.warmup, a.steps,
                               a.repeats)
    fl = common.lora_flops_per_token(models.load_model_config(a.model), c["r"], TARGETS, stats)
    peak_tflops = json.loads(Path(a.peak).read_text())["bf16_matmul_tflops"] if a.peak and Path(a.peak).is_file() else None
    peak = max(m[2] for m in marks.marks) / 2**30
    env = common.environment()
    for name in ("unsloth", "unsloth_zoo", "xformers", "torchao", "cut_cross_entropy", "flash-attn"):
        try:
            env["versions"][name] = md.version(name)
        except md.PackageNotFoundError:
            env["versions"][name] = None
    result = {
        "name": a.name or f"{'Unsloth' if a.engine == 'unsloth' else 'TRL + PEFT'}, {a.config}",
        "engine": a.engine, "config": a.config, "recipe": c, "world_size": 1, **summary,
        "peak_mem_gib": peak, "peak_mem_train_gib": peak, "evaluation": False, "eval_loss": None,
        "mfu": summary["tokens_per_s"] * fl["flops_per_token"] / (peak_tflops * 1e12) if peak_tflops else None,
        "flops_per_token": fl["flops_per_token"], "bf16_matmul_tflops": peak_tflops,
        "losses": [round(h["loss"], 4) for h in history if "loss" in h],
        "first_step_wall_s": extra["build_s"] + summary["first_step_s"], **extra,
        "unsloth_compile_disable": os.environ.get("UNSLOTH_COMPILE_DISABLE"), "packing": False,
        "micro_batch": c["batch"], "grad_accum": c["grad_accum"], "data": stats, **env,
    }
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{result['name']}: {timing.describe(summary)}; training peak {peak:.2f} GiB, MFU "
          f"{result['mfu'] if result['mfu'] is None else round(100 * result['mfu'], 1)}%, "
          f"losses {result['losses'][:3]}..{result['losses'][-2:]}")
    return result


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", required=True, help="model directory (python bench/common.py make-model DIR)")
    ap.add_argument("--config", choices=sorted(CONFIGS), default="4bit")
    ap.add_argument("--engine", choices=["unsloth", "trl"], default="unsloth",
                    help="unsloth, or the same recipe through plain TRL and PEFT (runs on a CPU too)")
    ap.add_argument("--batch", type=int, help="micro-batch (overrides the config's)")
    ap.add_argument("--grad-accum", type=int, help="gradient accumulation steps (overrides the config's)")
    ap.add_argument("--gradient-checkpointing", choices=["none", "unsloth", "true"], help="overrides the config's")
    ap.add_argument("--optim", help="optimizer (overrides the config's)")
    ap.add_argument("--name", help="row name")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, autotuning)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps in each timed block")
    ap.add_argument("--repeats", type=int, default=3, help="timed blocks: tokens/s is their median")
    ap.add_argument("--samples", type=int, default=4096, help="training pairs generated")
    ap.add_argument("--peak", help="JSON from `python bench/common.py peak` (for MFU)")
    ap.add_argument("--stacks-after", type=float, default=0, metavar="S",
                    help="print every thread's stack if the first step has not ended after S seconds")
    ap.add_argument("--out", default="bench-train.jsonl")
    return ap


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if min(a.warmup, a.steps, a.repeats) < 1:
        ap.error("--warmup, --steps and --repeats must each be at least 1")
    if not (Path(a.model) / "config.json").is_file():
        ap.error(f"--model {a.model}: no config.json there (python bench/common.py make-model DIR)")
    import torch  # before Unsloth is fine; transformers, PEFT and TRL must come after it

    if not torch.cuda.is_available():
        if CONFIGS[a.config]["load_in_4bit"]:
            ap.error("--config 4bit needs a CUDA GPU (bitsandbytes NF4); use --config bf16 on a CPU")
    run(a)


if __name__ == "__main__":
    main()
