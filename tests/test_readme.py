"""The READMEs stay true: every measured figure in their prose comes from bench/RESULTS.md (or is the output of a
command they show), the layout names only files and folders that exist, no install line points at an index where the
package is not, and the Korean README covers what the English one does."""

import re
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
READMES = ["README.md", "README.ko.md"]
# A figure: a decimal, or a number with a unit of measure. Whole numbers alone are counts and settings (16 steps, 41
# pairs, batch 64), which the commands beside them produce.
FIGURE = re.compile(r"(?<![\w.])(\d+\.\d+|\d+(?=\s?(?:%|×|x\b|배|분|minutes?\b|min\b|GiB|MiB|nats)))")
# Numbers that are not our measurements: a GPU's compute capability (8.9, 7.5, ...), worked examples of the fact
# check (27.3%, 0.18, 1.2억, −3.5%), tests' tolerances (0.01, 0.02, 0.25), Python 3.11, and the original notebook's 2.5 hours
# on an L4 (its author's figure): each is said where it stands.
NOT_MEASURED = {"7.5", "8.0", "8.9", "9.0", "0.18", "27.3", "1.2", "3.5", "0.25", "0.01", "0.02", "0.05", "3.11", "2.5"}


def _prose(text: str) -> str:
    """The README without its code: fenced blocks and inline code show commands and the real output they print."""
    return re.sub(r"`[^`\n]*`", " ", re.sub(r"```.*?```", " ", text, flags=re.S))


def _code_blocks(text: str) -> str:
    return "\n".join(re.findall(r"```.*?```", text, flags=re.S))


@pytest.mark.parametrize("name", READMES)
def test_every_figure_comes_from_the_results(name):
    text = (REPO / name).read_text(encoding="utf-8")
    sources = (REPO / "bench" / "RESULTS.md").read_text(encoding="utf-8") + _code_blocks(text)
    figures = set(FIGURE.findall(_prose(text)))
    assert len(figures) > 20, "the pattern stopped finding the README's figures"
    missing = sorted(f for f in figures - NOT_MEASURED if not re.search(rf"(?<![\d.]){re.escape(f)}(?!\d)", sources))
    assert not missing, f"{name} states figures that bench/RESULTS.md does not hold: {missing}"


def test_the_figure_check_can_fail():
    text = "The demo took 123.45 minutes and ran 17.5% faster."
    assert {"123.45", "17.5"} <= set(FIGURE.findall(_prose(text)))


def _layout_entries() -> list[tuple[str, str]]:
    text = (REPO / "README.md").read_text(encoding="utf-8")
    block = re.search(r"## Layout.*?```\n(.*?)```", text, flags=re.S)[1]
    entries, parent = [], ""
    for line in block.splitlines():
        token = line.split()[0] if line.strip() else ""
        if not token or token.startswith("#") or not re.fullmatch(r"[\w./-]+", token):
            continue
        if line[0] != " ":
            parent = token if token.endswith("/") else ""
            entries.append(("", token))
        elif token.endswith((".py", "/")) and not line.startswith(" " * 22):  # deeper lines continue a description
            entries.append((parent, token))
    return entries


def test_layout_names_only_what_exists():
    entries = _layout_entries()
    assert len(entries) > 20
    missing = [p + t for p, t in entries if not (REPO / p / t).exists()
               and not any(q.name == t.rstrip("/") for q in (REPO / p).rglob(t.rstrip("/")))]
    assert not missing, f"README's layout names what does not exist: {missing}"


def test_layout_names_every_module():
    named = {t for _, t in _layout_entries()}
    pkg = REPO / "src" / "writemypaper"
    modules = {p.name for p in [*pkg.glob("*.py"), *(pkg / "serve").glob("*.py")] if not p.name.startswith("__")}
    assert not modules - named, f"README's layout leaves out {sorted(modules - named)}"


@pytest.mark.parametrize("name", READMES)
def test_no_install_line_names_a_package_no_index_has(name):
    text = (REPO / name).read_text(encoding="utf-8")
    # writemypaper is installed from the clone or its repository, never by name from PyPI
    assert not re.search(r"pip install\s+['\"]?writemypaper\b", text), f"{name} installs writemypaper by name"


def test_korean_readme_covers_what_the_english_one_does():
    ko = (REPO / "README.ko.md").read_text(encoding="utf-8")
    for term in ("GGUF", "llama.cpp", "Modelfile", "--api-key", "WRITEMYPAPER_API_KEY", "accelerate launch",
                 "low-memory", "gpu-16gb", "--gguf", "WRITEMYPAPER_VERBOSE", "models.list"):
        assert term in ko, f"README.ko.md does not mention {term}"
