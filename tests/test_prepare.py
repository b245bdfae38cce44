"""`writemypaper prepare`: layouts, checks, normalization, splits, errors and atomic output, on tiny Korean fixtures."""

import json
import subprocess
import sys
import unicodedata
import zipfile

import pyarrow.parquet as pq
import pytest

from writemypaper import cli, data
from writemypaper.errors import UserError
from writemypaper.text import normalize


def write_json(path, value):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(value, ensure_ascii=False), encoding="utf-8")
    return path


def write_jsonl(path, docs):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(json.dumps(d, ensure_ascii=False) + "\n" for d in docs), encoding="utf-8")
    return path


def rows(out, split=None):
    """All rows of a prepared dir (or of one split) as dicts, in file order."""
    return [r for s in ([split] if split else data.SPLITS) for r in pq.read_table(out / f"{s}.parquet").to_pylist()]


def split_ids(out):
    return {s: {r["doc_id"] for r in rows(out, s)} for s in data.SPLITS}


def run(inputs, out, **kw):
    return data.prepare(inputs=[str(p) for p in inputs], out=out, progress=False, **kw)


# ---------------------------------------------------------------------------------------------------------------------
# layouts


def _layout_a(tmp, docs):
    return [write_json(tmp / "a.json", [{"name": "part1", "data": docs[:2]}, {"name": "part2", "data": docs[2:]}])]


def _layout_b(tmp, docs):
    return [write_json(tmp / "b.json", {"data": docs})]


def _layout_c(tmp, docs):
    return [write_json(tmp / "c.json", docs)]


def _layout_jsonl(tmp, docs):
    return [write_jsonl(tmp / "d.jsonl", docs)]


def _layout_directory(tmp, docs):
    root = tmp / "corpus"
    write_json(root / "x" / "1.json", [{"data": docs[:1]}])
    write_jsonl(root / "y" / "z" / "2.JSONL", docs[1:3])
    write_json(root / "3.json", {"data": docs[3:]})
    (root / "README.txt").write_text("not a corpus file")
    (root / ".hidden.json").write_text("{ broken")  # hidden files are not read
    (root / ".git").mkdir()
    (root / ".git" / "x.json").write_text("{ broken")
    return [root]


def _layout_zip(tmp, docs):
    z = tmp / "corpus.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("train/a.json", json.dumps([{"data": docs[:2]}], ensure_ascii=False))
        zf.writestr("train/b.jsonl", "\n".join(json.dumps(d, ensure_ascii=False) for d in docs[2:4]))
        zf.writestr("__MACOSX/train/._a.json", b"\x00\x05\x16\x07 resource fork")
        zf.writestr("notes.txt", "ignored")
        inner = tmp / "inner.zip"
        with zipfile.ZipFile(inner, "w") as izf:
            izf.writestr("c.json", json.dumps(docs[4:], ensure_ascii=False))
        zf.write(inner, "nested/inner.zip")
    return [z]


def _layout_mixed(tmp, docs):
    return (_layout_a(tmp, docs[:2]) + _layout_jsonl(tmp, docs[2:3])
            + [_layout_directory(tmp / "d", docs[3:5])[0]] + _layout_zip(tmp, docs[5:]))


@pytest.mark.parametrize("layout", [_layout_a, _layout_b, _layout_c, _layout_jsonl, _layout_directory, _layout_zip,
                                    _layout_mixed], ids=lambda f: f.__name__[8:])
def test_every_layout_is_read(tmp_path, make_doc, layout):
    docs = [make_doc(f"D{i:02d}", ipc=["인문학", "사회과학"][i % 2]) for i in range(7)]
    stats = run(layout(tmp_path, docs), tmp_path / "out")
    assert set().union(*split_ids(tmp_path / "out").values()) == {d["doc_id"] for d in docs}
    assert stats["totals"] == {"documents_read": 7, "documents": 7, "pairs": 7}
    assert sum(stats["skipped"].values()) == 0
    assert sum(i["documents"] for i in stats["inputs"]) == 7


