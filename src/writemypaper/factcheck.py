"""The fact check: the figures and terms of a generated abstract that its summary does not support, and how much
of the summary it covers. Generation ranks candidates by it, evaluate scores with it, the server's check endpoint
and the page's highlights show it.

    python -c "from writemypaper.factcheck import faithfulness; print(faithfulness('87%였다.', '78%였다.'))"
"""

from __future__ import annotations

import functools
import re
from dataclasses import asdict, dataclass
from decimal import Decimal

from writemypaper.morphemes import morphemes
from writemypaper.numbers import AMOUNT, LIST_SEP, amount_value, fold
from writemypaper.text import nfc

# A numeric fact is a claim of value(s) and a unit: "3만 명" claims 30000 people, "10∼20%" claims 10% and 20%,
# "세 나라" claims 3 countries, "19세기" the 19th century. Terms (quoted, Latin-script, Hanja) must occur in the
# summary. Invented Hangul words are not caught: telling a new Korean term from a paraphrase needs more than a regex.


@dataclass(frozen=True)
class Fact:
    """A checkable span; `text == nfc_text[start:end]` where nfc_text is the NFC form of the text it came from."""

    text: str
    kind: str  # number | year | century | quoted | latin | hanja
    start: int
    end: int


# Amounts (sign, digits, 만/억 with 천/백 mixed, leading-dot decimals) are read by writemypaper.numbers, the grammar
# grounded decoding reads too; the text is folded first (full-width digits, U+2212) so that offsets stay valid.
_AMOUNT = AMOUNT

# Spellings of one unit share a canonical name, so 3개국 matches 세 나라 and 25°C matches 25℃; a unit not listed is
# its own class. 3배 and 3개, 27.3% and 27.3년, 19세 (age) and 19세기 are different claims.
_UNIT_CLASSES = {
    "%": ("%", "퍼센트"), "%p": ("%p", "%포인트", "퍼센트포인트"), "℃": ("℃", "°C"), "℉": ("℉", "°F"),
    "명": ("명", "사람"), "나라": ("나라", "개국", "국가"), "회": ("회", "번", "차례"), "년": ("년", "년도", "년간", "해"),
    "개월": ("개월", "달"), "세": ("세", "살"), "개": ("개", "가지"),
    "mg": ("mg", "㎎"), "kg": ("kg", "㎏"), "μg": ("μg", "µg", "ug", "㎍"), "km": ("km", "㎞"), "cm": ("cm", "㎝"),
    "mm": ("mm", "㎜"), "mL": ("mL", "ml", "㎖"), "dL": ("dL", "㎗"), "μL": ("μL", "㎕"), "m²": ("m²", "㎡"),
    "m³": ("m³", "㎥"), "km²": ("km²", "㎢"), "μm": ("μm", "µm"), "μmol": ("μmol", "µmol"), "kB": ("kB", "KB"),
}
_CANONICAL_UNIT = {spelling: name for name, spellings in _UNIT_CLASSES.items() for spelling in spellings}


def _alternation(words) -> str:
    # Longest first: a regex alternation takes the first alternative that matches, so 세기 must precede 세.
    return "|".join(re.escape(w) for w in sorted(set(words), key=len, reverse=True))


