"""`writemypaper align`: the fact check judging candidates into preference pairs, constructed negatives that change
exactly one figure, TRL's tokenized DPO batch keeping our prompt (one BOS, the end of turn inside the loss), bad input
as one line, and a real DPO run on the embedded Gemma 3 270M from a trained run that `generate` then loads."""

import json
import random

import pytest

from conftest import SECTIONS
from writemypaper import align, prompts
from writemypaper.cli import main
from writemypaper.errors import UserError
from writemypaper.factcheck import extract_facts, unsupported_facts

REFERENCE, SUMMARY = SECTIONS[0]  # 1,200명 is in the summary; 세 나라, 2019년 and 87% are not


# ---------------------------------------------------------------------------------------------------------------------
# the judge


def test_the_candidate_with_fewer_unsupported_facts_is_chosen():
    faithful = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
    invented = "한ㆍ중ㆍ일 대학생 1,500명의 정치 태도를 비교하였고 응답률은 92%였다."
    pair = align.sampled_pair(SUMMARY, REFERENCE, [invented, faithful], min_gap=0.2, min_coverage=0.2)
    assert pair["chosen"] == faithful and pair["rejected"] == invented and pair["source"] == "sampled"
    assert align.score(SUMMARY, REFERENCE, invented)["unsupported"] == 2
    # one unsupported figure outweighs all of coverage and length: the fuller text with an invented figure loses
    short = "대학생 1,200명의 태도를 비교하였다."
    fuller = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 3년간 비교하였다."
    assert align.sampled_pair(SUMMARY, REFERENCE, [fuller, short], 0.2, 0.2)["chosen"] == short


def test_ties_are_dropped():
    text = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
    assert align.sampled_pair(SUMMARY, REFERENCE, [text, text], min_gap=0.2, min_coverage=0.2) is None
    close = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다고 한다."  # length only
    assert align.sampled_pair(SUMMARY, REFERENCE, [text, close], min_gap=0.2, min_coverage=0.2) is None
    assert align.sampled_pair(SUMMARY, REFERENCE, [text], min_gap=0.0, min_coverage=0.0) is None  # nothing to compare


def test_an_empty_or_off_topic_candidate_is_never_chosen():
    """An empty text invents nothing; it must still lose to one that makes a mistake but covers the summary."""
    wrong = "한ㆍ중ㆍ일 대학생 1,300명의 정치 태도를 비교하였다."
    pair = align.sampled_pair(SUMMARY, REFERENCE, ["", wrong], min_gap=0.2, min_coverage=0.2)
    assert pair is None or pair["chosen"] == wrong
    assert align.sampled_pair(SUMMARY, REFERENCE, ["", "날씨가 좋다."], 0.2, 0.2) is None


def test_the_summary_said_again_is_never_chosen_under_min_length():
    """The echo invents nothing and covers all of the summary, so the fact check alone prefers it to any abstract;
    under min_length it may still be rejected, never chosen, and with nothing long enough there is no pair."""
    echo = SUMMARY
    longer = REFERENCE.replace(" 응답률은 87%였다.", "")  # the reference without its sentence of an invented figure
    invented = REFERENCE
    assert align.sampled_pair(SUMMARY, REFERENCE, [echo, longer, invented], 0.2, 0.2)["chosen"] == echo
    pair = align.sampled_pair(SUMMARY, REFERENCE, [echo, longer, invented], 0.2, 0.2, min_length=0.6)
    assert pair["chosen"] == longer and pair["rejected"] == invented
    assert len(longer) >= 0.6 * len(REFERENCE) > len(echo)
    assert align.sampled_pair(SUMMARY, REFERENCE, [echo, echo + " 1,500명이었다."], 0.2, 0.2, min_length=0.6) is None


@pytest.mark.parametrize("seed", range(6))
def test_a_constructed_negative_changes_exactly_one_figure(seed):
    pair = align.contrastive_negative(SUMMARY, REFERENCE, random.Random(seed))
    assert pair["chosen"] == REFERENCE and pair["source"] == "constructed"
    before, after = extract_facts(REFERENCE), extract_facts(pair["rejected"])
    assert len(before) == len(after)
    changed = [(a.text, b.text) for a, b in zip(before, after) if a.text != b.text]
    assert changed == [tuple(pair["changed"])]
    (old, new), = changed
    i = REFERENCE.index(old)
    assert pair["rejected"] == REFERENCE[:i] + new + REFERENCE[i + len(old):]  # nothing else moved
    # the figure the summary supported (1,200명) is the one changed, and the change is unsupported
    assert old == "1,200명"
    assert len(unsupported_facts(SUMMARY, pair["rejected"])) == len(unsupported_facts(SUMMARY, REFERENCE)) + 1


