"""Scores for generated abstracts: ROUGE over Korean morphemes (Kiwi) and a fact check against the summary.

Google's rouge-score deletes Hangul before counting, so we tokenize with Kiwi and count n-grams ourselves.
Used by `writemypaper evaluate`, which writes `score(...)` as scores.json; `report.py` renders it.
"""

from __future__ import annotations

import functools
import re
import threading
import unicodedata
from collections import Counter
from dataclasses import asdict, dataclass
from decimal import Decimal, InvalidOperation
from importlib import metadata

from writemypaper.errors import UserError

# ---------------------------------------------------------------------------------------------------------------------
# Tokenization

# Kiwi's symbol tags that we drop: sentence-final punctuation (SF), separators (SP), quotes and brackets (SS, and
# SSO/SSC in newer Kiwi), ellipses (SE), other marks such as ~ and - (SO), other symbols such as % ℃ ㆍ (SW) and list
# bullets like "가." or "1)" (SB). Kiwi emits no whitespace tokens. Numbers (SN), Latin (SL), Hanja (SH) and Kiwi's
# W_* tokens (URL, e-mail, serial numbers...) are kept: they carry content.
DROPPED_TAGS = frozenset({"SF", "SP", "SS", "SSO", "SSC", "SE", "SO", "SW", "SB"})
# Kiwi reads the particle after a percent sign as a verb ("23.4%가" -> 가/VV 어/EC, "%는" -> 늘/VV), which adds
# false content morphemes; marking each % as a symbol token beforehand makes it read 가/JKS, 는/JX.
_PERCENT = re.compile("[%‰]")
# The model type is pinned so that a kiwipiepy upgrade that changes its default is visible in TOKENIZATION.
_KIWI_MODEL_TYPE = "cong"


def _version(dist: str) -> str:
    try:
        return metadata.version(dist)
    except metadata.PackageNotFoundError:
        return "not-installed"


# Written into every scores.json and report: ROUGE from different tokenizations cannot be compared.
TOKENIZATION = (
    f"kiwipiepy {_version('kiwipiepy')} (kiwipiepy_model {_version('kiwipiepy_model')}, "
    f"model_type={_KIWI_MODEL_TYPE}): morpheme forms of the NFC-normalised text (% and ‰ pre-tokenized as SW), "
    f"dropping tags {' '.join(sorted(DROPPED_TAGS))}; "
    "rougeL_char: ROUGE-L over the NFC characters with whitespace removed"
)

# Loading the model takes a couple of seconds, so one instance serves the whole process (the server's threads too).
_kiwi_lock = threading.Lock()
_kiwi_instance = None


def _kiwi():
    global _kiwi_instance
    with _kiwi_lock:
        if _kiwi_instance is None:
            from kiwipiepy import Kiwi

            try:
                _kiwi_instance = Kiwi(model_type=_KIWI_MODEL_TYPE)
            except ValueError as e:
                raise UserError(f"kiwipiepy {_version('kiwipiepy')} cannot load the '{_KIWI_MODEL_TYPE}' model ({e}); "
                                "TOKENIZATION was defined with kiwipiepy 0.24") from None
        return _kiwi_instance


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


@functools.lru_cache(maxsize=8192)
def _morphemes(text: str) -> tuple[tuple[str, str], ...]:
    """(form, tag) of the kept morphemes of NFC `text`; cached because score() sees each reference once per model."""
    percents = [(m.start(), m.end(), "SW") for m in _PERCENT.finditer(text)]
    tokens = _kiwi().tokenize(text, pretokenized=percents or None)
    return tuple((t.form, t.tag) for t in tokens if t.tag not in DROPPED_TAGS)


def tokenize(text: str) -> list[str]:
    """Kiwi morpheme forms of the NFC-normalised text, without punctuation and symbols (see TOKENIZATION)."""
    return [form for form, _ in _morphemes(_nfc(text))]


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
    return [c for c in _nfc(text) if not c.isspace()]


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
# Facts: figures and terms that a generated abstract must not invent


@dataclass(frozen=True)
class Fact:
    """A checkable span; `text == nfc_text[start:end]` where nfc_text is the NFC form of the text it came from."""

    text: str
    kind: str  # number | year | quoted | latin | hanja
    start: int
    end: int


