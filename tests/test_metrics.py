"""Metrics on hand-worked Korean examples: ROUGE over Kiwi morphemes, the fact check, coverage and score()."""

from __future__ import annotations

import random
import subprocess
import sys
import unicodedata

import pytest

from writemypaper import metrics
from writemypaper.errors import UserError
from writemypaper.factcheck import Fact, coverage, entities, extract_facts, quantities, unsupported_facts
from writemypaper.metrics import faithfulness, lcs_length, rouge_l, rouge_n, rouge_scores, score, tokenize

# Kiwi's analyses, which the hand working below relies on (checked in test_tokenize_drops_punctuation_keeps_content):
#   "학생이 학교에 간다."   -> 학생 이 학교 에 가 ᆫ다            (6 tokens; "." (SF) dropped)
#   "학생이 도서관에 갔다." -> 학생 이 도서관 에 가 었 다         (7 tokens)
REF = "학생이 학교에 간다."
PRED = "학생이 도서관에 갔다."


def test_tokenize_drops_punctuation_keeps_content():
    assert tokenize(REF) == ["학생", "이", "학교", "에", "가", "ᆫ다"]
    assert tokenize(PRED) == ["학생", "이", "도서관", "에", "가", "었", "다"]
    # Numbers (SN), Latin (SL) and Hanja (SH) stay; ' ( ) = % . and the middle dot go.
    assert tokenize("한ㆍ중ㆍ일 'CNN' 對句 (n=1,234) 23.4%.") == ["한", "중", "일", "CNN", "對句", "n", "1,234", "23.4"]
    # Without the % pre-tokenization Kiwi reads "%가" as the verb 가 + 어; with it, 가 is the subject particle.
    assert tokenize("응답자의 23.4%가 지지하였다.") == ["응답자", "의", "23.4", "가", "지지", "하", "었", "다"]
    assert metrics.TOKENIZATION.startswith("kiwipiepy ")
    assert "SW" in metrics.TOKENIZATION and "rougeL_char" in metrics.TOKENIZATION


def test_identical_texts_score_one():
    text = "본 연구는 1980년과 1990년에 한ㆍ중ㆍ일 응답자의 정치 태도를 비교하였다."
    assert rouge_scores(text, text) == {"rouge1": 1.0, "rouge2": 1.0, "rougeL": 1.0, "rougeL_char": 1.0}


def test_no_shared_tokens_score_zero():
    # 경제 성장 -> 경제 성장; 정치 변화 -> 정치 변화: no morpheme and no character in common.
    assert rouge_scores("경제 성장", "정치 변화") == {"rouge1": 0.0, "rouge2": 0.0, "rougeL": 0.0, "rougeL_char": 0.0}


def test_partial_overlap_by_hand():
    # rouge1: pred 학생 이 도서관 에 가 었 다 (7) / ref 학생 이 학교 에 가 ᆫ다 (6); shared unigrams 학생 이 에 가 = 4
    #         P = 4/7, R = 4/6, F1 = 2·4/(7+6) = 8/13
    # rouge2: pred bigrams 학생-이 이-도서관 도서관-에 에-가 가-었 었-다 (6); ref 학생-이 이-학교 학교-에 에-가 가-ᆫ다 (5)
    #         shared 학생-이, 에-가 = 2: P = 2/6, R = 2/5, F1 = 2·2/(6+5) = 4/11
    # rougeL: LCS 학생 이 에 가 = 4, so the same as rouge1: 8/13
    # rougeL_char: "학생이도서관에갔다." (10) / "학생이학교에간다." (9); 갔 ≠ 간, so LCS 학 생 이 에 다 . = 6
    #         F1 = 2·6/(10+9) = 12/19
    got = rouge_scores(PRED, REF)
    assert got["rouge1"] == pytest.approx(8 / 13)
    assert got["rouge2"] == pytest.approx(4 / 11)
    assert got["rougeL"] == pytest.approx(8 / 13)
    assert got["rougeL_char"] == pytest.approx(12 / 19)
    p, r = tokenize(PRED), tokenize(REF)
    assert rouge_n(p, r, 1).precision == pytest.approx(4 / 7) and rouge_n(p, r, 1).recall == pytest.approx(4 / 6)
    assert rouge_n(p, r, 2).precision == pytest.approx(2 / 6) and rouge_n(p, r, 2).recall == pytest.approx(2 / 5)
    assert (rouge_l(p, r).precision, rouge_l(p, r).recall) == (pytest.approx(4 / 7), pytest.approx(4 / 6))


def test_rouge_n_clips_repeated_ngrams():
    # pred 가 가 가 / ref 가 나: 가 counts once on the reference side, so overlap 1: P = 1/3, R = 1/2.
    s = rouge_n(["가", "가", "가"], ["가", "나"], 1)
    assert (s.precision, s.recall) == (pytest.approx(1 / 3), pytest.approx(1 / 2))


