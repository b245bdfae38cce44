"""Generation settings that matter for faithful abstracts: the repetition penalty leaves the prompt alone, and
candidates are sampled in one batched call and ranked by the fact check.

    pytest tests/test_generate.py
"""

import json
from dataclasses import asdict, replace

import pytest
from omegaconf import OmegaConf

from writemypaper.decoding import rank
from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings
from writemypaper.transformers_engine import Generator, LogprobRecorder, logits_processors

SUMMARY = "본 연구는 2019년 대학생 1,200명의 정치 태도를 비교하였다."


@pytest.fixture(scope="module")
def tiny(tiny_gemma2_dir, embedded_tokenizer):
    from transformers import AutoModelForCausalLM

    return Generator(AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir), embedded_tokenizer)


class Spy:
    """Keeps a copy of the scores it sees at each step."""

    def __init__(self):
        self.seen = []

    def __call__(self, input_ids, scores):
        self.seen.append(scores.clone())
        return scores


# ---------------------------------------------------------------------------------------------------------------------
# the repetition penalty


def test_penalty_leaves_prompt_tokens_alone():
    import torch

    prompt, generated = [5, 6, 7], [8]
    (penalty,) = logits_processors(GenerationSettings(repetition_penalty=1.5, grounded=False), prompt_length=3)
    ids = torch.tensor([prompt + generated, [0, 6, 7, 9]])  # the second row is left-padded with id 0
    scores = torch.full((2, 12), 2.0)
    out = penalty(ids, scores.clone())
    # Tokens only in the prompt keep their logit; generated tokens are penalised.
    assert out[0, 5] == out[0, 6] == out[0, 7] == 2.0 and out[1, 6] == 2.0
    assert out[0, 8] == pytest.approx(2.0 / 1.5) and out[1, 9] == pytest.approx(2.0 / 1.5)
    assert out[0, 9] == 2.0


def test_penalty_inside_model_generate_covers_generated_tokens_only(tiny):
    """Real generate with the processors Generator builds: at the first step (nothing generated yet) the penalty
    changes no logit at all, although every prompt token is a candidate; later it changes only generated tokens."""
    import torch
    from transformers import LogitsProcessorList

    settings = GenerationSettings(max_new_tokens=3, do_sample=False, repetition_penalty=1.5, grounded=False)
    enc = tiny._encode([SUMMARY, "짧은 요약이다."])  # two lengths: the shorter prompt is left-padded
    length = enc["input_ids"].shape[1]
    before, after = Spy(), Spy()
    procs = [before, *logits_processors(settings, length), after]
    with torch.inference_mode():
        out = tiny.model.generate(**enc, **settings.generate_kwargs(tiny.tokenizer),
                                  logits_processor=LogitsProcessorList(procs))
    assert torch.equal(before.seen[0], after.seen[0])
    for step in (1, 2):
        changed = (before.seen[step] != after.seen[step]).nonzero().tolist()
        for row, token in changed:
            assert token in out[row, length:length + step].tolist()
        prompt_only = set(enc["input_ids"][0].tolist()) - set(out[0, length:].tolist())
        assert all(before.seen[step][0, t] == after.seen[step][0, t] for t in prompt_only)


def test_generate_kwargs_keep_transformers_own_penalty_off(embedded_tokenizer):
    kw = GenerationSettings(repetition_penalty=1.3).generate_kwargs(embedded_tokenizer)
    assert kw["repetition_penalty"] == 1.0


# ---------------------------------------------------------------------------------------------------------------------
# settings


@pytest.mark.parametrize("bad, message", [
    ({"candidates": 0}, "candidates=0"),
    ({"candidates": 17}, "candidates=17"),
    ({"candidates": 4, "do_sample": False}, "needs sampling"),
    ({"candidates": 4, "temperature": 0.0}, "needs sampling"),
    ({"candidates": 2, "num_return_sequences": 3}, "more than candidates"),
    ({"grounded": "yes"}, "grounded"),
    ({"num_return_sequences": 3, "do_sample": False}, "num_return_sequences=3 needs sampling"),
    ({"num_return_sequences": 2, "temperature": 0.0}, "num_return_sequences=2 needs sampling"),
])
def test_bad_settings_are_one_line_errors(bad, message):
    with pytest.raises(UserError, match=message):
        GenerationSettings(**bad).validate()


