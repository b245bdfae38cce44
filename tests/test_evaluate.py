"""The evaluate verb: decodings, greedy by default, input ids kept, intervals in scores.json, and one generation per
model and decoding with a tiny random Gemma 2."""

from __future__ import annotations

import json
from dataclasses import fields, replace

import pytest

from writemypaper import config
from writemypaper.cli import main
from writemypaper.errors import UserError
from writemypaper.evaluate import (
    Decoding,
    decoding_settings,
    describe,
    evaluate,
    parse_decodings,
    plan_decodings,
    read_predictions,
)
from writemypaper.settings import GenerationSettings

HAS = {f.name for f in fields(GenerationSettings)}


def test_parse_decodings_short_and_long_forms():
    got = parse_decodings(["plain", "grounded", "grounded+4", {"name": "hot", "temperature": 1.2, "do_sample": True}])
    assert got == [Decoding("plain"), Decoding("grounded", grounded=True), Decoding("grounded+4", True, 4),
                   Decoding("hot", overrides={"temperature": 1.2, "do_sample": True})]
    # The shipped config's list, through OmegaConf as the verb reads it.
    cfg = config.load_config("evaluate", kind="evaluate")
    assert [d.name for d in parse_decodings(cfg.decodings)] == ["plain", "grounded", "grounded+4"]
    bad = {
        "greedy": "use plain, grounded",
        "grounded+0": "candidates=0 is not in",
        "plain+17": "candidates=17",
    }
    for item, needle in bad.items():
        with pytest.raises(UserError, match=needle):
            parse_decodings([item])
    with pytest.raises(UserError, match="used twice"):
        parse_decodings(["plain", {"name": "plain", "grounded": False}])
    with pytest.raises(UserError, match="needs a name"):
        parse_decodings([{"grounded": True}])
    with pytest.raises(UserError, match="give a list"):
        parse_decodings([])


def test_evaluation_is_greedy_by_default_and_sampling_is_seeded():
    cfg = config.load_config("evaluate", kind="evaluate")
    assert cfg.generation.do_sample is False and cfg.generation.seed == 0
    ((_, plain),) = plan_decodings(config.load_config("evaluate", ["decodings=[plain]"], kind="evaluate"))
    assert plain.do_sample is False
    assert describe(vars(plain)).startswith("greedy, numbers unconstrained")
    hot = decoding_settings(plain, Decoding("hot", overrides={"do_sample": True, "temperature": 1.0}))
    assert describe(vars(hot)).startswith("sampled (temperature 1.0, top-p 0.9, top-k 50, seed 0)")
    with pytest.raises(UserError, match="unknown generation setting"):
        decoding_settings(plain, Decoding("x", overrides={"beams": 4}))


def test_the_evaluate_preset_sets_only_what_evaluation_decides():
    """Greedy and a pinned seed; every other generation key is GenerationSettings' default, as in `generate`."""
    from writemypaper.config import settings_from_config

    cfg = config.load_config("evaluate", kind="evaluate")
    assert config.to_dict(cfg.generation) == {"do_sample": False, "seed": 0}
    assert settings_from_config(cfg) == replace(GenerationSettings(), do_sample=False, seed=0)
    # A key the preset leaves out is still one that can be set.
    cfg = config.load_config("evaluate", ["generation.max_new_tokens=6"], kind="evaluate")
    assert settings_from_config(cfg).max_new_tokens == 6


def test_grounded_and_candidates_reach_the_generator_or_are_refused():
    base = GenerationSettings(do_sample=False)
    if {"grounded", "candidates"} <= HAS:
        s = decoding_settings(base, Decoding("grounded+4", True, 4))
        assert (s.grounded, s.candidates, s.do_sample) == (True, 4, True)  # best of N samples
        text = describe(vars(s))
        assert text.startswith("sampled (") and "numbers grounded in the summary, best of 4 by the fact check" in text
        assert decoding_settings(base, Decoding("plain")).grounded is False
        with pytest.raises(UserError, match="needs sampling"):
            decoding_settings(GenerationSettings(temperature=0.0), Decoding("g+2", True, 2))
    else:
        # A generator without grounding must not quietly decode "grounded" as plain.
        with pytest.raises(UserError, match="needs grounded=True, which this generator does not support"):
            decoding_settings(base, Decoding("grounded", grounded=True))
        assert decoding_settings(base, Decoding("plain")) == base