def test_lcs_bit_parallel_matches_textbook_table():
    def table(a, b):
        t = [[0] * (len(b) + 1) for _ in range(len(a) + 1)]
        for i, x in enumerate(a):
            for j, y in enumerate(b):
                t[i + 1][j + 1] = t[i][j] + 1 if x == y else max(t[i][j + 1], t[i + 1][j])
        return t[-1][-1]

    rng = random.Random(0)
    for _ in range(300):
        a = [rng.choice("가나다라마") for _ in range(rng.randint(0, 30))]
        b = [rng.choice("가나다라마") for _ in range(rng.randint(0, 30))]
        assert lcs_length(a, b) == table(a, b)


PAIRS = [
    (PRED, REF),
    ("1980년과 1990년에 한ㆍ중ㆍ일 응답자의 23.4%가 'Confucian' 가치를 지지하였다.",
     "1990년 한ㆍ중ㆍ일 응답자 1,234명의 45.2%가 유교적 가치와 對句 표현을 지지하였다."),
    ("본 연구는 한국 시가의 대구 표현을 분석하였다. 그 결과 대구는 의미를 강조한다.",
     "이 논문은 고전 시가에 나타난 對句 표현의 양상을 분석하고, 대구가 의미 강조와 운율 형성에 기여함을 밝혔다."),
    ("CNN 모델의 정확도는 PM2.5 농도 예측에서 높았다.", "PM2.5 농도를 예측하는 CNN과 LSTM 모델을 비교하였다."),
    ("경제 성장", "정치 변화"),
]


class KiwiTokenizer:
    """rouge-score accepts any object with tokenize(text); this one hands it our Kiwi tokens."""

    def tokenize(self, text):
        return tokenize(text)


@pytest.mark.parametrize("pred,ref", PAIRS)
def test_matches_rouge_score_on_the_same_tokens(pred, ref):
    from rouge_score import rouge_scorer

    theirs = rouge_scorer.RougeScorer(["rouge1", "rouge2", "rougeL"], tokenizer=KiwiTokenizer()).score(ref, pred)
    p, r = tokenize(pred), tokenize(ref)
    ours = {"rouge1": rouge_n(p, r, 1), "rouge2": rouge_n(p, r, 2), "rougeL": rouge_l(p, r)}
    for key, s in ours.items():
        assert s.precision == pytest.approx(theirs[key].precision), key
        assert s.recall == pytest.approx(theirs[key].recall), key
        assert s.f1 == pytest.approx(theirs[key].fmeasure), key


def test_rouge_score_default_tokenizer_deletes_hangul():
    # The trap: rouge-score keeps only [a-z0-9], so identical Korean texts have no tokens and score 0.
    from rouge_score import rouge_scorer

    got = rouge_scorer.RougeScorer(["rouge1", "rougeL"]).score(REF, REF)
    assert got["rouge1"].fmeasure == 0 and got["rougeL"].fmeasure == 0
    assert rouge_scores(REF, REF)["rouge1"] == 1.0


def test_nfc_and_nfd_score_the_same():
    nfd_pred, nfd_ref = unicodedata.normalize("NFD", PRED), unicodedata.normalize("NFD", REF)
    assert nfd_pred != PRED
    assert rouge_scores(nfd_pred, nfd_ref) == rouge_scores(PRED, REF)
    assert rouge_scores(nfd_pred, REF) == rouge_scores(PRED, REF)
    text = PAIRS[1][0]
    assert extract_facts(unicodedata.normalize("NFD", text)) == extract_facts(text)
    assert coverage(unicodedata.normalize("NFD", REF), PRED) == coverage(REF, PRED)


SENTENCE = "1980년과 1990년에 한ㆍ중ㆍ일 응답자의 23.4%가 'Confucian' 가치와 對句 표현을 지지하였다(n=1,234)."


def test_extract_facts_by_hand():
    # Offsets: "1980년" 0-5, "과 " 5-7, "1990년" 7-12, "에 한ㆍ중ㆍ일 응답자의 " 12-25, "23.4%" 25-30, "가 " 30-32,
    # "'Confucian'" 32-43 (a quoted span swallows the Latin term inside it), " 가치와 " 43-48, "對句" 48-50,
    # " 표현을 지지하였다(n=" 50-63 (the single letter n is a variable, not a term), "1,234" 63-68.
    assert extract_facts(SENTENCE) == [
        Fact("1980년", "year", 0, 5),
        Fact("1990년", "year", 7, 12),
        Fact("23.4%", "number", 25, 30),
        Fact("'Confucian'", "quoted", 32, 43),
        Fact("對句", "hanja", 48, 50),
        Fact("1,234", "number", 63, 68),
    ]
    for f in extract_facts(SENTENCE):
        assert SENTENCE[f.start : f.end] == f.text


