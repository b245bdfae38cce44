"""How a Korean text writes a number: one grammar for the fact check (factcheck) and grounded decoding (grounding),
so that what decoding lets the model write and what the check accepts are read the same way.

    python -c "from writemypaper.numbers import read_run; print(read_run('1천2백만'), read_run('1,2,9'))"

An amount is an optional sign, digits (1,234.5 / 1234 / .05) and Korean scale words: 천/백/십 multiply the digits
before them, 만/억/조 multiply everything since the last 만/억/조, and groups add up, so 1천2백만 = 12,000,000,
1억 2천만 = 1.2억 = 120,000,000 and 12.5만 = 125,000. A comma followed by exactly three digits groups thousands
(1,234); any other comma between digits separates the members of a list (1,2,9단계 holds 1, 2 and 9).
"""

from __future__ import annotations

import re
from decimal import Decimal

# Full-width digits and number signs, and the minus sign U+2212, read as their ASCII forms. Each maps one character
# to one, so offsets into the folded text are offsets into the original.
_FOLD = str.maketrans({**{chr(0xFF10 + d): str(d) for d in range(10)},
                       "％": "%", "．": ".", "，": ",", "－": "-", "＋": "+", "～": "~", "−": "-"})


def fold(text: str) -> str:
    """`text` with full-width digits, ％．，－＋～ and U+2212 replaced by their ASCII forms (same length)."""
    return text.translate(_FOLD)


DIGITS = frozenset("0123456789")
SIGNS = frozenset("-+")
SMALL = {"십": 10, "백": 100, "천": 1000}
BIG = {"만": 10**4, "억": 10**8, "조": 10**12}
SCALE_CHARS = frozenset(SMALL) | frozenset(BIG)
# A sign, or a decimal point with no digit before it (p<.05), starts a number only after these (or at the start of
# the text): "-3" after a space or "(" is negative, while in 3-5 (a range) and COVID-19 the hyphen is no sign.
# Grounded decoding reads the same characters, so the list lives here.
OPENERS = frozenset(" \t\n\r\f\v([{<>=≤≥≈:~∼〜/")
_OPEN_CTX = "(?<![^" + re.escape("".join(sorted(OPENERS))) + "])"

_UNSIGNED = r"[0-9]{1,3}(?:,[0-9]{3})+(?![0-9])(?:\.[0-9]+)?|[0-9]+(?:\.[0-9]+)?"
# The first number of an amount may carry a sign or start with its decimal point; both need an opener before them.
_FIRST = rf"{_OPEN_CTX}[-+](?:{_UNSIGNED}|\.[0-9]+)|{_OPEN_CTX}\.[0-9]+|{_UNSIGNED}"
_SCALE = r"[십백천]?[만억조]|[십백천]"
# Groups after a scale word carry one each and may stand one space apart (1억 2천만); a plain space, since
# grounded decoding reads the same. Atomic: a number is never read shorter to let what follows match.
AMOUNT = rf"(?>(?:{_FIRST})(?:(?:{_SCALE})(?: ?(?:{_UNSIGNED})(?:{_SCALE}))*)?)"
# A list goes on at a comma that is followed by a digit and does not group thousands.
LIST_SEP = r",(?=[0-9])"

_AMOUNT_RE = re.compile(AMOUNT)
_RUN_RE = re.compile(rf"{AMOUNT}(?:{LIST_SEP}{AMOUNT})*")
_TERM_RE = re.compile(r"([-+]?)([0-9,]*\.?[0-9]+)([십백천]?)([만억조]?)")


def amount_value(text: str) -> Decimal:
    """The value of one amount (a match of AMOUNT in folded text): '-1억 2천만' -> -120000000."""
    total, section, negative = Decimal(0), Decimal(0), False
    for k, (sign, digits, small, big) in enumerate(_TERM_RE.findall(text)):
        if k == 0:
            negative = sign == "-"
        section += Decimal(digits.replace(",", "")) * SMALL.get(small, 1)
        if big:
            total, section = total + section * BIG[big], Decimal(0)
    value = total + section
    return -value if negative else value


def read_run(text: str) -> list[Decimal] | None:
    """The values of `text` when it is exactly one amount or a comma list of amounts ('1,2,9' -> [1, 2, 9],
    '1,234' -> [1234]); None when it is anything else."""
    text = fold(text)
    if not _RUN_RE.fullmatch(text):
        return None
    return [amount_value(m.group()) for m in _AMOUNT_RE.finditer(text)]


def _plain(a: Decimal) -> set[str]:
    """Digits of a non-negative value, with and without thousands commas."""
    s = format(a.normalize(), "f")
    whole, dot, frac = s.partition(".")
    return {s, f"{int(whole):,}{dot}{frac}"}


def _section(n: int) -> set[str]:
    """A group of 1..9999 in digits, and in 천/백 words when its tens and ones are zero (1200 -> 1천2백)."""
    out = {str(n), f"{n:,}"}
    if n % 100 == 0:
        out.add("".join(f"{d}{w}" for d, w in ((n // 1000, "천"), (n // 100 % 10, "백")) if d))
    return out


def spellings(value: Decimal) -> set[str]:
    """Ways to write `value` that read back to it: digits with and without commas; one scale word (1200만, 1.2억,
    12.5만); and groups of 만/억/조 in digits or 천/백 words, joined with or without a space (1억 2천만, 1억2000만).
    The minus sign is '-' (the check reads − and － as '-')."""
    a = abs(value)
    out = _plain(a)
    for word, scale in BIG.items():
        q = a / scale
        if q >= 1 and q == q.quantize(Decimal("0.0001")):
            out |= {f + word for f in _plain(q)}
    if a == a.to_integral() and a >= 1000:
        n, groups = int(a), []
        for word, scale in sorted(BIG.items(), key=lambda kv: -kv[1]):
            if n // scale:
                groups.append({s + word for s in _section(n // scale % 10**4)} if n // scale < 10**4 else set())
            n %= scale
        if n:
            groups.append(_section(n))
        if all(groups):
            for sep in ("", " "):
                combos = {""}
                for g in groups:
                    combos = {c + sep + s if c else s for c in combos for s in g}
                out |= combos
    out = {s for s in out if read_run(s) == [a]}
    return {("-" + s) for s in out} if value < 0 else out