def test_a_trimmed_reference_drops_only_the_sentences_with_figures_the_summary_lacks():
    summary = "대학생 1,200명의 정치 태도를 비교하였다. 권위주의적 태도가 줄었다."
    kept = ["본 연구는 대학생 1,200명의 정치 태도를 비교하였다.", "분석 결과 권위주의적 태도가 줄었으나 그 속도에는 차이가 있었다.",
            "이는 세대에 따라 정치 태도가 달라짐을 보여 준다."]
    invented = "설문은 2019년에 이루어졌다."
    reference = " ".join([kept[0], invented, *kept[1:]])
    pair = align.trimmed_reference(summary, reference, min_coverage=0.2)
    assert pair["chosen"] == " ".join(kept) and pair["rejected"] == reference and pair["dropped"] == 1
    assert not unsupported_facts(summary, pair["chosen"]) and unsupported_facts(summary, pair["rejected"])
    assert align.trimmed_reference(summary, " ".join(kept), 0.2) is None  # nothing to drop
    assert align.trimmed_reference(summary, f"{kept[0]} {invented} 응답률은 87%였고 표본은 3,000명이었다.", 0.2) is None
    # a term the summary lacks is not a figure: the sentence stays
    assert align.trimmed_reference(summary, " ".join([kept[0], "특히 對句 표현에서 달랐다.", *kept[1:]]), 0.2) is None
    pairs, counts = align.build_pairs([{"summary": summary, "original": reference}], {}, negatives=False, min_gap=0.2,
                                      min_coverage=0.2, seed=0, trimmed=True)
    assert [p["source"] for p in pairs] == ["trimmed"] and counts["trimmed"] == 1


def test_a_reference_without_figures_gives_no_negative_and_pairs_are_counted():
    no_figure = "권위주의적 태도가 줄었으나 그 속도에는 차이가 있었다."
    assert align.contrastive_negative("태도가 줄었다.", no_figure, random.Random(0)) is None
    rows = [{"summary": SUMMARY, "original": REFERENCE}, {"summary": "태도가 줄었다.", "original": no_figure}]
    faithful = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
    invented = "대학생 1,500명의 태도를 비교하였다."
    pairs, counts = align.build_pairs(rows, {0: [invented, faithful]}, True, 0.2, 0.2, seed=0)
    assert counts == {"sampled": 1, "sampled_ties": 0, "constructed": 1, "no_figure": 1}
    assert [p["source"] for p in pairs] == ["sampled", "constructed"]


# ---------------------------------------------------------------------------------------------------------------------
# the tokenized DPO batch: TRL's own preparation and collator, on the real tokenizer