def test_extract_facts_units_terms_and_quotes():
    text = "PM2.5 농도는 3.5 mg/L, 25℃, 1,234명; COVID-19와 CNN 2 모델; “자유”, ‘평등’, \"박애\"; 5G, 25mg."
    got = [(f.text, f.kind) for f in extract_facts(text)]
    assert got == [
        ("PM2.5", "latin"),
        ("3.5 mg/L", "number"),
        ("25℃", "number"),
        ("1,234명", "number"),
        ("COVID-19", "latin"),
        ("CNN", "latin"),
        ("2", "number"),
        ("“자유”", "quoted"),
        ("‘평등’", "quoted"),
        ('"박애"', "quoted"),
        ("5G", "latin"),
        ("25mg", "number"),
    ]


def test_unsupported_facts_flags_only_invented_figures():
    source = "1990년 한ㆍ중ㆍ일 응답자 1234명의 23.4%가 'Confucian' 가치와 對句를 지지하였다(CNN 분석)."
    text = "1990년과 2001년에 응답자 1,234명의 23.4%와 45.2%가 'confucian' 가치와 對句를 지지하였다(cnn)."
    # Supported: 1990년 (value 1990), 1,234명 (1234 once the separator goes), 23.4% (the source has 23.4),
    # 'confucian' and cnn (case-insensitive), 對句. Invented: 2001년 and 45.2%.
    # Offsets: "1990년과 " 0-7, "2001년" 7-12, "에 응답자 " 12-18, "1,234명" 18-24, "의 " 24-26, "23.4%" 26-31,
    # "와 " 31-33, "45.2%" 33-38.
    assert unsupported_facts(source, text) == [Fact("2001년", "year", 7, 12), Fact("45.2%", "number", 33, 38)]
    assert unsupported_facts(source, source) == []
    # A number is supported by its value wherever it appears in the source, also without a unit.
    assert unsupported_facts("응답률은 23.4였다", "23.4%") == []
    assert [f.text for f in unsupported_facts("CNNs", "CNN")] == ["CNN"]  # Latin terms match whole words


def _flagged(source: str, text: str) -> list[str]:
    return [f.text for f in unsupported_facts(source, text)]


def test_numbers_match_with_their_unit():
    # 27.3% is a share, 27.3년 a duration; 3배 a ratio, 3개 a count: the same digits make different claims.
    assert _flagged("응답자의 27.3%가 3배 증가하였다.", "27.3년 동안 3개가 늘었다.") == ["27.3년", "3개"]
    assert _flagged("응답자의 27.3%가 3배 증가하였다.", "27.3퍼센트가 3배로 늘었다.") == []  # spellings of one unit
    # A bare number claims no unit, so the text may drop it; a bare source number (n=1,234, 23.4 in a table)
    # supports its value with any unit.
    assert _flagged("응답자의 27.3%가 응답하였다.", "27.3이 응답하였다.") == []
    assert _flagged("응답률은 23.4였다(n=1,234).", "23.4%가 응답하였고 1,234명이었다.") == []
    assert _flagged("25°C에서 3.5 mg/L였다.", "25℃에서 3.5㎎/L였다.") == ["3.5㎎"]  # ㎎/L is not one unit symbol
    assert _flagged("25°C에서 3.5 mg를 넣었다.", "25℃에서 3.5㎎을 넣었다.") == []
    # 3%p (a difference of percentages) is not 3%.
    assert _flagged("지지율이 3%p 올랐다.", "지지율이 3% 올랐다.") == ["3%"]


def test_decimals_normalise():
    assert [f.text for f in extract_facts("유의수준은 p<.05였다.")] == [".05"]
    assert _flagged("유의수준 0.05에서", "p<.05로 유의하였다.") == []
    assert _flagged("p<.05로 유의하였다.", "유의수준 0.050에서") == []
    assert _flagged("p<.05로 유의하였다.", "유의수준 0.5에서") == ["0.5"]
    # A full stop that ends a Korean sentence does not start a decimal.
    assert [f.text for f in extract_facts("결과였다.5개 집단")] == ["5개"]


def test_korean_numerals_count():
    # 세 나라 claims 3 countries: 3개국 and 세 나라 support each other; 3개 (things) and 3명 (people) do not.
    facts = extract_facts("한ㆍ중ㆍ일 세 나라의 대학생")
    assert facts == [Fact("세 나라", "number", 6, 10)]
    assert _flagged("한ㆍ중ㆍ일 세 나라의 대학생", "3개국, 3개, 3명, 세 나라, 네 나라") == ["3개", "3명", "네 나라"]
    assert _flagged("3개국을 비교하였다.", "세 나라를 비교하였다.") == []
    assert _flagged("두 차례 조사하였다.", "2회 조사하고 다섯 가지 요인을 보았다.") == ["다섯 가지"]
    assert _flagged("열두 명이 참여하였다.", "12명이 참여하였다.") == []
    # Sino-Korean numerals count before units that leave no other reading.
    assert [f.text for f in extract_facts("삼 년간 이십오 개월, 오 배")] == ["삼 년간", "이십오 개월", "오 배"]
    assert _flagged("3년간 25개월, 5배", "삼 년간 이십오 개월, 오 배") == []
    assert _flagged("3년간 25개월, 5배", "사 년간") == ["사 년간"]


