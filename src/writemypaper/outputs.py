"""The output policy: what a verb may do with the folder given as --out. A folder is replaced only where it holds our
own output of the same kind (its run record says so) and --overwrite was given; what a killed process left beside it
is cleaned before any work starts; the record is written last, so an output without a finished record never counts.

    python -c "from writemypaper.outputs import out_state; print(out_state('runs/demo', 'run'))"
"""

from __future__ import annotations

import contextlib
import os
import re
import shutil
import sys
from pathlib import Path
from typing import Iterator

from writemypaper import record as records
from writemypaper.atomic import atomic_dir
from writemypaper.errors import UserError


def _alive(pid: int) -> bool:
    if pid == os.getpid():
        return True  # a temporary of this very process is being written now
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # another account's process
    return True


def stale_siblings(path: str | os.PathLike) -> dict[str, list[Path]]:
    """Our temporaries and set-aside copies beside `path` (`.NAME.tmp-PID-*`, `.NAME.old-PID`), by state: 'dead_tmp',
    'dead_old' (their process is gone), 'live' (a running process's) and 'unknown' (an earlier version's
    `.NAME.tmp-XXXXXXXX`, which names no process)."""
    path = Path(path)
    name = re.escape(path.name)
    ours = re.compile(rf"\.{name}\.(?:(?P<tmp>tmp)-(?P<tpid>\d+)-\w+|old-(?P<opid>\d+))")
    legacy = re.compile(rf"\.{name}\.tmp-[a-z0-9_]{{8}}")
    found: dict[str, list[Path]] = {"dead_tmp": [], "dead_old": [], "live": [], "unknown": []}
    if not path.parent.is_dir():
        return found
    for p in sorted(path.parent.iterdir()):
        m = ours.fullmatch(p.name)
        if m:
            pid = int(m["tpid"] or m["opid"])
            found["live" if _alive(pid) else "dead_tmp" if m["tmp"] else "dead_old"].append(p)
        elif legacy.fullmatch(p.name) and p.is_dir():
            found["unknown"].append(p)
    return found


def clean_stale(path: str | os.PathLike, option: str = "--out") -> None:
    """Before any work: remove the temporaries a killed process left beside `path`, and its set-aside copy (put back
    where the kill left `path` missing, deleted where the new `path` is in place). One a live process is writing,
    or one that names no process, is named in a one-line UserError instead: it is never deleted."""

    path = Path(path)
    found = stale_siblings(path)
    if found["live"]:
        p = found["live"][0]
        raise UserError(f"{option} {path}: another writemypaper process is writing it ({p}); wait for it to finish "
                        f"or stop it, then run again")
    if found["unknown"]:
        names = ", ".join(str(p) for p in found["unknown"])
        raise UserError(f"{option} {path}: {names} was left by an earlier writemypaper; remove it if no writemypaper "
                        f"is writing {path}, then run again")
    olds = found["dead_old"]
    if olds and not path.exists():
        if len(olds) > 1:
            raise UserError(f"{option} {path} is missing and several copies were left beside it "
                            f"({', '.join(map(str, olds))}); keep the one you want as {path} and remove the others")
        os.rename(olds.pop(), path)
        print(f"writemypaper: put {path} back from the copy a stopped process had set aside", file=sys.stderr)
    for p in found["dead_tmp"] + olds:
        shutil.rmtree(p, ignore_errors=True)
        print(f"writemypaper: removed {p}, left by a stopped writemypaper process", file=sys.stderr)


def out_state(path: str | os.PathLike, kind: str, option: str = "--out", clean: bool = True) -> str:
    """What `path` is for an output of `kind`: 'new' (absent or an empty folder) or 'ours' (a folder holding our
    own output of that kind, marked by its record). Anything else is refused with one line (UserError), before any
    work: a file, a folder we did not write (never deleted or replaced), our output of another kind. With `clean`,
    the stale siblings of a killed process are handled first (clean_stale)."""

    path = Path(path)
    if clean:
        clean_stale(path, option)
    if not path.exists():
        return "new"
    if not path.is_dir():
        raise UserError(f"{option} {path} exists and is not a directory; pick another {option}")
    if not any(path.iterdir()):
        return "new"
    try:
        found = records.owner_kind(path)
    except records.RecordError as e:
        raise UserError(f"{option} {path}: {e}; it is not ours to replace: pick another {option}") from None
    if found is None:
        raise UserError(f"{option} {path} is not empty and was not written by writemypaper; it is left as it is: "
                        f"pick another {option} (a new or empty folder)")
    if found != kind:
        raise UserError(f"{option} {path} holds {records.WHAT[found]} of writemypaper, not {records.WHAT[kind]}; "
                        f"pick another {option}")
    return "ours"


def check_out(path: str | os.PathLike, kind: str, overwrite: bool = False, clean: bool = True) -> str:
    """out_state, and our own output is replaced only with --overwrite: 'new' or 'replace', else one line."""

    if out_state(path, kind, clean=clean) == "new":
        return "new"
    if not overwrite:
        raise UserError(f"--out {path} already holds {records.WHAT[kind]} of writemypaper; add --overwrite to "
                        f"replace it, or pick another --out")
    return "replace"


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, record=None) -> Iterator[Path]:
    """atomic_dir under the output policy: check_out before the body runs (call it earlier too, before loading a
    model, where the body's work starts later), then, once the body is done, the record (a RunRecord, or a function
    of the temporary folder that returns one) written last with finished=True, and `path` checked again before it
    is replaced, in case something appeared there meanwhile."""
    check_out(path, kind, overwrite)

    def finish(tmp: Path) -> None:
        if record is not None:
            rec = record(tmp) if callable(record) else record
            rec.finished = True
            records.write(tmp, rec)
        check_out(path, kind, overwrite, clean=False)

    with atomic_dir(path, before_swap=finish) as tmp:
        yield tmp