def test_inputs_are_listed_file_by_file_with_zip_members(tmp_path, make_doc):
    docs = [make_doc(f"D{i}") for i in range(6)]
    stats = run(_layout_zip(tmp_path, docs), tmp_path / "out")
    z = str(tmp_path / "corpus.zip")
    assert stats["inputs"] == [{"path": f"{z}:nested/inner.zip:c.json", "documents": 2},
                               {"path": f"{z}:train/a.json", "documents": 2},
                               {"path": f"{z}:train/b.jsonl", "documents": 2}]


def test_directory_walk_is_sorted_and_skips_prepared_dirs(tmp_path, make_doc):
    root = tmp_path / "corpus"
    write_json(root / "b" / "2.json", [make_doc("B")])
    write_json(root / "a" / "1.json", [make_doc("A")])
    write_json(root / "0.json", [make_doc("Z")])
    out = root / "prepared"
    run([root], out)
    stats = run([root], out, overwrite=True)  # the second run must not read the first run's stats.json
    names = [i["path"][len(str(root)) + 1:] for i in stats["inputs"]]
    assert names == ["0.json", "a/1.json", "b/2.json"]
    # a file named directly and again through its directory is read once, so nothing counts as a duplicate
    stats = run([root / "a" / "1.json", root], tmp_path / "out2")
    assert stats["totals"]["documents_read"] == 3 and stats["skipped"]["duplicate_doc_id"] == 0


def test_original_text_spelling_is_accepted(tmp_path, make_doc):
    doc = make_doc("D1")
    doc["summary_entire"] = [{"original_text": p["orginal_text"], "summary_text": p["summary_text"]}
                             for p in doc["summary_entire"]]
    run([write_json(tmp_path / "c.json", [doc])], tmp_path / "out", val_fraction=0, test_fraction=0)
    assert rows(tmp_path / "out")[0]["original"] == doc["summary_entire"][0]["original_text"]


# ---------------------------------------------------------------------------------------------------------------------
# granularity and normalization


@pytest.mark.parametrize("granularity, expected", [
    ("entire", [("entire", 0)]),
    ("section", [("section", 0), ("section", 1), ("section", 2)]),
    ("both", [("entire", 0), ("section", 0), ("section", 1), ("section", 2)]),
])
def test_granularity(tmp_path, make_doc, granularity, expected):
    doc = make_doc("D1", sections=3)
    run([write_json(tmp_path / "c.json", [doc])], tmp_path / "out", granularity=granularity,
        val_fraction=0, test_fraction=0)
    got = rows(tmp_path / "out")
    assert [(r["granularity"], r["pair_index"]) for r in got] == expected
    assert list(got[0]) == list(data.COLUMNS)
    for r in got:
        src = doc["summary_entire"][0] if r["granularity"] == "entire" else doc["summary_section"][r["pair_index"]]
        assert (r["summary"], r["original"]) == (src["summary_text"], src["orginal_text"])
        assert (r["doc_id"], r["title"], r["ipc"]) == ("D1", doc["title"], "인문학")


def test_several_entire_items_are_joined_with_spaces(tmp_path, make_doc):
    doc = make_doc("D1", sections=2)
    doc["summary_entire"] = doc["summary_section"]  # two items
    run([write_json(tmp_path / "c.json", [doc])], tmp_path / "out", val_fraction=0, test_fraction=0)
    (r,) = rows(tmp_path / "out")
    secs = doc["summary_section"]
    assert r["original"] == secs[0]["orginal_text"] + " " + secs[1]["orginal_text"]
    assert r["summary"] == secs[0]["summary_text"] + " " + secs[1]["summary_text"]


def test_nfd_input_comes_out_nfc_with_hanja_dots_units_unchanged(tmp_path):
    original = "한ㆍ중ㆍ일 對句 연구에서   온도는 25℃,\n응답률은 87%였으며\t표본은 1,200명이었다."
    summary = "對句 연구: 25℃, 87%,  1,200명."
    nfd = lambda s: unicodedata.normalize("NFD", s)  # noqa: E731
    assert nfd(original) != original  # the fixture really is decomposed
    doc = {"doc_id": "D1", "title": nfd("  한국어 제목 "), "ipc": nfd("인문학"),
           "summary_entire": [{"orginal_text": nfd(original), "summary_text": nfd(summary)}], "summary_section": []}
    run([write_json(tmp_path / "c.json", [doc])], tmp_path / "out", val_fraction=0, test_fraction=0)
    (r,) = rows(tmp_path / "out")
    assert r["original"] == "한ㆍ중ㆍ일 對句 연구에서 온도는 25℃, 응답률은 87%였으며 표본은 1,200명이었다."
    assert r["summary"] == "對句 연구: 25℃, 87%, 1,200명."
    assert (r["title"], r["ipc"]) == ("한국어 제목", "인문학")
    assert all(unicodedata.is_normalized("NFC", r[k]) for k in ("title", "ipc", "summary", "original"))