def test_ordinary_words_are_not_numbers():
    # 세계 (world), 한 연구 ('a study'), 이 세기 ('this century'), 세금 (tax), 네 생각 ('your thought'), 일부
    # ('part'), 세 개인 (개인 'individual' is no counter 개); "2 개념" is the number 2 and then a noun.
    text = "세계 여러 나라에서 한 연구가 이 세기의 세금 문제를 다루었다. 네 생각은 일부 맞다. 세 개인이 2 개념을 말했다."
    assert [(f.text, f.kind) for f in extract_facts(text)] == [("2", "number")]


def test_ranges_and_large_number_units():
    assert [(f.text, f.kind) for f in extract_facts("1670~1671년, 3-5개, 10∼20%")] == [
        ("1670~1671년", "year"), ("3-5개", "number"), ("10∼20%", "number")]
    # Each end of a range must be supported, with the range's unit; the source's range supports its ends.
    assert _flagged("1670~1671년에 간행되었다.", "1670년에 쓰고 1671년에 간행, 1672년에 재간") == ["1672년"]
    assert _flagged("1670년과 1671년", "1670~1671년") == []
    assert _flagged("1670년과 1671년", "1670~1672년") == ["1670~1672년"]
    assert _flagged("10%에서 20%로 늘었다.", "10∼20%") == []
    assert _flagged("10∼20%", "20년") == ["20년"]
    assert _flagged("3개에서 5개", "3-5개") == []
    # A range between dates keeps each end's unit: 2월 and 2020년, not one odd unit "월~2020년".
    assert _flagged("2019년 2월부터 2020년 1월까지", "2019년 2월~2020년 1월") == []
    assert _flagged("2019년 2월부터 2020년 1월까지", "2019년 3월~2020년 1월") == ["3월~2020년"]
    # 만 and 억 multiply: 3만 명 = 30,000명, 1.2억 원 = 120,000,000원 = 1억 2천만 원.
    assert _flagged("응답자 30,000명, 예산 120,000,000원", "3만 명이 1.2억 원을, 1억 2천만 원을") == []
    assert _flagged("응답자 3만 명", "30000명") == []
    assert _flagged("응답자 3명", "3만 명") == ["3만 명"]
    assert _flagged("예산 1.2억 원", "1.2원") == ["1.2원"]


def test_century_is_a_fact_of_its_own():
    # 19세기 used to be read as 19 with the unit 세 (age) and so was supported by any 19.
    assert extract_facts("19세기 말 19세의 청년") == [Fact("19세기", "century", 0, 4), Fact("19세", "number", 7, 10)]
    assert _flagged("19세의 청년 19명", "19세기") == ["19세기"]
    assert _flagged("19세기 말", "19세기 후반에 19세") == ["19세"]


def test_terms_stay_flagged():
    source = "'민족주의' 담론과 CNN 모형, 對句 표현을 분석하였다."
    text = "'국가주의' 담론과 LSTM 모형, 對偶 표현, 그리고 새로운 초국가성 개념을 분석하였다."
    # Invented quoted names, Latin and Hanja terms are flagged; an invented Hangul word (초국가성) is not caught.
    assert _flagged(source, text) == ["'국가주의'", "LSTM", "對偶"]
    assert _flagged(source, "'민족주의' 담론, cnn 모형, 對句") == []


def test_faithfulness_keys_are_stable():
    got = faithfulness("세 나라 1,200명", "3개국 1,200명, 4개국")
    assert set(got) >= {"unsupported", "n_facts", "unsupported_rate", "coverage"}
    # "3개국" 0-3, "1,200명" 4-10, "4개국" 12-15: only 4 countries is invented.
    assert got["n_facts"] == 3 and got["unsupported_rate"] == pytest.approx(1 / 3)
    assert got["unsupported"] == [{"text": "4개국", "kind": "number", "start": 12, "end": 15, "reason": "absent"}]


def test_coverage_by_hand():
    # Content morphemes of "학생이 학교에 간다.": 학생/NNG 학교/NNG 가/VV = {학생, 학교, 가}
    # of "학생이 도서관에 갔다.": {학생, 도서관, 가}; shared {학생, 가}: 2/3.
    assert coverage(REF, PRED) == pytest.approx(2 / 3)
    assert coverage(REF, REF) == 1.0
    assert coverage("...!", "아무 말") == 1.0  # a source without content morphemes
    # 응답자/NNG 1,234→1234/SN 지지/NNG; the text writes 1234 without the separator and keeps all three.
    assert coverage("응답자 1,234명이 지지하였다.", "1234명의 응답자가 지지하였다.") == 1.0


