"""The fact check: the figures and terms of a generated abstract that its summary does not support, and how much
of the summary it covers. Generation ranks candidates by it, evaluate scores with it, the server's check endpoint
and the page's highlights show it.

    python -c "from writemypaper.factcheck import faithfulness; print(faithfulness('87%였다.', '78%였다.'))"
"""

from __future__ import annotations

import functools
import re
from collections import Counter
from dataclasses import asdict, dataclass, field, replace
from decimal import Decimal

from writemypaper.morphemes import morphemes, spans
from writemypaper.numbers import AMOUNT, DIGITS, LIST_SEP, amount_value, fold
from writemypaper.text import nfc

# A numeric fact is a claim of value(s) and a unit: "3만 명" claims 30000 people, "10∼20%" claims 10% and 20%,
# "세 나라" claims 3 countries, "19세기" the 19th century. Terms (quoted, Latin-script, Hanja) must occur in the
# summary. Invented Hangul words are not caught: telling a new Korean term from a paraphrase needs more than a regex.
# A figure the summary has can still stand in the wrong place: written more often than the summary writes it, or
# next to another noun (see unsupported_facts).

# Why a fact is unsupported (Fact.reason), in the words the report shows.
REASONS = {
    "absent": "not in the summary",
    "repeated": "written more often than the summary writes it, plus one restatement",
    "noun": "quantifies another noun than in the summary",
}


@dataclass(frozen=True)
class Fact:
    """A checkable span; `text == nfc_text[start:end]` where nfc_text is the NFC form of the text it came from."""

    text: str
    kind: str  # number | year | century | quoted | latin | hanja
    start: int
    end: int
    # On an unsupported fact, why (a key of REASONS); "" on an extracted one. Not compared: a fact is its span.
    reason: str = field(default="", compare=False)


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
    """The facts of `text` that `source` does not support, each with its reason (Fact.reason, see REASONS).

    absent: a number is supported when the source writes the same value with the same unit (1,234명 = 1234명, 3만 명 =
    30000명, .05 = 0.05, 3개국 = 세 나라); each end of a range must be supported. A unit on one side only doesn't
    count against it: a bare number in the text claims no unit, and a bare number in the source (n=1,234, a table
    value) supports its value with any unit. Terms compare as case-insensitive NFC substrings, Latin terms on word
    boundaries.
    repeated and noun: a figure the source has, but in the wrong place (see `_repeated` and `_misplaced`).
    """
    src = _fold(source)
    with_unit = set(quantities(source))
    values = {v for v, _ in with_unit}
    bare = {v for v, u in with_unit if u is None}
    facts = _facts(nfc(text))
    out = {}
    for f, claims in facts:
        if claims is not None:
            supported = all(v in values if u is None else (v, u) in with_unit or v in bare for v, u in claims)
        elif f.kind == "quoted":
            supported = _fold(f.text[1:-1]) in src
        elif f.kind == "latin":
            supported = re.search(rf"(?<![a-z0-9]){re.escape(_fold(f.text))}(?![a-z0-9])", src) is not None
        else:
            supported = f.text in src
        if not supported:
            out[f.start] = replace(f, reason="absent")
    for f in _repeated(source, facts):
        out.setdefault(f.start, replace(f, reason="repeated"))
    for f in _misplaced(source, text, [(f, c) for f, c in facts if f.start not in out]):
        out[f.start] = replace(f, reason="noun")
    return [out[k] for k in sorted(out)]


def _in_digits(f: Fact) -> bool:
    return bool(DIGITS & set(fold(f.text)))


def _repeated(source: str, facts) -> list[Fact]:
    """Figures written in digits beyond the number of times the source writes their value (in any form and unit,
    Korean numeral words included) plus one restatement, the later uses flagged. Counted by value, as grounded
    decoding counts them (writemypaper.grounding), so that whatever it lets through passes here. Figures in Korean
    numeral words (세 나라) are not counted, nor are values the source lacks (those are absent)."""
    allowed = Counter(v for v, _ in quantities(source))
    used: Counter = Counter()
    out = []
    for f, claims in facts:
        if claims is None or not _in_digits(f):
            continue
        counted = [v for v, _ in claims if allowed[v]]
        used.update(counted)
        if any(used[v] > allowed[v] + 1 for v in counted):
            out.append(f)
    return out