_SYMBOL_UNITS = _alternation(["%p", "%포인트", "%", "‰", "℃", "℉", "°C", "°F", "°", *"㎎㎏㎍㎞㎝㎜㎖㎗㎕㎡㎥㎢"])
_LATIN_UNITS = (
    r"kWh|MWh|kHz|MHz|GHz|kPa|MPa|GPa|mmol|μmol|µmol|kcal|kDa|ppm|ppb|min|rpm|"
    r"mg|kg|μg|µg|ug|ng|mL|ml|dL|μL|km|cm|mm|nm|μm|µm|ha|Hz|kW|MW|GW|kV|mA|ms|hr|dB|mol|mM|μM|Pa|GB|MB|KB|kB|TB|bp|Da|"
    r"cal|L|g|m|s|h|V|W|M"
)
# Counters written after digits. 세기 (century) is its own unit: 19세기 is not 19 years of age.
_KOREAN_UNITS = _alternation([
    "퍼센트포인트", "퍼센트", "개국", "개월", "개소", "주년", "년대", "년도", "년간", "세기", "시간", "가구", "세대", "차례",
    "번째", "달러", "가지", "명", "개", "건", "원", "배", "세", "회", "차", "위", "점", "편", "곳", "종", "권", "년", "월",
    "일", "주", "분", "초", "대", "번", "살", "층", "쪽", "장", "호",
])
# Where a counter set off by a space must end: not inside a longer word ("2 개념" is no count of 개), only before a
# particle, a non-Hangul character or the end.
_WORD_END = (r"(?=$|[^가-힣]|(?:이|가|을|를|의|은|는|에|와|과|도|로|으로|만|씩|이나|에서|까지|부터|째|간|당|뿐|보다|"
             r"이상|이하|미만|초과|가량|정도|내외|이다|였|이었))")
_UNIT = (
    rf"(?:{_SYMBOL_UNITS}|{_KOREAN_UNITS}|\s(?:{_KOREAN_UNITS}){_WORD_END}|"
    rf" ?(?:{_LATIN_UNITS})(?:²|³)?(?:/(?:{_LATIN_UNITS})(?:²|³)?)?(?![A-Za-z0-9]))"
)
# A hyphen separates a range only written tight (3-5) or spaced on both sides (3 - 5): in "3 -5" it is a sign.
_RANGE_SEP = r"\s?[~∼〜–—]\s?| - |-"
_SEP = rf"{_RANGE_SEP}|{LIST_SEP}"
# A numeric fact is a range or a list of amounts, each with its unit: 3~5%, 1,2,9단계, 2월~2020년.
# Not inside a number: after a digit and a point is the decimal part, after a sentence's full stop a new number.
_ENDPOINT = rf"(?P<amount>{_AMOUNT})(?P<unit>{_UNIT})?"
_NUMERIC = (rf"(?<![0-9])(?<![0-9][.,])(?:{_AMOUNT})(?:{_UNIT})?(?:(?:{_SEP})(?:{_AMOUNT})(?:{_UNIT})?)*"
            r"(?![A-Za-z0-9])")

# Native Korean numerals count only before a counter or a countable noun (세 나라, 두 차례, 다섯 가지): alone they
# are ordinary words (세 = 'three' but also 'tax', 네 = 'yes'). 한 is 'one' but mostly 'a' (한 연구), so it counts
# only before 명, 곳 and 개국.
_NATIVE = {"한": 1, "두": 2, "세": 3, "네": 4, "다섯": 5, "여섯": 6, "일곱": 7, "여덟": 8, "아홉": 9, "열": 10, "스무": 20}
_NATIVE |= {"열" + k: 10 + v for k, v in _NATIVE.items() if v < 10}
_NATIVE_COUNTERS = _alternation([
    "명", "개", "곳", "권", "편", "가지", "차례", "번", "번째", "살", "마리", "사람", "나라", "개국", "국가", "집단", "단계",
    "유형", "요인", "측면", "차원", "영역", "범주", "시기", "지역", "세대", "가구", "해", "달", "시간", "주", "그룹", "문항",
    "변수", "가설", "사례", "작품", "기관", "학교", "도시", "기업", "부분", "요소", "개념", "방식", "축",
])
_NATIVE_RE = (rf"(?<![가-힣])(?:(?:{_alternation(k for k in _NATIVE if k != '한')})\s(?:{_NATIVE_COUNTERS})"
              rf"|한\s(?:명|곳|개국)){_WORD_END}")