def test_faithfulness_rate_and_no_facts():
    got = faithfulness("응답자의 23.4%가 지지하였다.", "1990년에 응답자의 23.4%가 지지하였다.")
    assert got == {
        "unsupported": [{"text": "1990년", "kind": "year", "start": 0, "end": 5, "reason": "absent"}],
        "n_facts": 2,
        "unsupported_rate": 0.5,
        "coverage": 1.0,
    }
    assert faithfulness(REF, PRED)["unsupported_rate"] == 0.0  # no facts at all


SAMPLES = [
    {"doc_id": "A", "ipc": "인문학", "summary": REF, "reference": REF},
    {"doc_id": "B", "ipc": "사회과학", "summary": "응답자의 23.4%가 지지하였다.",
     "reference": "1990년에 응답자의 23.4%가 지지하였다."},
]
PREDICTIONS = {
    "copy": [REF, "1990년에 응답자의 23.4%가 지지하였다."],
    "tuned": [PRED, "1990년에 응답자의 45.2%가 지지하였다."],
}


def test_score_shape_and_aggregates():
    got = score(SAMPLES, PREDICTIONS)
    assert got["tokenization"] == metrics.TOKENIZATION
    assert got["models"] == ["copy", "tuned"] and got["n_samples"] == 2
    assert set(got["aggregate"]) == {"copy", "tuned", "reference"}
    faith = {"unsupported_rate", "unsupported_rate_micro", "unsupported_per_sample", "coverage"}
    entity, length = {"prec_s", "entity_recall"}, {"length_chars", "length_deviation"}
    keys = {"rouge1", "rouge2", "rougeL", "rougeL_char", "length_ratio"} | faith | entity | length
    assert set(got["aggregate"]["copy"]) == keys | {"n_no_facts"} == set(got["aggregate"]["tuned"])
    assert set(got["aggregate"]["reference"]) == faith | {"n_no_facts", "prec_s", "length_chars"}
    s = got["samples"][1]
    assert (s["doc_id"], s["ipc"], s["summary"], s["reference"]) == tuple(SAMPLES[1].values())
    assert set(s["outputs"]["tuned"]) == keys - faith - entity | {
        "prediction", "unsupported", "n_facts", "unsupported_rate", "coverage", "target_chars", "n_entities",
        "n_entities_in_summary", "n_reference_entities", "n_reference_entities_found"}

    # Yardstick: reference A has no facts (left out of the rate, counted in n_no_facts) and keeps the summary
    # (coverage 1); reference B adds 1990년 to the summary's 23.4%: 1 of 2 facts unsupported, coverage 1.
    # Its entities: none in A; 1990 and 23.4 in B, the summary has 23.4: prec_s 1/2. Lengths 11 and 25 characters.
    assert got["aggregate"]["reference"] == {"unsupported_rate": 0.5, "unsupported_rate_micro": 0.5,
                                             "unsupported_per_sample": 0.5, "coverage": 1.0, "n_no_facts": 1,
                                             "prec_s": 0.5, "length_chars": 18.0}
    # "copy" reproduces the references: ROUGE 1, and the same faithfulness as the yardstick.
    copy = got["aggregate"]["copy"]
    assert {k: copy[k] for k in ("rouge1", "rouge2", "rougeL", "rougeL_char", "length_ratio")} == dict.fromkeys(
        ("rouge1", "rouge2", "rougeL", "rougeL_char", "length_ratio"), 1.0)
    assert (copy["unsupported_rate"], copy["unsupported_per_sample"], copy["coverage"]) == (0.5, 0.5, 1.0)

    # "tuned", sample A: the hand-worked pair above (8/13, 4/11, 8/13, 12/19); no facts; coverage 2/3;
    #   length 12/11 characters.
    # sample B: 1990 년 에 응답자 의 {45.2 | 23.4} 가 지지 하 었 다: 11 tokens each, one differs:
    #   rouge1 = rougeL = 10/11; bigrams 10 each, 2 touch the changed number: 8/10.
    #   characters without spaces: 22 each, the middles "45.2"/"23.4" share one ("."): LCS 18 + 1 = 19 -> 19/22.
    #   facts 1990년 and 45.2%, neither in the summary: rate 1, 2 unsupported; summary content {응답자, 23.4, 지지}
    #   keeps 응답자 and 지지: coverage 2/3; same length: ratio 1.
    tuned = got["aggregate"]["tuned"]
    assert tuned["rouge1"] == pytest.approx((8 / 13 + 10 / 11) / 2)
    assert tuned["rouge2"] == pytest.approx((4 / 11 + 8 / 10) / 2)
    assert tuned["rougeL"] == pytest.approx((8 / 13 + 10 / 11) / 2)
    assert tuned["rougeL_char"] == pytest.approx((12 / 19 + 19 / 22) / 2)
    # Sample A has no facts, so the rate is sample B's alone: 2 of 2 unsupported.
    assert tuned["unsupported_rate"] == tuned["unsupported_rate_micro"] == pytest.approx(1.0)
    assert tuned["n_no_facts"] == 1
    assert tuned["unsupported_per_sample"] == pytest.approx(1.0)
    assert tuned["coverage"] == pytest.approx(2 / 3)
    assert tuned["length_ratio"] == pytest.approx((12 / 11 + 1) / 2)
    # 12 and 25 characters against the references' 11 and 25; entities of B: 1990 and 45.2, neither the summary's
    # (prec_s 0/2), and of the reference's 1990 and 23.4 it has one (recall 1/2); A has none.
    assert (tuned["length_chars"], tuned["length_deviation"]) == (18.5, 0.5)
    assert (tuned["prec_s"], tuned["entity_recall"]) == (0.0, 0.5)
    out = got["samples"][1]["outputs"]["tuned"]
    assert [u["text"] for u in out["unsupported"]] == ["1990년", "45.2%"] and out["n_facts"] == 2
    for u in out["unsupported"]:
        assert out["prediction"][u["start"] : u["end"]] == u["text"]


