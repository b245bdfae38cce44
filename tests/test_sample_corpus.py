"""The shipped sample corpus (data/sample/*.json) is big and varied enough, well-formed, faithful (every number,
Latin-script term and Hanja in a summary is in its original) and read by `prepare` without a single skip."""

import json
import re
import unicodedata
from collections import Counter
from pathlib import Path

import pytest

from writemypaper import data

FILES = sorted((Path(__file__).resolve().parents[1] / "data" / "sample").glob("*.json"))
KEYS = ("doc_id", "title", "date", "doc_type", "issued_by", "author", "reg_no", "ipc", "summary_entire", "summary_section")
# A "fact" is a number (1,200 / 43.6), a Latin-script token (Praat, SNS, COVID-19) or a run of Hanja (弄絃).
FACT = re.compile(r"\d+(?:[.,]\d+)*|[A-Za-z][A-Za-z0-9\-]*|[\u4e00-\u9fff]+")


@pytest.fixture(scope="module")
def docs():
    assert FILES, "no data/sample/*.json"
    out = []
    for f in FILES:
        wrappers = json.loads(f.read_text(encoding="utf-8"))
        assert isinstance(wrappers, list) and all(isinstance(w, dict) and isinstance(w.get("data"), list)
                                                  for w in wrappers), f"{f.name}: not a list of {{data: [...]}} wrappers"
        out += [d for w in wrappers for d in w["data"]]
    return out


def _no_problems(problems):
    assert not problems, f"{len(problems)} problems:\n" + "\n".join(problems[:40])


def test_size_and_variety(docs):
    ids = Counter(d.get("doc_id") for d in docs)
    fields = Counter(d.get("ipc") for d in docs)
    assert len(docs) >= 150, f"{len(docs)} documents in {[f.name for f in FILES]}"
    assert len(fields) >= 6, f"fields: {dict(fields)}"
    assert [i for i, n in ids.items() if n > 1] == [], "duplicate doc_ids"


def test_every_document_has_every_field(docs):
    _no_problems([f"{d.get('doc_id')}: missing {k}" for d in docs for k in KEYS if k not in d])


def test_pair_counts(docs):
    _no_problems([f"{d['doc_id']}: {len(d['summary_entire'])} summary_entire pairs, {len(d['summary_section'])} "
                  "summary_section pairs (want 1 and 2-4)"
                  for d in docs if len(d["summary_entire"]) != 1 or not 2 <= len(d["summary_section"]) <= 4])


def test_lengths_and_ratio(docs):
    problems = []
    for d in docs:
        o, s = d["summary_entire"][0]["orginal_text"], d["summary_entire"][0]["summary_text"]
        if not 300 <= len(o) <= 800:
            problems.append(f"{d['doc_id']}: original has {len(o)} characters (want 300-800)")
        if not 0.30 <= len(s) / len(o) <= 0.50:
            problems.append(f"{d['doc_id']}: summary is {len(s) / len(o):.3f} of its original (want 0.30-0.50)")
    _no_problems(problems)


def test_summaries_state_only_facts_of_their_original(docs):
    problems = []
    for d in docs:
        for p in d["summary_entire"] + d["summary_section"]:
            o, s = (unicodedata.normalize("NFC", p[k]) for k in ("orginal_text", "summary_text"))
            if len(s) >= len(o):
                problems.append(f"{d['doc_id']}: summary not shorter than its original")
            problems += [f"{d['doc_id']}: summary fact {f!r} is not in its original" for f in FACT.findall(s) if f not in o]
    _no_problems(problems)


def test_section_originals_are_parts_of_the_entire_original(docs):
    _no_problems([f"{d['doc_id']}: section original is not a verbatim part of the entire original"
                  for d in docs for p in d["summary_section"]
                  if p["orginal_text"] not in d["summary_entire"][0]["orginal_text"]])


@pytest.mark.parametrize("granularity", data.GRANULARITIES)
def test_prepare_reads_it_without_skips(tmp_path, docs, granularity):
    stats = data.prepare(inputs=FILES, out=tmp_path / "out", granularity=granularity, progress=False)
    assert {r: n for r, n in stats["skipped"].items() if n} == {}
    sections = sum(len(d["summary_section"]) for d in docs)
    pairs = {"entire": len(docs), "section": sections, "both": len(docs) + sections}[granularity]
    assert stats["totals"] == {"documents_read": len(docs), "documents": len(docs), "pairs": pairs}
    assert all(stats["splits"][s]["documents"] > 0 for s in data.SPLITS)