# Sino-Korean numerals (삼, 이십오, 천) only before units that leave no other reading (삼 년, 오 배, 십 개월); a lone 이
# is 'this' (이 세기), so it never counts.
_SINO_DIGITS = dict(zip("일이삼사오육칠팔구", range(1, 10)))
_SINO_RE = (rf"(?<![가-힣])(?=[일이삼사오육칠팔구십백천])(?:[이삼사오육칠팔구]?천)?(?:[이삼사오육칠팔구]?백)?"
            rf"(?:[이삼사오육칠팔구]?십)?[일이삼사오육칠팔구]?\s?(?:개월|년간|주년|세기|퍼센트|년|배){_WORD_END}")

_HANJA = r"[\u3400-\u4dbf\u4e00-\u9fff\uf900-\ufaff]"
_QUOTES = {"'": "'", '"': '"', "‘": "’", "“": "”", "「": "」", "『": "』", "《": "》", "〈": "〉"}
_QUOTED = "|".join(
    # A straight ' after a letter is an apostrophe (don't), not an opening quote.
    (r"(?<![A-Za-z0-9])" if o == "'" else "") + rf"{re.escape(o)}[^{re.escape(c)}\n]{{1,50}}{re.escape(c)}"
    for o, c in _QUOTES.items()
)


# One pattern, so facts never overlap: at any position the earlier alternative wins, and a quoted span swallows the
# numbers and terms inside it. Numbers are tried before Latin terms so that "25mg" is a number and "5G" a term; a
# term that runs into a scale word or a list (A1조, a1,000) leaves its digits to the number, as grounded decoding
# reads them.
# Compiled on first use: it is the slowest part of importing this module.
@functools.cache
def _fact_re() -> re.Pattern:
    return re.compile(
        rf"(?P<quoted>{_QUOTED})|(?P<numeric>{_NUMERIC})|(?P<native>{_NATIVE_RE})|(?P<sino>{_SINO_RE})"
        rf"|(?P<latin>(?<![A-Za-z0-9])(?>[0-9]*[A-Za-z][A-Za-z0-9]*(?:[-.][A-Za-z0-9]+)*)(?!,[0-9]|[십백천만억조]))"
        rf"|(?P<hanja>{_HANJA}+)"
    )


@functools.cache
def _quantity_re() -> re.Pattern:
    # The source's figures, including those inside its quoted spans and Latin terms ("PM2.5" holds 2.5).
    return re.compile(rf"(?P<numeric>{_NUMERIC})|(?P<native>{_NATIVE_RE})|(?P<sino>{_SINO_RE})")


@functools.cache
def _endpoint_re() -> re.Pattern:
    return re.compile(_ENDPOINT)


_SEP_RE = re.compile(_SEP)
_NUM_RE = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?")
# Single letters (n=, p<) are variables, and these words are glue, not terms.
_LATIN_STOP = frozenset("a an the of and or in on at to for by with from as is are vs et al".split())

Claim = tuple[Decimal, "str | None"]  # a value and its canonical unit (None: written bare)


def _unit(text: str) -> str | None:
    text = text.strip()
    return _CANONICAL_UNIT.get(text, text) if text else None


def _endpoints(span: str) -> list[Claim]:
    """Each amount of a numeric match (one, a range's two ends, a list's members) with the unit written after it."""
    out, pos = [], 0
    while pos < len(span):
        m = _endpoint_re().match(span, pos)
        out.append((amount_value(m["amount"]), _unit(m["unit"] or "")))
        sep = _SEP_RE.match(span, m.end())
        if sep is None:
            break
        pos = sep.end()
    return out


def _sino_value(text: str) -> int:
    total, digit = 0, 0
    for ch in text:
        if ch in _SINO_DIGITS:
            digit = _SINO_DIGITS[ch]
        else:
            total += (digit or 1) * {"십": 10, "백": 100, "천": 1000}[ch]
            digit = 0
    return total + digit