def test_micro_rate_pools_facts_and_no_fact_samples_are_left_out():
    summary = "응답자 10명의 23.4%가 지지하였다."
    samples = [{"summary": summary, "reference": summary}] * 3
    # sample 1: 1 fact, unsupported (1/1); sample 2: 3 facts, 1 unsupported (1/3); sample 3: no facts.
    preds = {"m": ["응답자 11명이 지지하였다.", "응답자 10명의 23.4%와 45.2%가 지지하였다.", "응답자가 지지하였다."]}
    agg = score(samples, preds, n_resamples=50)["aggregate"]["m"]
    assert agg["unsupported_rate"] == pytest.approx((1 + 1 / 3) / 2)  # per-sample mean over samples with facts
    assert agg["unsupported_rate_micro"] == pytest.approx(2 / 4)  # all facts pooled
    assert agg["unsupported_per_sample"] == pytest.approx(2 / 3)  # over all samples
    assert agg["n_no_facts"] == 1
    none = score(samples[:1], {"m": ["응답자가 지지하였다."]}, n_resamples=50)
    assert none["aggregate"]["m"]["unsupported_rate"] is None and none["aggregate"]["m"]["n_no_facts"] == 1
    assert none["intervals"]["models"]["m"]["unsupported_rate"] is None


def test_bootstrap_intervals_by_hand():
    # Two samples whose ROUGE-1 is 1 and 0: a resample of two has mean 0, 0.5 or 1 with chances 1/4, 1/2, 1/4, so
    # the 2.5th and 97.5th percentiles of 1000 resamples are 0 and 1.
    samples = [{"summary": REF, "reference": REF}, {"summary": "경제 성장", "reference": "경제 성장"}]
    got = score(samples, {"m": [REF, "정치 변화"]})
    assert got["intervals"]["models"]["m"]["rouge1"] == [0.0, 1.0]
    assert got["intervals"]["n_resamples"] == 1000 and got["intervals"]["confidence"] == 0.95
    assert "paired" in got["intervals"]["method"]


def test_paired_difference_keeps_samples_together():
    # Model b invents exactly one more number than model a on every sample, while the samples themselves differ a
    # lot (0 to 3 invented numbers). Resampled together, the difference is 1 in every resample: its interval is
    # [1, 1], though each model's own interval is wide. An unpaired bootstrap would give a wide difference too.
    summary = "응답자 10명이 지지하였다."
    extra = ["", " 21명", " 21명 22명", " 21명 22명 23명"]
    samples = [{"doc_id": str(i), "summary": summary, "reference": summary} for i in range(4)]
    preds = {"a": [f"응답자 10명{e}" for e in extra], "b": [f"응답자 10명{e} 99명" for e in extra]}
    got = score(samples, preds, n_resamples=500, seed=1)
    lo, hi = got["intervals"]["models"]["a"]["unsupported_per_sample"]
    assert hi - lo >= 1.5
    (diff,) = [d for d in got["intervals"]["differences"] if (d["a"], d["b"]) == ("b", "a")]
    assert diff["metrics"]["unsupported_per_sample"] == {"difference": 1.0, "ci95": [1.0, 1.0]}
    # Every model is also compared with the human reference (model - reference), on the fact metrics it has.
    vs_ref = [d for d in got["intervals"]["differences"] if d["b"] == "reference"]
    assert [d["a"] for d in vs_ref] == ["a", "b"] and "rouge1" not in vs_ref[0]["metrics"]
    assert vs_ref[0]["metrics"]["unsupported_per_sample"]["difference"] == pytest.approx(1.5)
    # Seeded: the same seed gives the same intervals.
    assert score(samples, preds, n_resamples=500, seed=1)["intervals"] == got["intervals"]