_NUM = r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?"
# Units that stay part of a number's fact text (compared on the number alone). Symbols and Korean counters attach
# directly; Latin units may follow one space ("3.5 mg/L") and must end the word, so "2 CNN" is not "2 C".
_SYMBOL_UNITS = r"%p|%|‰|℃|℉|°C|°F|°|[㎎㎏㎍㎞㎝㎜㎖㎗㎕㎡㎥㎢]"
_LATIN_UNITS = (
    r"kWh|MWh|kHz|MHz|GHz|kPa|MPa|GPa|mmol|μmol|µmol|kcal|kDa|ppm|ppb|min|rpm|"
    r"mg|kg|μg|µg|ug|ng|mL|ml|dL|km|cm|mm|nm|μm|µm|ha|Hz|kW|MW|GW|kV|mA|ms|hr|dB|mol|mM|μM|Pa|GB|MB|KB|kB|TB|bp|Da|"
    r"cal|L|g|m|s|h|V|W|M"
)
_KOREAN_UNITS = (
    "퍼센트포인트|퍼센트|개국|개월|시간|가구|세대|만원|억원|천원|달러|"
    "만|억|조|천|명|개|건|원|배|세|회|차|위|점|편|곳|종|권|년|월|일|주|분|초|대"
)
_UNIT = (
    rf"(?:{_SYMBOL_UNITS}|{_KOREAN_UNITS}|"
    rf" ?(?:{_LATIN_UNITS})(?:²|³)?(?:/(?:{_LATIN_UNITS})(?:²|³)?)?(?![A-Za-z0-9]))"
)
_HANJA = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_QUOTES = {"'": "'", '"': '"', "‘": "’", "“": "”", "「": "」", "『": "』", "《": "》", "〈": "〉"}
_QUOTED = "|".join(
    # A straight ' after a letter is an apostrophe (don't), not an opening quote.
    (r"(?<![A-Za-z0-9])" if o == "'" else "") + rf"{re.escape(o)}[^{re.escape(c)}\n]{{1,50}}{re.escape(c)}"
    for o, c in _QUOTES.items()
)


# One pattern, so facts never overlap: at any position the earlier alternative wins, and a quoted span swallows the
# numbers and terms inside it. Numbers are tried before Latin terms so that "25mg" is a number and "5G" a term.
# Compiled on first use: it is the slowest part of importing this module.
@functools.cache
def _fact_re() -> re.Pattern:
    return re.compile(
        rf"(?P<quoted>{_QUOTED})"
        rf"|(?P<year>(?<![0-9.,])(?:1[0-9]{{3}}|20[0-9]{{2}})년(?:대)?)"
        rf"|(?P<number>(?<![0-9.,])(?:{_NUM})(?:{_UNIT})?(?![A-Za-z0-9]))"
        rf"|(?P<latin>(?<![A-Za-z0-9])[0-9]*[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*)"
        rf"|(?P<hanja>{_HANJA}+)"
    )


_NUM_RE = re.compile(_NUM)
# Single letters (n=, p<) are variables, and these words are glue, not terms.
_LATIN_STOP = frozenset("a an the of and or in on at to for by with from as is are vs et al".split())


def extract_facts(text: str) -> list[Fact]:
    """Numbers (with their unit), years, quoted terms, Latin-script terms and Hanja terms, in order of position.

    Offsets index the NFC form of `text`.
    """
    text = _nfc(text)
    facts = []
    for m in _fact_re().finditer(text):
        kind, span = m.lastgroup, m.group()
        if kind == "quoted" and not span[1:-1].strip():
            continue
        if kind == "latin" and (len(span) < 2 or span.lower() in _LATIN_STOP):
            continue
        facts.append(Fact(span, kind, m.start(), m.end()))
    return facts


def _value(number_text: str) -> Decimal | None:
    m = _NUM_RE.search(number_text)
    try:
        return Decimal(m.group().replace(",", "")) if m else None
    except InvalidOperation:
        return None


def _fold(text: str) -> str:
    return " ".join(_nfc(text).casefold().split())


