"""Text as every verb reads it: UTF-8 files and JSONL lines, refused in one line that names the file and the line,
and the one NFC normalisation that the corpus, the metrics and the report share.

    python -c "from writemypaper.text import read_jsonl; print(read_jsonl('in.jsonl', '--input', ('summary',)))"
"""

from __future__ import annotations

import json
import os
import unicodedata
from pathlib import Path
from typing import Any, Iterable, Iterator

from writemypaper.errors import UserError


def nfc(text: str) -> str:
    """NFC, not NFKC: ㆍ, ℃ and full-width forms stay as written, and facts' offsets index this form."""
    return unicodedata.normalize("NFC", text)


def normalize(text: str) -> str:
    """NFC, whitespace runs collapsed to one space, stripped: how the corpus's fields are stored."""
    return " ".join(nfc(text).split())


def char_count(text: str) -> int:
    """An abstract's length as Korean journals state it ("500자 내외"): characters including spaces (공백 포함),
    counted on the stored form (NFC, whitespace runs as one space, ends stripped), so that a line break or a
    decomposed syllable counts as one, as a word processor's 공백 포함 count does."""
    return len(normalize(text))


def decode(raw: bytes, where: str) -> str:
    """UTF-8 (a byte-order mark dropped); anything else is one line naming `where`, with the fix for CP949, the
    encoding Korean Windows writes."""
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


def read_text(path: str | os.PathLike, option: str) -> str:
    """The whole of a UTF-8 file that the user named with `option`."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    return decode(path.read_bytes(), str(path))


def jsonl_values(lines: Iterable[bytes], where: str) -> Iterator[tuple[int, Any]]:
    """(line number, parsed value) of each non-blank line, read one line at a time (a zip member or a file of any
    size). A line that is not UTF-8 or not JSON is a UserError that starts `where:LINE:`."""
    for n, raw in enumerate(lines, 1):
        line = decode(raw, f"{where}:{n}").rstrip("\r\n")
        if not line.strip():
            continue
        try:
            value = json.loads(line)
        except json.JSONDecodeError as e:
            raise UserError(f"{where}:{n}: malformed JSON at column {e.colno}: {e.msg}") from None
        yield n, value


def read_jsonl(path: str | os.PathLike, option: str, fields: tuple[str, ...],
               may_be_empty: tuple[str, ...] = ()) -> list[tuple[int, dict]]:
    """(line number, object) for each non-blank line of the JSONL file the user named with `option`; each object
    must carry `fields` as non-empty text, and `may_be_empty` as text that may be empty."""
    path = Path(path)
    if not path.is_file():
        raise UserError(f"{option} {path}: no such file")
    rows = []
    with open(path, "rb") as f:
        for n, obj in jsonl_values(f, str(path)):
            if not isinstance(obj, dict):
                raise UserError(f"{path}:{n}: expected a JSON object with {', '.join(fields)}")
            missing = [k for k in fields if not isinstance(obj.get(k), str) or not obj[k].strip()]
            missing += [k for k in may_be_empty if not isinstance(obj.get(k), str)]
            if missing:
                raise UserError(f"{path}:{n}: missing or non-text field(s): {', '.join(missing)}")
            rows.append((n, obj))
    if not rows:
        raise UserError(f"{path}: no rows in it")
    return rows
