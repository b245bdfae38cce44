"""Scores for generated abstracts: ROUGE over Korean morphemes (morphemes.py), the fact check against the summary
(factcheck.py), entity precision and recall (prec_s), and the length in characters against its target, aggregated
over a test set with paired bootstrap intervals.

Used by `writemypaper evaluate`, which writes `score(...)` as scores.json; `report.py` renders it.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from writemypaper.errors import UserError
from writemypaper.factcheck import entities, faithfulness
from writemypaper.morphemes import TOKENIZATION, tokenize
from writemypaper.text import char_count, nfc

# Still importable from here, where generate, serve, the benchmarks and the tests have always found them.

# ---------------------------------------------------------------------------------------------------------------------
# ROUGE


@dataclass(frozen=True)
class Score:
    precision: float
    recall: float
    f1: float


def _score(overlap: int, n_pred: int, n_ref: int) -> Score:
    # Same conventions as rouge-score: an empty side gives 0, never a division error.
    p = overlap / n_pred if n_pred else 0.0
    r = overlap / n_ref if n_ref else 0.0
    return Score(p, r, 2 * p * r / (p + r) if p + r else 0.0)


def _ngrams(tokens: list[str], n: int) -> Counter:
    return Counter(tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1))


def rouge_n(pred_tokens: list[str], ref_tokens: list[str], n: int) -> Score:
    """ROUGE-N: n-gram overlap with each n-gram counted at most as often as it occurs on the other side."""
    if n < 1:
        raise ValueError(f"n must be >= 1, got {n}")
    pred, ref = _ngrams(pred_tokens, n), _ngrams(ref_tokens, n)
    overlap = sum(min(c, ref[g]) for g, c in pred.items())
    return _score(overlap, sum(pred.values()), sum(ref.values()))


def lcs_length(a: list, b: list) -> int:
    """Length of the longest common subsequence, bit-parallel (Allison-Dix / Hyyrö): O(len(a)·len(b)/64).

    Character-level ROUGE-L on 700-character abstracts would be ~500k Python steps with the textbook table.
    Bit i of `v` is 0 once a[i] ends a longest common subsequence; the count of zeros is the LCS length.
    """
    if not a or not b:
        return 0
    masks: dict = {}
    for i, x in enumerate(a):
        masks[x] = masks.get(x, 0) | (1 << i)
    full = (1 << len(a)) - 1
    v = full
    for y in b:
        u = v & masks.get(y, 0)
        v = ((v + u) | (v - u)) & full
    return len(a) - v.bit_count()


def rouge_l(pred_tokens: list[str], ref_tokens: list[str]) -> Score:
    """ROUGE-L: longest common subsequence over the prediction (precision) and the reference (recall)."""
    return _score(lcs_length(pred_tokens, ref_tokens), len(pred_tokens), len(ref_tokens))


def _chars(text: str) -> list[str]:
    return [c for c in nfc(text) if not c.isspace()]


def rouge_scores(prediction: str, reference: str) -> dict[str, float]:
    """F1 of rouge1, rouge2, rougeL over Kiwi morphemes, and rougeL_char over non-whitespace characters."""
    pred, ref = tokenize(prediction), tokenize(reference)
    return {
        "rouge1": rouge_n(pred, ref, 1).f1,
        "rouge2": rouge_n(pred, ref, 2).f1,
        "rougeL": rouge_l(pred, ref).f1,
        "rougeL_char": rouge_l(_chars(prediction), _chars(reference)).f1,
    }


# ---------------------------------------------------------------------------------------------------------------------
# Scoring a test set

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeL_char")
FAITH_KEYS = ("unsupported_rate", "unsupported_rate_micro", "unsupported_per_sample", "coverage")
ENTITY_KEYS = ("prec_s", "entity_recall")
LENGTH_KEYS = ("length_chars", "length_deviation")
# Every aggregate is a ratio of sums over samples, sum(numerator) / sum(denominator), so one bootstrap serves all:
# a plain mean has denominator 1 per sample; the per-sample unsupported rate counts only samples with facts (a text
# without facts is not perfect, it has nothing to check); the micro rate pools all facts; prec_s and recall pool
# all entities, as Nan et al. (2021) count them over a corpus; the loss pools all tokens.
METRICS = ROUGE_KEYS + FAITH_KEYS + ENTITY_KEYS + ("length_ratio",) + LENGTH_KEYS + ("loss",)
# How lengths are counted: text.char_count, the count Korean journals state ("500자 내외").
LENGTH_UNIT = "characters including spaces (공백 포함), NFC, whitespace runs as one space"
CONFIDENCE = 0.95


def _ratio_terms(out: dict) -> dict[str, tuple[float, float]]:
    """(numerator, denominator) of each metric for one sample's output (or reference_faithfulness)."""
    n_unsupported, n_facts = len(out["unsupported"]), out["n_facts"]
    terms = {
        "unsupported_rate": (n_unsupported / n_facts, 1.0) if n_facts else (0.0, 0.0),
        "unsupported_rate_micro": (float(n_unsupported), float(n_facts)),
        "unsupported_per_sample": (float(n_unsupported), 1.0),
        "coverage": (out["coverage"], 1.0),
    }
    for key in ROUGE_KEYS + ("length_ratio",) + LENGTH_KEYS:
        if key in out:
            terms[key] = (float(out[key]), 1.0)
    if "n_entities" in out:
        terms["prec_s"] = (float(out["n_entities_in_summary"]), float(out["n_entities"]))
    if "n_reference_entities" in out:
        terms["entity_recall"] = (float(out["n_reference_entities_found"]), float(out["n_reference_entities"]))
    if out.get("loss_tokens"):  # written by `evaluate`: the loss of the model on this sample's reference
        terms["loss"] = (out["loss"] * out["loss_tokens"], float(out["loss_tokens"]))
    return terms