def test_the_generate_preset_restates_no_default():
    """GenerationSettings is the one source of the defaults: the preset's generation section is empty and resolves to
    them; a key set on the command line changes that key alone, and a misspelt one is refused by name."""
    from writemypaper import config
    from writemypaper.config import settings_from_config

    cfg = config.load_config("generate", kind="generate")
    assert config.to_dict(cfg.generation) == {}
    assert settings_from_config(cfg) == GenerationSettings()
    assert config.to_dict(cfg.generation) == asdict(GenerationSettings())  # what is saved next to the output
    cfg = config.load_config("generate", ["generation.temperature=0.3"], kind="generate")
    assert settings_from_config(cfg) == replace(GenerationSettings(), temperature=0.3)
    with pytest.raises(UserError, match="unknown config key 'generation.temprature'.*temperature"):
        config.load_config("generate", ["generation.temprature=0.3"], kind="generate")
    with pytest.raises(UserError, match="unknown generation setting.*temprature"):  # a config built in code, too
        settings_from_config(OmegaConf.create({"generation": {"temprature": 0.3}}))


def test_rows_per_summary():
    assert GenerationSettings(candidates=4).rows_per_summary == 4
    assert GenerationSettings(num_return_sequences=3).rows_per_summary == 3


# ---------------------------------------------------------------------------------------------------------------------
# candidates


def test_rank_orders_by_unsupported_then_coverage_then_logprob():
    cands = [
        {"text": "1999년에 대학생 1,200명을 조사하였다.", "mean_logprob": -0.1},  # an invented year
        {"text": "대학생의 태도를 보았다.", "mean_logprob": -0.2},  # nothing invented, little coverage
        {"text": "2019년 대학생 1,200명의 정치 태도를 비교하였다.", "mean_logprob": -2.0},  # best coverage
        {"text": "2019년 대학생 1,200명의 정치 태도를 비교하였다.", "mean_logprob": -1.0},  # same, more likely
    ]
    ranked = rank(SUMMARY, cands)
    assert [c["mean_logprob"] for c in ranked] == [-1.0, -2.0, -0.2, -0.1]
    assert [len(c["unsupported"]) for c in ranked] == [0, 0, 0, 1]
    assert ranked[0]["coverage"] > ranked[2]["coverage"]
    assert set(ranked[0]) == {"text", "unsupported", "coverage", "mean_logprob"}


def test_logprob_recorder_matches_the_models_own_scores(tiny):
    """The recorder's per-token log-probabilities equal compute_transition_scores on the raw logits."""
    import torch

    settings = GenerationSettings(max_new_tokens=5, do_sample=False, repetition_penalty=1.0, grounded=False)
    enc = tiny._encode([SUMMARY])
    record = LogprobRecorder()
    with torch.inference_mode():
        out = tiny.model.generate(**enc, **settings.generate_kwargs(tiny.tokenizer), logits_processor=[record],
                                  output_logits=True, return_dict_in_generate=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    expected = tiny.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    assert torch.allclose(record.per_token(new), expected.float(), atol=1e-4)


def test_candidates_come_from_one_batched_call_and_are_ranked(tiny, monkeypatch):
    calls = []
    generate = tiny.model.generate

    def counted(**kw):
        calls.append((kw["input_ids"].shape[0], kw["num_return_sequences"]))
        return generate(**kw)

    monkeypatch.setattr(tiny.model, "generate", counted)
    settings = GenerationSettings(max_new_tokens=6, candidates=3, temperature=1.0, seed=1)
    summaries = [SUMMARY, "25℃에서 세 차례 반복 측정하였다."]
    details = tiny.generate(summaries, settings, batch_size=8, details=True)
    assert calls == [(2, 3)]  # both summaries, three candidates each, in one call
    for d in details:
        cands = d["candidates"]
        assert len(cands) == 3 and d["text"] == cands[0]["text"]
        keys = [(len(c["unsupported"]), -c["coverage"], -c["mean_logprob"]) for c in cands]
        assert keys == sorted(keys)
        assert all(c["mean_logprob"] < 0 for c in cands)
    # The plain interface returns the best of each, the same texts with the same seed.
    plain = tiny.generate(summaries, settings, batch_size=8)
    assert plain == [[d["text"]] for d in details]


def test_generate_cli_writes_candidates_and_settings(tiny_gemma2_dir, tmp_path, capsys):
    import yaml

    from writemypaper.cli import main

    inputs = tmp_path / "in.txt"
    inputs.write_text(SUMMARY + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inputs), "--model", str(tiny_gemma2_dir), "--out", str(out),
                 "--candidates", "2", "--save-candidates", "--max-new-tokens", "4", "--no-grounding"]) == 0
    [row] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["settings"]["candidates"] == 2 and row["settings"]["grounded"] is False
    assert row["settings"]["do_sample"] is True and "repetition_penalty" in row["settings"]
    assert len(row["candidates"]) == 2 and row["generated"] == row["candidates"][0]["text"]
    assert {"text", "unsupported", "coverage", "mean_logprob"} <= set(row["candidates"][0])
    # The config saved beside the output holds every setting used, the defaults the preset left out included.
    saved = yaml.safe_load(out.with_suffix(".config.yaml").read_text(encoding="utf-8"))["generation"]
    assert saved == {k: v for k, v in row["settings"].items() if k != "model"}


