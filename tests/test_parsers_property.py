"""Property tests of the parsers that read what users type and hand us: generate's words (summary or override), the
CSV and text files of `generate --input`, and the corpus's JSON and JSONL files. Korean text with commas, quotes,
line breaks and `=` survives a write/read round trip; a malformed file is a UserError, never another exception.

    pytest tests/test_parsers_property.py
"""

import csv
import json
from collections import Counter

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from writemypaper import config, corpus
from writemypaper.errors import UserError
from writemypaper.generate import read_inputs

SETTINGS = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])

# Hangul syllables and jamo, Hanja, ASCII, and the characters that break naive parsers.
KOREAN = st.text(
    alphabet=st.one_of(st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3),
                       st.characters(min_codepoint=0x4E00, max_codepoint=0x4E3F),
                       st.sampled_from(list(",\"'=\n\r\t ;:.%℃ㆍ·-+/\\{}[]0123456789abcxyzXYZ_"))),
    max_size=60)
ANY_TEXT = st.text(max_size=200)  # every code point, lone surrogates aside


# ---------------------------------------------------------------------------------------------------------------------
# generate's words


@SETTINGS
@given(st.lists(st.one_of(KOREAN, st.from_regex(r"[a-z_]{1,12}(\.[a-z_]{1,12})?=[^\s]{0,8}", fullmatch=True)),
                max_size=6))
def test_every_word_is_an_override_or_text_and_never_both(words):
    overrides, text = config.split_overrides(words, "generate")
    assert sorted(overrides + text) == sorted(words)
    assert [w for w in words if w in text] == text  # the summary's words keep their order
    schema = config._schema("generate")
    for w in overrides:  # a known key, or a misspelt one that load_config will refuse, naming the right one
        key = w.partition("=")[0]
        assert key.split(".")[0] in schema or config.nearest_key(key, schema)


@SETTINGS
@given(st.builds(lambda a, h, b: (a + h + b).replace("=", ""), st.text(max_size=8),
                 st.characters(min_codepoint=0xAC00, max_codepoint=0xD7A3), st.text(max_size=8)),
       st.text(max_size=20))
def test_a_word_whose_key_holds_hangul_is_always_text(key, value):
    word = f"{key}={value}"
    assert config.split_overrides([word], "generate") == ([], [word])


@SETTINGS
@given(st.sampled_from(["generation.seed", "generation.temperature", "model", "batch_size", "precision"]), ANY_TEXT)
def test_a_known_key_is_always_an_override(key, value):
    word = f"{key}={value}"
    assert config.split_overrides([word], "generate") == ([word], [])


# ---------------------------------------------------------------------------------------------------------------------
# generate --input: CSV and text


@SETTINGS
@given(st.lists(st.tuples(KOREAN, KOREAN), min_size=1, max_size=8))
def test_csv_round_trip(tmp_path, cells):
    path = tmp_path / "in.csv"
    with open(path, "w", encoding="utf-8", newline="") as f:
        w = csv.writer(f)
        w.writerow(["summary", "메모=비고"])
        w.writerows(cells)
    kept = [{"summary": s, "메모=비고": m} for s, m in cells if s.strip()]
    if not kept:
        with pytest.raises(UserError, match="no summaries"):
            read_inputs(path)
    else:
        assert read_inputs(path) == kept


@SETTINGS
@given(st.one_of(st.binary(max_size=300), ANY_TEXT.map(lambda t: ("summary,x\n" + t).encode("utf-8", "replace"))))
@pytest.mark.parametrize("suffix", [".csv", ".txt", ".jsonl"])
def test_a_malformed_input_file_is_a_user_error(tmp_path, suffix, raw):
    path = tmp_path / f"in{suffix}"
    path.write_bytes(raw)
    try:
        rows = read_inputs(path)
    except UserError as e:
        assert str(e) and "\n" not in str(e)
    else:
        assert rows and all(isinstance(r["summary"], str) and r["summary"].strip() for r in rows)


# ---------------------------------------------------------------------------------------------------------------------
# the corpus's JSON and JSONL

DOC = st.fixed_dictionaries({
    "doc_id": KOREAN, "title": KOREAN, "ipc": KOREAN,
    "summary_entire": st.lists(st.fixed_dictionaries({"orginal_text": KOREAN, "summary_text": KOREAN}), max_size=2),
})


def _read(path):
    skipped, stray = Counter(), []
    docs = [d for _, d in corpus.read_path(path, skipped, stray=lambda where, why: stray.append(why))]
    return docs, skipped, stray


@SETTINGS
@given(st.lists(DOC, max_size=5), st.sampled_from(["wrapped", "bare", "jsonl"]))
def test_corpus_round_trip(tmp_path, docs, layout):
    if layout == "jsonl":
        path = tmp_path / "c.jsonl"
        path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    else:
        path = tmp_path / "c.json"
        path.write_text(json.dumps([{"data": docs}] if layout == "wrapped" else docs, ensure_ascii=False),
                        encoding="utf-8")
    read, skipped, stray = _read(path)
    assert read == docs and not skipped and not stray


@SETTINGS
@given(st.one_of(st.binary(max_size=300), ANY_TEXT.map(lambda t: t.encode("utf-8", "replace")),
                 st.recursive(st.none() | st.booleans() | st.integers() | KOREAN,
                              lambda inner: st.lists(inner, max_size=3) | st.dictionaries(
                                  st.sampled_from(["data", "doc_id", "title", "ipc", "summary_entire", "x"]), inner,
                                  max_size=4), max_leaves=12).map(lambda v: json.dumps(v).encode())),
       st.sampled_from([".json", ".jsonl"]))
def test_a_malformed_corpus_file_is_a_user_error(tmp_path, raw, suffix):
    path = tmp_path / f"c{suffix}"
    path.write_bytes(raw)
    try:
        docs, skipped, _ = _read(path)
    except UserError as e:
        assert str(e).startswith(str(path)) and "\n" not in str(e)
    else:  # whatever was read is then checked record by record, every skip under a known reason
        skipped = Counter()
        for d in docs:
            corpus.document_pairs(d, "both", 1, 4000, set(), skipped)
        assert set(skipped) <= set(corpus.SKIP_REASONS)


@pytest.mark.parametrize("suffix", [".json", ".jsonl"])
def test_json_nested_past_the_parsers_depth_is_a_user_error(tmp_path, suffix):
    path = tmp_path / f"deep{suffix}"
    path.write_text("[" * 100_000 + "]" * 100_000 + "\n", encoding="utf-8")
    with pytest.raises(UserError, match="nested too deeply"):
        _read(path)


@SETTINGS
@given(st.lists(st.text(max_size=12), max_size=5))
def test_aihub_folder_names_never_crash_and_match_whole(folders):
    part = corpus.aihub_part(folders)
    assert part in (None, "train", "validation", "test")
    assert corpus.aihub_part(["test_results", "trainer", "validations"]) is None
    assert corpus.aihub_part(["01.Training", *folders]) == "train"
