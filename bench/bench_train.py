"""Training throughput of a preset through the real code path of `writemypaper train` (train.build_trainer), on a
Gemma-2-2B-shaped model with random weights and token-id data of realistic lengths. One variant per process, so
that each has its own peak memory; each run appends one JSON line to --out, and --table prints them side by side
with every figure as a ratio to the baseline of the same file.

    python bench/common.py make-model /tmp/g2 && python bench/common.py peak /tmp/peak.json
    python bench/bench_train.py --model /tmp/g2 --preset seed --peak /tmp/peak.json --out train.jsonl
    python bench/bench_train.py --model /tmp/g2 --preset fast --peak /tmp/peak.json --out train.jsonl
    accelerate launch --num_processes 2 bench/bench_train.py --model /tmp/g2 --preset fast --name fast-2gpu ...
    python bench/bench_train.py --table train.jsonl --baseline seed

Tokens/s counts every token the model reads (prompt and answer, no padding; bench/timing.py). After --warmup untimed
steps (compilation, autotuning, the allocator), --repeats blocks of --steps steps are timed in the same process:
tokens/s is the median block, the spread is (fastest - slowest) / median, and a graph compiled inside the timed
blocks is reported (graphs_compiled_in_timed_steps). The first step's time (from the start of training: compilation
included) is reported apart, and first_step_wall_s adds the model's loading. Evaluation runs after the last step, so
it adds to the peak memory but not the time; the training-only peak is peak_mem_train_gib.
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
import timing  # noqa: E402


def _bench_config(a):
    """The preset with benchmark-only settings: a short run, a loss every step, no checkpoints or TensorBoard,
    evaluation once at the end (after the timed window)."""
    from omegaconf import OmegaConf

    from writemypaper.config import load_config

    cfg = load_config(a.preset, a.set, kind="train")
    steps = total_steps(a)
    eval_on = cfg.training.get("eval_strategy", "no") not in ("no", False) and not a.no_eval
    bench = {"max_steps": steps, "logging_steps": 1, "save_strategy": "no", "report_to": "none",
             "disable_tqdm": True}
    if eval_on:
        bench.update(eval_strategy="steps", eval_steps=steps)
    else:
        bench.update(eval_strategy="no")
    for k, v in bench.items():
        OmegaConf.update(cfg, f"training.{k}", v, force_add=True)
    cfg.early_stopping_patience = None
    return cfg, eval_on


def total_steps(a) -> int:
    """Warm-up, then --repeats timed blocks of --steps, then the profiled step if any."""
    return a.warmup + a.steps * a.repeats + (1 if a.profile else 0)


def parse_ab(spec: str | None) -> tuple[str, int]:
    """--ab LEVER:B -> (lever, B); none -> ("", 0). Only nan-filter is a lever today."""
    if not spec:
        return "", 0
    lever, _, block = spec.partition(":")
    if lever != "nan-filter" or not block.isdigit() or int(block) < 1:
        raise SystemExit(f"--ab {spec}: use nan-filter:B with B >= 1")
    return lever, int(block)


def run(a) -> dict | None:
    import torch

    from writemypaper import models
    from writemypaper.config import to_dict
    from writemypaper.train import build_trainer, count_parameters

    t_start = time.time()
    lever, block = parse_ab(a.ab)
    if a.compile_mode:  # train.compile_layers calls Module.compile on each layer: give those calls the mode
        compile_ = torch.nn.Module.compile
        torch.nn.Module.compile = lambda self, *args, **kw: compile_(self, *args, **{"mode": a.compile_mode, **kw})
    cfg, eval_on = _bench_config(a)
    steps = total_steps(a)

    vocab = models.load_model_config(a.model).vocab_size
    rows = common.synthetic_pairs(a.samples, seed=0, max_length=512, vocab=vocab)  # the same data for every preset
    stats = common.data_stats(rows)
    train_ds = common.dataset(rows)
    eval_ds = common.dataset(common.synthetic_pairs(a.eval_samples, seed=1, vocab=vocab)) if eval_on else None
    tokenizer = models.load_tokenizer(a.model, padding_side="right")

    cuda = torch.cuda.is_available()
    dev = torch.device("cuda", int(os.environ.get("LOCAL_RANK", 0))) if cuda else torch.device("cpu")
    totals = torch.zeros(3, dtype=torch.long, device=dev)
    marks = timing.StepMarks(totals, cuda)
    profiler = None

    def arm(step: int) -> str:  # --ab LEVER:B: after the warm-up, blocks of B steps alternate the lever off / on
        return "on" if block and step >= a.warmup and (step - a.warmup) // block % 2 else "off"

    def on_begin(args, state):
        nonlocal profiler
        if lever == "nan-filter":  # the Trainer reads it at every micro-batch
            args.logging_nan_inf_filter = arm(state.global_step) == "on"
        if a.profile and state.global_step == steps - 1 and int(os.environ.get("RANK", 0)) == 0:
            profiler = torch.profiler.profile(activities=[torch.profiler.ProfilerActivity.CPU]
                                              + ([torch.profiler.ProfilerActivity.CUDA] if cuda else []))
            profiler.__enter__()

    def on_end(done):
        faulthandler.cancel_dump_traceback_later()
        if profiler is not None and len(done) == steps:
            torch.cuda.synchronize() if cuda else None
            profiler.__exit__(None, None, None)
            write_profile(profiler, a.profile, marks.seconds()[-1] - marks.seconds()[-2])

    with tempfile.TemporaryDirectory(prefix="wmp-bench-") as out_dir:
        t_build = time.time()
        trainer = build_trainer(cfg, a.model, Path(out_dir), train_ds, eval_ds, tokenizer,
                                callbacks=[marks.callback(on_begin, on_end)])
        build_s = time.time() - t_build
        trainer.model.register_forward_pre_hook(timing.counter_hook(totals, tokenizer.pad_token_id), with_kwargs=True)
        if a.compile_mode and "reduce-overhead" in a.compile_mode:
            # CUDA graphs reuse their output memory at each replay: a new micro-batch starts a new generation of
            # them, or the previous one's outputs (still needed by backward) read as overwritten
            trainer.model.register_forward_pre_hook(lambda *_: torch.compiler.cudagraph_mark_step_begin())
        trainable, total_params = count_parameters(trainer.model)
        attn = getattr(trainer.model.config, "_attn_implementation", None)
        if a.stacks_after:  # a first step slower than this prints every thread's stack (a hang, or compilation)
            faulthandler.dump_traceback_later(a.stacks_after)
        t_train = time.perf_counter()
        marks.begin()
        trainer.train()
        if cuda:
            torch.cuda.synchronize()
        train_wall = time.perf_counter() - t_train

    gathered = _gather(marks, dev, cuda)
    if gathered is None:  # not rank 0
        return None
    counts, peak = gathered
    n = a.warmup + a.steps * a.repeats
    times, counts = marks.seconds()[:n], counts.tolist()[:n]
    summary = timing.summarize(times, counts, [m[3] for m in marks.marks][:n], a.warmup, a.steps, a.repeats)
    ab = ab_rates(times, counts, a.warmup, arm) if block else None

    return _record(a, cfg, stats, summary, ab, peak, trainer.state.log_history, trainer.args, eval_on, lever, block,
                   {"build_s": build_s, "train_wall_s": train_wall, "process_s": time.time() - t_start,
                    "trainable_params": trainable, "total_params": total_params, "attn_implementation": attn})


def _gather(marks, dev, cuda):
    """The marks' token counts and the peak memory, summed (counts) and maxed (memory) over the ranks of a
    distributed run; None on ranks other than 0."""
    import torch

    counts = torch.stack([m[1] for m in marks.marks]).to(dev)
    peak = torch.tensor([torch.cuda.max_memory_allocated(dev) if cuda else 0,
                         max(m[2] for m in marks.marks)], device=dev)
    import torch.distributed as dist

    if dist.is_available() and dist.is_initialized():
        dist.all_reduce(counts)  # every rank's tokens
        dist.all_reduce(peak, op=dist.ReduceOp.MAX)
        if dist.get_rank() != 0:
            return None
    return counts, peak


def _record(a, cfg, stats, summary, ab, peak, history, args, eval_on, lever, block, extra) -> dict:
    """The row: appended to --out as one JSON line, and printed."""
    from writemypaper import families, models
    from writemypaper.config import to_dict

    mconf = models.load_model_config(a.model)
    fam = families.family(mconf.model_type)  # `auto` and `all-linear` are the family's projections
    targets = families.target_modules(fam, cfg.lora.get("target_modules"))
    targets = list(fam.target_modules) if targets == "all-linear" else targets
    fl = common.lora_flops_per_token(mconf, int(cfg.lora.r), targets, stats)
    peak_tflops = json.loads(Path(a.peak).read_text())["bf16_matmul_tflops"] if a.peak and Path(a.peak).is_file() else None
    tps = summary["tokens_per_s"]
    result = {
        "name": a.name or a.preset, "preset": a.preset, "overrides": a.set, "world_size": args.world_size, **summary,
        "ab": {"lever": lever, "block": block, **ab} if block else None,
        "peak_mem_gib": peak[0].item() / 2**30, "peak_mem_train_gib": peak[1].item() / 2**30,
        "evaluation": eval_on,
        "mfu": tps * fl["flops_per_token"] / (peak_tflops * 1e12) if peak_tflops else None,
        "flops_per_token": fl["flops_per_token"], "bf16_matmul_tflops": peak_tflops,
        "losses": [round(h["loss"], 4) for h in history if "loss" in h],
        "eval_loss": next((h["eval_loss"] for h in history if "eval_loss" in h), None),
        "first_step_wall_s": extra["build_s"] + summary["first_step_s"],  # loading the model to the first step's end
        **extra, "precision": "bf16" if args.bf16 else "fp16" if args.fp16 else "fp32",
        "quantization": cfg.get("quantization"),
        "micro_batch": args.per_device_train_batch_size, "grad_accum": args.gradient_accumulation_steps,
        "packing": bool(args.packing), "gradient_checkpointing": bool(args.gradient_checkpointing),
        "optim": str(args.optim), "data": stats, "config": to_dict(cfg), **common.environment(),
    }
    with open(a.out, "a", encoding="utf-8") as f:
        f.write(json.dumps(result) + "\n")
    print(f"{result['name']}: {timing.describe(summary)}; {summary['samples_per_s']:.1f} samples/s, peak "
          f"{result['peak_mem_gib']:.2f} GiB (training {result['peak_mem_train_gib']:.2f}), MFU "
          f"{result['mfu'] if result['mfu'] is None else round(100 * result['mfu'], 1)}%, "
          f"losses {result['losses'][:3]}..{result['losses'][-2:]}")
    if block:
        print(f"same process, blocks of {block} steps with {lever} off and on: " + ", ".join(
            f"{k} {v['tokens_per_s']:,.0f} tokens/s over {v['steps']} steps" for k, v in sorted(ab.items()))
            + f"; off / on = {ab['off']['tokens_per_s'] / ab['on']['tokens_per_s']:.3f}")
    return result


def ab_rates(times: list[float], counts: list[list[int]], warmup: int, arm) -> dict:
    """Tokens/s of the timed steps with the lever off and on (arm(step) says which), summed over their blocks."""
    ab = {}
    for i in range(warmup, len(times)):  # step i+1 ran between marks i-1 and i
        row = ab.setdefault(arm(i), {"steps": 0, "seconds": 0.0, "tokens": 0})
        row["steps"] += 1
        row["seconds"] += times[i] - times[i - 1]
        row["tokens"] += counts[i][0] - counts[i - 1][0]
    for row in ab.values():
        row["tokens_per_s"] = row["tokens"] / row["seconds"]
    return ab


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
        return f"{r[k] / base[k]:.2f}x" if base and base.get(k) and r.get(k) else "-"

    out = ["| variant | GPUs | tokens/s (median) | spread | x | samples/s | x | peak GiB | x | training peak GiB | x "
           "| MFU | first step s | loss steps 1-3 | last loss | eval loss |",
           "|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---|---:|---:|"]
    for r in rows:
        mfu = f"{100 * r['mfu']:.1f}%" if r.get("mfu") else "-"
        ev = f"{r['eval_loss']:.3f}" if r.get("eval_loss") is not None else "off"
        spread = f"{100 * r['spread']:.1f}%" if r.get("spread") is not None else "-"  # rows from before the blocks
        first = f"{r['first_step_s']:.1f}" if r.get("first_step_s") is not None else "-"
        train_peak = f"{r['peak_mem_train_gib']:.2f}" if r.get("peak_mem_train_gib") else "-"
        out.append(
            f"| {r['name']} | {r['world_size']} | {r['tokens_per_s']:,.0f} | {spread} | {ratio(r, 'tokens_per_s')} | "
            f"{r['samples_per_s']:.1f} | {ratio(r, 'samples_per_s')} | {r['peak_mem_gib']:.2f} | "
            f"{ratio(r, 'peak_mem_gib')} | {train_peak} | {ratio(r, 'peak_mem_train_gib')} | {mfu} | {first} | "
            f"{', '.join(f'{x:.2f}' for x in r['losses'][:3])} | {r['losses'][-1]:.2f} | {ev} |")
    out += pairs(rows)
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


def parser() -> argparse.ArgumentParser:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", help="model directory (python bench/common.py make-model DIR)")
    ap.add_argument("--preset", default="fast", help="seed, fast, low-memory, or a .yaml path")
    ap.add_argument("--set", action="append", default=[], metavar="KEY=VALUE", help="config override (repeatable)")
    ap.add_argument("--name", help="row name (default: the preset)")
    ap.add_argument("--warmup", type=int, default=3, help="untimed steps first (compilation, allocator)")
    ap.add_argument("--steps", type=int, default=5, help="optimizer steps in each timed block")
    ap.add_argument("--repeats", type=int, default=3,
                    help="timed blocks after the warm-up: tokens/s is their median, the spread their range")
    ap.add_argument("--ab", metavar="LEVER:B", help="toggle LEVER (nan-filter: the Trainer's logging_nan_inf_filter) "
                                                    "off and on in alternating blocks of B timed steps")
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
    return ap


# Our preset against Unsloth's config it is compared with (issue 24): the 4-bit recipe against low-memory, the
# fastest bf16 LoRA against fast.
PAIRS = (("low-memory", "4bit"), ("fast", "bf16"))


def pairs(rows: list[dict]) -> list[str]:
    """Lines of a table of each pair in the same file: our preset's tokens/s and training peak over the best
    Unsloth row (by tokens/s) of its config."""
    out = []
    for ours, config in PAIRS:
        mine = next((r for r in rows if r["name"] == ours), None)
        theirs = sorted((r for r in rows if r.get("engine") == "unsloth" and r.get("config") == config),
                        key=lambda r: r["tokens_per_s"])
        if not mine or not theirs:
            continue
        if not out:
            out = ["", "| ours | Unsloth's best | tokens/s, ours / Unsloth's | training peak, ours / Unsloth's |",
                   "|---|---|---:|---:|"]
        t = theirs[-1]
        out.append(f"| {ours} | {t['name']} | {mine['tokens_per_s'] / t['tokens_per_s']:.2f}x | "
                   f"{mine['peak_mem_train_gib'] / t['peak_mem_train_gib']:.2f}x |")
    return out


def main(argv=None):
    ap = parser()
    a = ap.parse_args(argv)
    if a.table:
        print(table(a.table, a.baseline))
        return
    if not a.model:
        ap.error("--model is required")
    if min(a.warmup, a.steps, a.repeats) < 1:
        ap.error("--warmup, --steps and --repeats must each be at least 1")
    parse_ab(a.ab)
    run(a)


if __name__ == "__main__":
    main()
