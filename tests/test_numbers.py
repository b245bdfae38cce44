"""Korean numbers, read one way by the fact check and grounded decoding: random values rendered in every written form
the grammar claims to read parse back to themselves; an abstract that copies the summary's figures in other forms is
supported; changing one figure's value, sign or unit is caught, by the check and by decoding alike.

    pytest tests/test_numbers.py --hypothesis-show-statistics
"""

from __future__ import annotations

from collections import Counter
from decimal import Decimal

from hypothesis import HealthCheck, assume, event, given, settings
from hypothesis import strategies as st

from writemypaper.factcheck import extract_facts, quantities, unsupported_facts
from writemypaper.grounding import Grounding, NumberTable, summary_numbers
from writemypaper.numbers import read_run, spellings

FEW = settings(max_examples=150, deadline=None, suppress_health_check=[HealthCheck.too_slow])
FULL_WIDTH = str.maketrans("0123456789.,%", "０１２３４５６７８９．，％")
BIG = (("조", 10**12), ("억", 10**8), ("만", 10**4))

# ---------------------------------------------------------------------------------------------------------------------
# rendering a value as a Korean text may write it (independent of writemypaper.numbers.spellings)


def _words(n: int) -> str:
    """1..9999 in 천/백/십 words with the ones in digits: 1230 -> 1천2백3십, 1204 -> 1천2백4."""
    parts = [f"{d}{w}" for d, w in ((n // 1000, "천"), (n // 100 % 10, "백"), (n // 10 % 10, "십")) if d]
    return "".join(parts) + (str(n % 10) if n % 10 else "")


@st.composite
def integer_forms(draw):
    """(value, form) for a non-negative integer: digits, thousands commas, or groups of 조/억/만 in digits or
    천/백/십 words, joined with or without a space."""
    n = draw(st.one_of(st.integers(0, 10**6), st.integers(0, 10**15)))
    style = draw(st.sampled_from(["digits", "commas", "groups"]))
    if style == "digits" or n < 10:
        return n, str(n)
    if style == "commas":
        return n, f"{n:,}"
    groups, rest = [], n
    for word, scale in BIG:
        g = rest // scale % 10**4 if scale < 10**12 else rest // scale
        rest %= scale
        if g:
            assume(g < 10**4)
            groups.append((g, word))
    # The last group has no 만/억/조 after it: after another group it is read only in words that end with a scale
    # word (1억 2천, not 1억 2345), and alone its words must too (3천, not 1천2백4).
    tail_words = rest % 10 == 0 and rest >= 10
    if rest:
        assume(not groups or tail_words)
        groups.append((rest, ""))
    sep = draw(st.sampled_from(["", " "]))
    out = []
    for g, word in groups:
        if word == "":
            in_words = tail_words and (len(groups) > 1 or draw(st.booleans()))
        else:
            in_words = draw(st.booleans())
        out.append((_words(g) if in_words else draw(st.sampled_from([str(g), f"{g:,}"]))) + word)
    return n, sep.join(out)


@st.composite
def decimal_forms(draw):
    """(value, form) for a decimal: 3.25, .05 (leading point), 12.5만 / 1.2억 (a decimal with a scale word)."""
    digits = draw(st.integers(1, 10**6))
    places = draw(st.integers(1, 3))
    value = Decimal(digits).scaleb(-places)
    text = format(value, "f")
    style = draw(st.sampled_from(["plain", "scale", "lead"]))
    if style == "lead" and value < 1:
        return value, text[1:]  # "0.05" -> ".05"
    if style == "scale":
        word, scale = draw(st.sampled_from(BIG))
        return value * scale, text + word
    return value, text


@st.composite
def numbers(draw, signed=True):
    """(value, form) in any form, with a sign ('-', '−', '＋'...) and full-width digits now and then."""
    value, form = draw(st.one_of(integer_forms(), decimal_forms()))
    if signed and value and draw(st.booleans()):
        sign = draw(st.sampled_from(["-", "−", "－", "+", "＋"]))
        value, form = (value if sign in "+＋" else -value), sign + form
    if draw(st.integers(0, 4)) == 0:
        form = form.translate(FULL_WIDTH)
    return Decimal(value), form


UNITS = {"%": ["%", "％", "퍼센트"], "명": ["명", " 명"], "원": ["원", " 원"], "배": ["배"], "개": ["개", "가지"]}


# ---------------------------------------------------------------------------------------------------------------------
# every form reads back to its value


@FEW
@given(numbers())
def test_every_form_reads_back(vf):
    value, form = vf
    assert read_run(form) == [value]
    assert quantities(form) == [(value, None)]
    assert quantities(f"응답자의 {form}%가") == [(value, "%")]
    [fact] = extract_facts(f"결과는 {form}명이었다.")
    assert fact.text == f"{form}명"


@FEW
@given(numbers())
def test_what_decoding_may_write_the_check_reads_as_the_same_value(vf):
    value, _ = vf
    for s in spellings(value):
        assert quantities(s) == [(value, None)], s
        assert unsupported_facts(f"값은 {s}였다", f"값은 {format(value, 'f')}였다") == []


@settings(max_examples=100, deadline=None)
@given(st.lists(st.one_of(integer_forms(), decimal_forms()), min_size=2, max_size=5))
def test_lists_check_every_member(vfs):
    values = [Decimal(v) for v, _ in vfs]
    plain = [format(v, "f") for v in values]
    assume(all("," not in p and " " not in p for p in plain))
    # Exactly three digits after a comma group thousands (0,100 is 100): such a member is no list member.
    assume(not any(len(p.partition(".")[0]) == 3 for p in plain[1:]))
    text = ",".join(plain) + "단계"
    assert [v for v, _ in quantities(text)] == values


# ---------------------------------------------------------------------------------------------------------------------
# a summary and an abstract that writes its figures in other forms


@st.composite
def figures(draw, n_min=1, n_max=4):
    """Distinct (value, unit) figures, each with two written forms."""
    out, seen = [], set()
    for _ in range(draw(st.integers(n_min, n_max))):
        value, form = draw(numbers())
        again = draw(other_form(value))
        unit = draw(st.sampled_from(sorted(UNITS)))
        if value in seen:
            continue
        seen.add(value)
        spell = UNITS[unit]
        out.append((value, unit, form + draw(st.sampled_from(spell)), again + draw(st.sampled_from(spell))))
    return out


@st.composite
def other_form(draw, value):
    """Another way to write `value`: one of the spellings decoding may use, or with − for '-' and full width."""
    form = draw(st.sampled_from(sorted(spellings(value))))
    if value < 0 and draw(st.booleans()):
        form = "−" + form[1:]
    if draw(st.integers(0, 3)) == 0:
        form = form.translate(FULL_WIDTH)
    return form


def sentence(forms) -> str:
    return "본 연구에서 " + " 그리고 ".join(forms) + "로 나타났다."


@FEW
@given(figures())
def test_an_abstract_in_other_forms_is_fully_supported(figs):
    summary, abstract = sentence(f for _, _, f, _ in figs), sentence(g for _, _, _, g in figs)
    assert unsupported_facts(summary, abstract) == []
    assert unsupported_facts(abstract, summary) == []


@FEW
@given(figures(), st.data())
def test_changing_one_figure_is_caught(figs, data):
    k = data.draw(st.integers(0, len(figs) - 1))
    value, unit, _, _ = figs[k]
    change = data.draw(st.sampled_from(["value", "sign", "unit"]))
    new_value, new_unit = value, unit
    if change == "value":
        new_value = value + data.draw(st.sampled_from([Decimal(1), Decimal("0.1"), Decimal(-3), Decimal(10000)]))
    elif change == "sign":
        assume(value != 0)
        new_value = -value
    else:
        new_unit = data.draw(st.sampled_from(sorted(set(UNITS) - {unit})))
    assume((new_value, new_unit) not in {(v, u) for v, u, _, _ in figs})
    changed = data.draw(other_form(new_value)) + UNITS[new_unit][0]
    forms = [g for _, _, _, g in figs]
    forms[k] = changed
    summary = sentence(f for _, _, f, _ in figs)
    flagged = [f.text for f in unsupported_facts(summary, sentence(forms))]
    assert flagged == [changed.strip()], (summary, forms)


@FEW
@given(figures(), st.data())
def test_decoding_writes_the_summarys_figures_and_refuses_a_sign_flip(figs, data):
    summary = sentence(f for _, _, f, _ in figs)
    g = Grounding(NumberTable({}), summary)
    forms = summary_numbers(summary)
    for value, _, _, _ in figs:
        assert spellings(value) <= forms
    k = data.draw(st.integers(0, len(figs) - 1))
    value = figs[k][0]
    copied = [data.draw(st.sampled_from(sorted(spellings(v)))) + "명" for v, *_ in figs]
    assert g.allows(sentence(copied))
    assume(value != 0 and -value not in {v for v, *_ in figs})
    flipped = ("-" + format(value, "f")) if value > 0 else format(-value, "f")
    assert not g.allows(f"값은 {flipped}였다")


GLUE = [" ", "-", "−", "+", ".", ",", "만", "억", "천", "백", "십", "~", "(", "<", "a", "다", "0", "5"]


@settings(max_examples=300, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(figures(), st.data())
def test_what_decoding_allows_the_check_accepts(figs, data):
    """Soundness: any text grounded decoding could write in full holds only numbers the check finds in the summary,
    none of them more often than the check allows (the summary's count plus one). Texts join the summary's spellings,
    repeated, with glue that may change how they read: signs, points, commas, scale words, spaces, brackets, letters
    and stray digits. The summary writes some figures twice."""
    twice = data.draw(st.lists(st.booleans(), min_size=len(figs), max_size=len(figs)))
    summary = sentence([f for (_, _, f, _) in figs] + [g for (_, _, _, g), t in zip(figs, twice) if t])
    g = Grounding(NumberTable({}), summary)
    own = sorted(set().union(*(spellings(v) for v, *_ in figs)))
    glue = st.lists(st.sampled_from(GLUE), max_size=2).map("".join)
    parts = data.draw(st.lists(st.tuples(glue, st.sampled_from(own)), min_size=1, max_size=7))
    text = "".join(a + b for a, b in parts) + data.draw(glue)
    allowed = g.allows(text)
    event("allowed, with a number" if allowed and any(c.isdigit() for c in text) else
          "allowed" if allowed else "refused")
    if allowed:
        flagged = [(f.text, f.reason) for f in unsupported_facts(summary, text) if f.kind == "number"]
        assert not [f for f in flagged if f[1] in ("absent", "repeated")], (summary, text, flagged)


@FEW
@given(figures(), st.data())
def test_a_figure_written_twice_more_than_the_summary_is_refused_and_flagged(figs, data):
    summary = sentence(f for _, _, f, _ in figs)
    value, unit, _, _ = figs[data.draw(st.integers(0, len(figs) - 1))]
    # Quantities count every value the summary writes: a figure of another value may read as this one too.
    n = Counter(v for v, _ in quantities(summary))[value]
    forms = [data.draw(other_form(value)) + UNITS[unit][0] for _ in range(n + 2)]
    text = sentence(forms)
    assert not Grounding(NumberTable({}), summary).allows(text)
    assert [f.reason for f in unsupported_facts(summary, text)] == ["repeated"], (summary, text)
    assert Grounding(NumberTable({}), summary).allows(sentence(forms[:-1]))


def test_disagreements_the_soundness_property_found_stay_fixed():
    # The check once joined "-1 1,000억" into one amount, left ",1억" unread and let "a1" (a Latin term) take the
    # 1 of "a1조": decoding and the check read these differently.
    summary = "값은 -1, 1,000억, 1.1억, 1.1조, 1000.1조였다."
    g = Grounding(NumberTable({}), summary)
    for text in ["-1 1,000억", ",1억 1,000만", "a1조 1,000억", "a1,000조 1,000억"]:
        assert g.allows(text)
        assert unsupported_facts(summary, text) == [], text
