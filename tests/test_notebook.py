"""The Colab notebook (notebooks/writemypaper_colab.ipynb): its GPU-to-preset rule, and a run end to end on CPU with
the embedded model and the sample corpus, parameters injected after its `parameters` cell as papermill does.

    python -m pytest tests/test_notebook.py -q
"""

import json
from pathlib import Path

import pytest

NOTEBOOK = Path(__file__).resolve().parents[1] / "notebooks" / "writemypaper_colab.ipynb"

# The sizes CI can afford on 2 CPU cores: one step on four section pairs, one evaluation pair, a few tokens.
CI_PARAMETERS = """\
AIHUB_DATA = None
GRANULARITY = "entire"  # the notebook switches to section pairs for cpu-demo
OUTPUT_DIR = {out!r}
MODEL = "gemma3-270m"
PRESET = "auto"
MAX_STEPS = 1
TRAIN_OVERRIDES = ["max_train_samples=4", "max_eval_samples=2", "training.per_device_train_batch_size=2",
                   "training.per_device_eval_batch_size=2", "training.eval_steps=1", "training.save_steps=1"]
EVAL_SAMPLES = 1
MAX_NEW_TOKENS = 8
SUMMARY = "한ㆍ중ㆍ일 세 나라 대학생의 정치 태도를 2019년 설문으로 비교하였다."
"""


def _read():
    nbformat = pytest.importorskip("nbformat")
    return nbformat, nbformat.read(NOTEBOOK, as_version=4)


def _tagged(nb, tag: str) -> int:
    hits = [i for i, c in enumerate(nb.cells) if tag in c.get("metadata", {}).get("tags", [])]
    assert len(hits) == 1, f"expected one cell tagged {tag!r}, found {len(hits)}"
    return hits[0]


def _text(cell) -> str:
    parts = []
    for o in cell.get("outputs", []):
        if o.output_type == "stream":
            parts.append(o.text)
        elif "data" in o:
            parts.append(o.data.get("text/html", "") + o.data.get("text/plain", ""))
    return "".join(parts)


def _cell_running(nb, command: str):
    return next(c for c in nb.cells if c.cell_type == "code" and f'wmp("{command}"' in c.source)


def test_pick_preset_by_gpu():
    _, nb = _read()
    ns: dict = {}
    exec(nb.cells[_tagged(nb, "pick-preset")].source, ns)
    pick = ns["pick_preset"]
    # names, capabilities and memory (GiB) as torch reports them on each GPU
    expected = {
        None: "cpu-demo",
        ("Tesla T4", (7, 5), 14.7): "gpu-16gb",
        ("Tesla V100-SXM2-32GB", (7, 0), 31.7): "gpu-16gb",  # enough memory, but no bf16
        ("NVIDIA L4", (8, 9), 22.2): "gpu-16gb",  # bf16, but too little memory for fast
        ("NVIDIA A100-SXM4-40GB", (8, 0), 39.4): "fast",
        ("NVIDIA A100-SXM4-80GB", (8, 0), 79.1): "fast",
        ("NVIDIA H100 80GB HBM3", (9, 0), 79.1): "fast",
        ("NVIDIA H200", (9, 0), 139.8): "fast",
    }
    for gpu, preset in expected.items():
        chosen, why = pick(gpu)
        assert chosen == preset, (gpu, chosen, why)
        assert why and (gpu is None or gpu[0] in why)  # the reason names the GPU it saw


def test_parameters_cell_holds_every_parameter_ci_sets():
    _, nb = _read()
    source = nb.cells[_tagged(nb, "parameters")].source
    ns: dict = {}
    exec(source, ns)  # plain assignments only, so papermill (or this test) can override them
    for line in CI_PARAMETERS.splitlines():
        name = line.split("=")[0].strip()
        if name.isidentifier() and name.isupper():
            assert name in ns, f"{name} is not a parameter of the notebook"
    assert "<org>" in ns["REPO_URL"] or ns["REPO_URL"].startswith("https://")