_NOUN_TAGS = frozenset({"NNG", "NNP"})
# Between a noun and the figure it quantifies: a subject or topic particle (학생이 30명, 댓글은 1.6배) or 의
# (응답자의 45%).
_LINK_TAGS = frozenset({"JKS", "JX", "JKG"})


def _head_noun(tokens) -> str | None:
    """The head of the noun compound that `tokens` (in reading order) end with: its last noun, with a noun suffix
    joined (대학+생 = 대학생); None when they don't end with a noun."""
    if not tokens:
        return None
    form, tag = tokens[-1][:2]
    if tag == "XSN" and len(tokens) > 1 and tokens[-2][1] in _NOUN_TAGS:
        return tokens[-2][0] + form
    return form if tag in _NOUN_TAGS else None


def _nouns_of(tokens, start: int, end: int) -> frozenset[str]:
    """The nouns a figure at [start, end) stands next to, where the morphemes show them: the compound right before
    it, bare or with a subject/topic particle or 의 (학생 30명, 학생이 30명, 응답자의 45%), and the compound after it
    joined by 의 (30명의 학생, 30명의 정치 태도), each by its head noun. Empty otherwise (이는 1.6배: a pronoun)."""
    before = [t for t in tokens if t[3] <= start]
    if before and before[-1][1] in _LINK_TAGS:
        before = before[:-1]
    after = [t for t in tokens if t[2] >= end]
    out = {_head_noun(before[-2:])}
    if after and after[0][2] == end and after[0][1] == "JKG":
        k = 1
        while k < len(after) and after[k][1] in _NOUN_TAGS | {"XSN"}:
            k += 1
        out.add(_head_noun(after[1:k]))
    return frozenset(out - {None})


def _nouns(text: str, facts) -> list[tuple[Fact, set, frozenset[str]]]:
    tokens = spans(text)
    return [(f, {v for v, _ in claims}, _nouns_of(tokens, f.start, f.end)) for f, claims in facts]


def _misplaced(source: str, text: str, facts) -> list[Fact]:
    """Numbers (not years or centuries) that quantify another noun than the source's figures of the same value do:
    교사 30명 where the source has 학생 30명. Conservative: flagged only when the text's figure and every figure of
    that value in the source stand next to a noun (see `_nouns_of`) and they share none. Caught: the noun right
    before the figure, or after it joined by 의, swapped for another. Not caught: a subject further off (학생들은 ...
    30명), a noun Kiwi reads as a pronoun or bound noun (이는 30명, 학생 중 30명), a source that names no noun for
    the value, a figure in Korean numerals (세 나라: its counter is its noun). A synonym (참가자 for 참여자) is flagged as another noun; a compound compares by its head (여학생 and
    학생 differ, 정치 태도 and 태도 do not)."""
    # A figure written in Korean numerals (세 나라, 두 차례) names what it counts in its own counter noun: the noun
    # before it is the clause's, not the figure's (분석 결과 세 나라 모두 ...), so it is never compared.
    numbers = [(f, c) for f, c in facts if f.kind == "number" and c is not None and not "가" <= f.text[0] <= "힣"]
    if not numbers:
        return []
    text, source = nfc(text), nfc(source)
    src = _nouns(source, [(f, c) for f, c in _facts(source) if c is not None])
    out = []
    for f, values, nouns in _nouns(text, numbers):
        same = [n for _, vs, n in src if vs & values]
        if nouns and same and all(n and not n & nouns for n in same):
            out.append(f)
    return out


# Kiwi's proper nouns, Latin-script and Hanja morphemes: with the check's numbers and terms, a text's entities.
_ENTITY_TAGS = ("NNP", "SL", "SH")


def entities(text: str) -> set[str]:
    """The named entities, numbers and terms of `text` as the fact check reads them, for entity precision (prec_s,
    Nan et al. 2021) and recall: each value it writes ("#" and the value: quantities, units aside, Korean numeral
    words included), its quoted, Latin-script and Hanja terms, and Kiwi's proper nouns (NNP), Latin (SL) and Hanja
    (SH) morphemes. Latin and quoted terms compare case-folded; distinct entities, not occurrences."""
    text = nfc(text)
    out = {"#" + format(v.normalize(), "f") for v, _ in quantities(text)}
    for f in extract_facts(text):
        if f.kind in ("quoted", "latin", "hanja"):
            out.add(_fold(f.text[1:-1] if f.kind == "quoted" else f.text))
    out |= {form.casefold() for form, tag in morphemes(text) if tag.split("-")[0] in _ENTITY_TAGS}
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
