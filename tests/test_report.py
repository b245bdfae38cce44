"""The HTML report: self-contained, Korean kept and escaped, invented facts marked, plots inline."""

from __future__ import annotations

import html
import re
from html.parser import HTMLParser

import pytest

from writemypaper.metrics import Fact, score
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
    assert re.search(r"<tr><td>Unsupported facts / facts</td>.*?<td class=\"yardstick\">0\.250</td></tr>", page)
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
