"""Everything `train` does before its first step, at corpus scale: `prepare` of a synthetic corpus (about 400k pairs
from 100k documents, whole abstracts and sections) and the tokenization of every pair with the embedded tokenizer.

    python bench/bench_tokenize.py --docs 100000

Each stage runs in its own subprocess, imports and loading included, and is timed by wall clock and by CPU seconds
(the process and its children, tokenizer threads and map workers too). Tokenization runs three times, each through
`train.tokenize_split` on the train, validation and test splits as `train` calls it: with an empty datasets cache
(cold), again on that cache (warm), and with the per-row `map` that tokenize_split used before (`old`, in its own empty
cache). Prints a markdown table. The corpus comes from bench_prepare.py's generator.
"""

from __future__ import annotations

import argparse
import json
import os
import platform
import resource
import shutil
import subprocess
import sys
import time
from pathlib import Path

BENCH = Path(__file__).resolve().parent
sys.path.insert(0, str(BENCH))
sys.path.insert(0, str(BENCH.parent / "src"))

SPLITS = ("train", "validation", "test")
MAX_LENGTH = 2048  # the fast and low-memory presets' max_length


def _cpu_seconds() -> float:
    own, kids = resource.getrusage(resource.RUSAGE_SELF), resource.getrusage(resource.RUSAGE_CHILDREN)
    return own.ru_utime + own.ru_stime + kids.ru_utime + kids.ru_stime


def old_tokenize_split(ds, tokenizer, instruction, max_length):
    """tokenize_split as it was before the batched map (git 99d90fe): one row at a time, then a per-row filter."""
    from writemypaper import prompts

    ds = ds.map(
        lambda r: prompts.encode_example(tokenizer, r["summary"], r["original"], instruction),
        remove_columns=ds.column_names,
        desc="tokenizing",
    )
    before = len(ds)
    if max_length:
        ds = ds.filter(lambda r: len(r["input_ids"]) <= max_length, desc="dropping over-long pairs")
    return ds, before - len(ds)


def worker(mode: str, prepared: str, rows: int | None, num_proc: int | None) -> None:
    """One tokenization pass in this process; prints a JSON line with its timings."""
    t0, c0 = time.perf_counter(), _cpu_seconds()
    from writemypaper import models, train
    from writemypaper.data import load_split

    if num_proc and num_proc > 1:  # worker processes, as tokenize_split once used for large splits
        import datasets

        map_ = datasets.Dataset.map
        datasets.Dataset.map = lambda self, *a, **k: map_(self, *a, **{**k, "num_proc": num_proc})

    tokenizer = models.load_tokenizer("gemma3-270m")
    t1, c1 = time.perf_counter(), _cpu_seconds()
    pairs, outs = 0, []
    for split in SPLITS:
        ds = load_split(prepared, split)
        if rows:
            ds = ds.select(range(min(rows, len(ds))))
        fn = old_tokenize_split if mode == "old" else train.tokenize_split
        outs.append(fn(ds, tokenizer, None, MAX_LENGTH)[0])
        pairs += len(ds)
    t2, c2 = time.perf_counter(), _cpu_seconds()
    import pyarrow.compute as pc

    kept = sum(len(o) for o in outs)
    tokens = sum(pc.sum(pc.list_value_length(o.with_format("arrow")["input_ids"])).as_py() for o in outs)
    print(json.dumps({"mode": mode, "pairs": pairs, "kept": kept, "tokens": tokens, "load_tokenizer_s": t1 - t0,
                      "tokenize_s": t2 - t1, "tokenize_cpu_s": c2 - c1, "wall_s": t2 - t0, "cpu_s": c2 - c0,
                      "num_proc": num_proc or 1, "cores": len(os.sched_getaffinity(0))}))


