"""Atomic output: write into a temporary sibling, then rename, so a killed run never leaves a file or directory that
looks complete. What comes out has the modes of any ordinary file under the user's umask. The policy of what may be
replaced (and the cleaning of what a killed process left) is outputs.py, above this and the run record.

    python -c "from writemypaper.atomic import atomic_write_text; atomic_write_text('out/x.txt', 'hello')"
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
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


def atomic_write_text(path: str | os.PathLike, text: str) -> Path:
    """Write `text` to `path` through a temporary file in the same directory and a rename."""
    return atomic_write_bytes(path, text.encode("utf-8"))


def atomic_write_bytes(path: str | os.PathLike, data: bytes) -> Path:
    """Write `data` to `path` through a temporary file in the same directory and a rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
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