def test_summarise_pools_the_loss_over_tokens():
    got = score(SAMPLES, PREDICTIONS, n_resamples=50)
    # evaluate writes each sample's loss per token and its token count; the aggregate weights by tokens.
    for row, (loss, n) in zip(got["samples"], [(1.0, 10), (2.0, 30)]):
        row["outputs"]["tuned"].update(loss=loss, loss_tokens=n)
    metrics.summarise(got, n_resamples=50)
    agg = got["aggregate"]["tuned"]
    assert agg["loss"] == pytest.approx((10 * 1.0 + 30 * 2.0) / 40)
    assert agg["perplexity"] == pytest.approx(2.718281828 ** 1.75)
    assert "loss" not in got["aggregate"]["copy"]
    lo, hi = got["intervals"]["models"]["tuned"]["loss"]
    assert 1.0 <= lo <= agg["loss"] <= hi <= 2.0


def test_score_stores_nfc_text_and_is_json_ready():
    import json

    nfd = [{**s, "reference": unicodedata.normalize("NFD", s["reference"])} for s in SAMPLES]
    got = score(nfd, {"m": [unicodedata.normalize("NFD", p) for p in PREDICTIONS["tuned"]]})
    assert got["samples"][1]["reference"] == SAMPLES[1]["reference"]
    assert json.loads(json.dumps(got, ensure_ascii=False)) == got


def test_score_rejects_bad_input_in_one_line():
    with pytest.raises(UserError, match="model 'copy' has 2 predictions for 1 samples"):
        score(SAMPLES[:1], PREDICTIONS)
    with pytest.raises(UserError, match="no 'reference'"):
        score([{"summary": "요약"}], {"m": ["출력"]})
    with pytest.raises(UserError, match="reference"):
        score(SAMPLES, {"reference": ["a", "b"]})


def test_import_is_cheap():
    # Kiwi and matplotlib load only when needed: `writemypaper --help` must stay fast.
    code = ("import sys, writemypaper.metrics, writemypaper.report; "
            "print('kiwipiepy' in sys.modules, 'matplotlib' in sys.modules)")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.split() == ["False", "False"]


# ---------------------------------------------------------------------------------------------------------------------
# Korean numbers the fact check once misread (grounded decoding reads them the same way: tests/test_grounding.py)


def test_mixed_scales_multiply_once():
    # 1천2백만 was read as 1,000 + 2,000,000.
    assert _flagged("예산은 12,000,000원이었다.", "예산은 1천2백만 원이었다.") == []
    assert _flagged("예산은 2,001,000원이었다.", "예산은 1천2백만 원이었다.") == ["1천2백만 원"]
    # The source writes the value twice, so three uses are within the count rule (twice plus one restatement).
    assert _flagged("예산 120,000,000원, 즉 1.2억 원", "1억 2천만 원, 1.2억 원, 1억2천만 원") == []
    assert _flagged("125,000명", "12.5만 명") == []


def test_a_sign_is_part_of_the_value():
    # −3.5% (U+2212) and -3.5% were supported by 3.5%: a sign flip is another claim.
    assert _flagged("변화율은 3.5%였다.", "변화율은 −3.5%, -3.5%였다.") == ["−3.5%", "-3.5%"]
    assert _flagged("변화율은 −3.5%였다.", "변화율은 -3.5%였다.") == []
    assert _flagged("변화율은 −3.5%였다.", "변화율은 3.5%였다.") == ["3.5%"]
    assert _flagged("r=.45", "r=-.45") == ["-.45"]
    # A hyphen between numbers is a range, not a sign; and COVID-19 writes no -19.
    assert _flagged("3개에서 5개", "3-5개") == []
    assert _flagged("−5~−3℃", "5~3℃") == ["5~3℃"]


def test_every_member_of_a_list_is_checked():
    # In 1,2,9단계 only the 1 was checked.
    assert [v for v, _ in quantities("1,2,9단계")] == [1, 2, 9]
    assert _flagged("1,2단계", "1,2,9단계") == ["1,2,9"]
    assert _flagged("1단계, 2단계, 9단계", "1,2,9단계") == []
    # Exactly three digits after the comma group thousands: 1,234명 is one number.
    assert quantities("1,234명") == [(1234, "명")]
    assert _flagged("1234명", "1,234명") == [] and _flagged("1,2,3,4명", "1,234명") == ["1,234명"]


def test_full_width_digits_read_as_ascii():
    assert _flagged("응답률은 95%였다.", "응답률은 ９５％였다.") == []
    assert _flagged("응답률은 96%였다.", "응답률은 ９５％였다.") == ["９５％"]
    assert extract_facts("９５％") == [Fact("９５％", "number", 0, 3)]