def _claims(kind: str, span: str) -> tuple[Claim, ...] | None:
    """The value(s) a numeric match claims, each with its unit; None for a match that is no number after all."""
    if kind == "numeric":
        parts = _endpoints(span)
        # A range's or list's unit is written once, mostly at its end (3-5개, 1,2,9단계), sometimes at its start
        # (10%~20); a range of dates keeps each end's own (2019년 2월~2020년 1월 holds the range 2월~2020년).
        shared = parts[-1][1] or parts[0][1]
        return tuple((v, u or shared) for v, u in parts)
    if kind == "native":
        word, counter = span.split(maxsplit=1)
        return ((Decimal(_NATIVE[word]), _unit(counter)),)
    numeral, unit = re.fullmatch(r"([일이삼사오육칠팔구십백천]+)\s?(.+)", span).groups()
    if numeral == "이":
        return None
    return ((Decimal(_sino_value(numeral)), _unit(unit)),)


def _numeric_kind(claims: tuple[Claim, ...]) -> str:
    units = {u for _, u in claims}
    if units == {"세기"}:
        return "century"
    if units <= {"년", "년대"} and None not in units and all(v == v.to_integral() and 1000 <= v <= 2100
                                                             for v, _ in claims):
        return "year"
    return "number"


@functools.lru_cache(maxsize=4096)
def _facts(text: str) -> tuple[tuple[Fact, tuple[Claim, ...] | None], ...]:
    """Facts of NFC `text`, each with its numeric claims (None for terms)."""
    out = []
    # Matched on the folded text (same length), so ９５％ reads as 95% while each Fact keeps the text as written.
    for m in _fact_re().finditer(fold(text)):
        kind, span = m.lastgroup, m.group()
        if kind == "quoted" and not span[1:-1].strip():
            continue
        if kind == "latin" and (len(span) < 2 or span.lower() in _LATIN_STOP):
            continue
        claims = None
        if kind in ("numeric", "native", "sino"):
            claims = _claims(kind, span)
            if claims is None:
                continue
            kind = _numeric_kind(claims)
        out.append((Fact(text[m.start():m.end()], kind, m.start(), m.end()), claims))
    return tuple(out)


def extract_facts(text: str) -> list[Fact]:
    """Numbers with their unit (ranges, 만/억, Korean numerals), years, centuries, quoted terms, Latin-script terms
    and Hanja terms, in order of position. Offsets index the NFC form of `text`."""
    return [f for f, _ in _facts(nfc(text))]


def quantities(text: str) -> list[Claim]:
    """Every (value, canonical unit) that `text` writes, numbers inside quotes and Latin terms included; digits that
    no numeric pattern reads (the 5 of "5G") count as bare numbers."""
    text = fold(nfc(text))
    out, covered = [], []
    for m in _quantity_re().finditer(text):
        claims = _claims(m.lastgroup, m.group())
        if claims:
            out.extend(claims)
            covered.append((m.start(), m.end()))
    for m in _NUM_RE.finditer(text):
        if not any(a <= m.start() < b for a, b in covered):
            out.append((Decimal(m.group().replace(",", "")), None))
    return out


def _fold(text: str) -> str:
    return " ".join(nfc(text).casefold().split())


def unsupported_facts(source: str, text: str) -> list[Fact]:
    """The facts of `text` that `source` does not contain.

    A number is supported when the source writes the same value with the same unit (1,234명 = 1234명, 3만 명 =
    30000명, .05 = 0.05, 3개국 = 세 나라); each end of a range must be supported. A unit on one side only doesn't
    count against it: a bare number in the text claims no unit, and a bare number in the source (n=1,234, a table
    value) supports its value with any unit. Terms compare as case-insensitive NFC substrings, Latin terms on word
    boundaries.
    """
    src = _fold(source)
    with_unit = set(quantities(source))
    values = {v for v, _ in with_unit}
    bare = {v for v, u in with_unit if u is None}
    out = []
    for f, claims in _facts(nfc(text)):
        if claims is not None:
            supported = all(v in values if u is None else (v, u) in with_unit or v in bare for v, u in claims)
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
    for form, tag in morphemes(nfc(text)):
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
