"""The HTML report: self-contained, Korean kept and escaped, invented facts marked, plots inline."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from writemypaper.factcheck import Fact
from writemypaper.metrics import score
from writemypaper.report import highlight, write_report

EVIL = "<script>alert(1)</script>"
SAMPLES = [
    {"doc_id": "D-1", "ipc": "인문학", "summary": "학생이 학교에 간다.", "reference": "학생이 학교에 간다."},
    {"doc_id": "D-2", "ipc": "사회과학", "summary": "응답자의 23.4%가 A&B 정책을 지지하였다.",
     "reference": "1990년에 응답자의 23.4%가 A&B 정책을 지지하였다."},
]
PREDICTIONS = {
    "base": ["학생이 도서관에 갔다.", f"{EVIL} 응답자가 지지하였다."],
    "tuned<v2>": ["학생이 학교에 간다.", "2001년에 응답자의 45.2%가 A&B 정책을 지지하였다."],
}
LOG_HISTORY = [
    {"step": 100, "loss": 2.1, "learning_rate": 2e-4},
    {"step": 200, "loss": 1.7},
    {"step": 200, "eval_loss": 1.9},
    {"step": 300, "loss": 1.5},
    {"step": 300, "eval_loss": 1.8},
    {"step": 300, "train_runtime": 12.0},
]


@pytest.fixture(scope="module")
def scores():
    s = score(SAMPLES, PREDICTIONS)
    s["aggregate"]["base"].update(loss=1.9, perplexity=6.69)
    s["aggregate"]["tuned<v2>"].update(loss=1.8, perplexity=6.05)
    return s


@pytest.fixture(scope="module")
def page(scores, tmp_path_factory):
    path = write_report(scores, tmp_path_factory.mktemp("r") / "report.html", log_history=LOG_HISTORY)
    return path.read_text(encoding="utf-8")


class _Tags(HTMLParser):
    def __init__(self):
        super().__init__()
        self.tags, self.attrs = [], []

    def handle_starttag(self, tag, attrs):
        self.tags.append(tag)
        self.attrs.extend(attrs)


def test_self_contained(page):
    assert page.startswith("<!doctype html>") and '<meta charset="utf-8">' in page
    assert "Noto Sans CJK KR" in page and "Malgun Gothic" in page
    parser = _Tags()
    parser.feed(page)
    # No scripts, stylesheets or images fetched from anywhere: every src/href is local.
    assert "script" not in parser.tags and "link" not in parser.tags and "iframe" not in parser.tags
    assert not re.search(r"""(?:src|href)\s*=\s*["']?\s*(?:https?:)?//""", page, re.I)
    for name, value in parser.attrs:
        if name in ("src", "href", "xlink:href"):
            assert value is None or value.startswith(("#", "data:")), (name, value)


def test_tokenization_table_and_best_values(page, scores):
    assert f"<code>{html.escape(scores['tokenization'])}</code>" in page
    # Model names are escaped in the table; "tuned<v2>" copied sample 1's reference, so it wins rougeL (bold).
    assert "<th>tuned&lt;v2&gt;</th>" in page and "tuned<v2>" not in page
    row = re.search(r"<tr><td>ROUGE-L F1 \(morphemes\)</td>(.*?)</tr>", page).group(1)
    cells = re.findall(r"<td[^>]*>(.*?)</td>", row)
    assert cells[1].startswith("<strong>") and not cells[0].startswith("<strong>")
    assert cells[2] == "—"  # the yardstick has no ROUGE
    # The yardstick: reference D-2 adds 1990년 to the summary's 23.4%: 1 of 2 facts pooled; D-1 has no facts.
    row = re.search(r"<tr><td>Unsupported facts / facts \(all facts pooled\)</td>(.*?)</tr>", page).group(1)
    assert '<td class="yardstick">0.500<span class="ci">[0.500, 0.500]</span></td>' in row
    row = re.search(r"<tr><td>Samples without facts</td>(.*?)</tr>", page).group(1)
    # Both models wrote sample D-1 without a fact, like its reference.
    assert re.findall(r"<td[^>]*>(\d+)", row) == ["1", "1", "1"]
    assert "<tr><td>Perplexity</td><td>6.69</td><td><strong>6.05</strong></td>" in page


def test_korean_text_escaped_and_marks(page):
    assert "학생이 도서관에 갔다." in page  # Korean stays readable text, not entities
    assert "A&amp;B 정책을" in page and "A&B" not in page
    # The invented 2001년 and 45.2% are marked with their kind; the reference's 1990년 is marked as the yardstick's.
    assert '<mark class="fact-year" title="year not found in the summary">2001년</mark>' in page
    assert '<mark class="fact-number" title="number not found in the summary">45.2%</mark>' in page
    assert '<mark class="fact-year" title="year not found in the summary">1990년</mark>' in page
    # 23.4% is in the summary, so it is never marked.
    assert ">23.4%</mark>" not in page


