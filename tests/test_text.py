"""The one JSONL reader and the one NFC normalisation: prepare's corpus files and generate/evaluate's inputs are read
by the same code, so a bad line is refused the same way, naming the file and the line."""

import json

import pytest

from writemypaper import data, text
from writemypaper.errors import UserError
from writemypaper.evaluate import read_predictions
from writemypaper.generate import read_inputs


def test_a_line_separator_inside_a_string_is_not_a_new_line(tmp_path):
    # json.dumps(ensure_ascii=False) writes U+2028 raw; str.splitlines() would cut the record in two there.
    p = tmp_path / "in.jsonl"
    p.write_text(json.dumps({"summary": "첫 문장\u2028둘째 문장"}, ensure_ascii=False) + "\r\n\n", encoding="utf-8")
    assert read_inputs(p) == [{"summary": "첫 문장\u2028둘째 문장"}]


def test_a_byte_order_mark_is_dropped(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes("\ufeff".encode() + json.dumps({"summary": "요약"}, ensure_ascii=False).encode())
    assert read_inputs(p) == [{"summary": "요약"}]


def test_cp949_is_refused_with_its_line_and_the_fix(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_bytes('{"summary": "a", "reference": "b", "prediction": "c"}\n'.encode()
                  + '{"summary": "가나다"}\n'.encode("cp949"))
    with pytest.raises(UserError, match=r"in\.jsonl:2: not UTF-8 text .*iconv -f cp949"):
        read_predictions(p)


def test_one_message_for_a_malformed_line_in_every_verb(tmp_path):
    p = tmp_path / "in.jsonl"
    p.write_text('{"summary": "x", "reference": "y", "prediction": "z"}\n{"summary": \n', encoding="utf-8")
    with pytest.raises(UserError) as inputs:
        read_inputs(p)
    with pytest.raises(UserError) as predictions:
        read_predictions(p)
    with pytest.raises(UserError) as corpus:
        data.prepare([p], tmp_path / "out", progress=False)
    assert str(inputs.value) == str(predictions.value) == str(corpus.value) == \
        f"{p}:2: malformed JSON at column 13: Expecting value"


def test_normalize_is_nfc_with_whitespace_collapsed():
    decomposed = "\u1112\u1161\u11ab  \t\u1100\u1173\u11af\n"  # 한글, as macOS writes file names
    assert text.nfc(decomposed) == "한  \t글\n"
    assert text.normalize(decomposed) == "한 글"
    assert text.normalize("한ㆍ중 25℃ ＡＢ") == "한ㆍ중 25℃ ＡＢ"  # NFC, not NFKC
