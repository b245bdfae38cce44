"""A figure in the wrong place: the fact check flags a figure the abstract writes more often than the summary does
(once more is allowed), and one that the morphemes show quantifying another noun than in the summary. Hand-worked
Korean examples, README's SAMPLE-A-0014 among them.

    pytest tests/test_factcheck_placement.py -q
"""

from __future__ import annotations

from pathlib import Path

from writemypaper.factcheck import REASONS, faithfulness, unsupported_facts

README = Path(__file__).resolve().parents[1] / "README.md"

# README's held-out pair SAMPLE-A-0014: the summary writes 1.6배 once, the grounded abstract three times.
SUMMARY_0014 = "스릴러ㆍ액션은 사건 중단형, 일상물ㆍ로맨스는 정서 고조형이 많았고, 정보 유보형 회차의 댓글은 1.6배 많았다."
GROUNDED_0014 = ("스릴러ㆍ액션은 사건 중단형, 일상물ㆍ로맨스는 정서 고조형이 많았고, 정보 유보형 회차의 댓글은 1.6배 많았다. "
                 "이는 1.6배 높은 비율을 차지하는 스릴러ㆍ액션과 일상물ㆍ로맨스의 경우에 비해 부정적이고 비정규적인 반응을 "
                 "나타내며, 정보 유보형 회차의 댓글은 1.6배가 넘는 것으로 확인되었다.")


def _flags(summary: str, text: str) -> list[tuple[str, str]]:
    return [(f.text, f.reason) for f in unsupported_facts(summary, text)]


def test_readme_example_is_the_one_tested():
    readme = README.read_text(encoding="utf-8")
    assert SUMMARY_0014 in readme and GROUNDED_0014 in readme


def test_a_figure_repeated_beyond_the_summary_and_one_restatement_is_flagged():
    # 1.6배 at 56-60 (copied), 65-69 (the restatement allowed) and 154-158 (a third use: flagged).
    [fact] = unsupported_facts(SUMMARY_0014, GROUNDED_0014)
    assert (fact.text, fact.kind, fact.reason) == ("1.6배", "number", "repeated")
    assert GROUNDED_0014.index("1.6배가 넘는") == fact.start and fact.end == fact.start + 4
    # Once more than the summary is allowed; the summary writing it twice allows three.
    assert _flags(SUMMARY_0014, "댓글은 1.6배 많았다. 이는 1.6배 높다.") == []
    assert _flags("A는 30명, B도 30명이었다.", "A는 30명, B도 30명, C도 30명, D도 30명이었다.") == [("30명", "repeated")]


def test_other_forms_of_one_value_count_together():
    # 3만 명 and 30,000명 are one figure: a third use in any form is one too many.
    assert _flags("참가자는 3만 명이었다.", "참가자 30,000명, 즉 3만 명이었다.") == []
    assert _flags("참가자는 3만 명이었다.", "참가자 30,000명, 즉 3만 명, 다시 말해 30000명이었다.") == [("30000명", "repeated")]


def test_a_changed_noun_is_flagged():
    summary = "연구에 참여한 학생 30명을 조사했다."
    assert _flags(summary, "연구에 참여한 교사 30명을 조사했다.") == [("30명", "noun")]
    assert _flags(summary, "연구에 참여한 학생 30명을 조사했다.") == []
    # The noun after the figure (30명의 학생) and the subject before it (학생이 30명) count alike.
    assert _flags("30명의 학생이 참여했다.", "30명의 교사가 참여했다.") == [("30명", "noun")]
    assert _flags("학생이 30명이었다.", "교사가 30명이었다.") == [("30명", "noun")]
    assert _flags("학생이 30명이었다.", "30명의 학생이 참여했다.") == []


def test_a_compound_compares_by_its_head_noun():
    # 대학+생 is one noun; after 의 the head of "정치 태도" is 태도: the same figure, said shorter.
    summary = "한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 비교하였다."
    assert _flags(summary, "3개국 대학생 1,200명의 태도를 비교하였다.") == []
    assert _flags(summary, "3개국 교수 1,200명의 태도를 비교하였다.") == []  # 태도 still matches: not flagged
    assert _flags("1,200명의 정치 태도를 비교하였다.", "1,200명의 경제 행동을 비교하였다.") == [("1,200명", "noun")]


def test_a_figure_in_korean_numerals_names_its_own_noun():
    # 세 나라 counts 나라: 분석 결과 before it is the clause's adverbial, not what it quantifies
    summary = "본 연구는 한ㆍ중ㆍ일 세 나라 대학생의 정치 태도를 비교하였다."
    assert _flags(summary, "분석 결과 세 나라 모두 권위주의적 태도가 줄었다.") == []
    assert _flags("학생 30명을 조사했다.", "분석 결과 30명이 응답했다.") == [("30명", "noun")]  # digits: compared


def test_a_noun_named_on_one_side_only_is_not_flagged():
    # Conservative: without a noun on both sides nothing tells the figure moved.
    assert _flags("30명을 조사했다.", "교사 30명을 조사했다.") == []
    assert _flags("교사 30명을 조사했다.", "이는 30명이다.") == []
    assert _flags(SUMMARY_0014, "이는 1.6배 높은 비율이다.") == []  # 이는 is a pronoun, not a noun


def test_a_sign_or_range_still_right_passes_and_a_flip_is_still_absent():
    summary = "점수는 −3.5%p 줄었고, 응답률은 10~20%였다."
    assert _flags(summary, "점수는 -3.5%p 줄었고 응답률은 10∼20%였다. 응답률 10~20%는 낮다.") == []
    assert _flags(summary, "점수는 3.5%p 줄었다.") == [("3.5%p", "absent")]
    assert _flags(summary, "응답률은 10~20%, 10~20%, 10~20%였다.") == [("10~20%", "repeated")]


def test_the_payload_names_the_reason():
    got = faithfulness("학생 30명을 조사했다.", "교사 30명을 조사했다. 1999년에.")
    assert [(f["text"], f["kind"], f["reason"]) for f in got["unsupported"]] == [("30명", "number", "noun"),
                                                                                 ("1999년", "year", "absent")]
    assert set(REASONS) == {"absent", "repeated", "noun"} and all(REASONS.values())