def test_normalize_is_nfc_not_nfkc():
    # NFKC would turn ㆍ into ᆞ and ℃ into °C; the corpus's own characters must survive.
    assert normalize(" 한ㆍ중\u3000 25℃ 對句 ") == "한ㆍ중 25℃ 對句"


# ---------------------------------------------------------------------------------------------------------------------
# skipped records


def _pair(doc, **kw):
    doc["summary_entire"] = [kw]
    return doc


def test_each_bad_record_is_skipped_under_its_reason(tmp_path, make_doc):
    o, s = "본 연구는 한국어 논문 요약문을 원문으로 되살리는 방법을 다룬다.", "요약문을 원문으로 되살린다."
    first = make_doc("D1")
    docs = [
        first, make_doc("D2"), make_doc("D3", ipc="공학"),
        "not a document",  # wrong_type
        dict(make_doc("X"), doc_id=17),  # wrong_type
        {k: v for k, v in make_doc("X1").items() if k != "title"},  # missing_field
        {k: v for k, v in make_doc("X2").items() if k != "summary_entire"},  # missing_field
        dict(make_doc("D1"), title="중복 문서"),  # duplicate_doc_id
        _pair(make_doc("X3"), orginal_text=o, summary_text=""),  # empty_summary
        _pair(make_doc("X4"), orginal_text=o),  # empty_summary (absent)
        dict(make_doc("X5"), summary_entire=[]),  # empty_summary (no pair at all)
        _pair(make_doc("X6"), orginal_text=" \n ", summary_text=s),  # empty_original
        _pair(make_doc("X7"), orginal_text=s, summary_text=o),  # summary_not_shorter
        _pair(make_doc("X8"), orginal_text=s, summary_text=s),  # summary_not_shorter (equal)
        _pair(make_doc("X9"), orginal_text=o, summary_text=["list"]),  # wrong_type
        dict(make_doc("X10"), summary_entire="text"),  # wrong_type
    ]
    stats = run([write_json(tmp_path / "c.json", [{"data": docs}, {"data": 5}])], tmp_path / "out")  # data: 5 -> wrong_type
    assert stats["skipped"] == {"wrong_type": 5, "missing_field": 2, "duplicate_doc_id": 1, "empty_summary": 3,
                                "empty_original": 1, "summary_not_shorter": 2, "too_short": 0, "too_long": 0}
    assert list(stats["skipped"]) == list(data.SKIP_REASONS)
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8"))["skipped"] == stats["skipped"]
    kept = {r["doc_id"]: r for r in rows(tmp_path / "out")}
    assert set(kept) == {"D1", "D2", "D3"}
    assert kept["D1"]["title"] == first["title"]  # the first of the duplicates is kept


def test_min_and_max_chars(tmp_path, make_doc):
    docs = [make_doc("D1", sections=3)]
    # section summaries are 31, 27 and 20 characters; originals 65, 70 and 61
    lens = [(len(p["summary_text"]), len(p["orginal_text"])) for p in docs[0]["summary_section"]]
    assert lens == [(31, 65), (27, 70), (20, 61)]
    stats = run([write_json(tmp_path / "c.json", docs)], tmp_path / "out", granularity="section",
                val_fraction=0, test_fraction=0, min_chars=25, max_chars=66)
    assert (stats["skipped"]["too_short"], stats["skipped"]["too_long"]) == (1, 1)
    assert [r["pair_index"] for r in rows(tmp_path / "out")] == [0]


def test_section_skips_keep_the_other_sections(tmp_path, make_doc):
    doc = make_doc("D1", sections=3)
    doc["summary_section"][1]["summary_text"] = ""
    stats = run([write_json(tmp_path / "c.json", [doc])], tmp_path / "out", granularity="both",
                val_fraction=0, test_fraction=0)
    assert stats["skipped"]["empty_summary"] == 1
    assert [(r["granularity"], r["pair_index"]) for r in rows(tmp_path / "out")] == [
        ("entire", 0), ("section", 0), ("section", 2)]
    assert stats["totals"] == {"documents_read": 1, "documents": 1, "pairs": 3}