def _write(path, rows):
    path.write_text("".join(json.dumps(r, ensure_ascii=False) + "\n" for r in rows), encoding="utf-8")


SUMMARY = "한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 비교하였다."
REFERENCE = "본 연구는 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."


def test_predictions_keep_their_ids_and_get_intervals(tmp_path, capsys):
    rows = [{"id": 7, "summary": SUMMARY, "reference": REFERENCE},
            {"doc_id": "D-2", "summary": SUMMARY, "reference": REFERENCE},
            {"summary": SUMMARY, "reference": REFERENCE}]
    _write(tmp_path / "a.jsonl", [{**r, "prediction": "3개국 대학생 1,200명의 태도를 비교하였다."} for r in rows])
    _write(tmp_path / "b.jsonl", [{**r, "prediction": "4개국 대학생 1,300명의 태도를 비교하였다."} for r in rows])
    samples, _ = read_predictions(tmp_path / "a.jsonl")
    assert [{k: s[k] for k in ("id", "doc_id") if k in s} for s in samples] == [{"id": 7}, {"doc_id": "D-2"},
                                                                                {"doc_id": "3"}]
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", f"good={tmp_path / 'a.jsonl'}", f"bad={tmp_path / 'b.jsonl'}",
                 "--out", str(out), "bootstrap=200"]) == 0
    assert "unsupp_micro" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert [s.get("id") for s in scores["samples"]] == [7, None, None]
    assert [s.get("doc_id") for s in scores["samples"]] == [None, "D-2", "3"]
    # "good" keeps every figure (3개국 = 세 나라); "bad" invents 4개국 and 1,300명 in every sample.
    assert scores["aggregate"]["good"]["unsupported_rate_micro"] == 0.0
    assert scores["aggregate"]["bad"]["unsupported_rate_micro"] == 1.0
    (diff,) = [d for d in scores["intervals"]["differences"] if (d["a"], d["b"]) == ("bad", "good")]
    assert diff["metrics"]["unsupported_per_sample"] == {"difference": 2.0, "ci95": [2.0, 2.0]}
    assert scores["intervals"]["n_resamples"] == 200 and scores["columns"]["good"]["decoding"] is None
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [(r["model"], r.get("id"), r.get("doc_id")) for r in written[:3]] == [
        ("good", 7, None), ("good", None, "D-2"), ("good", None, "3")]
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "#1 · 7" in page and "Paired differences" in page and "read from" in page


def test_entity_precision_recall_and_length_reach_the_json(tmp_path, capsys):
    rows = [{"summary": SUMMARY, "reference": REFERENCE}] * 2
    _write(tmp_path / "a.jsonl", [{**r, "prediction": "3개국 대학생 1,200명의 태도를 비교하였다."} for r in rows])
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", f"a={tmp_path / 'a.jsonl'}", "--target-chars", "50", "--out", str(out),
                 "bootstrap=200"]) == 0
    assert "prec_s" in capsys.readouterr().out
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert scores["settings"]["target_chars"] == 50 and scores["targets"] == {"a": 50}
    # The abstract is 26 characters with its spaces, the reference 53: 24 and 3 from the target of 50.
    o = scores["samples"][0]["outputs"]["a"]
    assert (o["length_chars"], o["target_chars"], o["length_deviation"]) == (26, 50, 24)
    agg, cis = scores["aggregate"], scores["intervals"]["models"]
    assert agg["reference"]["length_deviation"] == 3
    # Entities: the abstract's 3 (3개국) and 1200 are both the summary's; of the reference's 한 중 일 3 1200 2019 it
    # has 2.
    assert agg["a"]["prec_s"] == 1.0 and agg["a"]["entity_recall"] == pytest.approx(2 / 6)
    for key in ("prec_s", "entity_recall", "length_chars", "length_deviation"):
        lo, hi = cis["a"][key]
        assert lo <= agg["a"][key] <= hi, key
    page = (out / "report.html").read_text(encoding="utf-8")
    assert "prec_s" in page and "Columns side by side" in page
    # Without a target, each output is measured against its reference's length.
    assert main(["evaluate", "--predictions", f"a={tmp_path / 'a.jsonl'}", "--out", str(tmp_path / "e2"),
                 "bootstrap=200"]) == 0
    scores = json.loads((tmp_path / "e2" / "scores.json").read_text(encoding="utf-8"))
    assert scores["samples"][0]["outputs"]["a"]["length_deviation"] == 53 - 26
    assert "length_deviation" not in scores["aggregate"]["reference"]
    capsys.readouterr()
    with pytest.raises(SystemExit) as exit_:  # argparse refuses it, as it does -n 0
        main(["evaluate", "--predictions", str(tmp_path / "a.jsonl"), "--target-chars", "0", "--out",
              str(tmp_path / "e3")])
    assert exit_.value.code != 0 and "--target-chars: 0 is not a positive integer" in capsys.readouterr().err
    with pytest.raises(UserError, match="--target-chars 0"):
        evaluate(config.load_config("evaluate", [], kind="evaluate"), str(tmp_path / "e3"),
                 predictions=[str(tmp_path / "a.jsonl")], target_chars=0)