def _columns(scores: dict) -> dict[str, dict[str, tuple]]:
    """Per column (each model, then the reference), each metric's numerator and denominator arrays over samples."""
    import numpy as np

    rows = scores["samples"]
    picks = {name: [r["outputs"][name] for r in rows] for name in scores["models"]}
    picks["reference"] = [r["reference_faithfulness"] for r in rows]
    out = {}
    for name, outs in picks.items():
        terms = [_ratio_terms(o) for o in outs]
        keys = [k for k in METRICS if all(k in t for t in terms)]
        out[name] = {k: (np.array([t[k][0] for t in terms]), np.array([t[k][1] for t in terms])) for k in keys}
    return out


def _ratio(num, den) -> float | None:
    d = float(den.sum())
    return float(num.sum()) / d if d else None


def _boot(num, den, idx):
    import numpy as np

    d = den[idx].sum(axis=1)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(d > 0, num[idx].sum(axis=1) / d, np.nan)


def _ci(values) -> list[float] | None:
    import numpy as np

    values = values[~np.isnan(values)]
    if not len(values):
        return None
    tail = (1 - CONFIDENCE) / 2 * 100
    return [float(np.percentile(values, tail)), float(np.percentile(values, 100 - tail))]


def _intervals(columns: dict, models: list[str], n_samples: int, n_resamples: int, seed: int) -> dict:
    """Percentile bootstrap over samples. Every column is computed on the same resamples, so a difference between
    two columns keeps the pairing of their samples (the paired bootstrap)."""
    import numpy as np

    idx = np.random.default_rng(seed).integers(0, n_samples, size=(n_resamples, n_samples))
    boots = {name: {k: _boot(num, den, idx) for k, (num, den) in cols.items()} for name, cols in columns.items()}
    points = {name: {k: _ratio(num, den) for k, (num, den) in cols.items()} for name, cols in columns.items()}
    # Later column minus earlier (tuned - base, grounded - plain), and each model minus the human reference.
    pairs = [(models[j], models[i]) for i in range(len(models)) for j in range(i + 1, len(models))]
    pairs += [(m, "reference") for m in models]
    differences = []
    for a, b in pairs:
        diffs = {}
        for k in boots[a].keys() & boots[b].keys():
            if points[a][k] is not None and points[b][k] is not None:
                diffs[k] = {"difference": points[a][k] - points[b][k], "ci95": _ci(boots[a][k] - boots[b][k])}
        differences.append({"a": a, "b": b, "metrics": {k: diffs[k] for k in METRICS if k in diffs}})
    return {
        "method": f"percentile bootstrap over samples, {n_resamples} resamples (seed {seed}), {CONFIDENCE:.0%} "
                  "intervals; differences are a - b on the same resamples (paired)",
        "n_resamples": n_resamples,
        "seed": seed,
        "confidence": CONFIDENCE,
        "models": {name: {k: _ci(v) for k, v in b.items()} for name, b in boots.items()},
        "differences": differences,
    }