def test_the_dpo_batch_keeps_the_training_prompt_one_bos_and_the_end_of_turn_in_the_loss(
        tiny_gemma2_dir, embedded_tokenizer, tmp_path):
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM

    cfg = align.load("align-cpu", [])
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir),
                           LoraConfig(r=4, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    pair = align.contrastive_negative(SUMMARY, REFERENCE, random.Random(0))
    ds, dropped = align.preference_dataset([pair], embedded_tokenizer, None, cfg.training.max_length)
    assert dropped == 0
    trainer = align.build_dpo_trainer(cfg, model, embedded_tokenizer, ds, tmp_path, torch.float32)
    tok = embedded_tokenizer
    ex = trainer.train_dataset[0]
    batch = trainer.data_collator([ex])  # TRL's collator: the chosen row, then the rejected row
    eot = prompts.stop_token_ids(tok)[0]  # the end-of-turn token; eos is the other
    prompt = prompts.encode_prompt(tok, SUMMARY)
    rendered = prompts.render_prompt(SUMMARY, None, tok)
    assert tok.decode(prompt).removeprefix(tok.bos_token) == rendered.removeprefix(tok.bos_token)
    for side, row, mask, attn in zip(("chosen", "rejected"), batch["input_ids"].tolist(),
                                     batch["completion_mask"].tolist(), batch["attention_mask"].tolist()):
        ids = [t for t, a in zip(row, attn) if a]
        # exactly what training feeds the model for this pair: the prompt with one BOS, the turn, <end_of_turn>, eos
        assert ids == prompts.encode_example(tok, SUMMARY, pair[side])["input_ids"]
        assert ids[:len(prompt)] == prompt and ids.count(tok.bos_token_id) == 1 and ids[0] == tok.bos_token_id
        in_loss = [t for t, m in zip(row, mask) if m]
        assert mask[:len(prompt)] == [0] * len(prompt) and in_loss == ids[len(prompt):]
        assert in_loss.count(eot) == 1 and in_loss[-1] == tok.eos_token_id
    # the frozen reference is a copy of the adapter, and only the adapter being tuned trains
    peft_model = trainer.model
    assert set(peft_model.peft_config) == {"default", "ref"}
    trainable = {n for n, p in peft_model.named_parameters() if p.requires_grad}
    assert trainable and all(".default." in n for n in trainable)


def test_a_pair_longer_than_max_length_is_dropped_not_truncated(embedded_tokenizer):
    pair = align.contrastive_negative(SUMMARY, REFERENCE, random.Random(0))
    n = len(prompts.encode_example(embedded_tokenizer, SUMMARY, pair["chosen"])["input_ids"])
    ds, dropped = align.preference_dataset([pair], embedded_tokenizer, None, n - 1)
    assert len(ds) == 0 and dropped == 1


# ---------------------------------------------------------------------------------------------------------------------
# bad input: one line and a non-zero exit, before any model loads


def _fake_run(path, finished=True):
    path.mkdir()
    (path / "adapter_config.json").write_text("{}")
    (path / "writemypaper.json").write_text(json.dumps({"kind": "run", "finished": finished,
                                                        "base_model": "gemma3-270m"}))
    return path


def _error_lines(capsys, *args):
    rc = main(["align", *args])
    err = [line for line in capsys.readouterr().err.splitlines() if line.startswith("writemypaper: error:")]
    assert rc != 0
    return err


def test_an_unfinished_run_is_refused(tmp_path, short_prepared, capsys):
    run = _fake_run(tmp_path / "run", finished=False)
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"))
    assert len(err) == 1 and "did not finish" in err[0]
    err = _error_lines(capsys, "--run", str(short_prepared), "--data", str(short_prepared), "--out",
                       str(tmp_path / "out"))
    assert len(err) == 1 and "not a training run" in err[0]


def test_out_over_a_foreign_folder_is_refused_and_left_alone(tmp_path, short_prepared, capsys):
    run = _fake_run(tmp_path / "run")
    foreign = tmp_path / "mine"
    foreign.mkdir()
    (foreign / "notes.txt").write_text("keep me")
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(foreign))
    assert len(err) == 1 and "not written by writemypaper" in err[0]
    assert (foreign / "notes.txt").read_text() == "keep me" and len(list(foreign.iterdir())) == 1
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(run))
    assert len(err) == 1 and "is the run being aligned" in err[0]


def test_fewer_than_two_candidates_when_sampling_is_refused(tmp_path, short_prepared, capsys):
    run = _fake_run(tmp_path / "run")
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"),
                       "--sample", "2", "--candidates", "1")
    assert len(err) == 1 and "sampling.candidates=1" in err[0]
    # constructed negatives alone need no candidates; no pairs at all is refused
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"),
                       "--sample", "0", "--no-negatives", "pairs.trimmed=false")
    assert len(err) == 1 and "no pairs to train on" in err[0]
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"),
                       "--sample", "-1", "pairs.min_coverage=2", "pairs.min_length=-0.5",
                       "training.truncation_mode=keep_end")
    assert len(err) == 4, err  # every problem at once, one a line
    assert "sampling.summaries=-1" in err[0] and "pairs.min_coverage=2" in err[1]
    assert "pairs.min_length=-0.5 must be a number in [0.0, 1.0]" in err[2]
    assert "truncation_mode is set by writemypaper" in err[3]
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"),
                       "--candidates", "20")  # checked though the preset samples nothing
    assert len(err) == 1 and "sampling.candidates=20 is not in [1, 16]" in err[0]
    assert not (tmp_path / "out").exists()


# ---------------------------------------------------------------------------------------------------------------------
# a real preference tuning of the embedded model