def _run(cmd: list[str], env: dict | None = None) -> tuple[float, float, str]:
    c0, t0 = _cpu_seconds(), time.perf_counter()
    proc = subprocess.run(cmd, check=True, env=env, stdout=subprocess.PIPE, stderr=subprocess.DEVNULL, text=True)
    return time.perf_counter() - t0, _cpu_seconds() - c0, proc.stdout


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--docs", type=int, default=100_000)
    ap.add_argument("--workdir", type=Path, default=Path("/tmp/writemypaper-bench"))
    ap.add_argument("--old-rows", type=int, default=None,
                    help="time the old per-row map on this many pairs per split only (it is slow); default: all")
    ap.add_argument("--num-proc", type=int, nargs="*", default=[], metavar="N",
                    help="more cold passes of the new map with N processes each (1: no worker processes)")
    ap.add_argument("--new-only", action="store_true", help="skip the warm and the old passes")
    ap.add_argument("--worker", choices=["new", "old"], help=argparse.SUPPRESS)
    ap.add_argument("--prepared", help=argparse.SUPPRESS)
    ap.add_argument("--rows", type=int, default=None, help=argparse.SUPPRESS)
    a = ap.parse_args()
    if a.worker:
        return worker(a.worker, a.prepared, a.rows, a.num_proc[0] if a.num_proc else None)

    from bench_prepare import make_corpus

    corpus, prepared = a.workdir / "corpus", a.workdir / "prepared-both"
    make_corpus(corpus, a.docs, 500, 20)
    prep_wall, prep_cpu, _ = _run([sys.executable, "-m", "writemypaper", "prepare", "--input", str(corpus), "--out",
                                   str(prepared), "--granularity", "both", "-q"])
    print(f"prepare --granularity both: {prep_wall:.1f} s wall, {prep_cpu:.1f} CPU s", file=sys.stderr)
    passes = [("new, cold cache", "new", "cache-new", True, []), ("new, warm cache", "new", "cache-new", False, []),
              ("old per-row map, cold cache", "old", "cache-old", True,
               ["--rows", str(a.old_rows)] if a.old_rows else [])]
    if a.new_only:
        passes = passes[:1]
    passes += [(f"new, {n} process{'es' if n > 1 else ''}, cold cache", "new", f"cache-{n}", True,
                ["--num-proc", str(n)]) for n in a.num_proc]
    results = []
    for label, mode, cache, cold, extra in passes:
        env = {**os.environ, "HF_DATASETS_CACHE": str(a.workdir / cache),
               "PYTHONPATH": os.pathsep.join([str(BENCH.parent / "src"), os.environ.get("PYTHONPATH", "")])}
        if cold:
            shutil.rmtree(a.workdir / cache, ignore_errors=True)
        wall, cpu, out = _run([sys.executable, __file__, "--worker", mode, "--prepared", str(prepared), *extra], env)
        r = json.loads(out.strip().splitlines()[-1])
        r.update(process_wall_s=wall, process_cpu_s=cpu, label=label)
        results.append(r)
        print(json.dumps(r), file=sys.stderr)

    import datasets
    import tokenizers
    import transformers

    print(f"python {platform.python_version()}, datasets {datasets.__version__}, tokenizers {tokenizers.__version__}, "
          f"transformers {transformers.__version__}, {len(os.sched_getaffinity(0))} of {os.cpu_count()} CPUs, load average "
          f"{' '.join(f'{x:.1f}' for x in os.getloadavg())}")
    print(f"prepare --granularity both: {prep_wall:.1f} s wall, {prep_cpu:.1f} CPU s")
    print("| tokenization | processes | pairs | pairs kept | tokens | tokenizer load s | tokenize s | "
          "tokenize CPU s | process wall s | process CPU s | pairs/s (wall) | CPU ms/pair |")
    print("|---|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|---:|")
    for r in results:
        print(f"| {r['label']} | {r['num_proc']} | {r['pairs']:,} | {r['kept']:,} | {r['tokens']:,} | "
              f"{r['load_tokenizer_s']:.1f} | {r['tokenize_s']:.1f} | {r['tokenize_cpu_s']:.1f} | {r['process_wall_s']:.1f} | "
              f"{r['process_cpu_s']:.1f} | {r['pairs'] / r['tokenize_s']:,.0f} | "
              f"{1000 * r['tokenize_cpu_s'] / r['pairs']:.2f} |")
    new = results[0]
    print(f"before the first step (prepare + tokenizer load + cold tokenization, {new['num_proc']} process(es) on "
          f"{new['cores']} cores): {prep_wall + new['process_wall_s']:.0f} s wall, "
          f"{prep_cpu + new['process_cpu_s']:.0f} CPU s")
    old = [r for r in results if r["mode"] == "old"]
    if old:
        print(f"new (cold) / old per-row map, pairs per second of tokenize time: "
              f"{(new['pairs'] / new['tokenize_s']) / (old[0]['pairs'] / old[0]['tokenize_s']):.2f}x")


if __name__ == "__main__":
    main()
