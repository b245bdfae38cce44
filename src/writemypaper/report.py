"""One self-contained HTML page from scores.json: how each column was decoded, the columns side by side on the
headline figures (ROUGE-L, unsupported facts, prec_s, entity recall, length in 자), the aggregates over all samples
with 95% intervals, paired differences, score distributions, the loss curve, and a capped set of samples side by
side with the facts that no summary supports highlighted.

    writemypaper evaluate ... writes scores.json and report.html through `write_report`.
"""

from __future__ import annotations

import html
import io
import math
import re
import warnings
from pathlib import Path
from typing import Iterable

from writemypaper.atomic import atomic_write_text
from writemypaper.factcheck import REASONS
from writemypaper.text import nfc

# (key, label, which value is best). "one": closest to 1. Keys missing from a model's aggregate are left out.
_METRICS = [
    ("rouge1", "ROUGE-1 F1 (morphemes)", "high"),
    ("rouge2", "ROUGE-2 F1 (morphemes)", "high"),
    ("rougeL", "ROUGE-L F1 (morphemes)", "high"),
    ("rougeL_char", "ROUGE-L F1 (characters)", "high"),
    ("coverage", "Coverage of the summary", "high"),
    ("unsupported_rate_micro", "Unsupported facts / facts (all facts pooled)", "low"),
    ("unsupported_rate", "Unsupported facts / facts (mean over samples with facts)", "low"),
    ("unsupported_per_sample", "Unsupported facts per sample", "low"),
    ("n_no_facts", "Samples without facts", None),
    ("prec_s", "Entity precision prec_s (entities, numbers, terms found in the summary)", "high"),
    ("entity_recall", "Entity recall (the reference's entities, numbers, terms found)", "high"),
    ("length_ratio", "Length / reference length (chars)", "one"),
    ("length_chars", "Length (characters including spaces, 자)", None),
    ("length_deviation", "|Length − target| (자, mean absolute deviation)", "low"),
    ("loss", "Loss", "low"),
    ("perplexity", "Perplexity", "low"),
]
_PLOTTED = [("rougeL", "ROUGE-L F1 (morphemes)"), ("rougeL_char", "ROUGE-L F1 (characters)"),
            ("unsupported_rate", "Unsupported facts / facts"), ("coverage", "Coverage of the summary")]
# Columns of the differences table: the metrics a decoding setting is meant to move, and what it must not cost.
_COMPARED = [("rougeL", "ROUGE-L"), ("rougeL_char", "ROUGE-L chars"),
             ("unsupported_rate_micro", "unsupported (pooled)"),
             ("unsupported_per_sample", "unsupported / sample"), ("coverage", "coverage"), ("prec_s", "prec_s"),
             ("entity_recall", "entity recall"), ("length_deviation", "|length − target|"), ("loss", "loss")]
# The headline: every column side by side, the reference last (key, heading, digits).
_HEADLINE = [("rougeL", "ROUGE-L F1", 3), ("unsupported_rate_micro", "Unsupported (pooled)", 3),
             ("prec_s", "prec_s", 3), ("entity_recall", "Entity recall", 3), ("length_chars", "Length (자)", 1),
             ("length_deviation", "|Length − target| (자)", 1)]
_YARDSTICK = "reference"
_KIND_NAMES = {"quoted": "quoted term", "latin": "Latin-script term", "hanja": "Hanja term"}
REPORT_SAMPLES = 50  # samples shown by default; scores.json keeps them all

