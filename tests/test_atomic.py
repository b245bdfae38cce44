"""Atomic outputs come out with the modes of ordinary files under the user's umask, whatever the library that wrote
them (tempfile and safetensors create 0600 files): the prepared splits, a real training run's adapter and
checkpoints, and a merged export."""

import contextlib
import os
import stat
import tempfile

import pytest

from conftest import REPO, SHORT_PAIRS
from writemypaper.atomic import atomic_dir, atomic_write_text, current_umask


@contextlib.contextmanager
def umask(mask):
    old = os.umask(mask)
    try:
        yield
    finally:
        os.umask(old)


def _modes(root):
    """{relative path: permission bits} of root and everything under it."""
    return {str(p.relative_to(root)): stat.S_IMODE(p.lstat().st_mode) for p in [root, *root.rglob("*")]}


def _assert_ordinary(root, mask):
    for name, mode in _modes(root).items():
        want = (0o777 if (root / name).is_dir() else 0o666) & ~mask
        assert mode == want, f"{name}: {oct(mode)}, expected {oct(want)} under umask {oct(mask)}"


@pytest.mark.parametrize("mask", [0o022, 0o027, 0o002])
def test_atomic_dir_gives_library_files_ordinary_modes(tmp_path, mask):
    import torch
    from safetensors.torch import save_file

    with umask(mask):
        assert current_umask() == mask
        with atomic_dir(tmp_path / "out") as tmp:
            save_file({"w": torch.zeros(2)}, str(tmp / "model.safetensors"))  # safetensors writes 0600
            fd, name = tempfile.mkstemp(dir=tmp)  # so does tempfile
            os.close(fd)
            sub = tempfile.mkdtemp(dir=tmp)  # 0700
            (tmp / "run.sh").write_text("#!/bin/sh\n")
            os.chmod(tmp / "run.sh", 0o700)
            assert stat.S_IMODE(os.stat(tmp / "model.safetensors").st_mode) == 0o600
        out = tmp_path / "out"
        modes = _modes(out)
        assert modes["."] == 0o777 & ~mask and modes[os.path.basename(sub)] == 0o777 & ~mask
        assert modes["model.safetensors"] == modes[os.path.basename(name)] == 0o666 & ~mask
        assert modes["run.sh"] == 0o777 & ~mask  # an executable stays executable, as far as the umask allows
        assert stat.S_IMODE(os.stat(atomic_write_text(tmp_path / "a.txt", "x")).st_mode) == 0o666 & ~mask


def test_prepared_splits_follow_the_umask(tmp_path):
    from writemypaper.data import prepare

    for mask in (0o022, 0o027):
        out = tmp_path / f"prepared-{mask:o}"
        with umask(mask):
            prepare([REPO / "data" / "sample"], out, progress=False)
        _assert_ordinary(out, mask)
        assert {"train.parquet", "validation.parquet", "test.parquet", "stats.json"} <= set(os.listdir(out))


def test_a_real_run_and_its_export_are_readable_by_others(short_prepared, tiny_gemma2_dir, tmp_path):
    """A real (tiny) fine-tune through the train verb, then export.export, under a umask that is not the default:
    the adapter, the checkpoint and the merged weights come out 0640, not safetensors' 0600."""
    from writemypaper import export
    from writemypaper.cli import main

    run, merged = tmp_path / "run", tmp_path / "merged"
    with umask(0o027):
        assert main(["train", "--config", "cpu-demo", "--model", str(tiny_gemma2_dir), "--data", str(short_prepared),
                     "--out", str(run), "max_train_samples=4", "training.max_steps=1", "training.save_steps=1",
                     "training.eval_strategy=no", "early_stopping_patience=null", "training.report_to=[]",
                     "training.max_length=160"]) == 0
        export.export(str(run), str(merged))
    for path in (run / "adapter_model.safetensors", run / "checkpoints" / "checkpoint-1" / "adapter_model.safetensors",
                 merged / "model.safetensors"):
        assert stat.S_IMODE(path.stat().st_mode) == 0o640, path
    _assert_ordinary(merged, 0o027)
    _assert_ordinary(run / "checkpoints", 0o027)
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "metrics.json", "config.yaml"):
        assert stat.S_IMODE((run / name).stat().st_mode) == 0o640, name


# ---------------------------------------------------------------------------------------------------------------------
# temporaries never leak, and a replace never loses the folder it replaces


def test_interrupted_body_leaves_no_temporary(tmp_path):
    out = tmp_path / "out"
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "half.bin").write_bytes(b"x")
            raise KeyboardInterrupt
    assert list(tmp_path.iterdir()) == []


def test_interrupt_between_the_renames_puts_the_old_folder_back(tmp_path, monkeypatch):
    out = tmp_path / "out"
    out.mkdir()
    (out / "kept.txt").write_text("old")
    real_rename, calls = os.rename, []

    def rename(src, dst):  # Ctrl-C arrives right after the old folder was moved aside
        calls.append(dst)
        if len(calls) == 2:
            raise KeyboardInterrupt
        real_rename(src, dst)

    monkeypatch.setattr(os, "rename", rename)
    with pytest.raises(KeyboardInterrupt):
        with atomic_dir(out) as tmp:
            (tmp / "new.txt").write_text("new")
    monkeypatch.undo()
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]
    assert (out / "kept.txt").read_text() == "old"


def test_stale_siblings_are_told_apart_by_their_process(tmp_path):
    import subprocess
    import sys

    from writemypaper.outputs import stale_siblings

    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    dead, live = proc.pid, os.getppid()
    names = {f".out.tmp-{dead}-abc": "dead_tmp", f".out.old-{dead}": "dead_old", f".out.tmp-{live}-abc": "live",
             ".out.tmp-k2j3h4g5": "unknown", f".outer.tmp-{dead}-abc": None, ".out.txt": None}
    for name in names:
        (tmp_path / name).mkdir()
    found = stale_siblings(tmp_path / "out")
    assert {p.name: state for state, ps in found.items() for p in ps} == {n: s for n, s in names.items() if s}
