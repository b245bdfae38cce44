"""The AIHub 논문자료 요약 corpus as it ships: every layout of its files (lists of {"data": [...]} wrappers,
single wrappers, bare lists, .jsonl, directories, .zip archives and zips inside them) read into documents, and each
document checked into its usable summary/original pairs, every skipped record counted under its reason. `prepare`
(data.py) splits and writes what this reads.

    python -c "from writemypaper.corpus import input_files; print(input_files(['data/sample']))"
"""

from __future__ import annotations

import json
import os
import re
import zipfile
import zlib
from collections import Counter
from pathlib import Path
from typing import Any, Iterable, Iterator, Sequence

from writemypaper.errors import UserError
from writemypaper.text import decode, jsonl_values, nfc, normalize

GRANULARITIES = ("entire", "section", "both")
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

_SUFFIXES = (".json", ".jsonl", ".zip")

# AIHub ships its own split as folders: Training and Validation, numbered (1.Training, 01.Validation) or in Korean
# (훈련, 검증; 훈련데이터), with the labels below them (1.Training/라벨링데이터/TL_*.zip). `prepare --split aihub` keeps it.
AIHUB_FOLDERS = {
    "training": "train", "train": "train", "훈련": "train", "훈련데이터": "train", "학습": "train", "학습데이터": "train",
    "validation": "validation", "valid": "validation", "val": "validation", "검증": "validation",
    "검증데이터": "validation", "test": "test", "testing": "test", "테스트": "test", "시험": "test",
}


# ---------------------------------------------------------------------------------------------------------------------
# reading: one file's raw JSON at a time


class NotCorpus(UserError):
    """Well-formed JSON that holds no documents (a dataset's meta.json): `prepare` skips such a file, naming it."""


def _parse_json(text: str, where: str) -> Any:
    if not text.strip():
        raise UserError(f"{where}: empty file, no JSON in it")
    try:
        return json.loads(text)
    except RecursionError:  # json's parser recurses once per nesting level
        raise UserError(f"{where}: JSON nested too deeply to be a corpus file") from None
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
        raise NotCorpus(f"{where}: not a corpus file: expected a list of documents, a {{\"data\": [...]}} wrapper "
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
    for _, value in jsonl_values(lines, where):
        if isinstance(value, dict):
            yield from _documents(value, where, skipped) if _is_wrapper(value) else [value]
        else:
            skipped["wrong_type"] += 1


def _json_documents(raw: bytes, where: str, skipped: Counter, stray) -> list[Any]:
    """The documents of one .json file's bytes. A file of well-formed JSON that is no corpus goes to `stray(where,
    reason)` and gives none; without `stray` it is an error. Parsed whole before any document is yielded, so a
    file is either read or skipped, never half read."""
    value = _parse_json(decode(raw, where), where)
    try:
        return list(_documents(value, where, skipped))
    except NotCorpus as e:
        if stray is None:
            raise
        stray(where, str(e)[len(where) + 2:])  # the message without its leading "WHERE: "
        return []


def _zip_documents(zf: zipfile.ZipFile, where: str, skipped: Counter, stray=None) -> Iterator[tuple[str, Any]]:
    found = 0
    for name in sorted(zf.namelist()):
        base = name.rstrip("/").rsplit("/", 1)[-1]
        suffix = os.path.splitext(base)[1].lower()
        if name.endswith("/") or base.startswith(".") or name.startswith("__MACOSX/") or suffix not in _SUFFIXES:
            continue
        found += 1
        label = f"{where}:{name}"
        if suffix == ".json":
            yield from ((label, d) for d in _json_documents(zf.read(name), label, skipped, stray))
        elif suffix == ".jsonl":
            with zf.open(name) as f:
                yield from ((label, d) for d in _jsonl_documents(f, label, skipped))
        else:  # a zip inside the zip: read through without extracting it
            with zf.open(name) as f, zipfile.ZipFile(f) as inner:
                yield from _zip_documents(inner, label, skipped, stray)
    if not found:
        raise UserError(f"{where}: the zip archive holds no .json or .jsonl file")


def read_path(path: Path, skipped: Counter, stray=None) -> Iterator[tuple[str, Any]]:
    """(source label, document) for every document in one input file; a zip member's label is `ZIP:MEMBER`.
    `stray(label, reason)` hears of each .json file that is well-formed JSON but no corpus (skipped); without it,
    such a file is an error."""
    where = str(path)
    suffix = path.suffix.lower()
    try:
        if suffix == ".json":
            with open(path, "rb") as f:
                raw = f.read()
            yield from ((where, d) for d in _json_documents(raw, where, skipped, stray))
        elif suffix == ".jsonl":
            with open(path, "rb") as f:
                yield from ((where, d) for d in _jsonl_documents(f, where, skipped))
        else:
            with zipfile.ZipFile(path) as zf:
                yield from _zip_documents(zf, where, skipped, stray)
    except RecursionError:  # a .jsonl line nested thousands deep
        raise UserError(f"{where}: JSON nested too deeply to be a corpus file") from None
    except (zipfile.BadZipFile, zlib.error, EOFError) as e:
        raise UserError(f"{where}: not a readable zip archive ({e})") from None
    except (NotImplementedError, RuntimeError) as e:  # Deflate64 (Windows' zip for big files) or a password
        raise UserError(f"{where}: cannot read this zip archive ({e}); extract it and give the directory") from None
    except OSError as e:
        raise UserError(f"{where}: cannot read it: {e.strerror or e}") from None


def aihub_part(folders: Iterable[str]) -> str | None:
    """"train", "validation" or "test" for the outermost of `folders` named as AIHub names its splits (a zip counts
    as a folder: Training.zip), or None. Names match whole, so test_results or trainer are no split."""
    for name in folders:
        stem = re.sub(r"^[\d\s._-]+", "", nfc(name)).lower()
        stem = stem[:-4] if stem.endswith(".zip") else stem
        if stem in AIHUB_FOLDERS:
            return AIHUB_FOLDERS[stem]
    return None


def source_folders(path: Path, label: str, roots: Sequence[Path]) -> list[str]:
    """The folders a document of `label` (read from the file `path`) sits in, counted from the input the user named
    (`roots`, resolved) down: that input's own name (or, for a file named directly, its folder's), the folders below
    it, a zip's name and the folders inside the zip. Folders above the input are not counted: /tmp/test/... is no
    split."""
    rp = path.resolve()
    root = next((r for r in roots if r in rp.parents), None)
    outer = [root.name, *rp.relative_to(root).parts] if root is not None else [rp.parent.name, rp.name]
    inner = label[len(str(path)) + 1:].replace(":", "/").split("/") if label.startswith(f"{path}:") else []
    folders = outer[:-1] + ([rp.name] if rp.suffix.lower() == ".zip" else []) + inner[:-1]
    return [f for f in folders if f]


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
