"""Training throughput of a preset through the real code path of `writemypaper train` (train.build_trainer), on a
Gemma-2-2B-shaped model with random weights and token-id data of realistic lengths. One variant per process, so
that each has its own peak memory; each run appends one JSON line to --out, and --table prints them side by side
with every figure as a ratio to the baseline of the same file.

    python bench/common.py make-model /tmp/g2 && python bench/common.py peak /tmp/peak.json
    python bench/bench_train.py --model /tmp/g2 --preset seed --peak /tmp/peak.json --out train.jsonl
    python bench/bench_train.py --model /tmp/g2 --preset fast --peak /tmp/peak.json --out train.jsonl
    accelerate launch --num_processes 2 bench/bench_train.py --model /tmp/g2 --preset fast --name fast-2gpu ...
    python bench/bench_train.py --table train.jsonl --baseline seed

Tokens/s counts every token the model reads (prompt and answer, no padding), between the end of the warm-up steps
and the end of the last step; evaluation runs after the last step, so it adds to the peak memory but not the time.
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
import common  # noqa: E402  (puts src/ on the path too)


def _counter_hook(totals, pad_id: int):
    """Counts, on the GPU and without syncing, what each training forward pass reads: tokens (not padding),
    sequences and tokens with a label. Padded batches carry an attention mask; padding-free ones are one row whose
    position ids restart at 0 for each sequence (and pad tokens, if the row is padded to a fixed length)."""
    import torch

    def hook(module, args, kwargs):
        if not module.training:
            return
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        pos, labels = kwargs.get("position_ids"), kwargs.get("labels")
        if mask is not None and mask.dim() == 2:
            tokens, samples = mask.sum(), torch.tensor(mask.shape[0], device=mask.device)
        elif pos is not None:
            real = ids != pad_id
            tokens, samples = real.sum(), ((pos == 0) & real).sum()
        else:
            tokens, samples = torch.tensor(ids.numel(), device=ids.device), torch.tensor(ids.shape[0], device=ids.device)
        totals[0] += tokens
        totals[1] += samples
        if labels is not None:
            totals[2] += (labels[:, 1:] != -100).sum()

    return hook


def run(a) -> dict | None:
    import torch
    from omegaconf import OmegaConf
    from transformers import TrainerCallback

    from writemypaper import models
    from writemypaper.config import load_config, to_dict
    from writemypaper.train import build_trainer, count_parameters

    t_start = time.time()
    if a.compile_mode:  # train.compile_layers calls Module.compile on each layer: give those calls the mode
        compile_ = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, *args, **kw: compile_(self, *args, **{"mode": a.compile_mode, **kw})
    cfg = load_config(a.preset, a.set, kind="train")
    steps = a.warmup + a.steps + (1 if a.profile else 0)  # the profiled step comes after the timed ones
    eval_on = cfg.training.get("eval_strategy", "no") not in ("no", False) and not a.no_eval
    # Benchmark-only settings: a short run, a loss every step, no checkpoints or TensorBoard, evaluation once at the
    # end (after the timed window).
    bench = {"max_steps": steps, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
             "disable_tqdm": True}
    if eval_on:
        bench.update(eval_strategy="steps", eval_steps=steps)
    else:
        bench.update(eval_strategy="no")
    for k, v in bench.items():
        OmegaConf.update(cfg, f"training.{k}", v, force_add=True)
    cfg.early_stopping_patience = None

    vocab = models.load_model_config(a.model).vocab_size
    rows = common.synthetic_pairs(a.samples, seed=0, max_length=512, vocab=vocab)  # the same data for every preset
    stats = common.data_stats(rows)
    train_ds = common.dataset(rows)
    eval_ds = common.dataset(common.synthetic_pairs(a.eval_samples, seed=1, vocab=vocab)) if eval_on else None
    tokenizer = models.load_tokenizer(a.model, padding_side="right")

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    totals = torch.zeros(3, dtype=torch.long, device=dev)
    marks: list[tuple[float, torch.Tensor, int]] = []

    profiler = None

    lever, _, block = (a.ab or ":0").partition(":")
    if a.ab and (lever != "nan-filter" or not block.isdigit() or int(block) < 1):
        raise SystemExit(f"--ab {a.ab}: use nan-filter:B with B >= 1")
    block = int(block)

    def arm(step: int) -> str:  # --ab LEVER:B: after the warm-up, blocks of B steps alternate the lever off / on
        return "on" if block and step >= a.warmup and (step - a.warmup) // block % 2 else "off"

    class StepClock(TrainerCallback):
        def on_step_begin(self, args, state, control, **kw):
            nonlocal profiler
            on = arm(state.global_step) == "on"
            if lever == "nan-filter":  # the Trainer reads it at every micro-batch
                args.logging_nan_inf_filter = on
            if a.profile and state.global_step == a.warmup + a.steps and int(os.environ.get("RANK", 0)) == 0:
                profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                                  + ([torch.profiler.ProfilerActivity.CUDA] if cuda else []))
                profiler.__enter__()

        def on_step_end(self, args, state, control, **kw):
            # A CUDA event marks the step's end on the GPU's timeline, with no wait: a sync here would drain the
            # queue every step, which training does not do. Times are read once training is over.
            clock = torch.cuda.Event(enable_timing=True) if cuda else time.perf_counter()
            if cuda:
                clock.record()
            marks.append((clock, totals.clone(), torch.cuda.max_memory_allocated() if cuda else 0))
            faulthandler.cancel_dump_traceback_later()
            if profiler is not None and len(marks) == steps:
                torch.cuda.synchronize() if cuda else None
                profiler.__exit__(None, None, None)
                write_profile(profiler, a.profile, _seconds(marks[-2][0], marks[-1][0]))

    with tempfile.TemporaryDirectory(prefix="wmp-bench-") as out_dir:
        t_build = time.time()
        trainer = build_trainer(cfg, a.model, Path(out_dir), train_ds, eval_ds, tokenizer, callbacks=[StepClock()])
        build_s = time.time() - t_build
        trainer.model.register_forward_pre_hook(_counter_hook(totals, tokenizer.pad_token_id), with_kwargs=True)
        if a.compile_mode and "reduce-overhead" in a.compile_mode:
            # CUDA graphs reuse their output memory at each replay: a new micro-batch starts a new generation of
            # them, or the previous one's outputs (still needed by backward) read as overwritten
            trainer.model.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())
        trainable, total_params = count_parameters(trainer.model)
        attn = getattr(trainer.model.config, "_attn_implementation", None)
        if cuda:
            torch.cuda.reset_peak_memory_stats()
        if a.stacks_after:  # a first step slower than this prints every thread's stack (a hang, or compilation)
            faulthandler.dump_traceback_later(a.stacks_after)
        start = torch.cuda.Event(enable_timing=True) if cuda else None
        t_train = time.perf_counter()
        if cuda:
            start.record()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        train_wall = time.perf_counter() - t_train
        history = trainer.state.log_history
        world = trainer.args.world_size
        args = trainer.args

    counts = torch.stack([m[1] for m in marks]).to(dev)
    peak = torch.tensor([torch.cuda.max_memory_allocated(dev) if cuda else 0,
                         max(m[2] for m in marks)], device=dev)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)  # every rank's tokens
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if dist.get_rank() != 0:
            return None
    counts = counts.tolist()[: a.warmup + a.steps]
    times = [_seconds(start, m[0]) for m in marks][: a.warmup + a.steps]
    w = a.warmup
    dt = times[-1] - times[w - 1]
    tok, smp, ltok = (counts[-1][i] - counts[w - 1][i] for i in range(3))
    step_times = sorted(t1 - t0 for t0, t1 in zip(times[w - 1:], times[w:]))
    ab = {}
    for i in range(w, len(times)):  # step i+1 ran between marks i-1 and i
        row = ab.setdefault(arm(i), {"steps": 0, "seconds": 0.0, "tokens": 0})
        row["steps"] += 1
        row["seconds"] += times[i] - times[i - 1]
        row["tokens"] += counts[i][0] - counts[i - 1][0]
    for row in ab.values():
        row["tokens_per_s"] = row["tokens"] / row["seconds"]

    mconf = models.load_model_config(a.model)
    fl = common.lora_flops_per_token(mconf, int(cfg.lora.r), list(cfg.lora.target_modules), stats)
    peak_tflops = json.loads(Path(a.peak).read_text())["bf16_matmul_tflops"] if a.peak and Path(a.peak).is_file() else None
    tps = tok / dt
    result = {
        "name": a.name or a.preset, "preset": a.preset, "overrides": a.set, "world_size": world,
        "tokens_per_s": tps, "samples_per_s": smp / dt, "loss_tokens_per_s": ltok / dt,
        "tokens_per_step": tok / a.steps, "samples_per_step": smp / a.steps,
        "step_s_median": step_times[len(step_times) // 2], "ab": {"lever": lever, "block": block, **ab} if block else None,
        "peak_mem_gib": peak[0].item() / 2**30, "peak_mem_train_gib": peak[1].item() / 2**30,
        "evaluation": eval_on,
        "mfu": tps * fl["flops_per_token"] / (peak_tflops * 1e12) if peak_tflops else None,
        "flops_per_token": fl["flops_per_token"], "bf16_matmul_tflops": peak_tflops,
        "losses": [round(h["loss"], 4) for h in history if "loss" in h],
        "eval_loss": next((h["eval_loss"] for h in history if "eval_loss" in h), None),
        "first_step_s": times[0] if cuda else times[0] - t_train, "train_wall_s": train_wall, "build_s": build_s,
        "process_s": time.time() - t_start, "warmup_steps": w, "timed_steps": a.steps,
        "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32", "attn_implementation": attn,
        "quantization": cfg.get("quantization"), "trainable_params": trainable, "total_params": total_params,
        "micro_batch": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps,
        "packing": bool(args.packing), "gradient_checkpointing": bool(args.gradient_checkpointing),
        "optim": str(args.optim), "data": stats, "config": to_dict(cfg), **common.environment(),
    }
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{result['name']}: {tps:,.0f} tokens/s, {smp / dt:.1f} samples/s, peak {result['peak_mem_gib']:.2f} GiB, "
          f"MFU {result['mfu'] if result['mfu'] is None else round(100 * result['mfu'], 1)}%, "
          f"losses {result['losses'][:3]}..{result['losses'][-2:]}")
    if block:
        print(f"same process, blocks of {block} steps with {lever} off and on: " + ", ".join(
            f"{k} {v['tokens_per_s']:,.0f} tokens/s over {v['steps']} steps" for k, v in sorted(ab.items()))
            + f"; off / on = {ab['off']['tokens_per_s'] / ab['on']['tokens_per_s']:.3f}")
    return result


def _seconds(start, end) -> float:
    """Seconds between two marks: CUDA events (on a GPU) or perf_counter readings."""
    if hasattr(end, "elapsed_time"):
        return start.elapsed_time(end) / 1000
    return end - (start or 0)


def write_profile(prof, path: str, step_s: float) -> None:
    """One optimizer step under torch.profiler: how much of the step the GPU spent in kernels, which kernels, and
    how many were launched (host overhead shows as a GPU busy well under the step time)."""
    from torch.autograd import DeviceType

    events = prof.key_averages()

    def dev_time(e):  # torch renamed cuda_* to device_* (2.4); read whichever this torch has
        return getattr(e, "self_device_time_total", None) or getattr(e, "self_cuda_time_total", 0)

    # GPU-side ranges of annotated regions (DistributedDataParallel.forward, say) span kernels; they are not kernels
    kernels = [e for e in events if getattr(e, "device_type", None) == DeviceType.CUDA and dev_time(e) > 0
               and not getattr(e, "is_user_annotation", False)
               and not e.key.startswith(("DistributedDataParallel", "Optimizer", "ProfilerStep"))]
    busy_s = sum(dev_time(e) for e in kernels) / 1e6
    launches = sum(e.count for e in kernels)
    sort = "self_device_time_total" if hasattr(events[0], "self_device_time_total") else "self_cuda_time_total"
    head = (f"step {step_s:.3f} s (profiled, so slower than the timed steps); GPU kernels {busy_s:.3f} s "
            f"({100 * busy_s / step_s:.0f}% busy); {launches} kernel launches\n")
    top = sorted(kernels, key=dev_time, reverse=True)[:25]
    lines = [f"{dev_time(e) / 1e3:9.1f} ms {e.count:6d}x  {e.key[:110]}" for e in top]
    ops = events.table(sort_by=sort, row_limit=30, max_name_column_width=60)
    Path(path).write_text(head + "\nkernels by GPU time:\n" + "\n".join(lines) + "\n\nops:\n" + ops + "\n")
    print(head + "\n".join(lines[:12]))


def table(path: str, baseline: str) -> str:
    rows = [json.loads(x) for x in Path(path).read_text().splitlines() if x.strip()]
    base = next((r for r in rows if r["name"] == baseline), None)

    def ratio(r, k):
        return f"{r[k] / base[k]:.2f}x" if base and base.get(k) else "-"

    out = ["| variant | GPUs | tokens/s | x | samples/s | x | peak GiB | x | MFU | loss steps 1-3 | last loss | eval loss |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        ev = f"{r['eval_loss']:.3f}" if r.get("eval_loss") is not None else "off"
        out.append(
            f"| {r['name']} | {r['world_size']} | {r['tokens_per_s']:,.0f} | {ratio(r, 'tokens_per_s')} | "
            f"{r['samples_per_s']:.1f} | {ratio(r, 'samples_per_s')} | {r['peak_mem_gib']:.2f} | "
            f"{ratio(r, 'peak_mem_gib')} | {mfu} | {', '.join(f'{x:.2f}' for x in r['losses'][:3])} | "
            f"{r['losses'][-1]:.2f} | {ev} |")
    ab = [r for r in rows if r.get("ab")]
    if ab:
        out += ["", "| variant (one process) | lever | off: tokens/s | on: tokens/s | off / on | steps each |",
                "|---|---|---:|---:|---:|---|"]
        for r in ab:
            off, on = r["ab"].get("off"), r["ab"].get("on")
            if off and on:
                out.append(f"| {r['name']} | {r['ab']['lever']} | {off['tokens_per_s']:,.0f} | "
                           f"{on['tokens_per_s']:,.0f} | {off['tokens_per_s'] / on['tokens_per_s']:.3f} | "
                           f"{off['steps']}, {on['steps']} |")
    return "\n".join(out)


def main():
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (python bench/common.py make-model DIR)")
    ap.add_argument("--preset", default="fast", help="seed, fast, low-memory, or a .yaml path")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--name", help="row name (default: the preset)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--steps", type=int, default=10, help="timed optimizer steps")
    ap.add_argument("--samples", type=int, default=4096, help="training pairs generated")
    ap.add_argument("--eval-samples", type=int, default=128)
    ap.add_argument("--no-eval", action="store_true", help="turn the preset's evaluation off")
    ap.add_argument("--peak", help="JSON from `python bench/common.py peak` (for MFU)")
    ap.add_argument("--stacks-after", type=float, default=0, metavar="S",
                    help="print every thread's stack if the first step has not ended after S seconds")
    ap.add_argument("--profile", metavar="TXT", help="profile one more step after the timed ones, write a summary here")
    ap.add_argument("--compile-mode", help="torch.compile mode for the compiled layers (e.g. reduce-overhead: "
                                           "CUDA graphs)")
    ap.add_argument("--out", default="bench-train.jsonl")
    ap.add_argument("--table", metavar="JSONL", help="print the table of a results file and exit")
    ap.add_argument("--baseline", default="seed", help="row the ratios are taken against")
    a = ap.parse_args()
    if a.table:
        print(table(a.table, a.baseline))
        return
    if not a.model:
        ap.error("--model is required")
    run(a)


if __name__ == "__main__":
    main()