def summarise(scores: dict, n_resamples: int = 1000, seed: int = 0) -> dict:
    """(Re)compute `aggregate` and `intervals` from scores["samples"]; `evaluate` calls it again after adding each
    sample's loss. Returns `scores`, updated in place."""
    import math

    columns = _columns(scores)
    aggregate = {}
    for name, cols in columns.items():
        agg = {k: _ratio(num, den) for k, (num, den) in cols.items()}
        agg["n_no_facts"] = int((cols["unsupported_rate_micro"][1] == 0).sum())
        if agg.get("loss") is not None:
            agg["perplexity"] = math.exp(agg["loss"]) if agg["loss"] < 50 else None
        aggregate[name] = agg
    scores["aggregate"] = aggregate
    scores["intervals"] = _intervals(columns, scores["models"], scores["n_samples"], n_resamples, seed)
    return scores


def _check(samples: list[dict], predictions: dict[str, list[str]]) -> None:
    if not samples:
        raise UserError("no samples to score")
    for i, s in enumerate(samples):
        for key in ("summary", "reference"):
            if not isinstance(s.get(key), str) or not s[key].strip():
                where = f"sample {i}" + (f" (doc_id {s['doc_id']})" if s.get("doc_id") else "")
                raise UserError(f"{where} has no '{key}' text")
    for name, preds in predictions.items():
        if name == "reference":
            raise UserError("a model may not be called 'reference': the report uses that name for the yardstick")
        if len(preds) != len(samples):
            raise UserError(f"model '{name}' has {len(preds)} predictions for {len(samples)} samples")
        bad = [i for i, p in enumerate(preds) if not isinstance(p, str)]
        if bad:
            raise UserError(f"model '{name}': prediction {bad[0]} is {type(preds[bad[0]]).__name__}, not text")


def _entity_counts(pred: str, summary: set[str], reference: set[str] | None) -> dict[str, int]:
    """prec_s's and recall's counts for one text (factcheck.entities): its entities and how many the summary has;
    the reference's and how many the text has (None for the reference itself)."""
    own = entities(pred)
    out = {"n_entities": len(own), "n_entities_in_summary": len(own & summary)}
    if reference is not None:
        out |= {"n_reference_entities": len(reference), "n_reference_entities_found": len(reference & own)}
    return out


def _length(text: str, target: int | None) -> dict[str, int]:
    n = char_count(text)
    return {"length_chars": n} if target is None else {
        "length_chars": n, "target_chars": target, "length_deviation": abs(n - target)}


def score(samples: list[dict], predictions: dict[str, list[str]], n_resamples: int = 1000, seed: int = 0,
          targets: dict[str, int | None] | None = None) -> dict:
    """Score every model's predictions against the references, and fact-check them against the summaries.

    The reference itself is fact-checked the same way (reference vs summary) as the yardstick: a human abstract
    also adds facts that the summary lacks, and has its own prec_s and length. Texts are stored NFC-normalised so
    that fact offsets index them. Model names are free (evaluate uses "tuned · grounded"), except "reference".
    Lengths are in LENGTH_UNIT; each model's is measured against `targets[model]` (the length asked for), or the
    reference's length where none was asked; the reference against the target all models share, if they do.
    `aggregate` and the bootstrap `intervals` come from `summarise`.
    """
    _check(samples, predictions)
    models = list(predictions)
    targets = {m: (targets or {}).get(m) for m in models}
    shared = set(targets.values())
    shared_target = shared.pop() if len(shared) == 1 else None
    rows = []
    for i, s in enumerate(samples):
        summary, reference = nfc(s["summary"]), nfc(s["reference"])
        summary_entities, reference_entities = entities(summary), entities(reference)
        outputs = {}
        for name in models:
            pred = nfc(predictions[name][i])
            target = targets[name] if targets[name] is not None else char_count(reference)
            outputs[name] = {
                "prediction": pred,
                **rouge_scores(pred, reference),
                "length_ratio": len(pred) / len(reference),
                **_length(pred, target),
                **faithfulness(summary, pred),
                **_entity_counts(pred, summary_entities, reference_entities),
            }
        rows.append({
            **({"id": s["id"]} if s.get("id") is not None else {}),  # an input's own id, next to its doc_id
            "doc_id": s.get("doc_id"),
            "ipc": s.get("ipc"),
            "summary": summary,
            "reference": reference,
            "reference_faithfulness": {**faithfulness(summary, reference), **_length(reference, shared_target),
                                       **_entity_counts(reference, summary_entities, None)},
            "outputs": outputs,
        })

    scores = {"tokenization": TOKENIZATION, "length_unit": LENGTH_UNIT, "targets": targets, "models": models,
              "n_samples": len(rows), "samples": rows}
    return summarise(scores, n_resamples=n_resamples, seed=seed)
