"""`writemypaper prepare`: the corpus's checked pairs (corpus.py reads and checks them) split by document,
stratified by field, and written as train/validation/test parquet files plus stats.json; and the prepared
directory read back for train, generate and evaluate.

    writemypaper prepare --input data/sample --out prepared
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
from array import array
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Sequence

from writemypaper.corpus import (GRANULARITIES, SKIP_REASONS, aihub_part, document_pairs, input_files, read_path,
                                 source_folders)
from writemypaper.errors import UserError
from writemypaper.outputs import output_dir
from writemypaper.record import prepared_record

# Still importable from here, where prepare's callers and tests have always found them.

SPLITS = ("train", "validation", "test")
COLUMNS = ("doc_id", "title", "ipc", "granularity", "pair_index", "summary", "original")
FORMAT = "writemypaper-prepared"
FORMAT_VERSION = 1

_SPOOL = "_pairs.arrow"  # all kept pairs, streamed to disk while reading, removed before the dir is published
_BATCH_ROWS = 8192
_FLUSH_ROWS = 16384  # rows per parquet row group


# ---------------------------------------------------------------------------------------------------------------------
# splitting: by document, stratified by field, deterministic for a seed


def _quota(n: int, fraction: float) -> int:
    k = math.floor(n * fraction + 0.5)
    return max(k, 1) if fraction > 0 and n >= 3 else k


def split_documents(docs: Sequence[tuple[str, str]], val_fraction: float, test_fraction: float,
                    seed: int) -> dict[str, str]:
    """Map each (doc_id, ipc) to "train", "validation" or "test".

    Within each field the documents are shuffled and spread evenly over [0, 1) with a random offset; taking the
    lowest positions of all fields together for test, then validation, gives every field its share within one
    document. The result depends only on the set of documents and the seed, not on the order they were read in.
    """
    n = len(docs)
    n_test, n_val = _quota(n, test_fraction), _quota(n, val_fraction)
    while n_val + n_test > max(n - 1, 0):  # train keeps at least one document
        if n_test >= n_val:
            n_test -= 1
        else:
            n_val -= 1
    groups: dict[str, list[str]] = defaultdict(list)
    for doc_id, ipc in docs:
        groups[ipc].append(doc_id)
    rng = random.Random(seed)
    keyed = []
    for ipc in sorted(groups):
        ids = sorted(groups[ipc])
        rng.shuffle(ids)
        offset = rng.random()
        keyed += [((i + offset) / len(ids), ipc, d) for i, d in enumerate(ids)]
    keyed.sort()
    return {d: "test" if r < n_test else "validation" if r < n_test + n_val else "train"
            for r, (_, _, d) in enumerate(keyed)}


# ---------------------------------------------------------------------------------------------------------------------
# prepare


def _check_options(inputs, granularity, val_fraction, test_fraction, min_chars, max_chars) -> None:
    problems = []
    if not inputs:
        problems.append("no --input given")
    if granularity not in GRANULARITIES:
        problems.append(f"--granularity must be one of {', '.join(GRANULARITIES)}, not '{granularity}'")
    for name, f in (("--val-fraction", val_fraction), ("--test-fraction", test_fraction)):
        if not 0 <= f < 1:
            problems.append(f"{name} {f} is not in [0, 1)")
    if val_fraction + test_fraction >= 1:
        problems.append(f"--val-fraction + --test-fraction = {val_fraction + test_fraction:g} leaves nothing to train on")
    if min_chars < 0:
        problems.append(f"--min-chars {min_chars} is negative")
    if max_chars < 1:
        problems.append(f"--max-chars {max_chars} must be at least 1")
    if problems:
        raise UserError("; ".join(problems))


def _check_out(out: Path, inputs: Sequence[str | os.PathLike]) -> None:
    """Refuse an --out that would destroy something that is not a previous `prepare` output."""
    ro = out.resolve()
    for given in inputs:
        rp = Path(given).resolve()
        if rp == ro or ro in rp.parents:
            raise UserError(f"--out {out} would replace the input {given}; choose another --out")
    if out.exists() and not out.is_dir():
        raise UserError(f"--out {out} exists and is not a directory")
    if out.is_dir() and any(out.iterdir()) and not (out / "stats.json").is_file():
        raise UserError(f"--out {out} exists and is not a prepared directory (no stats.json); "
                        "choose another --out or remove it")


def _percentiles(values: array) -> dict[str, int]:
    import numpy as np

    if not len(values):
        return {"p50": 0, "p90": 0, "p99": 0, "max": 0}
    a = np.asarray(values)
    return {f"p{q}": int(np.percentile(a, q, method="inverted_cdf")) for q in (50, 90, 99)} | {"max": int(a.max())}


def _schema():
    import pyarrow as pa

    return pa.schema([("doc_id", pa.string()), ("title", pa.string()), ("ipc", pa.string()),
                      ("granularity", pa.string()), ("pair_index", pa.int64()), ("summary", pa.string()),
                      ("original", pa.string())])


def _write_splits(spool: Path, tmp: Path, assignment: dict[str, str]) -> None:
    """Stream the spooled pairs into one parquet file per split, in reading order."""
    import numpy as np
    import pyarrow as pa
    import pyarrow.parquet as pq

    code = {s: i for i, s in enumerate(SPLITS)}
    writers = [pq.ParquetWriter(tmp / f"{s}.parquet", _schema()) for s in SPLITS]
    pending: list[list] = [[] for _ in SPLITS]
    try:
        # A plain file, not a memory map: mapped pages would count towards RSS for the whole spool.
        with pa.OSFile(str(spool)) as src:
            reader = pa.ipc.open_file(src)
            for b in range(reader.num_record_batches):
                batch = reader.get_batch(b)
                codes = np.fromiter((code[assignment[d]] for d in batch.column(0).to_pylist()), np.int8, batch.num_rows)
                for i in range(len(SPLITS)):
                    pending[i].append(batch.filter(pa.array(codes == i)))
                    if sum(p.num_rows for p in pending[i]) >= _FLUSH_ROWS:
                        writers[i].write_table(pa.Table.from_batches(pending[i], _schema()))
                        pending[i] = []
        for i, w in enumerate(writers):
            if pending[i]:
                w.write_table(pa.Table.from_batches(pending[i], _schema()))
    finally:
        for w in writers:
            w.close()


@dataclass
class _Reading:
    """What reading the inputs found: the counts for stats.json and the (doc_id, ipc) list the split needs."""

    skipped: Counter = field(default_factory=Counter)
    docs: list[tuple[str, str, int]] = field(default_factory=list)  # (doc_id, ipc, pairs kept), documents with pairs
    lengths: dict = field(default_factory=lambda: {g: (array("I"), array("I")) for g in ("entire", "section")})
    inputs: dict[str, int] = field(default_factory=dict)  # source label -> documents in it
    n_read: int = 0
    stray: list[dict] = field(default_factory=list)  # {"path", "reason"} of each .json file that is no corpus
    parts: dict[str, str | None] = field(default_factory=dict)  # --split aihub: doc_id -> AIHub's split, if any
    unplaced: str | None = None  # --split aihub: the first source under no Training/Validation folder
    label_parts: dict[str, str | None] = field(default_factory=dict)  # --split aihub: source label -> its split


def _spool_pairs(files: list[Path], spool: Path, granularity: str, min_chars: int, max_chars: int,
                 progress: bool, roots: list[Path] | None = None, named: frozenset[Path] = frozenset()) -> _Reading:
    """Read and check every document of `files`, streaming the kept pairs into the Arrow file `spool` in reading
    order: memory holds one batch of pairs and the per-document counts, never the corpus. With `roots` (the
    inputs, for --split aihub), each document's AIHub split is noted from the folders it sits in. A .json file that
    is no corpus is skipped where a folder or zip brought it, and an error where the user `named` it."""
    import pyarrow as pa
    from tqdm import tqdm

    found, seen, schema = _Reading(), set(), _schema()
    buf: dict[str, list] = {c: [] for c in COLUMNS}
    with pa.ipc.new_file(str(spool), schema) as sink:

        def flush() -> None:
            sink.write_batch(pa.record_batch([buf[c] for c in COLUMNS], schema=schema))
            for c in COLUMNS:
                buf[c].clear()

        bar = tqdm(files, unit="file", desc="reading", disable=None if progress else True, file=sys.stderr)
        for path in bar:
            if path.suffix.lower() != ".zip":
                found.inputs.setdefault(str(path), 0)  # listed in stats even when it holds no document
            stray = None if path.resolve() in named else (lambda where, why: _stray(found, where, why))
            for label, doc in read_path(path, found.skipped, stray):
                found.inputs[label] = found.inputs.get(label, 0) + 1
                found.n_read += 1
                got = document_pairs(doc, granularity, min_chars, max_chars, seen, found.skipped)
                if not got or not got[3]:
                    continue
                doc_id, title, ipc, pairs = got
                found.docs.append((doc_id, ipc, len(pairs)))
                if roots is not None:
                    found.parts[doc_id] = _part(found, path, label, roots)
                for g, index, summary, original in pairs:
                    for c, v in zip(COLUMNS, (doc_id, title, ipc, g, index, summary, original)):
                        buf[c].append(v)
                    found.lengths[g][0].append(len(summary))
                    found.lengths[g][1].append(len(original))
                if len(buf["doc_id"]) >= _BATCH_ROWS:
                    flush()
            bar.set_postfix(documents=found.n_read, refresh=False)
        bar.close()
        if buf["doc_id"]:
            flush()
    return found


def _stray(found: _Reading, where: str, why: str) -> None:
    """A .json file that is no corpus (a dataset's meta.json) is skipped, said at once and kept in stats.json."""
    from tqdm import tqdm

    found.stray.append({"path": where, "reason": why})
    tqdm.write(f"writemypaper: skipped {where}: {why}", file=sys.stderr)


def _part(found: _Reading, path: Path, label: str, roots: list[Path]) -> str | None:
    """The AIHub split of a document from `label`, worked out once per source."""
    if label not in found.label_parts:
        found.label_parts[label] = aihub_part(source_folders(path, label, roots))
    if found.label_parts[label] is None and found.unplaced is None:
        found.unplaced = label
    return found.label_parts[label]


def _aihub_roots(files: list[Path], inputs: Sequence[str | os.PathLike]) -> list[Path]:
    """The inputs, resolved, for --split aihub; refused at once when no file lies under a split folder and no zip
    could hold one inside."""
    roots = [Path(i).resolve() for i in inputs]
    if not any(f.suffix.lower() == ".zip" or aihub_part(source_folders(f, str(f), roots)) for f in files):
        raise UserError("--split aihub: no Training or Validation folder in the inputs (AIHub ships "
                        ".../Training/... and .../Validation/..., also as 1.Training or 훈련/검증); use --split random")
    return roots


def aihub_assignment(found: _Reading, val_fraction: float, seed: int) -> tuple[dict[str, str], str]:
    """AIHub's own split kept, and a line that says how: its Training is train, its Validation is test (the split
    evaluate reports on, as papers on this corpus report on AIHub's Validation), and validation is drawn from its
    Training with --val-fraction, stratified as usual. A layout that ships Training, Validation and Test keeps all
    three as they are."""
    if found.unplaced is not None:
        n = sum(p is None for p in found.parts.values())
        raise UserError(f"--split aihub: {n} documents lie under no Training or Validation folder (the first in "
                        f"{found.unplaced}); use --split random, or give only AIHub's folders")
    by = {s: [(d, ipc) for d, ipc, _ in found.docs if found.parts[d] == s] for s in SPLITS}
    if not by["train"] or not (by["validation"] or by["test"]):
        missing = "Training" if not by["train"] else "Validation"
        raise UserError(f"--split aihub: no documents under a {missing} folder; use --split random")
    if by["validation"] and by["test"]:
        return {d: found.parts[d] for d, _, _ in found.docs}, "AIHub's Training, Validation and Test kept as they are"
    held_out = by["validation"] or by["test"]
    assignment = split_documents(by["train"], val_fraction, 0.0, seed) | {d: "test" for d, _ in held_out}
    return assignment, (f"AIHub's {'Validation' if by['validation'] else 'Test'} is the test split; validation is "
                        f"{val_fraction:g} of its Training")


def _stats(found: _Reading, assignment: dict[str, str], options: dict) -> dict:
    """stats.json: documents and pairs per split and field, skips by reason, length percentiles, inputs, options."""
    splits = {s: {"documents": 0, "pairs": 0, "fields": {}} for s in SPLITS}
    for doc_id, ipc, n_pairs in found.docs:
        s = splits[assignment[doc_id]]
        f = s["fields"].setdefault(ipc, {"documents": 0, "pairs": 0})
        for d in (s, f):
            d["documents"] += 1
            d["pairs"] += n_pairs
    for s in splits.values():
        s["fields"] = dict(sorted(s["fields"].items()))
    lengths = found.lengths
    kept = [g for g in ("entire", "section") if lengths[g][0]]
    return {
        "format": FORMAT,
        "version": FORMAT_VERSION,
        "splits": splits,
        "totals": {"documents_read": found.n_read, "documents": len(found.docs),
                   "pairs": sum(n for _, _, n in found.docs)},
        "skipped": {r: found.skipped[r] for r in SKIP_REASONS},
        "lengths": {
            "summary": _percentiles(lengths["entire"][0] + lengths["section"][0]),
            "original": _percentiles(lengths["entire"][1] + lengths["section"][1]),
            "by_granularity": {g: {"summary": _percentiles(lengths[g][0]), "original": _percentiles(lengths[g][1])}
                               for g in kept},
        },
        "inputs": [{"path": label, "documents": n} for label, n in found.inputs.items()],
        "skipped_files": found.stray,
        "options": options,
    }


def prepare(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, granularity: str = "entire",
            val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42, min_chars: int = 10,
            max_chars: int = 4000, progress: bool = True, overwrite: bool = False, split: str = "random") -> dict:
    """Read `inputs`, check and split their pairs, write `out`/{train,validation,test}.parquet and stats.json
    atomically, and return the stats. Raises UserError for unreadable input; skipped records are only counted, and
    .json files that are no corpus are skipped, named. split="aihub" keeps AIHub's Training/Validation folders
    (aihub_assignment) instead of drawing the split by document."""
    _check_options(inputs, granularity, val_fraction, test_fraction, min_chars, max_chars)
    if split not in ("random", "aihub"):
        raise UserError(f"--split must be random or aihub, not '{split}'")
    out = Path(out)
    _check_out(out, inputs)
    files = input_files(inputs, exclude=out.resolve())
    roots = _aihub_roots(files, inputs) if split == "aihub" else None

    # Our own prepared folder is replaced only with overwrite, anything else never; its record is written last.
    with output_dir(out, "prepared", overwrite, record=prepared_record) as tmp:
        spool = tmp / _SPOOL
        named = frozenset(Path(i).resolve() for i in inputs if Path(i).suffix.lower() == ".json")
        found = _spool_pairs(files, spool, granularity, min_chars, max_chars, progress, roots, named)
        if not found.n_read:
            raise UserError(f"no documents found in {', '.join(map(str, inputs))}")
        if not found.docs:
            reasons = ", ".join(f"{r}: {n}" for r, n in found.skipped.most_common())
            raise UserError(f"no usable pairs: every record of the {found.n_read} documents read was skipped "
                            f"({reasons})")

        if split == "aihub":
            assignment, how = aihub_assignment(found, val_fraction, seed)
            print(f"writemypaper: --split aihub: {how}", file=sys.stderr)
        else:
            assignment = split_documents([(d, ipc) for d, ipc, _ in found.docs], val_fraction, test_fraction, seed)
        _write_splits(spool, tmp, assignment)
        spool.unlink()
        options = {"inputs": [str(p) for p in inputs], "granularity": granularity, "val_fraction": val_fraction,
                   "test_fraction": test_fraction, "seed": seed, "min_chars": min_chars, "max_chars": max_chars,
                   "split": split}
        stats = _stats(found, assignment, options)
        (tmp / "stats.json").write_text(json.dumps(stats, ensure_ascii=False, indent=2) + "\n", encoding="utf-8")
    return stats


# ---------------------------------------------------------------------------------------------------------------------
# terminal report


def print_stats(stats: dict, out: str | os.PathLike | None = None, console=None) -> None:
    """Print the stats of a prepare run as rich tables."""
    from rich.console import Console
    from rich.table import Table

    console = console or Console()
    splits, totals = stats["splits"], stats["totals"]

    t = Table(title="documents (pairs) per split and field", title_justify="left")
    t.add_column("field")
    for s in (*SPLITS, "total"):
        t.add_column(s, justify="right")
    fields = sorted({f for s in splits.values() for f in s["fields"]})
    for f in fields:
        cells = [splits[s]["fields"].get(f, {"documents": 0, "pairs": 0}) for s in SPLITS]
        cells.append({k: sum(c[k] for c in cells) for k in ("documents", "pairs")})
        t.add_row(f, *(f"{c['documents']} ({c['pairs']})" for c in cells))
    t.add_section()
    t.add_row("all", *(f"{splits[s]['documents']} ({splits[s]['pairs']})" for s in SPLITS),
              f"{totals['documents']} ({totals['pairs']})", style="bold")
    console.print(t)

    lt = Table(title="length in characters", title_justify="left")
    lt.add_column("")
    for k in ("p50", "p90", "p99", "max"):
        lt.add_column(k, justify="right")
    rows = [(k, stats["lengths"][k]) for k in ("summary", "original")]
    by = stats["lengths"].get("by_granularity", {})
    if len(by) > 1:
        rows = [(f"{g} {k}", v[k]) for g, v in by.items() for k in ("summary", "original")]
    for name, p in rows:
        lt.add_row(name, *(str(p[k]) for k in ("p50", "p90", "p99", "max")))
    console.print(lt)

    bad = {r: n for r, n in stats["skipped"].items() if n}
    if bad:
        st = Table(title=f"skipped records: {sum(bad.values())}", title_justify="left")
        st.add_column("reason")
        st.add_column("records", justify="right")
        for r, n in sorted(bad.items(), key=lambda kv: -kv[1]):
            st.add_row(r, str(n))
        console.print(st)
    else:
        console.print("skipped records: none")
    where = f" → {out}" if out is not None else ""
    n_files = len(stats["inputs"])
    console.print(f"read {totals['documents_read']} documents from {n_files} file{'' if n_files == 1 else 's'}{where}")


# ---------------------------------------------------------------------------------------------------------------------
# reading a prepared directory back (train and evaluate call these)


def read_stats(prepared_dir: str | os.PathLike) -> dict:
    """The stats.json of a prepared directory; UserError if `prepared_dir` is not one."""
    d = Path(prepared_dir)
    if not d.is_dir():
        raise UserError(f"{d}: no such directory; make it with `writemypaper prepare --input ... --out {d}`")
    path = d / "stats.json"
    if not path.is_file():
        raise UserError(f"{d}: not a prepared directory (no stats.json); make it with `writemypaper prepare`")
    try:
        stats = json.loads(path.read_text(encoding="utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise UserError(f"{path}: unreadable ({e}); run `writemypaper prepare` again") from None
    if not isinstance(stats, dict) or stats.get("format") != FORMAT:
        raise UserError(f"{path}: not written by `writemypaper prepare`")
    return stats


def load_split(prepared_dir: str | os.PathLike, split: str):
    """One split of a prepared directory as a `datasets.Dataset` with the columns in COLUMNS."""
    if split not in SPLITS:
        raise UserError(f"unknown split '{split}': choose one of {', '.join(SPLITS)}")
    read_stats(prepared_dir)
    path = Path(prepared_dir) / f"{split}.parquet"
    if not path.is_file():
        raise UserError(f"{path}: missing; the prepared directory is incomplete, run `writemypaper prepare` again")
    import pyarrow.parquet as pq
    from datasets import Dataset, Features

    try:
        meta = pq.read_metadata(path)
    except (OSError, ValueError) as e:  # ArrowInvalid is a ValueError
        raise UserError(f"{path}: not a readable parquet file ({e}); run `writemypaper prepare` again") from None
    if meta.num_rows == 0:  # datasets cannot read a parquet file without rows (BatchSize must be greater than 0)
        schema = meta.schema.to_arrow_schema()
        return Dataset.from_dict({c: [] for c in schema.names}, features=Features.from_arrow_schema(schema))
    return Dataset.from_parquet(str(path))