def test_malicious_prediction_is_escaped(page):
    assert EVIL not in page
    # "script" and "alert" are themselves Latin terms that the summary lacks, so they come marked; without the marks
    # the text is the escaped prediction.
    assert '<mark class="fact-latin" title="Latin-script term not found in the summary">alert</mark>' in page
    unmarked = re.sub(r"</?mark[^>]*>", "", page)
    assert "&lt;script&gt;alert(1)&lt;/script&gt; 응답자가 지지하였다." in unmarked


def test_plots_inline_and_loss_only_with_history(page, scores, tmp_path):
    assert page.count("<svg") == 2 and 'id="loss"' in page
    assert "validation loss" in page and "<?xml" not in page
    without = write_report(scores, tmp_path / "no-loss.html").read_text(encoding="utf-8")
    assert without.count("<svg") == 1 and 'id="loss"' not in without and "validation loss" not in without


def test_highlight_escapes_and_skips_stale_offsets():
    text = "<b>1990년</b>에 45.2%"
    facts = [Fact("1990년", "year", 3, 8), {"text": "45.2%", "kind": "number", "start": 14, "end": 19},
             {"text": "없음", "kind": "number", "start": 0, "end": 2}]  # offsets that do not hold their text
    assert highlight(text, facts) == (
        '&lt;b&gt;<mark class="fact-year" title="year not found in the summary">1990년</mark>&lt;/b&gt;에 '
        '<mark class="fact-number" title="number not found in the summary">45.2%</mark>'
    )
    assert highlight('"따옴" & 끝', []) == "&quot;따옴&quot; &amp; 끝"


def test_report_is_written_atomically(scores, tmp_path):
    path = write_report(scores, tmp_path / "sub" / "report.html", title="평가 <1>")
    assert path.exists() and [p.name for p in path.parent.iterdir()] == ["report.html"]
    assert "<title>평가 &lt;1&gt;</title>" in path.read_text(encoding="utf-8")


def test_columns_intervals_and_differences(scores, tmp_path):
    scored = {**scores, "columns": {
        "base": {"model": "base", "model_ref": "gemma3-270m", "decoding": "plain",
                 "description": "greedy, numbers unconstrained", "output_tokens_per_s": 12.5},
        "tuned<v2>": {"model": "tuned", "decoding": "grounded+4",
                      "description": "sampled (temperature 0.7, top-p 0.9, top-k 50, seed 0), numbers grounded in "
                                     "the summary, best of 4 by the fact check", "output_tokens_per_s": 3.25}}}
    page = write_report(scored, tmp_path / "r.html").read_text(encoding="utf-8")
    columns = page[page.index('<section id="columns">'):page.index('<section id="aggregate">')]
    assert ("<td>base</td><td>gemma3-270m</td><td>plain</td><td>greedy, numbers unconstrained</td><td>12.5</td>"
            in columns)
    assert "best of 4 by the fact check" in columns and "tuned&lt;v2&gt;" in columns
    # ROUGE-L cells carry their interval; "tuned<v2>" copied sample 1's reference (1.0) and kept sample 2's words.
    row = re.search(r"<tr><td>ROUGE-L F1 \(morphemes\)</td>(.*?)</tr>", page).group(1)
    lo, hi = scores["intervals"]["models"]["tuned<v2>"]["rougeL"]
    assert f'<span class="ci">[{lo:.3f}, {hi:.3f}]</span>' in row
    # Differences: tuned<v2> - base, then each column minus the reference.
    diffs = page[page.index('<section id="differences">'):page.index('<section id="distributions">')]
    labels = re.findall(r"<tr><td>([^<]*?) − ([^<]*?)</td>", diffs)
    assert labels == [("tuned&lt;v2&gt;", "base"), ("base", "reference (human abstract)"),
                      ("tuned&lt;v2&gt;", "reference (human abstract)")]
    d = scores["intervals"]["differences"][0]["metrics"]["rougeL"]
    cell = f'{d["difference"]:+.3f}<span class="ci">[{d["ci95"][0]:+.3f}, {d["ci95"][1]:+.3f}]</span>'
    assert cell in diffs
    # Bold exactly where the interval excludes 0.
    assert (f'<td class="sig">{cell}' in diffs) == (d["ci95"][0] > 0 or d["ci95"][1] < 0)