@pytest.mark.slow
def test_notebook_runs_end_to_end_on_cpu(tmp_path, monkeypatch):
    nbformat, nb = _read()
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")  # the CPU path, even on a machine with a GPU
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")
    out = tmp_path / "out"
    at = _tagged(nb, "parameters")
    injected = nbformat.v4.new_code_cell(CI_PARAMETERS.format(out=str(out)), metadata={"tags": ["injected-parameters"]})
    nb.cells.insert(at + 1, injected)

    client = nbclient.NotebookClient(nb, timeout=600, kernel_name="python3",
                                     resources={"metadata": {"path": str(tmp_path)}})
    client.execute()  # raises CellExecutionError, with the cell's traceback, if any cell fails

    setup = next(c for c in nb.cells if c.cell_type == "code" and "IN_COLAB =" in c.source)
    assert "not on Colab: install and Drive skipped" in _text(setup)
    preset_cell = nb.cells[_tagged(nb, "pick-preset") + 1]
    assert "preset: cpu-demo" in _text(preset_cell) and "no GPU" in _text(preset_cell)

    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 1 and metrics["base_model"] == "gemma3-270m"
    assert (out / "run" / "adapter_model.safetensors").stat().st_size > 0
    stats = json.loads((out / "prepared" / "stats.json").read_text(encoding="utf-8"))
    assert stats["options"]["granularity"] == "section" and "section pairs" in _text(preset_cell)

    scores = json.loads((out / "eval" / "scores.json").read_text(encoding="utf-8"))
    # each model under evaluate's decodings: plain, numbers grounded in the summary, best of 4 by the fact check
    assert scores["models"] == [f"{m} · {d}" for m in ("base", "tuned") for d in ("plain", "grounded", "grounded+4")]
    assert scores["n_samples"] == 1
    report = (out / "eval" / "report.html").read_text(encoding="utf-8")
    shown = _text(_cell_running(nb, "evaluate"))
    assert "<iframe srcdoc=" in shown and "kiwipiepy" in report  # the report is shown inline, not just written
    assert scores["samples"][0]["summary"][:10] in shown.replace("&quot;", '"')

    generated = _text(_cell_running(nb, "generate"))
    assert "$ writemypaper generate" in generated
    assert generated.rstrip().splitlines()[-1].strip()  # the abstract streamed after the command line

    export = out / "export"
    assert (export / "model.safetensors").stat().st_size > 0
    assert {"config.json", "tokenizer.json", "README.md"} <= {p.name for p in export.iterdir()}
    assert "model.safetensors" in _text(_cell_running(nb, "export"))


def test_failing_command_fails_its_cell(tmp_path, monkeypatch):
    """A failed `writemypaper` command stops the notebook (a failed `!` line would not): here `prepare` refuses a
    file that is not a corpus, and the cells after it never run."""
    nbformat, nb = _read()
    nbclient = pytest.importorskip("nbclient")
    pytest.importorskip("ipykernel")
    monkeypatch.setenv("CUDA_VISIBLE_DEVICES", "")
    out = tmp_path / "out"
    not_a_corpus = tmp_path / "corpus.txt"
    not_a_corpus.write_text("not json", encoding="utf-8")
    at = _tagged(nb, "parameters")
    nb.cells.insert(at + 1, nbformat.v4.new_code_cell(
        CI_PARAMETERS.format(out=str(out)) + f"AIHUB_DATA = [{str(not_a_corpus)!r}]\n"))
    client = nbclient.NotebookClient(nb, timeout=300, kernel_name="python3")
    with pytest.raises(nbclient.exceptions.CellExecutionError, match="writemypaper prepare. .*failed"):
        client.execute()
    prepare = _cell_running(nb, "prepare")
    assert "corpus.txt: not a .json, .jsonl or .zip file" in _text(prepare)  # the one-line error, shown in the cell
    assert not (out / "prepared").exists() and not (out / "run").exists()
