"""How the training benchmarks time and count, shared by bench_train.py (our presets) and bench_unsloth.py (Unsloth),
so that both measure the same way: a forward hook counts the tokens the model reads, a Trainer callback marks each
step's end on the GPU's timeline, and `summarize` turns the marks into repeated timed blocks after the warm-up.

    marks = StepMarks(totals, cuda=True); trainer.add_callback(marks.callback()); ...; summarize(marks, w, s, r)
"""

from __future__ import annotations

import statistics
import time


def counter_hook(totals, pad_id: int):
    """Counts, on the GPU and without syncing, what each training forward pass reads: tokens (not padding),
    sequences and tokens with a label. Padded batches carry an attention mask; padding-free ones are one row whose
    position ids restart at 0 for each sequence (and pad tokens, if the row is padded to a fixed length)."""
    import torch

    def hook(module, args, kwargs):
        if not module.training:
            return
        ids, mask = kwargs.get("input_ids"), kwargs.get("attention_mask")
        pos, labels = kwargs.get("position_ids"), kwargs.get("labels")
        if ids is None and args:  # called positionally
            ids = args[0]
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


def compiled_graphs() -> int:
    """Graphs torch.compile has made in this process so far: a rise during the timed steps means compilation (or a
    recompilation) leaked into them."""
    try:
        from torch._dynamo.utils import counters
    except ImportError:  # a torch without dynamo compiles nothing
        return 0
    return int(counters["stats"]["unique_graphs"])


class StepMarks:
    """Marks the end of every optimizer step: a CUDA event on the GPU's timeline (no sync: a sync here would drain
    the queue every step, which training does not do) or a perf_counter reading on CPU, the running token counts,
    the peak memory and the compiled-graph count. Times are read once training is over."""

    def __init__(self, totals, cuda: bool):
        import torch

        self.totals, self.cuda, self.marks = totals, cuda, []
        self.start = torch.cuda.Event(enable_timing=True) if cuda else None
        self.t0 = 0.0

    def begin(self) -> None:
        """Call right before trainer.train(): the first step's time runs from here."""
        import torch

        if self.cuda:
            torch.cuda.reset_peak_memory_stats()
        self.graphs0 = compiled_graphs()
        self.t0 = time.perf_counter()
        if self.cuda:
            self.start.record()

    def mark(self) -> None:
        import torch

        clock = torch.cuda.Event(enable_timing=True) if self.cuda else time.perf_counter()
        if self.cuda:
            clock.record()
        peak = torch.cuda.max_memory_allocated() if self.cuda else 0
        self.marks.append((clock, self.totals.clone(), peak, compiled_graphs(), time.perf_counter()))

    def callback(self, on_begin=None, on_end=None):
        """A TrainerCallback that marks each step's end; on_begin(args, state) / on_end(marks) hooks are optional."""
        from transformers import TrainerCallback

        outer = self

        class Marks(TrainerCallback):
            def on_step_begin(self, args, state, control, **kw):
                if on_begin:
                    on_begin(args, state)

            def on_step_end(self, args, state, control, **kw):
                outer.mark()
                if on_end:
                    on_end(outer.marks)

        return Marks()

    def seconds(self) -> list[float]:
        """Seconds from begin() to the end of each step."""
        if self.cuda:
            return [self.start.elapsed_time(m[0]) / 1000 for m in self.marks]
        return [m[0] - self.t0 for m in self.marks]


def summarize(times: list[float], counts: list[list[int]], graphs: list[int], warmup: int, steps: int,
              repeats: int) -> dict:
    """Tokens/s (and samples/s, loss tokens/s) over `repeats` blocks of `steps` steps after `warmup` untimed ones:
    the median block, the spread (slowest and fastest block), and whether any graph was compiled inside the timed
    blocks. times[i] / counts[i] / graphs[i] are the running clock, [tokens, samples, loss tokens] and compiled-graph
    count at the end of step i+1; the first step's time is times[0] (compilation, autotuning, the allocator)."""
    need = warmup + steps * repeats
    if warmup < 1 or steps < 1 or repeats < 1:
        raise ValueError("warmup, steps and repeats must each be at least 1")
    if len(times) < need:
        raise ValueError(f"{len(times)} steps marked, {need} needed (warmup {warmup} + {repeats} x {steps})")
    blocks = []
    for k in range(repeats):
        a, b = warmup - 1 + k * steps, warmup - 1 + (k + 1) * steps  # block k runs between these marks
        dt = times[b] - times[a]
        blocks.append({"seconds": dt, **{f"{n}_per_s": (counts[b][i] - counts[a][i]) / dt
                                         for i, n in enumerate(("tokens", "samples", "loss_tokens"))}})
    rates = [bl["tokens_per_s"] for bl in blocks]
    med = statistics.median(rates)
    step_times = sorted(t1 - t0 for t0, t1 in zip(times[warmup - 1:need - 1], times[warmup:need]))
    timed = counts[need - 1][0] - counts[warmup - 1][0]
    return {
        "tokens_per_s": med,
        "samples_per_s": statistics.median(bl["samples_per_s"] for bl in blocks),
        "loss_tokens_per_s": statistics.median(bl["loss_tokens_per_s"] for bl in blocks),
        "tokens_per_s_blocks": rates, "tokens_per_s_min": min(rates), "tokens_per_s_max": max(rates),
        "spread": (max(rates) - min(rates)) / med,  # (fastest - slowest) / median block
        "tokens_per_step": timed / (steps * repeats),
        "samples_per_step": (counts[need - 1][1] - counts[warmup - 1][1]) / (steps * repeats),
        "step_s_median": step_times[len(step_times) // 2], "step_s_max": step_times[-1],
        "first_step_s": times[0], "warmup_s": times[warmup - 1],
        "graphs_compiled_in_timed_steps": graphs[need - 1] - graphs[warmup - 1],
        "warmup_steps": warmup, "timed_steps": steps, "repeats": repeats,
    }


def describe(r: dict) -> str:
    """One line: the median tokens/s, the blocks' range, and a warning if compilation leaked into them."""
    line = (f"{r['tokens_per_s']:,.0f} tokens/s (median of {r['repeats']} blocks of {r['timed_steps']} steps: "
            f"{r['tokens_per_s_min']:,.0f}-{r['tokens_per_s_max']:,.0f}, spread {100 * r['spread']:.1f}%), "
            f"first step {r['first_step_s']:.1f} s")
    if r["graphs_compiled_in_timed_steps"]:
        line += f"; WARNING: {r['graphs_compiled_in_timed_steps']} graphs compiled inside the timed steps"
    return line