def test_leading_dot_decimals_and_ranges():
    assert _flagged("p<0.05", "p<.05") == [] and _flagged("p<.05", "p<.5") == [".5"]
    assert _flagged("3%에서 5%로 늘었다.", "3~5%") == [] and _flagged("3~5%", "3%에서 5%로") == []
    assert _flagged("３～５％", "3%에서 5%로") == []
    assert _flagged("3~5%", "3%에서 6%로") == ["6%"]


# ---------------------------------------------------------------------------------------------------------------------
# entity precision and recall (prec_s, Nan et al. 2021), and the length in characters

PREC_SUMMARY = "서울 청소년 1,200명 중 45%가 BTS를 좋아했다."
PREC_PRED = "서울과 부산 청소년 1200명 중 45%가 BTS와 NCT를 좋아했다(2019년)."
PREC_REF = "서울 청소년 1,200명과 부산 청소년 300명 중 45%가 BTS를 좋아했다."


def test_entities_by_hand():
    # Kiwi's proper nouns 서울, 부산; the values 1,200 = 1200, 45, 300, 2019; Latin BTS, NCT (case-folded).
    assert entities(PREC_SUMMARY) == {"서울", "#1200", "#45", "bts"}
    assert entities(PREC_PRED) == {"서울", "부산", "#1200", "#45", "bts", "nct", "#2019"}
    assert entities(PREC_REF) == {"서울", "부산", "#1200", "#300", "#45", "bts"}


def test_prec_s_and_recall_by_hand():
    got = score([{"summary": PREC_SUMMARY, "reference": PREC_REF}], {"m": [PREC_PRED]}, n_resamples=100)
    out = got["samples"][0]["outputs"]["m"]
    # Of the abstract's 7 entities, 서울 1200 45 bts are the summary's: 4/7. Of the reference's 6, the abstract has
    # all but 300: 5/6.
    assert (out["n_entities"], out["n_entities_in_summary"]) == (7, 4)
    assert (out["n_reference_entities"], out["n_reference_entities_found"]) == (6, 5)
    agg = got["aggregate"]
    assert agg["m"]["prec_s"] == pytest.approx(4 / 7) and agg["m"]["entity_recall"] == pytest.approx(5 / 6)
    # The reference has its own prec_s (서울 1200 45 bts of its 6: 4/6); recall against itself means nothing.
    assert agg["reference"]["prec_s"] == pytest.approx(4 / 6) and "entity_recall" not in agg["reference"]


def test_length_in_characters_and_deviation_from_the_target():
    # Characters including spaces (공백 포함): "가나다 라마" is 6, "가나다라" 4.
    samples = [{"summary": "가나다", "reference": "가나다라"}]
    got = score(samples, {"m": ["가나다 라마"]}, n_resamples=100)
    out = got["samples"][0]["outputs"]["m"]
    assert (out["length_chars"], out["target_chars"], out["length_deviation"]) == (6, 4, 2)  # no target: the reference
    assert got["aggregate"]["m"]["length_chars"] == 6 and got["aggregate"]["m"]["length_deviation"] == 2
    assert got["aggregate"]["reference"]["length_chars"] == 4 and "length_deviation" not in got["aggregate"]["reference"]
    got = score(samples, {"m": ["가나다 라마"]}, n_resamples=100, targets={"m": 5})
    assert got["samples"][0]["outputs"]["m"]["length_deviation"] == 1
    assert got["aggregate"]["reference"]["length_deviation"] == 1  # the human abstract against the same target
    assert got["targets"] == {"m": 5}


def _entity_pairs(n: int) -> tuple[list[dict], list[str]]:
    # Every other abstract adds a year the summary lacks: prec_s 1/1 and 1/2 alternate, pooled 2/3.
    samples = [{"summary": f"값은 {i + 10}%였다.", "reference": f"값은 {i + 10}%였다."} for i in range(n)]
    preds = [f"값은 {i + 10}%였다." + (" 1999년." if i % 2 else "") for i in range(n)]
    return samples, preds


def test_entity_interval_holds_the_point_and_narrows_with_more_pairs():
    widths = []
    for n in (8, 64):
        samples, preds = _entity_pairs(n)
        got = score(samples, {"m": preds}, n_resamples=1000)
        point, (lo, hi) = got["aggregate"]["m"]["prec_s"], got["intervals"]["models"]["m"]["prec_s"]
        assert point == pytest.approx(2 / 3) and lo <= point <= hi
        lo_d, hi_d = got["intervals"]["models"]["m"]["length_deviation"]
        assert lo_d <= got["aggregate"]["m"]["length_deviation"] <= hi_d
        widths.append(hi - lo)
    assert widths[1] < widths[0] / 2
