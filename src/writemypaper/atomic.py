"""Atomic output and the output policy: write into a temporary sibling, then rename, so a killed run never leaves a
file or directory that looks complete; replace a folder only where it holds our own output (its run record says so)
and --overwrite was given; clean what a killed process left behind before any work starts. What comes out has the
modes of any ordinary file under the user's umask.

    python -c "from writemypaper.atomic import atomic_write_text; atomic_write_text('out/x.txt', 'hello')"
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Any, Callable, Iterator


def current_umask() -> int:
    """The process's umask, read without changing it where Linux says it (/proc/self/status, since 4.7)."""
    try:
        with open("/proc/self/status", encoding="ascii") as f:
            for line in f:
                if line.startswith("Umask:"):
                    return int(line.split()[1], 8)
    except OSError:
        pass
    mask = os.umask(0o022)  # elsewhere the only way to read it is to set it
    os.umask(mask)
    return mask


def ordinary_modes(path: str | os.PathLike) -> None:
    """Give `path` and everything under it the modes that open() and mkdir() give under the umask: 0666 & ~umask for
    files (0777 & ~umask where any execute bit was set), 0777 & ~umask for directories. tempfile and safetensors
    create theirs 0600/0700, which another account, or a serving container running as another user, cannot read."""
    umask = current_umask()
    file_mode, exec_mode = 0o666 & ~umask, 0o777 & ~umask
    path = Path(path)
    entries = [path] if not path.is_dir() else [path, *path.rglob("*")]
    for p in entries:
        if p.is_symlink():
            continue
        st = p.stat()
        if p.is_dir():
            mode = exec_mode
        else:
            mode = exec_mode if st.st_mode & 0o111 else file_mode
        if st.st_mode & 0o7777 != mode:
            os.chmod(p, mode)


@contextlib.contextmanager
def atomic_dir(path: str | os.PathLike, overwrite: bool = True,
               before_swap: Callable[[Path], None] | None = None) -> Iterator[Path]:
    """Yield a temporary directory beside `path`; on success it replaces `path` in one rename. `before_swap(tmp)`
    runs last, before the rename (to write the record, to check `path` again). The temporary is removed whatever
    stops the body, KeyboardInterrupt included; one left by a killed process is named after its pid, so that
    clean_stale can tell it from one that a live process is writing."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.tmp-{os.getpid()}-", dir=path.parent))
    try:
        yield tmp
        ordinary_modes(tmp)  # mkdtemp made it private, and libraries write 0600 files into it
        if before_swap is not None:
            before_swap(tmp)
        if path.exists() and not overwrite:
            raise FileExistsError(path)
        old = _swap(tmp, path)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise
    if old is not None:
        shutil.rmtree(old, ignore_errors=True)  # a kill here leaves it to clean_stale: `path` is already in place


def _swap(tmp: Path, path: Path) -> Path | None:
    """Rename `tmp` to `path`, the existing `path` first moved aside (returned, to be deleted) so that `path` is never
    half-written; if the second rename fails, the old one is put back."""
    if not path.exists():
        os.rename(tmp, path)
        return None
    old = path.with_name(f".{path.name}.old-{os.getpid()}")
    os.rename(path, old)
    try:
        os.rename(tmp, path)
    except BaseException:
        if not path.exists():
            os.rename(old, path)
        raise
    return old


# ---------------------------------------------------------------------------------------------------------------------
# the output policy: what a verb may do with the folder given as --out


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
    from writemypaper.errors import UserError

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
    from writemypaper import record
    from writemypaper.errors import UserError

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
        found = record.owner_kind(path)
    except record.RecordError as e:
        raise UserError(f"{option} {path}: {e}; it is not ours to replace: pick another {option}") from None
    if found is None:
        raise UserError(f"{option} {path} is not empty and was not written by writemypaper; it is left as it is: "
                        f"pick another {option} (a new or empty folder)")
    if found != kind:
        raise UserError(f"{option} {path} holds {record.WHAT[found]} of writemypaper, not {record.WHAT[kind]}; "
                        f"pick another {option}")
    return "ours"


def check_out(path: str | os.PathLike, kind: str, overwrite: bool = False, clean: bool = True) -> str:
    """out_state, and our own output is replaced only with --overwrite: 'new' or 'replace', else one line."""
    from writemypaper import record
    from writemypaper.errors import UserError

    if out_state(path, kind, clean=clean) == "new":
        return "new"
    if not overwrite:
        raise UserError(f"--out {path} already holds {record.WHAT[kind]} of writemypaper; add --overwrite to "
                        f"replace it, or pick another --out")
    return "replace"


@contextlib.contextmanager
def output_dir(path: str | os.PathLike, kind: str, overwrite: bool = False, record=None) -> Iterator[Path]:
    """atomic_dir under the output policy: check_out before the body runs (call it earlier too, before loading a
    model, where the body's work starts later), then, once the body is done, the record (a RunRecord, or a function
    of the temporary folder that returns one) written last with finished=True, and `path` checked again before it
    is replaced, in case something appeared there meanwhile."""
    from writemypaper import record as records

    check_out(path, kind, overwrite)

    def finish(tmp: Path) -> None:
        if record is not None:
            rec = record(tmp) if callable(record) else record
            rec.finished = True
            records.write(tmp, rec)
        check_out(path, kind, overwrite, clean=False)

    with atomic_dir(path, before_swap=finish) as tmp:
        yield tmp


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        os.chmod(tmp, 0o666 & ~current_umask())  # mkstemp makes it private; the result is an ordinary file
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp)
        raise
    return path


def atomic_write_json(path: str | os.PathLike, obj: Any) -> Path:
    return atomic_write_text(path, json.dumps(obj, ensure_ascii=False, indent=2) + "\n")


def atomic_write_jsonl(path: str | os.PathLike, rows: list[dict]) -> Path:
    return atomic_write_text(path, "".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows))