_CSS = """
:root { color-scheme: light; }
body { font-family: "Noto Sans CJK KR", "Noto Sans KR", "Apple SD Gothic Neo", "Malgun Gothic", "Nanum Gothic",
       sans-serif; margin: 2rem auto; max-width: 1400px; padding: 0 1rem; color: #1d1d1f; line-height: 1.6; }
h1 { margin-bottom: .2rem; } h2 { margin-top: 2.5rem; border-bottom: 1px solid #ddd; }
code { font-size: .85em; background: #f4f4f4; padding: .1rem .3rem; border-radius: 3px; word-break: break-word; }
.meta, .note { color: #555; font-size: .9rem; }
table { border-collapse: collapse; margin: 1rem 0; font-variant-numeric: tabular-nums; }
th, td { border: 1px solid #ddd; padding: .35rem .7rem; text-align: right; }
th:first-child, td:first-child { text-align: left; }
thead th { background: #f6f6f6; }
.yardstick { background: #fafaf3; color: #555; font-style: italic; }
.plot svg { max-width: 100%; height: auto; }
.sample { border: 1px solid #e3e3e3; border-radius: 6px; margin: 1.2rem 0; padding: .6rem 1rem 1rem; }
.sample h3 { margin: .2rem 0 .6rem; font-size: 1rem; }
.row { display: grid; grid-template-columns: repeat(var(--cols), minmax(15rem, 1fr)); gap: .8rem; overflow-x: auto; }
.cell h4 { margin: 0 0 .3rem; font-size: .85rem; color: #444; }
.text { white-space: pre-wrap; word-break: keep-all; overflow-wrap: anywhere; margin: 0; font-size: .95rem; }
.scores { font-size: .78rem; color: #555; margin-top: .4rem; font-variant-numeric: tabular-nums; }
mark { background: #ffd54f; border-radius: 2px; padding: 0 1px; }
mark.why-repeated, mark.why-noun { background: #ffcc80; outline: 1px dashed #e65100; }
.ci { display: block; color: #777; font-size: .75rem; white-space: nowrap; }
.sig { font-weight: 600; }
"""


# ---------------------------------------------------------------------------------------------------------------------
# Text


def highlight(text: str, facts: Iterable) -> str:
    """Escaped HTML of `text` with each fact (a factcheck.Fact or its dict) wrapped in <mark title="...kind...">.

    Offsets index the NFC form of `text`, as factcheck.extract_facts gives them. A fact whose offsets do not hold its
    text, or that overlaps an earlier one, is left unmarked rather than marking the wrong characters.
    """
    text = nfc(text)
    facts = [f if isinstance(f, dict) else vars(f) for f in facts]
    out, pos = [], 0
    for f in sorted(facts, key=lambda f: (f["start"], f["end"])):
        start, end, kind = f["start"], f["end"], str(f.get("kind", "fact"))
        if start < pos or start >= end or text[start:end] != f.get("text"):
            continue
        name, reason = _KIND_NAMES.get(kind, kind), str(f.get("reason") or "absent")
        # A figure the summary has, in the wrong place, says why; any other fact is one the summary lacks.
        title = html.escape(f"{name}: {REASONS[reason]}" if reason in REASONS and reason != "absent"
                            else f"{name} not found in the summary")
        css = re.sub(r"[^a-z]", "", kind.lower())
        if reason != "absent":
            css += " why-" + re.sub(r"[^a-z]", "", reason.lower())
        out.append(html.escape(text[pos:start]))
        out.append(f'<mark class="fact-{css}" title="{title}">{html.escape(text[start:end])}</mark>')
        pos = end
    out.append(html.escape(text[pos:]))
    return "".join(out)


def _is_num(value) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool)


def _num(value, digits: int = 3) -> str:
    return f"{value:.{digits}f}" if _is_num(value) else "—"


# ---------------------------------------------------------------------------------------------------------------------
# Aggregate table


def _best(values: dict[str, float], rule: str) -> set[str]:
    if len(values) < 2:
        return set()
    key = {"high": lambda v: -v, "low": lambda v: v, "one": lambda v: abs(v - 1.0)}[rule]
    target = min(key(v) for v in values.values())
    return {m for m, v in values.items() if abs(key(v) - target) < 1e-12}


def _digits(key: str) -> int:
    return {"perplexity": 2, "n_no_facts": 0, "length_chars": 1, "length_deviation": 1}.get(key, 3)