def test_bad_settings_fail_before_any_model_loads(tmp_path):
    with pytest.raises(UserError, match="bootstrap=5"):
        evaluate(config.load_config("evaluate", ["bootstrap=5"], kind="evaluate"), str(tmp_path),
                 predictions=["x.jsonl"])
    # The decoding is refused before the (missing) data and model are touched.
    with pytest.raises(UserError, match="decoding 'greedy'"):
        evaluate(config.load_config("evaluate", ["decodings=[greedy]"], kind="evaluate"), str(tmp_path),
                 models={"m": "no/such/model"}, data=str(tmp_path / "none"))


def test_decodings_flag_reaches_the_config(tmp_path, capsys):
    # --decodings replaces the config's list; a bad one fails in one line, naming it, before any data is read.
    code = main(["evaluate", "--models", "m=no/such/model", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "e"), "--decodings", "plain", "best+4"])
    err = capsys.readouterr().err
    assert code != 0 and err.count("\n") == 1 and "decoding 'best+4'" in err
    # A key=value after the decodings is a config override, not a decoding.
    code = main(["evaluate", "--models", "m=no/such/model", "--data", str(tmp_path / "none"), "--out",
                 str(tmp_path / "e"), "--decodings", "plain", "bootstrap=5"])
    assert code != 0 and "bootstrap=5: give a whole number" in capsys.readouterr().err


def test_each_model_generates_once_per_decoding(tiny_gemma2_dir, short_prepared, tmp_path):
    # A tiny random Gemma 2: its text is noise, but the loop, the columns, the seeds and the loss are real.
    cfg = config.load_config("evaluate", [
        "n_samples=2", "generation.max_new_tokens=6", "bootstrap=100", "precision=fp32",
        "decodings=[plain,{name: hot, do_sample: true, temperature: 1.0}]"], kind="evaluate")
    scores = evaluate(cfg, out=str(tmp_path / "e"), models={"tiny": str(tiny_gemma2_dir)}, data=str(short_prepared),
                      progress=False)
    assert scores["models"] == ["tiny · plain", "tiny · hot"] and scores["n_samples"] == 2
    plain, hot = scores["columns"]["tiny · plain"], scores["columns"]["tiny · hot"]
    assert plain["settings"]["do_sample"] is False and plain["description"].startswith("greedy")
    assert hot["settings"]["do_sample"] is True and "seed 0" in hot["description"]
    assert plain["output_tokens"] > 0 and plain["seconds"] > 0
    # The loss on the references is the model's, whatever the decoding: the same in both columns, per sample.
    for row in scores["samples"]:
        a, b = row["outputs"]["tiny · plain"], row["outputs"]["tiny · hot"]
        assert a["loss"] == b["loss"] > 0 and a["loss_tokens"] == b["loss_tokens"] > 0
    assert scores["aggregate"]["tiny · plain"]["loss"] == scores["aggregate"]["tiny · hot"]["loss"]
    assert scores["intervals"]["models"]["tiny · hot"]["loss"] is not None
    # Greedy is reproducible: a second run writes the same abstracts.
    again = evaluate(config.load_config("evaluate", ["n_samples=2", "generation.max_new_tokens=6", "bootstrap=100",
                                                     "precision=fp32", "decodings=[plain]"], kind="evaluate"),
                     out=str(tmp_path / "e2"), models={"tiny": str(tiny_gemma2_dir)}, data=str(short_prepared),
                     progress=False)
    assert [r["outputs"]["tiny · plain"]["prediction"] for r in again["samples"]] == [
        r["outputs"]["tiny · plain"]["prediction"] for r in scores["samples"]]
    page = (tmp_path / "e" / "report.html").read_text(encoding="utf-8")
    assert "<td>tiny · hot</td>" in page and "greedy, numbers unconstrained" in page


