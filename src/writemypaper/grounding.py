"""Grounded numbers: while an abstract is written, a number may appear only if the summary contains it.

    writemypaper generate "요약문..." --model runs/demo                (on by default; --no-grounding turns it off)

The core (`NumberTable`, `Grounding`) works on token texts and plain ints, so any decoder can use it (a llama.cpp
logits processor, say); `GroundedNumbers` is the thin transformers adapter. A *number* is a run of digits, '.' and
',' that starts with a digit. While a run is open it must stay a prefix of one of the summary's numbers in a form it
may be written in (1,250 and 1250; 0.18; each side of 1670~1671); it may end (at any other character, or at a stop
token) only where one of those numbers ends, after which one '.' or ',' may follow as punctuation. Gemma's tokenizer
writes digits one token each, but the vocabulary also has byte tokens that decode to digits and multi-character
tokens that hold '.' or ',', so every token whose text holds a number character is checked, whatever its length.
"""

from __future__ import annotations

import re
import unicodedata
from typing import Iterable, Mapping, Sequence

NUMBER_CHARS = frozenset("0123456789.,")
DIGITS = frozenset("0123456789")
_PUNCT = ".,"
_RUN = re.compile(r"[0-9][0-9.,]*")
_THOUSANDS = re.compile(r"[0-9]{1,3}(?:,[0-9]{3})+(?:\.[0-9]+)?")
_PLAIN = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _other_digit(text: str) -> bool:
    """A decimal digit of another script (Bengali, full-width...): it would write a number we cannot check."""
    return any(c.isdecimal() and c not in DIGITS for c in text)


def _runs(text: str) -> tuple[list[str], str | None]:
    """The number runs `text` closes, and the one still open at its end, reading it from outside any number."""
    closed, current = [], None
    for c in text:
        if current is not None:
            if c in NUMBER_CHARS:
                current += c
                continue
            closed.append(current)
            current = None
        if c in DIGITS:
            current = c
    return closed, current


def written_forms(number: str) -> set[str]:
    """The ways one number of the summary may be written: as written, with and without thousands separators, and
    without trailing decimal zeros. A run that is no well-formed number ("1,2,3") also allows its parts."""
    forms = {number}
    if _THOUSANDS.fullmatch(number):
        forms.add(number.replace(",", ""))
    elif _PLAIN.fullmatch(number):
        whole, dot, frac = number.partition(".")
        if len(whole) >= 4:
            forms.add(f"{int(whole):,}" + dot + frac)
    else:
        forms.update(p for p in re.split(r"[.,]", number) if p)
    for f in list(forms):
        if "." in f:
            trimmed = f.rstrip("0").rstrip(".")
            if trimmed and trimmed[-1].isdigit():
                forms.add(trimmed)
    return forms


def summary_numbers(summary: str) -> set[str]:
    """Every written form of every number in `summary` (full-width digits read as ASCII ones)."""
    text = unicodedata.normalize("NFKC", summary)
    forms: set[str] = set()
    for m in _RUN.finditer(text):
        forms |= written_forms(m.group().rstrip(_PUNCT))
    return forms


