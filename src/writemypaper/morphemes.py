"""Korean morphemes by Kiwi: what ROUGE counts and what the fact check's coverage compares. Google's rouge-score
deletes Hangul before counting, so this tokenization, pinned and written into every score as TOKENIZATION, is ours.

    python -c "from writemypaper.morphemes import tokenize; print(tokenize('학생이 학교에 간다.'))"
"""

from __future__ import annotations

import functools
import re
import threading
from importlib import metadata

from writemypaper.errors import UserError
from writemypaper.text import nfc

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


@functools.lru_cache(maxsize=8192)
def spans(text: str) -> tuple[tuple[str, str, int, int], ...]:
    """(form, tag, start, end) of every morpheme of NFC `text`, punctuation included, with offsets into `text`: the
    fact check reads which noun a figure stands next to from them."""
    percents = [(m.start(), m.end(), "SW") for m in _PERCENT.finditer(text)]
    tokens = _kiwi().tokenize(text, pretokenized=percents or None)
    return tuple((t.form, t.tag, t.start, t.start + t.len) for t in tokens)


@functools.lru_cache(maxsize=8192)
def morphemes(text: str) -> tuple[tuple[str, str], ...]:
    """(form, tag) of the kept morphemes of NFC `text`; cached because score() sees each reference once per model."""
    return tuple((form, tag) for form, tag, _, _ in spans(text) if tag not in DROPPED_TAGS)


def tokenize(text: str) -> list[str]:
    """Kiwi morpheme forms of the NFC-normalised text, without punctuation and symbols (see TOKENIZATION)."""
    return [form for form, _ in morphemes(nfc(text))]
