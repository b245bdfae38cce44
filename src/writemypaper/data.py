"""Read the AIHub 논문자료 요약 corpus in any layout it ships in, check every summary/original pair, and write
train/validation/test splits (by document, stratified by field) plus stats.json.

    writemypaper prepare --input data/sample --out prepared
"""

from __future__ import annotations

import json
import math
import os
import random
import sys
import unicodedata
import zipfile
import zlib
from array import array
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from writemypaper.atomic import atomic_dir
from writemypaper.errors import UserError

SPLITS = ("train", "validation", "test")
GRANULARITIES = ("entire", "section", "both")
COLUMNS = ("doc_id", "title", "ipc", "granularity", "pair_index", "summary", "original")
# Every reason a record can be skipped for; stats.json always lists all of them, so the keys are stable.
SKIP_REASONS = (
    "wrong_type",  # a document, pair or field is not the JSON type it should be
    "missing_field",  # doc_id, title, ipc or the needed summary_* list is absent
    "duplicate_doc_id",  # a later document with a doc_id already read (the first one wins)
    "empty_summary",  # summary_text absent or blank after normalization (also: an empty summary_* list)
    "empty_original",  # orginal_text absent or blank after normalization
    "summary_not_shorter",  # the summary is as long as its original or longer
    "too_short",  # the summary is shorter than --min-chars
    "too_long",  # the original is longer than --max-chars
)
FORMAT = "writemypaper-prepared"
FORMAT_VERSION = 1

