"""The `generate` verb: abstracts from summaries, one streamed to the terminal or many into a JSONL file. The model
runs in the engine that engines.py picks for it (transformers, or llama.cpp for a .gguf file).

    writemypaper generate "요약문..." --model runs/demo
    writemypaper generate --data prepared --split test --model runs/demo --out predictions.jsonl
"""

from __future__ import annotations

import csv
import json
import re
from dataclasses import asdict
from pathlib import Path

from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def read_inputs(path: str | Path) -> list[dict]:
    """Summaries from .txt (one a line), .jsonl (a `summary` field) or .csv (a `summary` column)."""
    from writemypaper.text import read_jsonl, read_text

    path = Path(path)
    if path.suffix not in (".txt", ".jsonl", ".csv"):
        raise UserError(f"{path}: use .txt (one summary a line), .jsonl (a 'summary' field) or .csv (a 'summary' column)")
    if path.suffix == ".jsonl":
        return [obj for _, obj in read_jsonl(path, "--input", ("summary",))]
    text = read_text(path, "--input")
    if path.suffix == ".txt":
        # Line breaks only: str.splitlines would also cut at a form feed or U+2028, which text pasted from a PDF holds.
        rows = [{"summary": line.strip()} for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    else:
        rows = _csv_rows(text, path)
    if not rows:
        raise UserError(f"{path}: no summaries in it")
    return rows


def _csv_rows(text: str, path: Path) -> list[dict]:
    """The rows of a CSV file with a `summary` column. The reader gets the text whole (newline=""), so a quoted
    cell that spans lines stays one cell with its line breaks, as a spreadsheet writes it."""
    import io

    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        if "summary" not in (reader.fieldnames or []):
            raise UserError(f"{path}: no 'summary' column (columns: {', '.join(reader.fieldnames or [])})")
        rows = []
        for r in reader:
            if None in r:  # more cells than the header names
                raise UserError(f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(r[None])} cells in a row "
                                f"under a header of {len(reader.fieldnames)}; quote cells that hold commas")
            if (r.get("summary") or "").strip():
                rows.append(dict(r))
    except csv.Error as e:  # an unclosed quote, a NUL byte, a cell over the size limit
        raise UserError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None
    return rows


def run(cfg, model: str | None, summary: str | None = None, input_path: str | None = None, data: str | None = None,
        split: str | None = None, out: str | None = None, limit: int | None = None,
        save_candidates: bool = False) -> list[dict] | None:
    """The `generate` verb. One summary streams to the terminal (or, with candidates, prints the best); many get a
    progress bar and a JSONL file."""
    import sys

    sources = sum(x is not None for x in (summary, input_path, split))
    if sources != 1:
        raise UserError("give exactly one of: a summary, --input FILE, or --split SPLIT (with --data DIR)")
    if split is not None and data is None:
        raise UserError("--split needs --data PREPARED_DIR")
    from writemypaper import engines
    from writemypaper.config import settings_from_config

    settings = settings_from_config(cfg)
    if save_candidates and out is None:
        raise UserError("--save-candidates writes into the JSONL file: give --out FILE.jsonl")
    gen = engines.load(model or cfg.model, precision=cfg.precision, instruction=cfg.get("instruction"))
    if summary is not None and out is None:
        if settings.candidates == 1:
            pieces = []
            for piece in gen.stream(summary, settings):
                pieces.append(piece)
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            if settings.target_chars is not None:  # on stderr: stdout holds the abstract alone
                print(length_note("".join(pieces), settings.target_chars), file=sys.stderr)
            return None
        [d] = gen.generate([summary], settings, details=True)
        print(d["text"])
        counts = ", ".join(str(len(c["unsupported"])) for c in d["candidates"])
        print(f"best of {settings.candidates} candidates (unsupported facts, best first: {counts}); "
              f"{length_note(d['text'], settings.target_chars)}", file=sys.stderr)
        return None
    if summary is not None:
        rows = [{"summary": summary}]
    elif input_path is not None:
        rows = read_inputs(input_path)
    else:
        from writemypaper.data import load_split

        ds = load_split(data, split)
        rows = [{"doc_id": r["doc_id"], "summary": r["summary"], "reference": r["original"]} for r in ds]
    if limit:
        rows = rows[:limit]
    return _write_rows(cfg, gen, settings, rows, model or cfg.model, out, save_candidates)


def length_note(text: str, target: int | None) -> str:
    """The abstract's length as journals count it (text.char_count), and the target it was steered to."""
    from writemypaper.text import char_count

    return f"{char_count(text)}자" + ("" if target is None else f" (target {target}자)")


def _lengths_line(results: list[dict], target: int | None) -> str:
    """How the lengths of a file of abstracts landed: their range, and how many came within the steering band."""
    from writemypaper.decoding import CAP, FLOOR

    chars = [r["chars"] for r in results]
    line = f"lengths {min(chars)}-{max(chars)}자"
    if target is not None:
        near = sum(FLOOR * target <= c <= CAP * target for c in chars)
        line += f", target {target}자: {near} of {len(chars)} within {FLOOR:.2f}-{CAP:.2f}x"
    return line


def _write_rows(cfg, gen, settings: GenerationSettings, rows: list[dict], model: str, out: str | None,
                save_candidates: bool) -> list[dict]:
    from writemypaper.atomic import atomic_write_jsonl

    summaries = [r["summary"] for r in rows]
    if save_candidates:
        details = gen.generate(summaries, settings, batch_size=cfg.batch_size, progress=True, details=True)
    else:  # no fact check needed beyond the ranking generate does itself
        details = [{"candidates": [{"text": t} for t in texts]}
                   for texts in gen.generate(summaries, settings, batch_size=cfg.batch_size, progress=True)]
    # Every row says how it was written: grounding, candidates and sampling change what a reader should expect.
    record_settings = asdict(settings) | {"do_sample": settings.sampling, "model": model}
    results = []
    from writemypaper.text import char_count

    for r, d in zip(rows, details):
        for k, cand in enumerate(d["candidates"][:settings.num_return_sequences]):
            # chars as journals count them (공백 포함), beside the target the row was steered to
            row = {**r, "generated": cand["text"], "chars": char_count(cand["text"]),
                   "target_chars": settings.target_chars, "sample": k, "settings": record_settings}
            if save_candidates:
                row["candidates"] = d["candidates"]
            results.append(row)
    if out is None:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        from writemypaper.config import save_config

        atomic_write_jsonl(out, results)
        save_config(cfg, Path(out).with_suffix(".config.yaml"))
        print(f"wrote {len(results)} abstracts to {out} ({_lengths_line(results, settings.target_chars)})")
    return results