def unsupported_facts(source: str, text: str) -> list[Fact]:
    """The facts of `text` that `source` does not contain.

    Numbers and years compare by value against every number written in the source (1,234 == 1234, 23.4% is
    supported by 23.4); terms compare as case-insensitive NFC substrings, Latin terms on word boundaries.
    """
    src = _fold(source)
    src_numbers = {Decimal(m.group().replace(",", "")) for m in _NUM_RE.finditer(src)}
    out = []
    for f in extract_facts(text):
        if f.kind in ("number", "year"):
            supported = _value(f.text) in src_numbers
        elif f.kind == "quoted":
            supported = _fold(f.text[1:-1]) in src
        elif f.kind == "latin":
            supported = re.search(rf"(?<![a-z0-9]){re.escape(_fold(f.text))}(?![a-z0-9])", src) is not None
        else:
            supported = f.text in src
        if not supported:
            out.append(f)
    return out


_CONTENT_TAGS = ("NNG", "NNP", "NNB", "VV", "VA", "SN", "SL", "SH")


def _content(text: str) -> set[str]:
    # Kiwi marks irregular stems as VV-I / VA-R; numbers lose their separators; Latin compares case-insensitively.
    out = set()
    for form, tag in _morphemes(_nfc(text)):
        tag = tag.split("-")[0]
        if tag in _CONTENT_TAGS:
            out.add(form.replace(",", "") if tag == "SN" else form.casefold())
    return out


def coverage(source: str, text: str) -> float:
    """Share of the source's distinct content morphemes (nouns, verb/adjective stems, numbers, Latin, Hanja) that
    also occur in `text`; 1.0 when the source has none."""
    src = _content(source)
    return len(src & _content(text)) / len(src) if src else 1.0


def faithfulness(source: str, text: str) -> dict:
    """Unsupported facts of `text` against `source`, their share of all facts in `text`, and coverage of `source`."""
    n_facts = len(extract_facts(text))
    unsupported = unsupported_facts(source, text)
    return {
        "unsupported": [asdict(f) for f in unsupported],
        "n_facts": n_facts,
        "unsupported_rate": len(unsupported) / n_facts if n_facts else 0.0,
        "coverage": coverage(source, text),
    }


# ---------------------------------------------------------------------------------------------------------------------
# Scoring a test set

ROUGE_KEYS = ("rouge1", "rouge2", "rougeL", "rougeL_char")


def _mean(values: list[float]) -> float:
    return sum(values) / len(values)


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


def score(samples: list[dict], predictions: dict[str, list[str]]) -> dict:
    """Score every model's predictions against the references, and fact-check them against the summaries.

    The reference itself is fact-checked the same way (reference vs summary) as the yardstick: a human abstract
    also adds facts that the summary lacks. Texts are stored NFC-normalised so that fact offsets index them.
    """
    _check(samples, predictions)
    models = list(predictions)
    rows = []
    for i, s in enumerate(samples):
        summary, reference = _nfc(s["summary"]), _nfc(s["reference"])
        outputs = {}
        for name in models:
            pred = _nfc(predictions[name][i])
            outputs[name] = {
                "prediction": pred,
                **rouge_scores(pred, reference),
                "length_ratio": len(pred) / len(reference),
                **faithfulness(summary, pred),
            }
        rows.append({
            "doc_id": s.get("doc_id"),
            "ipc": s.get("ipc"),
            "summary": summary,
            "reference": reference,
            "reference_faithfulness": faithfulness(summary, reference),
            "outputs": outputs,
        })

    def faith_means(items: list[dict]) -> dict:
        return {
            "unsupported_rate": _mean([f["unsupported_rate"] for f in items]),
            "unsupported_per_sample": _mean([len(f["unsupported"]) for f in items]),
            "coverage": _mean([f["coverage"] for f in items]),
        }

    aggregate = {}
    for name in models:
        outs = [r["outputs"][name] for r in rows]
        aggregate[name] = {
            **{k: _mean([o[k] for o in outs]) for k in ROUGE_KEYS},
            **faith_means(outs),
            "length_ratio": _mean([o["length_ratio"] for o in outs]),
        }
    aggregate["reference"] = faith_means([r["reference_faithfulness"] for r in rows])
    return {
        "tokenization": TOKENIZATION,
        "models": models,
        "n_samples": len(rows),
        "aggregate": aggregate,
        "samples": rows,
    }