def test_target_chars_reaches_generation_and_each_column_is_measured_against_its_own(tiny_gemma2_dir,
                                                                                     short_prepared, tmp_path):
    cfg = config.load_config("evaluate", [
        "n_samples=2", "generation.max_new_tokens=30", "bootstrap=100", "precision=fp32",
        "decodings=[plain,{name: own, target_chars: 60}]"], kind="evaluate")
    scores = evaluate(cfg, out=str(tmp_path / "e"), models={"tiny": str(tiny_gemma2_dir)}, data=str(short_prepared),
                      progress=False, target_chars=100)
    # --target-chars sets generation.target_chars; a decoding that sets its own keeps it.
    assert scores["targets"] == {"tiny · plain": 100, "tiny · own": 60}
    assert scores["columns"]["tiny · plain"]["settings"]["target_chars"] == 100
    for row in scores["samples"]:
        for column, target in scores["targets"].items():
            o = row["outputs"][column]
            assert o["target_chars"] == target and o["length_deviation"] == abs(o["length_chars"] - target)
    # Two targets: the reference has its length, but no one target to be measured against.
    assert "length_deviation" not in scores["aggregate"]["reference"]
    assert "target_chars: 100" in (tmp_path / "e" / "config.yaml").read_text(encoding="utf-8")


def test_generate_output_is_scored_as_it_is_written(short_prepared, tiny_gemma2_dir, tmp_path, capsys):
    """`generate --split test --out FILE` then `evaluate --predictions FILE`: the abstract is `generated` there."""
    preds = tmp_path / "preds.jsonl"
    assert main(["generate", "--data", str(short_prepared), "--split", "test", "--model", str(tiny_gemma2_dir),
                 "--out", str(preds), "--limit", "2", "generation.max_new_tokens=4"]) == 0
    rows = [json.loads(line) for line in preds.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all("generated" in r and "prediction" not in r for r in rows)
    out = tmp_path / "eval"
    assert main(["evaluate", "--predictions", f"tiny={preds}", "--out", str(out), "bootstrap=100"]) == 0
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert [s["doc_id"] for s in scores["samples"]] == [r["doc_id"] for r in rows]
    written = [json.loads(line) for line in (out / "predictions.jsonl").read_text(encoding="utf-8").splitlines()]
    assert [w["prediction"] for w in written] == [r["generated"] for r in rows]
    _write(tmp_path / "none.jsonl", [{"summary": SUMMARY, "reference": REFERENCE}])
    with pytest.raises(UserError, match=r"none.jsonl:1: missing or non-text field\(s\): prediction \(or generated"):
        read_predictions(tmp_path / "none.jsonl")


def test_reference_losses_in_batches_equal_the_models_own_loss(tiny_gemma2_dir, embedded_tokenizer):
    """The reference loss, batched and right-padded with the LM head in chunks, against transformers' own loss of
    each sample alone (its mean over the labelled tokens, times their count): rows of different lengths, a batch
    that does not divide them evenly, and a chunk smaller than a row."""
    import torch
    from transformers import AutoModelForCausalLM

    from writemypaper import prompts
    from writemypaper.transformers_engine import reference_losses

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir).eval()
    samples = [{"summary": SUMMARY[: 12 + 9 * i], "reference": REFERENCE[: 20 + 13 * i]} for i in range(5)]
    got = reference_losses(model, embedded_tokenizer, samples, batch_size=2, chunk=7)
    for s, (total, count) in zip(samples, got, strict=True):
        ex = prompts.encode_example(embedded_tokenizer, s["summary"], s["reference"], None)
        with torch.no_grad():
            own = model(input_ids=torch.tensor([ex["input_ids"]]), labels=torch.tensor([ex["labels"]])).loss.item()
        assert count == sum(x != -100 for x in ex["labels"][1:]) > 0
        assert total / count == pytest.approx(own, rel=1e-4)
    assert len({n for _, n in got}) > 1  # the rows really differ in length