_SUFFIXES = (".json", ".jsonl", ".zip")
_SPOOL = "_pairs.arrow"  # all kept pairs, streamed to disk while reading, removed before the dir is published
_BATCH_ROWS = 8192
_FLUSH_ROWS = 16384  # rows per parquet row group


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped. NFC (not NFKC) keeps ㆍ, ℃ and full-width forms."""
    return " ".join(unicodedata.normalize("NFC", text).split())


# ---------------------------------------------------------------------------------------------------------------------
# reading: one file's raw JSON at a time


def _decode(raw: bytes, where: str) -> str:
    try:
        return raw.decode("utf-8-sig")
    except UnicodeDecodeError as e:
        hint = ""
        try:
            raw.decode("cp949")
            hint = "; it looks like CP949/EUC-KR: convert it with `iconv -f cp949 -t utf-8`"
        except UnicodeDecodeError:
            pass
        raise UserError(f"{where}: not UTF-8 text (byte 0x{raw[e.start]:02x} at offset {e.start}){hint}") from None


def _parse_json(text: str, where: str) -> Any:
    if not text.strip():
        raise UserError(f"{where}: empty file, no JSON in it")
    try:
        return json.loads(text)
    except json.JSONDecodeError as e:
        if e.pos >= len(text.rstrip()):
            raise UserError(f"{where}: truncated JSON: it ends at line {e.lineno}, column {e.colno} ({e.msg})") from None
        raise UserError(f"{where}: malformed JSON at line {e.lineno}, column {e.colno}: {e.msg}") from None


def _is_wrapper(value: Any) -> bool:
    return isinstance(value, dict) and "data" in value and "doc_id" not in value


def _documents(value: Any, where: str, skipped: Counter) -> Iterator[Any]:
    """Documents in a parsed .json file: (a) a list of {data: [...]} wrappers, (b) one wrapper, (c) a bare list of
    documents, or a single document object. Items that are not objects are yielded too and skipped as wrong_type."""
    if isinstance(value, dict) and (_is_wrapper(value) or "doc_id" in value):
        value = [value]
    if not isinstance(value, list):
        found = f"an object with keys {sorted(value)[:5]}" if isinstance(value, dict) else f"a JSON {type(value).__name__}"
        raise UserError(f"{where}: not a corpus file: expected a list of documents, a {{\"data\": [...]}} wrapper "
                        f"or a list of wrappers, found {found}")
    for item in value:
        if _is_wrapper(item):
            if isinstance(item["data"], list):
                yield from item["data"]
            else:
                skipped["wrong_type"] += 1
        else:
            yield item


def _jsonl_documents(lines: Iterable[bytes], where: str, skipped: Counter) -> Iterator[Any]:
    for lineno, raw in enumerate(lines, 1):
        text = _decode(raw, f"{where} line {lineno}").rstrip("\r\n")
        if not text.strip():
            continue
        try:
            value = json.loads(text)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}: malformed JSON at line {lineno}, column {e.colno}: {e.msg}") from None
        if isinstance(value, dict):
            yield from _documents(value, where, skipped) if _is_wrapper(value) else [value]
        else:
            skipped["wrong_type"] += 1


def _zip_documents(zf: zipfile.ZipFile, where: str, skipped: Counter) -> Iterator[tuple[str, Any]]:
    found = 0
    for name in sorted(zf.namelist()):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        suffix = os.path.splitext(base)[1].lower()
        if name.endswith("/") or base.startswith(".") or name.startswith("__MACOSX/") or suffix not in _SUFFIXES:
            continue
        found += 1
        label = f"{where}:{name}"
        if suffix == ".json":
            yield from ((label, d) for d in _documents(_parse_json(_decode(zf.read(name), label), label), label, skipped))
        elif suffix == ".jsonl":
            with zf.open(name) as f:
                yield from ((label, d) for d in _jsonl_documents(f, label, skipped))
        else:  # a zip inside the zip: read through without extracting it
            with zf.open(name) as f, zipfile.ZipFile(f) as inner:
                yield from _zip_documents(inner, label, skipped)
    if not found:
        raise UserError(f"{where}: the zip archive holds no .json or .jsonl file")


def _read_path(path: Path, skipped: Counter) -> Iterator[tuple[str, Any]]:
    """(source label, document) for every document in one input file."""
    where = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with open(path, "rb") as f:
                value = _parse_json(_decode(f.read(), where), where)
            yield from ((where, d) for d in _documents(value, where, skipped))
        elif suffix == ".jsonl":
            with open(path, "rb") as f:
                yield from ((where, d) for d in _jsonl_documents(f, where, skipped))
        else:
            with zipfile.ZipFile(path) as zf:
                yield from _zip_documents(zf, where, skipped)
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{where}: not a readable zip archive ({e})") from None
    except (NotImplementedError, RuntimeError) as e:  # Deflate64 (Windows' zip for big files) or a password
        raise UserError(f"{where}: cannot read this zip archive ({e}); extract it and give the directory") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read it: {e.strerror or e}") from None


def _is_prepared(d: Path) -> bool:
    return (d / "stats.json").is_file() and (d / "train.parquet").is_file()


def input_files(inputs: Sequence[str | os.PathLike], exclude: Path | None = None) -> list[Path]:
    """Expand inputs into the .json/.jsonl/.zip files to read: directories walked recursively in sorted order,
    leaving out hidden entries, `exclude` (the output directory) and earlier `prepare` outputs."""
    files: list[Path] = []
    for given in inputs:
        p = Path(given)
        if not p.exists():
            raise UserError(f"{p}: no such file or directory")
        if p.is_dir():
            for root, dirs, names in os.walk(p):
                dirs[:] = sorted(d for d in dirs if not d.startswith(".") and d != "__MACOSX"
                                 and not _is_prepared(Path(root, d))
                                 and (exclude is None or Path(root, d).resolve() != exclude))
                files += [Path(root, n) for n in sorted(names)
                          if not n.startswith(".") and os.path.splitext(n)[1].lower() in _SUFFIXES]
        elif p.suffix.lower() in _SUFFIXES:
            files.append(p)
        else:
            raise UserError(f"{p}: not a .json, .jsonl or .zip file (or a directory of them)")
    unique: dict[Path, Path] = {}  # a file given twice (directly and inside a directory) is read once
    for f in files:
        unique.setdefault(f.resolve(), f)
    return list(unique.values())


# ---------------------------------------------------------------------------------------------------------------------
# checking: one document in, its usable pairs out, every skip counted under its reason


class _Skip(Exception):
    def __init__(self, reason: str):
        self.reason = reason


def _item_texts(item: Any) -> tuple[str, str]:
    """Raw (summary, original) of one {orginal_text, summary_text} item; absent texts come back empty."""
    if not isinstance(item, dict):
        raise _Skip("wrong_type")
    summary = item.get("summary_text")
    original = item.get("orginal_text")  # the corpus's own spelling
    if original is None:
        original = item.get("original_text")
    for v in (summary, original):
        if v is not None and not isinstance(v, str):
            raise _Skip("wrong_type")
    return summary or "", original or ""


def _check_pair(summary: str, original: str, min_chars: int, max_chars: int) -> tuple[str, str]:
    summary, original = normalize(summary), normalize(original)
    if not summary:
        raise _Skip("empty_summary")
    if not original:
        raise _Skip("empty_original")
    if len(summary) >= len(original):
        raise _Skip("summary_not_shorter")
    if len(summary) < min_chars:
        raise _Skip("too_short")
    if len(original) > max_chars:
        raise _Skip("too_long")
    return summary, original


def _doc_field(doc: dict, key: str) -> str:
    if doc.get(key) is None:
        raise _Skip("missing_field")
    if not isinstance(doc[key], str):
        raise _Skip("wrong_type")
    return normalize(doc[key])


def document_pairs(doc: Any, granularity: str, min_chars: int, max_chars: int, seen: set[str],
                   skipped: Counter) -> tuple[str, str, str, list[tuple[str, int, str, str]]] | None:
    """(doc_id, title, ipc, [(granularity, pair_index, summary, original), ...]) of one document, or None when the
    whole document is skipped. Adds its doc_id to `seen` and counts every skipped record in `skipped`."""
    try:
        if not isinstance(doc, dict):
            raise _Skip("wrong_type")
        doc_id = _doc_field(doc, "doc_id")
        if not doc_id:
            raise _Skip("missing_field")
        if doc_id in seen:
            raise _Skip("duplicate_doc_id")
        seen.add(doc_id)
        title, ipc = _doc_field(doc, "title"), _doc_field(doc, "ipc")
    except _Skip as s:
        skipped[s.reason] += 1
        return None

    pairs = []
    for kind in ("entire", "section") if granularity == "both" else (granularity,):
        items = doc.get(f"summary_{kind}")
        if items is None:
            skipped["missing_field"] += 1
            continue
        if not isinstance(items, list):
            skipped["wrong_type"] += 1
            continue
        if kind == "entire":
            # One pair per document; several items are joined with spaces, as the original notebook did.
            try:
                texts = [_item_texts(it) for it in items]
                pairs.append(("entire", 0, *_check_pair(" ".join(t[0] for t in texts), " ".join(t[1] for t in texts),
                                                        min_chars, max_chars)))
            except _Skip as s:
                skipped[s.reason] += 1
        else:
            if not items:
                skipped["empty_summary"] += 1
            for i, it in enumerate(items):
                try:
                    pairs.append(("section", i, *_check_pair(*_item_texts(it), min_chars, max_chars)))
                except _Skip as s:
                    skipped[s.reason] += 1
    return doc_id, title, ipc, pairs


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


def prepare(inputs: Sequence[str | os.PathLike], out: str | os.PathLike, granularity: str = "entire",
            val_fraction: float = 0.1, test_fraction: float = 0.1, seed: int = 42, min_chars: int = 10,
            max_chars: int = 4000, progress: bool = True) -> dict:
    """Read `inputs`, check and split their pairs, write `out`/{train,validation,test}.parquet and stats.json
    atomically, and return the stats. Raises UserError for unreadable input; skipped records are only counted."""
    import pyarrow as pa
    from tqdm import tqdm

    _check_options(inputs, granularity, val_fraction, test_fraction, min_chars, max_chars)
    out = Path(out)
    _check_out(out, inputs)
    files = input_files(inputs, exclude=out.resolve())

    skipped: Counter = Counter()
    seen: set[str] = set()
    docs: list[tuple[str, str, int]] = []  # (doc_id, ipc, pairs kept) of documents with at least one pair
    lengths = {g: (array("I"), array("I")) for g in ("entire", "section")}
    read: dict[str, int] = {}  # source label -> documents in it
    n_read = 0
    schema = _schema()
    buf: dict[str, list] = {c: [] for c in COLUMNS}

    with atomic_dir(out) as tmp:
        spool = tmp / _SPOOL
        with pa.ipc.new_file(str(spool), schema) as sink:

            def flush() -> None:
                sink.write_batch(pa.record_batch([buf[c] for c in COLUMNS], schema=schema))
                for c in COLUMNS:
                    buf[c].clear()

            bar = tqdm(files, unit="file", desc="reading", disable=None if progress else True, file=sys.stderr)
            for path in bar:
                if path.suffix.lower() != ".zip":
                    read.setdefault(str(path), 0)  # listed in stats even when it holds no document
                for label, doc in _read_path(path, skipped):
                    read[label] = read.get(label, 0) + 1
                    n_read += 1
                    got = document_pairs(doc, granularity, min_chars, max_chars, seen, skipped)
                    if not got or not got[3]:
                        continue
                    doc_id, title, ipc, pairs = got
                    docs.append((doc_id, ipc, len(pairs)))
                    for g, index, summary, original in pairs:
                        for c, v in zip(COLUMNS, (doc_id, title, ipc, g, index, summary, original)):
                            buf[c].append(v)
                        lengths[g][0].append(len(summary))
                        lengths[g][1].append(len(original))
                    if len(buf["doc_id"]) >= _BATCH_ROWS:
                        flush()
                bar.set_postfix(documents=n_read, refresh=False)
            bar.close()
            if buf["doc_id"]:
                flush()

        if not n_read:
            raise UserError(f"no documents found in {', '.join(map(str, inputs))}")
        if not docs:
            reasons = ", ".join(f"{r}: {n}" for r, n in skipped.most_common())
            raise UserError(f"no usable pairs: every record of the {n_read} documents read was skipped ({reasons})")

        assignment = split_documents([(d, ipc) for d, ipc, _ in docs], val_fraction, test_fraction, seed)
        _write_splits(spool, tmp, assignment)
        spool.unlink()

        splits = {s: {"documents": 0, "pairs": 0, "fields": {}} for s in SPLITS}
        for doc_id, ipc, n_pairs in docs:
            s = splits[assignment[doc_id]]
            f = s["fields"].setdefault(ipc, {"documents": 0, "pairs": 0})
            for d in (s, f):
                d["documents"] += 1
                d["pairs"] += n_pairs
        for s in splits.values():
            s["fields"] = dict(sorted(s["fields"].items()))
        kept = [g for g in ("entire", "section") if lengths[g][0]]
        stats = {
            "format": FORMAT,
            "version": FORMAT_VERSION,
            "splits": splits,
            "totals": {"documents_read": n_read, "documents": len(docs), "pairs": sum(n for _, _, n in docs)},
            "skipped": {r: skipped[r] for r in SKIP_REASONS},
            "lengths": {
                "summary": _percentiles(lengths["entire"][0] + lengths["section"][0]),
                "original": _percentiles(lengths["entire"][1] + lengths["section"][1]),
                "by_granularity": {g: {"summary": _percentiles(lengths[g][0]), "original": _percentiles(lengths[g][1])}
                                   for g in kept},
            },
            "inputs": [{"path": label, "documents": n} for label, n in read.items()],
            "options": {"inputs": [str(p) for p in inputs], "granularity": granularity, "val_fraction": val_fraction,
                        "test_fraction": test_fraction, "seed": seed, "min_chars": min_chars, "max_chars": max_chars},
        }
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