def test_strict_exit_code(tmp_path, make_doc, capsys):
    good = write_json(tmp_path / "good.json", [make_doc(f"D{i}") for i in range(4)])
    bad = write_json(tmp_path / "bad.json", [make_doc(f"D{i}") for i in range(4)] + [make_doc("D0")])
    assert cli.main(["prepare", "--input", str(good), "--out", str(tmp_path / "o1"), "--strict", "-q"]) == 0
    assert cli.main(["prepare", "--input", str(bad), "--out", str(tmp_path / "o2"), "-q"]) == 0
    assert cli.main(["prepare", "--input", str(bad), "--out", str(tmp_path / "o3"), "--strict", "-q"]) == 1
    captured = capsys.readouterr()
    assert "duplicate_doc_id" in captured.out  # the table names the reason
    assert "--strict: 1 records were skipped" in captured.err


# ---------------------------------------------------------------------------------------------------------------------
# unreadable input: one line, exit 2, no traceback


def _zip_without_json(p):
    with zipfile.ZipFile(p, "w") as zf:
        zf.writestr("readme.txt", "설명서")


BAD_INPUTS = {
    "truncated": ("t.json", '[{"data": [{"doc_id": "가", "title": "제목"', ["truncated JSON", "ends at line 1, column 41"]),
    "malformed": ("m.json", '[\n  {"data": [}\n]', ["malformed JSON at line 2, column 13"]),
    "malformed_jsonl": ("m.jsonl", '{"doc_id": "a"}\n{"doc_id": \n', ["m.jsonl:2: malformed JSON at column 12"]),
    "not_utf8": ("k.json", '[{"data": [{"doc_id": "가나다"}]}]'.encode("cp949"), ["not UTF-8", "CP949"]),
    "not_utf8_jsonl": ("k.jsonl", '{"doc_id": "a"}\n{"doc_id": "가나다"}\n'.encode("cp949"), ["k.jsonl:2: not UTF-8", "CP949"]),
    "empty_file": ("e.json", "", ["empty file"]),
    "not_a_corpus": ("n.json", '{"model": "gemma"}', ["not a corpus file"]),
    "zip_without_json": ("z.zip", _zip_without_json, ["holds no .json or .jsonl"]),
    "broken_zip": ("b.zip", b"PK\x03\x04 not really a zip", ["not a readable zip archive"]),
    "unsupported_type": ("x.csv", "doc_id,title\n", ["not a .json, .jsonl or .zip file"]),
    "no_documents": ("0.json", "[]", ["no documents found"]),
    "missing_path": ("missing.json", None, ["no such file or directory"]),
}