def test_generate_cli_rejects_candidates_with_greedy(tiny_gemma2_dir, capsys):
    from writemypaper.cli import main

    assert main(["generate", SUMMARY, "--model", str(tiny_gemma2_dir), "--candidates", "3", "--greedy"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "needs sampling" in err[0]


def test_generate_cli_refuses_several_greedy_abstracts_in_one_line(tiny_gemma2_dir, capsys):
    """transformers refuses num_return_sequences > 1 without sampling with a ValueError: that was a traceback."""
    from writemypaper.cli import main

    assert main(["generate", SUMMARY, "--model", str(tiny_gemma2_dir), "--num-return-sequences", "3",
                 "--greedy"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "num_return_sequences=3 needs sampling" in err[0]


@pytest.mark.parametrize("value", ["0", "-1", "99999"])
def test_generate_cli_refuses_a_target_length_out_of_range_in_one_line(tiny_gemma2_dir, capsys, value):
    from writemypaper.cli import main

    assert main(["generate", SUMMARY, "--model", str(tiny_gemma2_dir), "--target-chars", value]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and f"target_chars={value} is not" in err[0], err


def test_generate_cli_records_each_abstracts_length_and_target(tiny_gemma2_dir, tmp_path, capsys):
    """Each JSONL row holds its length in characters (공백 포함) and the target it was steered to; the summary line
    says how the lengths landed."""
    from writemypaper.cli import main
    from writemypaper.text import char_count

    inputs = tmp_path / "in.txt"
    inputs.write_text(SUMMARY + "\n", encoding="utf-8")
    out = tmp_path / "out.jsonl"
    assert main(["generate", "--input", str(inputs), "--model", str(tiny_gemma2_dir), "--out", str(out),
                 "--target-chars", "50", "--max-new-tokens", "40", "--no-grounding"]) == 0
    [row] = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert row["chars"] == char_count(row["generated"]) and row["target_chars"] == 50
    assert row["settings"]["target_chars"] == 50
    assert f"lengths {row['chars']}-{row['chars']}자, target 50자" in capsys.readouterr().out


def test_a_cancelled_summary_ends_alone(tiny):
    """cancelled(i) ends summary i's rows at the next token; the other summaries of the batch are written in full."""
    settings = GenerationSettings(max_new_tokens=8, do_sample=False, grounded=False, repetition_penalty=1.0)
    summaries = [SUMMARY, "25℃에서 세 차례 반복 측정하였다.", "권위주의적 태도가 줄었으나 속도에 차이가 있었다."]
    full = tiny.generate(summaries, settings, batch_size=3, details=True)
    cut = tiny.generate(summaries, settings, batch_size=3, details=True, cancelled=lambda i: i == 1)
    assert [c["text"] for c in cut[0::2]] == [c["text"] for c in full[0::2]]
    assert len(cut[1]["text"]) < len(full[1]["text"])
    everything = tiny.generate(summaries, settings, batch_size=3, stop=lambda: True)
    assert all(len(t[0]) < len(f["text"]) for t, f in zip(everything, full))


# ---------------------------------------------------------------------------------------------------------------------
# --input files


def test_csv_cells_that_span_lines_are_one_record(tmp_path):
    import csv

    from writemypaper.generate import read_inputs

    rows = [{"id": "1", "summary": "첫 줄,\n둘째 줄에 \"인용\"과 x=3이 있다."}, {"id": "2", "summary": "한 줄 요약\r\n끝"}]
    path = tmp_path / "in.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.DictWriter(f, ["id", "summary"])
        w.writeheader()
        w.writerows(rows)
    assert read_inputs(path) == rows


@pytest.mark.parametrize("content, needle", [
    ('id,summary\n1,"닫히지 않은 따옴표\n2,다음 줄\n', "not readable as CSV"),
    ("id,summary\n1,쉼표가, 있는 요약\n", "in.csv:2: 3 cells in a row under a header of 2"),
])
def test_malformed_csv_is_one_line(tmp_path, content, needle):
    from writemypaper.generate import read_inputs

    (tmp_path / "in.csv").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match=needle):
        read_inputs(tmp_path / "in.csv")


def test_a_txt_summary_keeps_a_form_feed(tmp_path):
    from writemypaper.generate import read_inputs

    (tmp_path / "in.txt").write_text("PDF에서 복사한\x0c요약\n둘째\r\n", encoding="utf-8")
    assert [r["summary"] for r in read_inputs(tmp_path / "in.txt")] == ["PDF에서 복사한\x0c요약", "둘째"]


@pytest.mark.parametrize("content", ["{not json", '["a list"]', '{"instruction": 3}'])
def test_a_damaged_run_record_is_one_line(tmp_path, content):
    from writemypaper.decoding import run_instruction

    (tmp_path / "writemypaper.json").write_text(content, encoding="utf-8")
    with pytest.raises(UserError, match="writemypaper.json"):
        run_instruction(str(tmp_path))