class NumberTable:
    """What the constraint needs to know about one tokenizer, computed once: the text of each token that holds a
    number character (or a digit of another script), and which tokens decode to nothing (special tokens).

    texts: token id -> decoded text, for those tokens only; every other token is taken to hold no number character.
    """

    def __init__(self, texts: Mapping[int, str], empty_ids: Iterable[int] = ()):
        self.texts = {int(i): t for i, t in texts.items() if t}
        self.empty = frozenset(int(i) for i in empty_ids) | {int(i) for i, t in texts.items() if not t}
        self.foreign = tuple(sorted(i for i, t in self.texts.items() if _other_digit(t)))
        foreign = set(self.foreign)
        numeric = {i: t for i, t in self.texts.items() if i not in foreign and NUMBER_CHARS & set(t)}
        # For each token: its lead (the number characters it starts with), the runs its text closes and leaves open
        # when read from outside a number, and the same for what follows the lead.
        self.fresh: dict[int, tuple[list[str], str | None]] = {}
        self.leads: dict[str, tuple[list[int], list[int]]] = {}  # lead -> (tokens that are only it, the others)
        self.rest: dict[int, tuple[list[str], str | None]] = {}
        for i, t in numeric.items():
            self.fresh[i] = _runs(t)
            lead = t[:len(t) - len(t.lstrip("".join(NUMBER_CHARS)))]
            if lead:
                whole, longer = self.leads.setdefault(lead, ([], []))
                if lead == t:
                    whole.append(i)
                else:
                    longer.append(i)
                    self.rest[i] = _runs(t[len(lead):])

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "NumberTable":
        """For a transformers tokenizer. Candidates are found on the raw token strings (fast), then decoded one by
        one: byte tokens such as <0x35> decode to a digit, special tokens to nothing."""
        raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        candidates = [i for i, s in enumerate(raw) if s and (NUMBER_CHARS & set(s) or _other_digit(s))]
        decoded = tokenizer.batch_decode([[i] for i in candidates], skip_special_tokens=True)
        special = set(tokenizer.all_special_ids)
        special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
        return cls(dict(zip(candidates, decoded)), special)

    def trailing_run(self, ids: Sequence[int]) -> str | None:
        """The number still open at the end of the text that `ids` decode to, or None."""
        tail = ""
        for i in reversed(ids):
            i = int(i)
            if i in self.empty:
                continue
            t = self.texts.get(i)
            if t is None:
                break  # a token with no number character ends any run
            tail = t + tail
            if not NUMBER_CHARS.issuperset(t):
                break
        return open_run(tail)


def open_run(text: str) -> str | None:
    """The number still open at the end of `text`, or None: its trailing number characters from their first digit."""
    k = len(text)
    while k and text[k - 1] in NUMBER_CHARS:
        k -= 1
    tail = text[k:]
    start = next((j for j, c in enumerate(tail) if c in DIGITS), None)
    return None if start is None else tail[start:]


class Grounding:
    """The constraint for one summary. `constraint(run, budget)` says which next tokens are allowed when `run` is the
    number open at the end of the text so far (None outside a number) and `budget` tokens are left to write (None:
    plenty): ("ban", ids) or ("allow", ids). Near the end of the budget a number may start or go on only if it can
    still be finished, one character a token, so that a length cut never leaves "20" of "2015" behind."""

    def __init__(self, table: NumberTable, summary: str):
        self.table = table
        self.forms = frozenset(summary_numbers(summary))
        self.need: dict[str, int] = {}  # open run -> fewest characters that finish it
        for f in self.forms:
            for k in range(1, len(f) + 1):
                self.need[f[:k]] = min(self.need.get(f[:k], len(f)), len(f) - k)
        self.prefixes = frozenset(self.need)
        self.longest = max(map(len, self.forms), default=0)
        self._cache: dict[tuple[str | None, int | None], tuple[str, tuple[int, ...]]] = {}

    def ended_ok(self, run: str) -> bool:
        """May the number end here? Trailing '.' and ',' are punctuation, not part of it."""
        return run.rstrip(_PUNCT) in self.forms

    def open_ok(self, run: str) -> bool:
        return run in self.prefixes or self.ended_ok(run)

    def _left_ok(self, run: str, left: int | None) -> bool:
        """Can the open `run` still be finished in `left` more tokens?"""
        return left is None or self.ended_ok(run) or self.need.get(run, left + 1) <= left

    def _text_ok(self, runs: tuple[list[str], str | None], left: int | None = None) -> bool:
        closed, still_open = runs
        return all(self.ended_ok(r) for r in closed) and (
            still_open is None or (self.open_ok(still_open) and self._left_ok(still_open, left)))

    def constraint(self, run: str | None, budget: int | None = None) -> tuple[str, tuple[int, ...]]:
        if budget is not None and budget > self.longest + 1:
            budget = None  # far from the end: the budget changes nothing, and the cache stays small
        key = (run, budget)
        if key not in self._cache:
            self._cache[key] = self._constraint(run, None if budget is None else budget - 1)
        return self._cache[key]

    def _constraint(self, run: str | None, left: int | None) -> tuple[str, tuple[int, ...]]:
        t = self.table
        if run is not None and not self.open_ok(run):
            run = None  # not reachable under the constraint (the text came from elsewhere): judge what follows only
        if run is None:
            banned = [i for i, runs in t.fresh.items() if not self._text_ok(runs, left)]
            return "ban", tuple(sorted(banned + list(t.foreign)))
        ok = []  # tokens that start with number characters: the lead extends the open run
        for lead, (whole, longer) in t.leads.items():
            extended = run + lead
            if self.open_ok(extended) and self._left_ok(extended, left):
                ok += whole
            if longer and self.ended_ok(extended):
                ok += [i for i in longer if self._text_ok(t.rest[i], left)]
        if not self.ended_ok(run) and ok:
            # The number is unfinished: only tokens that continue it may follow (no stop, no other text).
            return "allow", tuple(sorted(ok))
        # Finished, or (in a vocabulary with no token to go on with) stuck: other text may follow, no wrong number.
        ok_set = set(ok)
        banned = [i for i, runs in t.fresh.items()
                  if not ((i in ok_set) if _starts_with_number(t.texts[i]) else self._text_ok(runs, left))]
        return "ban", tuple(sorted(banned + list(t.foreign)))

    def allows(self, text: str) -> bool:
        """Could the constraint have let `text` be written, in full (its last number ended)? For tests and checks."""
        closed, still_open = _runs(text)
        return self._text_ok((closed + ([still_open] if still_open else []), None))


