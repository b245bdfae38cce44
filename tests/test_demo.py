"""The demo end to end, at reduced size: prepare, fine-tune, evaluate base against tuned, report."""

import json
import re

import pytest

from writemypaper.cli import main
from writemypaper.demo import resolve_engine

pytestmark = pytest.mark.slow


def test_demo_end_to_end(tmp_path, capsys):
    out = tmp_path / "demo"
    assert main(["demo", "--out", str(out), "--steps", "3", "--eval-samples", "2", "--max-new-tokens", "24"]) == 0
    printed = capsys.readouterr().out
    assert "report: file://" in printed and "tuned" in printed
    scores = json.loads((out / "eval" / "scores.json").read_text(encoding="utf-8"))
    refs = [c["model_ref"] for c in scores["columns"].values()]
    if resolve_engine("auto") == "llama.cpp":  # the llamacpp extra is installed (scripts/test installs it)
        assert all(r.endswith(".gguf") for r in refs), refs
        assert (out / "gguf-tuned" / "Modelfile").is_file() and "tuned GGUF:" in printed
    else:
        assert all(not r.endswith(".gguf") for r in refs), refs
    columns = ["base · plain", "base · grounded", "tuned · plain", "tuned · grounded"]
    assert scores["models"] == columns and scores["n_samples"] == 2
    assert "kiwipiepy" in scores["tokenization"]
    for name in columns:
        agg = scores["aggregate"][name]
        assert all(0.0 <= agg[k] <= 1.0 for k in ("rouge1", "rouge2", "rougeL", "rougeL_char", "coverage"))
        assert agg["loss"] > 0 and agg["perplexity"] > 1
    # three steps on the corpus already lower the loss on held-out references
    assert scores["aggregate"]["tuned · plain"]["loss"] < scores["aggregate"]["base · plain"]["loss"]
    # grounding writes no number whose digits the summary lacks (a unit may still differ: the fact check says so)
    for sample in scores["samples"]:
        numbers = {n.replace(",", "") for n in re.findall(r"[0-9][0-9,.]*[0-9]|[0-9]", sample["summary"])}
        for name in ("base · grounded", "tuned · grounded"):
            written = re.findall(r"[0-9][0-9,.]*[0-9]|[0-9]", sample["outputs"][name]["prediction"])
            assert {n.replace(",", "") for n in written} <= numbers, (name, written, sample["summary"])
    metrics = json.loads((out / "run" / "metrics.json").read_text())
    assert metrics["global_step"] == 3
    html = (out / "eval" / "report.html").read_text(encoding="utf-8")
    assert "<svg" in html or "data:image/png" in html
    assert 'id="loss"' in html  # the training curve, found through the GGUF export's record of its run too
    assert scores["samples"][0]["summary"][:10] in html  # Korean text is in the page