@pytest.mark.slow
def test_align_writes_a_run_that_generate_loads(tiny_run, short_prepared, tmp_path, capfd):
    from safetensors.torch import load_file

    out = tmp_path / "aligned"
    assert main(["align", "--run", str(tiny_run), "--data", str(short_prepared), "--out", str(out), "--limit", "2",
                 "--sample", "1", "--candidates", "2", "sampling.max_new_tokens=8", "training.max_steps=2",
                 "training.per_device_train_batch_size=1", "training.save_strategy=no",
                 "pairs.min_gap=0", "pairs.min_coverage=0"]) == 0
    rec = json.loads((out / "writemypaper.json").read_text())
    assert rec["finished"] and rec["kind"] == "run" and rec["base_model"] == "gemma3-270m"
    assert rec["aligned_from"] == str(tiny_run.resolve()) and rec["steps"] == 2
    summary = rec["align"]
    assert summary["pairs"]["sampled"] + summary["pairs"]["sampled_ties"] == 1
    assert summary["pairs"]["constructed"] >= 1 and len(summary["dpo_losses"]) == 2
    assert len(summary["reward_margins"]) == 2 and all(x == x for x in summary["dpo_losses"])
    # base + one adapter, the run's adapter continued: same tensors, new values; no reference adapter left behind
    assert not (out / "ref").exists()
    tuned, aligned = load_file(tiny_run / "adapter_model.safetensors"), load_file(out / "adapter_model.safetensors")
    assert tuned.keys() == aligned.keys()
    assert any(not (tuned[k] == aligned[k]).all() for k in tuned)
    capfd.readouterr()
    assert main(["generate", SUMMARY, "--model", str(out), "--max-new-tokens", "8", "--greedy"]) == 0
    assert capfd.readouterr().out.strip()


def test_every_align_preset_validates_and_the_runs_own_settings_cannot_be_overridden(tmp_path, short_prepared):
    from writemypaper import config
    from writemypaper.errors import UserError

    run = _fake_run(tmp_path / "run")
    assert set(config.available_presets("align")) == {"align-cpu", "align-gpu"}
    for name in config.available_presets("align"):
        align.validate(align.load(name, []), str(run), str(short_prepared), str(tmp_path / name), False, False)
    for key in ("model=google/gemma-2-2b-it", "quantization=nf4", "instruction=x"):  # the run's, kept by align
        with pytest.raises(UserError, match="unknown config key"):
            align.load("align-cpu", [key])


def test_a_resumed_run_trains_on_the_pairs_it_started_with(tmp_path):
    """--resume reads RUN_DIR/pairs.jsonl instead of sampling again (no model is needed to get them back)."""
    pair = align.contrastive_negative(SUMMARY, REFERENCE, random.Random(0))
    cfg = align.load("align-cpu", ["sampling.summaries=0"])
    rows = [{"summary": SUMMARY, "original": REFERENCE}]
    first, counts = align._pairs(cfg, tmp_path, None, None, rows, resume=True)  # nothing kept yet: built now
    assert counts["constructed"] == 1 and first[0]["source"] == "constructed"
    align._save_pairs(tmp_path, [pair])
    again, counts = align._pairs(cfg, tmp_path, None, None, rows, resume=True)
    assert again == [pair] and counts == {"reused": 1}


def test_pairs_from_another_runs_file_are_trained_on_without_sampling(tmp_path, short_prepared, capsys):
    """pairs.from_file: a sweep over training settings samples once; the file is read as --resume reads its own,
    and a missing file is one line before anything is written."""
    pair = align.contrastive_negative(SUMMARY, REFERENCE, random.Random(0))
    align._save_pairs(tmp_path, [pair])
    cfg = align.load("align-cpu", [f"pairs.from_file={tmp_path / align.PAIRS_FILE}"])  # sampling.summaries stays 4
    rows = [{"summary": SUMMARY, "original": REFERENCE}]
    got, counts = align._pairs(cfg, tmp_path / "new", None, None, rows, resume=False)  # no model: nothing sampled
    assert got == [pair] and counts == {"from_file": 1}
    # sampling rejects a candidate that stopped at once: its empty text is read back, a missing one is refused
    faithful = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
    said_nothing = align.sampled_pair(SUMMARY, REFERENCE, [faithful, ""], min_gap=0.2, min_coverage=0.2)
    assert said_nothing["rejected"] == ""
    align._save_pairs(tmp_path / "empty", [said_nothing])
    cfg = align.load("align-cpu", [f"pairs.from_file={tmp_path / 'empty' / align.PAIRS_FILE}"])
    assert align._pairs(cfg, tmp_path / "new", None, None, rows, resume=False)[0] == [said_nothing]
    (tmp_path / "bad.jsonl").write_text(json.dumps({"summary": SUMMARY, "chosen": faithful}) + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="bad.jsonl:1: missing or non-text field.*rejected"):
        align._pairs(align.load("align-cpu", [f"pairs.from_file={tmp_path / 'bad.jsonl'}"]), tmp_path / "new", None,
                     None, rows, resume=False)
    run = _fake_run(tmp_path / "run")
    err = _error_lines(capsys, "--run", str(run), "--data", str(short_prepared), "--out", str(tmp_path / "out"),
                       f"pairs.from_file={tmp_path / 'missing.jsonl'}")
    assert len(err) == 1 and "pairs.from_file=" in err[0] and "no such file" in err[0]
    assert not (tmp_path / "out").exists()