def _starts_with_number(text: str) -> bool:
    return text[:1] in NUMBER_CHARS


# ---------------------------------------------------------------------------------------------------------------------
# transformers


class GroundedNumbers:
    """A transformers logits processor: each row of the batch is held to its own summary's numbers. Rows come in
    groups of `per_summary` (num_return_sequences repeats each prompt), and the generated part of a row starts at
    `prompt_length` (prompts are left-padded to one length). With `max_new_tokens`, no number is left unfinished
    by the length limit."""

    def __init__(self, table: NumberTable, summaries: Sequence[str], prompt_length: int, per_summary: int = 1,
                 max_new_tokens: int | None = None):
        self.table, self.prompt_length, self.per_summary = table, prompt_length, per_summary
        self.max_new_tokens = max_new_tokens
        self.rows = [Grounding(table, s) for s in summaries]
        self._tensors: dict[tuple, object] = {}

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[0] != len(self.rows) * self.per_summary:
            raise ValueError(f"{input_ids.shape[0]} rows for {len(self.rows)} summaries x {self.per_summary}")
        # A number is a few dozen tokens at most, so the recent tail of each row is enough to find the open one.
        generated = input_ids[:, max(self.prompt_length, input_ids.shape[1] - 64):].tolist()
        vocab = scores.shape[-1]
        written = input_ids.shape[1] - self.prompt_length
        budget = None if self.max_new_tokens is None else self.max_new_tokens - written
        for r, ids in enumerate(generated):
            g_index = r // self.per_summary
            run = self.table.trailing_run(ids)
            row = self.rows[g_index]
            budget_key = budget if budget is not None and budget <= row.longest + 1 else None
            mode, ids_ = row.constraint(run, budget_key)
            if not ids_:
                continue
            key = (g_index, run, budget_key)
            index = self._tensors.get(key)
            if index is None:
                index = torch.tensor([i for i in ids_ if i < vocab], dtype=torch.long, device=scores.device)
                self._tensors[key] = index
            if mode == "ban":
                scores[r].index_fill_(0, index, float("-inf"))
            else:
                kept = scores[r].index_select(0, index)
                scores[r].fill_(float("-inf"))
                scores[r].index_copy_(0, index, kept)
        return scores