def test_sample_table_is_capped_worst_and_best_first(tmp_path):
    summary = "응답자 10명이 지지하였다."
    # Sample i invents i numbers (i = 0..6), so the worst are 6, 5, ... and the best 0, 1, ...
    preds = ["응답자 10명이 지지하였다." + "".join(f" {20 + k}명" for k in range(i)) for i in range(7)]
    samples = [{"doc_id": f"D{i}", "summary": summary, "reference": summary} for i in range(7)]
    s = score(samples, {"m": preds}, n_resamples=100)
    page = write_report(s, tmp_path / "r.html", max_samples=4).read_text(encoding="utf-8")
    assert re.findall(r'<article class="sample" id="sample-(\d+)">', page) == ["7", "6", "1", "2"]
    assert "4 of 7 samples: the 2 with the most unsupported facts" in page
    assert "Aggregate over all 7 samples" in page  # the aggregates still cover every sample
    every = write_report(s, tmp_path / "all.html", max_samples=10).read_text(encoding="utf-8")
    assert every.count('<article class="sample"') == 7 and "All 7 samples." in every
    # The page stays small: 200 samples cost about what 7 do, beyond the capped table.
    many = score(samples * 30, {"m": preds * 30}, n_resamples=100)
    big = write_report(many, tmp_path / "big.html", max_samples=4).read_text(encoding="utf-8")
    assert big.count('<article class="sample"') == 4 and len(big) < 1.5 * len(page)


def test_texts_without_facts_get_no_rate(tmp_path):
    # Neither the output nor the reference has a fact: no rate to show (not a perfect 0), one sample without facts.
    s = score([{"summary": "학생이 학교에 간다.", "reference": "학생이 학교에 간다."}], {"m": ["학생이 도서관에 갔다."]},
              n_resamples=100)
    assert s["aggregate"]["m"]["unsupported_rate"] is None
    page = write_report(s, tmp_path / "r.html").read_text(encoding="utf-8")
    assert "<tr><td>Unsupported facts / facts" not in page
    row = re.search(r"<tr><td>Samples without facts</td>(.*?)</tr>", page).group(1)
    assert re.findall(r"<td[^>]*>(\d+)", row) == ["1", "1"]
    assert page.count("<svg") == 1  # the distributions still draw, with an empty box for the rate


def test_models_side_by_side_with_entity_precision_and_length(scores, page):
    side = page[page.index('<section id="side-by-side">'):page.index('<section id="aggregate">')]
    heads = re.findall(r"<th>([^<]*)</th>", side)
    assert heads == ["Column", "ROUGE-L F1", "Unsupported (pooled)", "prec_s", "Entity recall", "Length (자)",
                     "|Length − target| (자)"]
    rows = re.findall(r"<tr[^>]*><td>([^<]*)</td>(.*?)</tr>", side)
    assert [name for name, _ in rows] == ["base", "tuned&lt;v2&gt;", "reference (human abstract)"]
    agg, cis = scores["aggregate"], scores["intervals"]["models"]
    # Each cell: the value, then its interval; the reference row has its own prec_s and length, no recall.
    cells = dict(rows)
    for name, key in (("tuned<v2>", "prec_s"), ("tuned<v2>", "entity_recall"), ("reference", "prec_s"),
                      ("base", "length_chars"), ("tuned<v2>", "length_deviation")):
        lo, hi = cis[name][key]
        digits = 1 if key.startswith("length") else 3
        text = f'{agg[name][key]:.{digits}f}<span class="ci">[{lo:.{digits}f}, {hi:.{digits}f}]</span>'
        row = cells["reference (human abstract)" if name == "reference" else html.escape(name)]
        assert text in row, (name, key)
    # Against itself the reference has no ROUGE-L and no recall, and without a target no deviation.
    assert cells["reference (human abstract)"].count("<td>—</td>") == 3
    # The aggregate table and the differences carry them too.
    assert "Entity precision prec_s" in page and "Length (characters including spaces, 자)" in page
    diffs = page[page.index('<section id="differences">'):page.index('<section id="distributions">')]
    assert "<th>prec_s</th>" in diffs and "<th>|length − target|</th>" in diffs


def test_highlight_names_why_a_figure_is_flagged():
    facts = [{"text": "1.6배", "kind": "number", "start": 3, "end": 7, "reason": "repeated"},
             {"text": "30명", "kind": "number", "start": 12, "end": 15, "reason": "noun"}]
    out = highlight("이는 1.6배, 교사 30명이다", facts)
    assert ('<mark class="fact-number why-repeated" title="number: written more often than the summary writes it, '
            'plus one restatement">1.6배</mark>') in out
    assert '<mark class="fact-number why-noun" title="number: quantifies another noun than in the summary">' in out
    assert 'title="year not found in the summary"' in highlight("1999년", [Fact("1999년", "year", 0, 5)])
