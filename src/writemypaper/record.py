"""The run record: writemypaper.json, written last into every folder a verb makes (a run, an export, prepared data,
an evaluation, a demo). It says what the output was built from and whether it was finished, marks the folder as
ours for the output policy (outputs.check_out), and lets the notebook tell a result it can reuse from a stale one.

    python -c "from writemypaper import record; print(record.read('runs/demo'))"
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import os
from pathlib import Path
from typing import Any

FILE = "writemypaper.json"
KINDS = ("run", "export", "prepared", "eval", "demo")
WHAT = {"run": "a training run", "export": "an export", "prepared": "a prepared data folder",
        "eval": "an evaluation", "demo": "a demo"}
SPLIT_FILES = ("train.parquet", "validation.parquet", "test.parquet")


@dataclasses.dataclass
class RunRecord:
    """What an output was built from and how it ended. The first keys are those every earlier writemypaper.json
    holds (base_model, instruction; an export's exported_from, safetensors, gguf, merged_base), read where they
    always were; keys this version does not know are kept in `extra` and written back unchanged."""

    kind: str
    finished: bool = False
    base_model: str | None = None
    instruction: str | None = None
    preset: str | None = None
    data_fingerprint: str | None = None
    settings: dict = dataclasses.field(default_factory=dict)  # the rest of what it was built from, by kind
    device: str | None = None
    steps: int | None = None
    train_loss: float | None = None
    eval_loss: float | None = None
    versions: dict = dataclasses.field(default_factory=dict)
    extra: dict = dataclasses.field(default_factory=dict)

    def to_json(self) -> dict:
        fields = {f.name: getattr(self, f.name) for f in dataclasses.fields(self) if f.name != "extra"}
        return {**self.extra, **fields}

    @classmethod
    def from_json(cls, data: dict, folder: Path | None = None) -> RunRecord:
        names = {f.name for f in dataclasses.fields(cls)} - {"extra"}
        known = {k: v for k, v in data.items() if k in names}
        extra = {k: v for k, v in data.items() if k not in names}
        if "kind" not in known:  # written before records had one: the folder's files say what it is
            known["kind"] = "export" if "exported_from" in data else legacy_kind(folder) or "run"
        # An earlier writemypaper.json was written only once its output was complete (a run's adapter was in place).
        known.setdefault("finished", True)
        return cls(**known, extra=extra)


class RecordError(ValueError):
    """writemypaper.json exists but is not a record (not JSON, or not a mapping)."""


def read(folder: str | os.PathLike) -> RunRecord | None:
    """The record of `folder`; None when it has none. Raises RecordError for a file that is not one of ours."""
    path = Path(folder) / FILE
    if not path.is_file():
        return None
    try:
        data = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as e:
        raise RecordError(f"{path}: not a writemypaper record ({type(e).__name__})") from None
    if not isinstance(data, dict) or data.get("kind", "run") not in KINDS:
        raise RecordError(f"{path}: not a writemypaper record")
    if not isinstance(data.get("instruction") or "", str):  # generation puts it into every prompt
        raise RecordError(f"{path}: not a writemypaper record (its 'instruction' is not text)")
    return RunRecord.from_json(data, Path(folder))


def write(folder: str | os.PathLike, record: RunRecord) -> Path:
    """Write `record` into `folder` in one rename. Call it last, with finished=True, once every other file of the
    output is in place: a folder whose record is missing or unfinished never counts as finished."""
    from writemypaper.atomic import atomic_write_json

    if record.kind not in KINDS:
        raise ValueError(f"record kind {record.kind!r} is not one of {KINDS}")
    return atomic_write_json(Path(folder) / FILE, record.to_json())


def legacy_kind(folder: str | os.PathLike | None) -> str | None:
    """What of ours a folder written before records existed holds, from its files; None when nothing says so."""
    if folder is None:
        return None
    p = Path(folder)
    if (p / "stats.json").is_file() and (p / "train.parquet").is_file():
        return "prepared"
    if (p / "checkpoints").is_dir() and (p / "config.yaml").is_file():
        return "run"
    if (p / "scores.json").is_file() and (p / "report.html").is_file():
        return "eval"
    if (p / "prepared" / "stats.json").is_file() and (p / "run").is_dir():
        return "demo"
    return None


def owner_kind(folder: str | os.PathLike) -> str | None:
    """The kind of our output that `folder` holds (its record's, or a folder of an earlier version's, by its
    files); None when it is not ours. Raises RecordError for a writemypaper.json that is not ours."""
    rec = read(folder)
    return rec.kind if rec else legacy_kind(folder)


def is_finished(folder: str | os.PathLike) -> bool:
    """Whether `folder` holds a finished output: its record says so. A folder without a record (an adapter saved by
    PEFT, a model directory) is taken as it is."""
    try:
        rec = read(folder)
    except RecordError:
        return True
    return rec is None or rec.finished


# ---------------------------------------------------------------------------------------------------------------------
# what an output was built from


def fingerprint(folder: str | os.PathLike, names: tuple[str, ...] = SPLIT_FILES) -> str:
    """sha256 over the named files of `folder` (names and bytes): the same data gives the same fingerprint."""
    h = hashlib.sha256()
    for name in names:
        path = Path(folder) / name
        if not path.is_file():
            continue
        h.update(name.encode() + b"\0")
        with open(path, "rb") as f:
            while block := f.read(1 << 20):
                h.update(block)
    return h.hexdigest()


def data_fingerprint(prepared: str | os.PathLike) -> str:
    """The fingerprint of a prepared folder: its record's, or computed from its splits when it has none."""
    try:
        rec = read(prepared)
    except RecordError:
        rec = None
    return rec.data_fingerprint if rec and rec.kind == "prepared" and rec.data_fingerprint else fingerprint(prepared)


def prepared_record(folder: str | os.PathLike) -> RunRecord:
    """The record of a prepared folder, from the splits and stats.json that `prepare` wrote into it."""
    stats = json.loads((Path(folder) / "stats.json").read_text(encoding="utf-8"))
    return RunRecord(kind="prepared", finished=True, data_fingerprint=fingerprint(folder),
                     settings=dict(stats.get("options") or {}), versions=versions(light=True))


def versions(light: bool = False) -> dict:
    """The versions that made an output: writemypaper's, and unless `light` torch, transformers, trl and peft."""
    from importlib.metadata import PackageNotFoundError, version

    from writemypaper import __version__

    out = {"writemypaper": __version__}
    for name in () if light else ("torch", "transformers", "trl", "peft"):
        try:
            out[name] = version(name)
        except PackageNotFoundError:
            out[name] = None
    return out


def preset_name(source: str | None) -> str | None:
    """A config's `source` as a preset name where it is a shipped preset, else the file's path as given."""
    if not source:
        return None
    from writemypaper.config import CONFIG_DIR

    p = Path(source)
    return p.stem if p.resolve().parent == CONFIG_DIR.resolve() else source


# ---------------------------------------------------------------------------------------------------------------------
# reuse: what a caller (the notebook) does with a folder it made before


def plan(folder: str | os.PathLike, kind: str, want: dict[str, Any]) -> str:
    """What to do with `folder` for an output of `kind` built from `want` (record fields, or `settings.KEY`, with the
    values they must hold): 'new' (nothing there), 'reuse' (finished and built from the same), 'resume' (unfinished,
    same), 'replace' (ours, but built from something else or of an earlier version), or 'foreign' (not ours, or
    ours of another kind: never to be touched)."""
    p = Path(folder)
    if not p.exists() or p.is_dir() and not any(p.iterdir()):
        return "new"
    try:
        rec = read(p)
    except RecordError:
        return "foreign"
    if rec is None:
        return "replace" if legacy_kind(p) == kind else "foreign"
    if rec.kind != kind:
        return "foreign"
    same = all(_field(rec, key) == value for key, value in want.items())
    if not same:
        return "replace"
    return "reuse" if rec.finished else "resume"


def _field(rec: RunRecord, key: str):
    if key.startswith("settings."):
        return rec.settings.get(key.partition(".")[2])
    return getattr(rec, key) if hasattr(rec, key) else rec.extra.get(key)
