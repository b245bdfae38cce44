"""The length that journals ask for, in characters including spaces: the count, the setting, and the steering in
both engines, on the embedded Gemma 3 270M (short targets, so each real generation stays short on a CPU).

    pytest tests/test_length.py
"""

from dataclasses import replace

import pytest

from writemypaper.decoding import CAP, FLOOR, LAST, LengthTarget, clause_end, sentence_end
from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings
from writemypaper.text import char_count

SUMMARY = "본 연구는 한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."
INF = float("-inf")


def test_char_count_counts_spaces_and_syllables_as_journals_do():
    import unicodedata

    assert char_count("정치 태도를 비교하였다.") == 13  # 공백 포함
    assert char_count(unicodedata.normalize("NFD", "한국어 초록")) == 6  # a decomposed syllable is one character
    assert char_count("  첫 문장.\n\n둘째  문장. ") == len("첫 문장. 둘째 문장.")  # runs of whitespace are one space


@pytest.mark.parametrize("text, ends", [("비교하였다.", True), ("1,200명이다. ", True), ("응답률은 3.", False),
                                        ("응답률은 3. ", True), ("비교하였다", False), ("무엇인가?", True)])
def test_a_sentence_ends_where_no_number_can_go_on(text, ends):
    assert sentence_end(text) is ends


@pytest.mark.parametrize("target, ok", [(None, True), (50, True), (5000, True), (49, False), (0, False), (-1, False),
                                        (5001, False), (True, False), ("300", False), (300.0, False)])
def test_target_chars_range(target, ok):
    settings = GenerationSettings(max_new_tokens=4096, target_chars=target)
    assert [f for f, _ in settings.problems()] == ([] if ok else ["target_chars"])


def test_a_target_that_cannot_fit_in_max_new_tokens_is_one_line():
    with pytest.raises(UserError, match=r"target_chars=500 cannot fit in max_new_tokens=100 .*at least 125") as e:
        GenerationSettings(max_new_tokens=100, target_chars=500).validate()
    assert "\n" not in str(e.value)
    GenerationSettings(max_new_tokens=125, target_chars=500).validate()


# ---------------------------------------------------------------------------------------------------------------------
# the processor on a score matrix, with the real tokenizer


def _ids(tok, text: str) -> list[int]:
    return tok(text, add_special_tokens=False)["input_ids"]


def test_steering_forbids_the_end_below_the_floor_and_ends_at_a_sentence_past_the_cap(embedded_tokenizer):
    """Rows: short (may not end), long at a sentence end (must end), long mid-sentence (free), no target (free), already
    ended (padding: left alone). Prompt columns are ignored; the text is decoded, so characters are counted, not
    tokens."""
    import torch

    from writemypaper import prompts
    from writemypaper.transformers_engine import LengthSteering

    tok = embedded_tokenizer
    eot, eos = prompts.stop_token_ids(tok)
    long = "가" * 60 + " 결과를 비교하였다."  # 70 characters
    texts = ["짧은 글이다.", long, long[:-1], "짧은 글이다.", "끝"]
    rows = [_ids(tok, t) for t in texts]
    rows[4] += [eot]
    width = max(map(len, rows))
    prompt = [7, 8, 9]
    ids = torch.tensor([prompt + r + [tok.pad_token_id] * (width - len(r)) for r in rows])  # pads decode to nothing
    scores = torch.randn(5, len(tok))
    steer = LengthSteering(tok, [50, 60, 60, None, 50], prompt_length=3)
    out = steer(ids, scores.clone())
    assert out[0, eot] == out[0, eos] == INF  # 6 characters of a 50-character target
    assert torch.equal(out[0, :eos], scores[0, :eos])  # nothing else changed
    assert torch.isfinite(out[1]).sum() == 1 and out[1, eot] == 0  # 70 > 1.15 x 60, after "다."
    for r in (2, 3, 4):
        assert torch.equal(out[r], scores[r]), r


def test_steering_composes_with_a_constraint_that_leaves_only_the_end(embedded_tokenizer):
    """Grounding (a processor before this one) may leave a row nothing but its stop tokens: the row keeps them
    rather than having no token left to sample."""
    import torch

    from writemypaper import prompts
    from writemypaper.transformers_engine import LengthSteering

    tok = embedded_tokenizer
    eot, eos = prompts.stop_token_ids(tok)
    scores = torch.full((1, len(tok)), INF)
    scores[0, eot], scores[0, eos] = 1.0, 0.5
    out = LengthSteering(tok, [100], prompt_length=1)(torch.tensor([[2, *_ids(tok, "짧다")]]), scores.clone())
    assert torch.equal(out, scores)


def test_past_the_last_point_a_text_with_no_sentence_end_ends_at_a_break():
    target = LengthTarget(50, hold_ids=[1], end_id=106)
    assert clause_end("<b>목록</b>") and clause_end("첫째,") and not clause_end("비교하")
    text = "가" * int(50 * LAST)
    assert target.action(text) is None and target.action(text + ",") == "end"
    assert target.action("가" * int(50 * CAP) + "다.") == "end" and target.action("가" * 40) == "hold"


# ---------------------------------------------------------------------------------------------------------------------
# real generation


def _in_band(text: str, target: int) -> bool:
    """Steering stops at the first sentence end past CAP x target (or break past LAST x target); one token may carry
    a few characters past it."""
    return FLOOR * target <= char_count(text) <= LAST * target + 12


@pytest.fixture(scope="module")
def llama():
    pytest.importorskip("llama_cpp")
    from writemypaper import engines, gguf_export

    return engines.load(str(gguf_export.embedded_gguf_path()))


@pytest.mark.parametrize("grounded, stream", [(False, False), (True, True)])
def test_llamacpp_lands_near_the_target(llama, grounded, stream):
    settings = GenerationSettings(max_new_tokens=64, target_chars=60, grounded=grounded)
    if stream:
        text = "".join(llama.stream(SUMMARY, settings)).strip()
    else:
        [[text]] = llama.generate([SUMMARY], settings)
    assert _in_band(text, 60), (char_count(text), text)


@pytest.fixture(scope="module")
def gemma():
    from writemypaper import engines

    return engines.load("gemma3-270m")


def test_transformers_batch_with_two_targets_and_grounding(gemma):
    """One batched call, two summaries with their own targets, grounded: each row is steered to its own."""
    settings = GenerationSettings(max_new_tokens=48, grounded=True)
    out = gemma.generate([SUMMARY, SUMMARY], settings, targets=[50, 60])
    assert [len(o) for o in out] == [1, 1]
    for [text], target in zip(out, [50, 60]):
        assert _in_band(text, target), (target, char_count(text), text)


def test_per_summary_targets_are_checked(gemma):
    with pytest.raises(UserError, match="target_chars=10 is not"):
        gemma.generate([SUMMARY], GenerationSettings(max_new_tokens=8), targets=[10])
    with pytest.raises(UserError, match="2 target lengths for 1 summaries"):
        gemma.generate([SUMMARY], GenerationSettings(max_new_tokens=8), targets=[50, 60])


def test_settings_with_a_target_record_it():
    """replace() keeps the target: the scheduler batches only requests with equal settings, targets included."""
    a = GenerationSettings(target_chars=300)
    assert replace(a) == a and a != GenerationSettings()