def _ci_html(ci, digits: int) -> str:
    return f'<span class="ci">[{_num(ci[0], digits)}, {_num(ci[1], digits)}]</span>' if ci else ""


def _table(scores: dict) -> str:
    models = list(scores["models"])
    agg = scores["aggregate"]
    cis = scores.get("intervals", {}).get("models", {})
    yard = agg.get(_YARDSTICK, {})
    known = {k for k, _, _ in _METRICS}
    # Anything the evaluate verb adds later still shows up, without a "best" marking.
    extra = sorted({k for m in models for k, v in agg.get(m, {}).items() if k not in known and _is_num(v)})
    rows = list(_METRICS) + [(k, k, None) for k in extra]

    head = "".join(f"<th>{html.escape(m)}</th>" for m in models)
    lines = ["<table><thead><tr><th>Metric</th>" + head
             + '<th class="yardstick">Reference (human abstract)</th></tr></thead><tbody>']
    for key, label, rule in rows:
        values = {m: agg[m][key] for m in models if _is_num(agg.get(m, {}).get(key))}
        if not values:
            continue
        digits = _digits(key)
        best = _best(values, rule) if rule else set()
        cells = "".join(
            (f"<td><strong>{_num(values[m], digits)}</strong>" if m in best else f"<td>{_num(values.get(m), digits)}")
            + _ci_html(cis.get(m, {}).get(key), digits) + "</td>"
            for m in models
        )
        yardstick = (f'<td class="yardstick">{_num(yard.get(key), digits)}'
                     f'{_ci_html(cis.get(_YARDSTICK, {}).get(key), digits)}</td>')
        lines.append(f"<tr><td>{html.escape(label)}</td>{cells}{yardstick}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _headline_table(scores: dict) -> str:
    """Each column as a row, the reference last, on the figures that decide between them, each with its interval;
    a figure a row doesn't have (the reference's recall against itself, a length without target) is a dash."""
    agg, cis = scores["aggregate"], scores.get("intervals", {}).get("models", {})
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label, _ in _HEADLINE)
    lines = [f"<table><thead><tr><th>Column</th>{head}</tr></thead><tbody>"]
    for name in [*scores["models"], _YARDSTICK]:
        values = agg.get(name, {})
        cells = "".join(
            f"<td>{_num(values[k], d)}{_ci_html(cis.get(name, {}).get(k), d)}</td>" if _is_num(values.get(k))
            else "<td>—</td>" for k, _, d in _HEADLINE)
        label, css = ("reference (human abstract)", ' class="yardstick"') if name == _YARDSTICK else (name, "")
        lines.append(f"<tr{css}><td>{html.escape(label)}</td>{cells}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _length_note(scores: dict) -> str:
    targets = {t for t in (scores.get("targets") or {}).values()}
    against = (f"the target of {targets.pop()} asked for" if len(targets) == 1 and None not in targets
               else "each column's target, or the reference's length where none was asked")
    return (f"Lengths in {html.escape(scores.get('length_unit') or 'characters')}; the deviation is measured "
            f"against {html.escape(against)}.")


def _columns_table(scores: dict) -> str:
    """Which model and decoding each column is, in words (greedy or sampled with its seed, grounded, best of N)."""
    columns = scores.get("columns") or {}
    if not columns:
        return ""
    lines = ["<table><thead><tr><th>Column</th><th>Model</th><th>Decoding</th><th>How</th>"
             "<th>Output tokens/s</th></tr></thead><tbody>"]
    for name in scores["models"]:
        c = columns.get(name, {})
        model = c.get("model_ref") or c.get("model") or name
        if c.get("base") and c["base"] != "as saved":  # a QLoRA run: say which base its adapter sat on
            model = f"{model} (base: {c['base']})"
        lines.append(f"<tr><td>{html.escape(name)}</td><td>{html.escape(str(model))}</td>"
                     f"<td>{html.escape(str(c.get('decoding') or '—'))}</td>"
                     f"<td>{html.escape(str(c.get('description') or '—'))}</td>"
                     f"<td>{_num(c.get('output_tokens_per_s'), 1)}</td></tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


def _signed(value, digits: int = 3) -> str:
    return f"{value:+.{digits}f}" if _is_num(value) else "—"


def _differences_table(scores: dict) -> str:
    """Paired differences a − b with their 95% interval; an interval that excludes 0 is set in bold."""
    diffs = scores.get("intervals", {}).get("differences") or []
    if not diffs:
        return '<p class="note">One column only: nothing to compare.</p>'
    head = "".join(f"<th>{html.escape(label)}</th>" for _, label in _COMPARED)
    lines = [f"<table><thead><tr><th>a − b</th>{head}</tr></thead><tbody>"]
    for d in diffs:
        cells = []
        for key, _ in _COMPARED:
            m = d["metrics"].get(key)
            if not m:
                cells.append("<td>—</td>")
                continue
            ci = m.get("ci95")
            sig = ci is not None and (ci[0] > 0 or ci[1] < 0)
            text = (f"{_signed(m['difference'])}<span class=\"ci\">[{_signed(ci[0])}, {_signed(ci[1])}]</span>"
                    if ci else _signed(m["difference"]))
            cells.append(f'<td class="sig">{text}</td>' if sig else f"<td>{text}</td>")
        b = "reference (human abstract)" if d["b"] == _YARDSTICK else d["b"]
        lines.append(f"<tr><td>{html.escape(d['a'])} − {html.escape(b)}</td>{''.join(cells)}</tr>")
    lines.append("</tbody></table>")
    return "\n".join(lines)


# ---------------------------------------------------------------------------------------------------------------------
# Plots: inline SVG drawn with matplotlib's object API (no pyplot, so no global backend or figure state)


def _label(text: str) -> str:
    return text.replace("$", r"\$")  # a $ would switch matplotlib to mathtext


def _svg(fig) -> str:
    import matplotlib

    buf = io.StringIO()
    # Text stays text (the browser draws any Korean in a model name with the page's fonts); a fixed hash salt keeps
    # the element ids, and so the report, identical between runs.
    with matplotlib.rc_context({"svg.fonttype": "none", "svg.hashsalt": "writemypaper"}), warnings.catch_warnings():
        warnings.filterwarnings("ignore", message="Glyph .* missing from")
        fig.savefig(buf, format="svg", bbox_inches="tight", metadata={"Date": None})
    svg = buf.getvalue()
    # Inside HTML the XML declaration and DOCTYPE are noise, and the RDF metadata only names URLs.
    svg = svg[svg.index("<svg"):]
    return re.sub(r"<metadata>.*?</metadata>", "", svg, flags=re.S)


def _distributions_svg(scores: dict) -> str:
    from matplotlib.figure import Figure

    models = list(scores["models"])
    fig = Figure(figsize=(3.4 * len(_PLOTTED), 3.8), layout="constrained")
    for ax, (key, label) in zip(fig.subplots(1, len(_PLOTTED)), _PLOTTED):
        names = models[:]
        outs = [[s["outputs"][m] for s in scores["samples"]] for m in models]
        if key in ("unsupported_rate", "coverage"):
            names.append(_YARDSTICK)
            outs.append([s["reference_faithfulness"] for s in scores["samples"]])
        # A text without facts has no rate: it is left out of the box rather than drawn as a perfect 0.
        data = [[o[key] for o in col if key != "unsupported_rate" or o["n_facts"]] or [math.nan] for col in outs]
        if not names:
            ax.set_axis_off()
            continue
        ax.boxplot(data, showmeans=True)
        crowded = sum(len(n) for n in names) > 24
        ax.set_xticks(range(1, len(names) + 1), [_label(n) for n in names],
                      rotation=30 if crowded else 0, ha="right" if crowded else "center")
        ax.set_title(label, fontsize=10)
        ax.set_ylim(-0.05, 1.05)
        ax.grid(axis="y", alpha=0.3)
    fig.suptitle("Per-sample scores (box: quartiles, line: median, triangle: mean)", fontsize=10)
    return _svg(fig)


def _loss_svg(log_history: list[dict]) -> str | None:
    from matplotlib.figure import Figure

    train = [(e["step"], e["loss"]) for e in log_history if "step" in e and _is_num(e.get("loss"))]
    val = [(e["step"], e["eval_loss"]) for e in log_history if "step" in e and _is_num(e.get("eval_loss"))]
    if not train and not val:
        return None
    fig = Figure(figsize=(7, 3.6), layout="constrained")
    ax = fig.subplots()
    if train:
        ax.plot(*zip(*train), label="train loss", color="tab:blue")
    if val:
        ax.plot(*zip(*val), label="validation loss", color="tab:orange", marker="o")
    ax.set_xlabel("step")
    ax.set_ylabel("loss")
    ax.grid(alpha=0.3)
    ax.legend()
    return _svg(fig)


# ---------------------------------------------------------------------------------------------------------------------
# Samples


def _sample(i: int, s: dict, models: list[str]) -> str:
    ref_f = s["reference_faithfulness"]
    cells = [
        ("Summary (model input)", html.escape(s["summary"]), ""),
        ("Reference (human abstract)", highlight(s["reference"], ref_f["unsupported"]),
         f"unsupported {len(ref_f['unsupported'])}/{ref_f['n_facts']} · coverage {_num(ref_f['coverage'], 2)}"),
    ]
    for m in models:
        o = s["outputs"][m]
        cells.append((
            m,
            highlight(o["prediction"], o["unsupported"]),
            f"R-1 {_num(o['rouge1'])} · R-2 {_num(o['rouge2'])} · R-L {_num(o['rougeL'])} · "
            f"R-L chars {_num(o['rougeL_char'])}<br>unsupported {len(o['unsupported'])}/{o['n_facts']} · "
            f"coverage {_num(o['coverage'], 2)} · length {_num(o['length_ratio'], 2)}"
            + (f" · {o['length_chars']}자 (target {o['target_chars']})" if "length_chars" in o else "")
            + (f"<br>entities {o['n_entities_in_summary']}/{o['n_entities']} in the summary"
               if "n_entities" in o else ""),
        ))
    head = " · ".join(html.escape(str(x)) for x in (s.get("id"), s.get("doc_id"), s.get("ipc")) if x not in (None, ""))
    body = "".join(
        f'<div class="cell"><h4>{html.escape(name)}</h4><p class="text">{text}</p>'
        + (f'<div class="scores">{small}</div>' if small else "") + "</div>"
        for name, text, small in cells
    )
    return (f'<article class="sample" id="sample-{i + 1}"><h3>#{i + 1}{" · " + head if head else ""}</h3>'
            f'<div class="row" style="--cols: {len(cells)}">{body}</div></article>')


def pick_samples(scores: dict, limit: int) -> tuple[list[int], str]:
    """Indices of the samples to show, at most `limit`, and a note saying which. Beyond the limit: the half with the
    most unsupported facts over all columns (then the lowest ROUGE-L), then the half with the fewest (then the
    highest), so the page stays small at any test-set size and still shows where the models fail."""
    rows, models = scores["samples"], list(scores["models"])
    n = len(rows)
    if n <= limit:
        return list(range(n)), f"All {n} samples."

    def key(i: int) -> tuple:
        outs = [rows[i]["outputs"][m] for m in models]
        return (-sum(len(o["unsupported"]) for o in outs), sum(o["rougeL"] for o in outs), i)

    order = sorted(range(n), key=key)
    worst = order[:(limit + 1) // 2]
    best = order[len(order) - limit // 2:][::-1] if limit // 2 else []
    note = (f"{limit} of {n} samples: the {len(worst)} with the most unsupported facts over all columns (then the "
            f"lowest ROUGE-L), then the {len(best)} with the fewest (then the highest). Every sample is in "
            "scores.json and predictions.jsonl; the numbers (#) are their positions there.")
    return worst + best, note


# ---------------------------------------------------------------------------------------------------------------------
# Page


def write_report(scores: dict, path, log_history: list[dict] | None = None,
                 title: str = "writemypaper evaluation", max_samples: int = REPORT_SAMPLES) -> Path:
    """Write the evaluation as one HTML file with no external resources; returns its path.

    `scores` is metrics.score()'s dict (evaluate adds per-sample losses, `columns` and `settings`);
    `log_history` is the Hugging Face Trainer's state.log_history, drawn as the train/validation loss curve.
    Aggregates cover every sample; at most `max_samples` samples are shown (see `pick_samples`).
    """
    models = list(scores["models"])
    intervals = scores.get("intervals") or {}
    ci_note = (f" Under each value, its 95% interval ({html.escape(intervals['method'])})." if intervals else "")
    parts = [
        f"<header><h1>{html.escape(title)}</h1>",
        f'<p class="meta">{scores["n_samples"]} samples · columns: {html.escape(", ".join(models)) or "none"}</p>',
        f'<p class="meta">Tokenization: <code>{html.escape(scores["tokenization"])}</code></p></header>',
    ]
    if scores.get("columns"):
        parts += ['<section id="columns"><h2>Columns: model and decoding</h2>', _columns_table(scores), "</section>"]
    parts += [
        '<section id="side-by-side"><h2>Columns side by side</h2>', _headline_table(scores),
        '<p class="note">prec_s (Nan et al., 2021): the share of an output\'s named entities, numbers and terms '
        "(proper nouns, Latin and Hanja words, quoted terms, values) that its summary holds; entity recall: the share "
        f"of the reference's that the output holds, both pooled over all samples. {_length_note(scores)}"
        f"{ci_note}</p></section>",
        f'<section id="aggregate"><h2>Aggregate over all {scores["n_samples"]} samples</h2>',
        _table(scores),
        '<p class="note">ROUGE compares each output with the human abstract. Facts (numbers with their units, years, '
        "centuries, quoted, Latin and Hanja terms) and coverage are checked against the <em>summary</em>, the model's "
        "only input; the reference column applies the same check to the human abstract, as a yardstick. A text "
        "without facts is left out of the per-sample rate and counted apart. Best model value in bold."
        f"{ci_note}</p></section>",
    ]
    if intervals:
        parts += ['<section id="differences"><h2>Paired differences</h2>', _differences_table(scores),
                  '<p class="note">a − b on the same samples, with its 95% interval; bold where the interval excludes '
                  "0. Lower is better for the unsupported facts and the loss, higher for the others.</p>"
                  "</section>"]
    parts += ['<section id="distributions"><h2>Distributions</h2>',
              f'<div class="plot">{_distributions_svg(scores)}</div></section>']
    if log_history is not None:
        loss = _loss_svg(log_history)
        body = f'<div class="plot">{loss}</div>' if loss else '<p class="note">The log history has no losses.</p>'
        parts.append(f'<section id="loss"><h2>Training loss</h2>{body}</section>')
    shown, note = pick_samples(scores, max_samples)
    parts.append(f'<section id="samples"><h2>Samples</h2><p class="note">{html.escape(note)} <mark>Highlighted</mark>: '
                 "facts that the summary does not contain (hover for the kind).</p>")
    parts.extend(_sample(i, scores["samples"][i], models) for i in shown)
    parts.append("</section>")

    page = (
        '<!doctype html>\n<html lang="ko">\n<head>\n<meta charset="utf-8">\n'
        '<meta name="viewport" content="width=device-width, initial-scale=1">\n'
        f"<title>{html.escape(title)}</title>\n<style>{_CSS}</style>\n</head>\n<body>\n"
        + "\n".join(parts)
        + "\n</body>\n</html>\n"
    )
    return atomic_write_text(path, page)
