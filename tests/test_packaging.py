"""What a wheel install needs: presets, sample corpus and page as real package files (a wheel does not follow a
symlinked folder), package-data that names them, distributions that carry them, and floors in pyproject.toml that
match constraints/floors.txt, the versions scripts/check-floors tests. scripts/check-wheel installs and runs the wheel.
"""

import fnmatch
import re
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

tomllib = pytest.importorskip("tomllib")
from packaging.requirements import Requirement  # noqa: E402

REPO = Path(__file__).resolve().parents[1]
PKG = REPO / "src" / "writemypaper"
DATA_DIRS = ("configs", "sample", "static", "templates")
# torch's floor was tested on a GPU (torch 2.11.0+cu130, bench/RESULTS.md); on CPU only the 2.13.0 wheel lies on disk.
FLOOR_EXCEPTIONS = {"torch"}


def _pyproject() -> dict:
    return tomllib.loads((REPO / "pyproject.toml").read_text(encoding="utf-8"))


def _data_files() -> list[Path]:
    files = [p for d in DATA_DIRS for p in sorted((PKG / d).rglob("*")) if not p.is_dir()]
    assert {p.parent.name for p in files} == set(DATA_DIRS)
    return files


def test_package_data_are_real_files_and_the_clone_paths_still_work():
    for d in DATA_DIRS:
        assert (PKG / d).is_dir() and not (PKG / d).is_symlink(), d
    links = [str(p) for p in PKG.rglob("*") if p.is_symlink()]
    assert not links, f"symlinks inside the package: {links}"
    assert (REPO / "configs").resolve() == (PKG / "configs").resolve()
    assert (REPO / "data" / "sample").resolve() == (PKG / "sample").resolve()
    assert any(p.suffix == ".yaml" for p in (PKG / "configs").iterdir())
    assert any(p.suffix == ".json" for p in (PKG / "sample").iterdir())


def test_package_data_globs_cover_every_data_file():
    globs = _pyproject()["tool"]["setuptools"]["package-data"]["writemypaper"]
    uncovered = [str(p.relative_to(PKG)) for p in _data_files()
                 if not any(fnmatch.fnmatch(str(p.relative_to(PKG)), g) for g in globs)]
    assert not uncovered, f"not in [tool.setuptools.package-data]: {uncovered}"


def _floors() -> dict[str, str]:
    pins = {}
    for line in (REPO / "constraints" / "floors.txt").read_text(encoding="utf-8").splitlines():
        line = line.split("#")[0].strip()
        if line:
            req = Requirement(line)
            (spec,) = req.specifier
            assert spec.operator == "==", line
            pins[req.name.lower()] = spec.version
    return pins


def test_every_floor_is_pinned_in_the_tested_constraints():
    from packaging.version import Version

    project = _pyproject()["project"]
    reqs = [Requirement(r) for r in project["dependencies"]]
    reqs += [Requirement(r) for r in project["optional-dependencies"]["test"]]
    floors = _floors()
    for req in reqs:
        lower = [s.version for s in req.specifier if s.operator == ">="]
        name = req.name.lower()
        if not lower or name in FLOOR_EXCEPTIONS:
            continue
        pinned = floors.get(name)
        assert pinned and Version(pinned) == Version(lower[0]), f"{req}: constraints/floors.txt pins {name}=={pinned}"
    names = {r.name.lower() for r in reqs}
    assert set(floors) <= names, f"pinned but not a dependency: {set(floors) - names}"


def test_trl_floor_keeps_labels_and_fuses_the_head():
    """TRL 1.0-1.6 drop a `labels` column when packing (tests/test_presets.py shows what that does); the fused LM
    head (tests/test_eval_memory.py) runs without Triton from 1.16.0."""
    from packaging.version import Version

    (trl,) = [Requirement(r) for r in _pyproject()["project"]["dependencies"] if r.startswith("trl")]
    assert not any(trl.specifier.contains(v) for v in ("1.6.0", "1.7.0", "1.15.0"))
    assert trl.specifier.contains(_floors()["trl"]) and Version(_floors()["trl"]) >= Version("1.16.0")


def test_sdist_and_wheel_carry_the_data(tmp_path):
    """Build as `python -m build` does (the sdist, then the wheel from the unpacked sdist) from the tracked files."""
    from importlib.metadata import version

    from packaging.version import Version

    if Version(version("setuptools")) < Version("77"):
        pytest.skip("needs setuptools>=77 here to build without network; scripts/check-wheel builds in isolation")
    if shutil.which("git") is None or not (REPO / ".git").exists():
        pytest.skip("not a git clone")
    tracked = subprocess.run(["git", "ls-files", "-z"], cwd=REPO, capture_output=True, check=True).stdout
    src = tmp_path / "src-tree"
    for rel in filter(None, tracked.decode().split("\0")):
        p, dest = REPO / rel, src / rel
        dest.parent.mkdir(parents=True, exist_ok=True)
        if p.is_symlink():
            dest.symlink_to(p.readlink())
        elif p.is_file():
            shutil.copy2(p, dest)
    build = ("import sys; from setuptools import build_meta as b; "
             "print(getattr(b, sys.argv[1])(sys.argv[2]))")
    run = lambda cwd, kind, out: subprocess.run([sys.executable, "-c", build, kind, str(out)], cwd=cwd,  # noqa: E731
                                                capture_output=True, text=True, check=True).stdout.split()[-1]
    sdist = tmp_path / "dist" / run(src, "build_sdist", tmp_path / "dist")
    with tarfile.open(sdist) as t:
        members = t.getmembers()
        t.extractall(tmp_path / "unpacked", filter="data")
    assert not [m.name for m in members if m.issym() or m.islnk()], "symlinks in the sdist"
    snames = {m.name.split("/", 1)[1] for m in members if "/" in m.name}
    (unpacked,) = (tmp_path / "unpacked").iterdir()
    wheel = tmp_path / "dist" / run(unpacked, "build_wheel", tmp_path / "dist")
    with zipfile.ZipFile(wheel) as z:
        wnames = set(z.namelist())
        assert not [i.filename for i in z.infolist() if (i.external_attr >> 16) & 0o170000 == 0o120000]
    for p in _data_files():
        rel = p.relative_to(PKG).as_posix()
        assert f"src/writemypaper/{rel}" in snames, f"sdist lacks {rel}"
        assert f"writemypaper/{rel}" in wnames, f"wheel lacks {rel}"
    # Subpackages (writemypaper.serve) are found by [tool.setuptools.packages.find]: every module must get in.
    modules = [rel for rel in tracked.decode().split("\0")
               if rel.startswith("src/writemypaper/") and rel.endswith(".py")]
    assert "src/writemypaper/serve/__init__.py" in modules
    for rel in modules:
        assert rel in snames, f"sdist lacks {rel}"
        assert rel.removeprefix("src/") in wnames, f"wheel lacks {rel}"


@pytest.mark.parametrize("lock", ["tested.txt", "floors-tested.txt"])
def test_locks_pin_released_versions_only(lock):
    """CI installs through these: a line that names a path or this project (a `pip freeze` of a non-editable
    install writes `writemypaper @ file:///...`) makes pip refuse the whole install on a clean machine."""
    lines = [l for l in (REPO / "constraints" / lock).read_text(encoding="utf-8").splitlines()
             if l.strip() and not l.startswith("#")]
    assert len(lines) > 50
    bad = [l for l in lines if not re.fullmatch(r"[A-Za-z0-9_.-]+==[A-Za-z0-9_.+!-]+", l) or
           l.lower().startswith(("writemypaper", "torch=="))]
    assert not bad, f"constraints/{lock}: {bad}"