@pytest.mark.parametrize("case", list(BAD_INPUTS))
def test_unreadable_input_is_one_line_error(tmp_path, capsys, case):
    name, content, expected = BAD_INPUTS[case]
    p = tmp_path / name
    if callable(content):
        content(p)
    elif isinstance(content, bytes):
        p.write_bytes(content)
    elif content is not None:
        p.write_text(content, encoding="utf-8")
    out = tmp_path / "out"
    assert cli.main(["prepare", "--input", str(p), "--out", str(out), "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and err.startswith("writemypaper: error: ")
    if case != "no_documents":
        assert str(p) in err
    for e in expected:
        assert e in err
    assert not out.exists() and [x.name for x in tmp_path.iterdir() if x.name.startswith(".out")] == []


def test_bad_member_of_a_zip_is_named(tmp_path, make_doc):
    z = tmp_path / "c.zip"
    with zipfile.ZipFile(z, "w") as zf:
        zf.writestr("ok.json", json.dumps([make_doc("D1")]))
        zf.writestr("sub/bad.json", '{"data": [')
    with pytest.raises(UserError, match=r"c\.zip:sub/bad\.json: truncated JSON"):
        run([z], tmp_path / "out")


def test_options_are_checked_together(tmp_path):
    with pytest.raises(UserError) as e:
        data.prepare(inputs=[], out=tmp_path / "o", granularity="page", val_fraction=0.6, test_fraction=0.5,
                     min_chars=-1, progress=False)
    for word in ("no --input", "--granularity", "leaves nothing to train on", "--min-chars"):
        assert word in str(e.value)


def test_subprocess_error_has_no_traceback(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('[{"data": [{"doc_id": ', encoding="utf-8")
    r = subprocess.run([sys.executable, "-m", "writemypaper", "prepare", "--input", str(bad), "--out",
                        str(tmp_path / "out")], capture_output=True, text=True, timeout=60)
    assert r.returncode == 2
    assert "Traceback" not in r.stderr
    assert r.stderr.strip().count("\n") == 0
    assert r.stderr.startswith(f"writemypaper: error: {bad}: truncated JSON")


# ---------------------------------------------------------------------------------------------------------------------
# splits

FIELDS = ["인문학", "사회과학", "공학", "자연과학"]


def _fields_corpus(tmp_path, make_doc, per_field=20):
    docs = [make_doc(f"{f}-{i:03d}", ipc=f) for f in FIELDS for i in range(per_field)]
    return write_json(tmp_path / "corpus.json", [{"data": docs}])


def test_splits_are_by_document_disjoint_and_stratified(tmp_path, make_doc):
    stats = run([_fields_corpus(tmp_path, make_doc)], tmp_path / "out", granularity="both")
    ids = split_ids(tmp_path / "out")
    assert not (ids["train"] & ids["validation"] or ids["train"] & ids["test"] or ids["validation"] & ids["test"])
    assert sum(map(len, ids.values())) == 80
    for s in ("validation", "test"):  # 10% of 20 documents in each of the 4 fields
        assert stats["splits"][s]["fields"] == {f: {"documents": 2, "pairs": 6} for f in sorted(FIELDS)}
    for s in data.SPLITS:
        assert stats["splits"][s]["documents"] == len(ids[s])
        assert stats["splits"][s]["pairs"] == len(rows(tmp_path / "out", s)) == 3 * len(ids[s])


def test_split_is_deterministic_for_a_seed_and_changes_with_it(tmp_path, make_doc):
    corpus = _fields_corpus(tmp_path, make_doc)
    run([corpus], tmp_path / "a", seed=7)
    run([corpus], tmp_path / "b", seed=7)
    run([corpus], tmp_path / "c", seed=8)
    assert rows(tmp_path / "a") == rows(tmp_path / "b")
    assert split_ids(tmp_path / "a")["test"] != split_ids(tmp_path / "c")["test"]


def test_split_does_not_depend_on_reading_order():
    docs = [(f"d{i}", FIELDS[i % 4]) for i in range(50)]
    assert data.split_documents(docs, 0.1, 0.2, 3) == data.split_documents(docs[::-1], 0.1, 0.2, 3)


@pytest.mark.parametrize("n", [3, 4, 7])
def test_small_corpus_still_gets_validation_and_test(n):
    got = data.split_documents([(f"d{i}", "인문학") for i in range(n)], 0.1, 0.1, 0)
    counts = {s: list(got.values()).count(s) for s in data.SPLITS}
    assert counts["validation"] == counts["test"] == 1 and counts["train"] == n - 2


def test_zero_fractions_put_everything_in_train(tmp_path, make_doc):
    run([_fields_corpus(tmp_path, make_doc, per_field=2)], tmp_path / "out", val_fraction=0, test_fraction=0)
    assert [len(v) for v in split_ids(tmp_path / "out").values()] == [8, 0, 0]
    assert len(data.load_split(tmp_path / "out", "test")) == 0


# ---------------------------------------------------------------------------------------------------------------------
# stats, terminal table, reading back


def test_stats_json(tmp_path, make_doc):
    corpus = _fields_corpus(tmp_path, make_doc, per_field=5)
    stats = run([corpus], tmp_path / "out", granularity="both", seed=3, min_chars=5)
    assert json.loads((tmp_path / "out" / "stats.json").read_text(encoding="utf-8")) == stats
    assert stats["options"] == {"inputs": [str(corpus)], "granularity": "both", "val_fraction": 0.1,
                                "test_fraction": 0.1, "seed": 3, "min_chars": 5, "max_chars": 4000,
                                "split": "random"}
    assert stats["inputs"] == [{"path": str(corpus), "documents": 20}] and stats["skipped_files"] == []
    for s in stats["splits"].values():
        assert s["documents"] == sum(f["documents"] for f in s["fields"].values())
    lengths = stats["lengths"]
    all_rows = rows(tmp_path / "out")
    assert lengths["original"]["max"] == max(len(r["original"]) for r in all_rows)
    assert lengths["by_granularity"]["section"]["summary"]["max"] == max(
        len(r["summary"]) for r in all_rows if r["granularity"] == "section")
    for k in ("summary", "original"):
        p = lengths[k]
        assert 0 < p["p50"] <= p["p90"] <= p["p99"] <= p["max"]
    assert sorted(p.name for p in (tmp_path / "out").iterdir()) == [
        "stats.json", "test.parquet", "train.parquet", "validation.parquet", "writemypaper.json"]


def test_table_is_printed(tmp_path, make_doc, capsys):
    corpus = _fields_corpus(tmp_path, make_doc, per_field=10)
    assert cli.main(["prepare", "--input", str(corpus), "--out", str(tmp_path / "out"), "-q"]) == 0
    captured = capsys.readouterr()
    for word in ("공학", "train", "validation", "test", "p99", "skipped records: none", "read 40 documents"):
        assert word in captured.out
    assert captured.err == ""  # -q: no progress bar


def test_load_split_and_read_stats(tmp_path, make_doc):
    out = tmp_path / "out"
    stats = run([_fields_corpus(tmp_path, make_doc)], out)
    ds = data.load_split(out, "validation")
    assert ds.column_names == list(data.COLUMNS)
    assert len(ds) == stats["splits"]["validation"]["pairs"] == 8
    assert data.read_stats(out) == stats


def test_load_split_errors(tmp_path):
    with pytest.raises(UserError, match="no such directory"):
        data.load_split(tmp_path / "nope", "train")
    with pytest.raises(UserError, match="not a prepared directory"):
        data.load_split(tmp_path, "train")
    with pytest.raises(UserError, match="unknown split 'val'"):
        data.load_split(tmp_path, "val")
    (tmp_path / "stats.json").write_text('{"format": "writemypaper-prepared"}')
    with pytest.raises(UserError, match="train.parquet: missing"):
        data.load_split(tmp_path, "train")


# ---------------------------------------------------------------------------------------------------------------------
# atomic output


def _fail_writing(monkeypatch):
    def boom(self, *a, **kw):
        raise OSError("disk full")

    monkeypatch.setattr(pq.ParquetWriter, "write_table", boom)


def test_failed_run_leaves_no_dir(tmp_path, make_doc, monkeypatch):
    corpus = _fields_corpus(tmp_path, make_doc, per_field=3)
    _fail_writing(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        run([corpus], tmp_path / "out")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json"]


def test_failed_run_keeps_the_previous_dir(tmp_path, make_doc, monkeypatch):
    corpus = _fields_corpus(tmp_path, make_doc, per_field=3)
    out = tmp_path / "out"
    run([corpus], out, seed=1)
    before = {p.name: p.read_bytes() for p in out.iterdir()}
    _fail_writing(monkeypatch)
    with pytest.raises(OSError, match="disk full"):
        run([corpus], out, seed=2, overwrite=True)
    assert {p.name: p.read_bytes() for p in out.iterdir()} == before
    assert sorted(p.name for p in tmp_path.iterdir()) == ["corpus.json", "out"]
    monkeypatch.undo()
    run([corpus], out, seed=2, overwrite=True)  # a successful run replaces it
    assert data.read_stats(out)["options"]["seed"] == 2


def test_out_that_is_not_a_prepared_dir_is_not_replaced(tmp_path, make_doc):
    corpus = _fields_corpus(tmp_path, make_doc, per_field=1)
    precious = tmp_path / "mine"
    precious.mkdir()
    (precious / "thesis.txt").write_text("내 논문")
    with pytest.raises(UserError, match="not a prepared directory"):
        run([corpus], precious)
    with pytest.raises(UserError, match="would replace the input"):
        run([corpus], tmp_path)
    assert (precious / "thesis.txt").read_text() == "내 논문"


# ---------------------------------------------------------------------------------------------------------------------
# a folder as AIHub ships it: a stray meta.json, and its own Training/Validation split


def test_a_stray_json_in_a_folder_is_skipped_with_its_reason(tmp_path, make_doc, capsys):
    write_json(tmp_path / "in" / "corpus.json", [{"data": [make_doc(f"D{i}") for i in range(5)]}])
    write_json(tmp_path / "in" / "meta.json", {"dataset": "논문자료 요약", "version": "1.0"})
    with zipfile.ZipFile(tmp_path / "in" / "more.zip", "w") as zf:
        zf.writestr("labels/E1.json", json.dumps([make_doc("E1")], ensure_ascii=False))
        zf.writestr("labels/info.json", '"설명"')
    out = tmp_path / "out"
    assert cli.main(["prepare", "--input", str(tmp_path / "in"), "--out", str(out), "-q"]) == 0
    err = capsys.readouterr().err
    assert f"writemypaper: skipped {tmp_path / 'in' / 'meta.json'}: not a corpus file" in err
    assert "more.zip:labels/info.json: not a corpus file" in err
    stats = json.loads((out / "stats.json").read_text(encoding="utf-8"))
    assert stats["totals"]["documents"] == 6
    assert [f["path"] for f in stats["skipped_files"]] == [str(tmp_path / "in" / "meta.json"),
                                                           f"{tmp_path / 'in' / 'more.zip'}:labels/info.json"]


def _aihub(root, make_doc, training="1.Training", validation="2.Validation", n=12):
    """AIHub's layout: labels under numbered Training/Validation folders, zipped on the Training side."""
    train_ids = [f"T{i:02d}" for i in range(n)]
    val_ids = [f"V{i:02d}" for i in range(n // 3)]
    (root / training / "라벨링데이터").mkdir(parents=True)
    with zipfile.ZipFile(root / training / "라벨링데이터" / "TL_논문.zip", "w") as zf:
        zf.writestr("TL_논문/part1.json", json.dumps([{"data": [make_doc(d) for d in train_ids]}], ensure_ascii=False))
    write_json(root / validation / "라벨링데이터" / "VL_논문.json", [{"data": [make_doc(d) for d in val_ids]}])
    write_json(root / "meta.json", {"name": "논문자료 요약"})
    return set(train_ids), set(val_ids)


@pytest.mark.parametrize("training, validation", [("1.Training", "2.Validation"), ("Training", "Validation"),
                                                  ("01.훈련데이터", "02.검증데이터")])
def test_split_aihub_keeps_aihubs_own_folders(tmp_path, make_doc, capsys, training, validation):
    train_ids, val_ids = _aihub(tmp_path / "aihub", make_doc, training, validation)
    out = tmp_path / "out"
    assert cli.main(["prepare", "--input", str(tmp_path / "aihub"), "--out", str(out), "--split", "aihub",
                     "--val-fraction", "0.25", "-q"]) == 0
    ids = split_ids(out)
    assert ids["test"] == val_ids  # AIHub's Validation is what papers report on: our test split
    assert ids["train"] | ids["validation"] == train_ids and len(ids["validation"]) == 3
    assert "--split aihub: AIHub's Validation is the test split" in capsys.readouterr().err
    assert json.loads((out / "stats.json").read_text(encoding="utf-8"))["options"]["split"] == "aihub"


def test_split_aihub_refuses_a_layout_without_its_folders(tmp_path, make_doc, capsys):
    write_json(tmp_path / "flat" / "a.json", [make_doc("D1"), make_doc("D2")])
    out = tmp_path / "out"
    assert cli.main(["prepare", "--input", str(tmp_path / "flat"), "--out", str(out), "--split", "aihub", "-q"]) == 2
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "--split aihub: no Training or Validation folder" in err
    # documents outside the two folders, or a Training folder alone, are refused too
    _aihub(tmp_path / "mixed", make_doc)
    write_json(tmp_path / "mixed" / "extra" / "b.json", [make_doc("X1")])
    with pytest.raises(UserError, match=r"1 documents lie under no Training or Validation folder .*b\.json"):
        run([tmp_path / "mixed"], out, split="aihub")
    with pytest.raises(UserError, match="no documents under a Validation folder"):
        run([tmp_path / "mixed" / "1.Training"], out, split="aihub")
    assert not out.exists()
