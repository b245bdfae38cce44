"""Grounded numbers: while an abstract is written, a number may appear only if the summary contains it.

    writemypaper generate "요약문..." --model runs/demo                (on by default; --no-grounding turns it off)

The core (`NumberTable`, `Grounding`) works on token texts and plain ints, so any decoder can use it (a llama.cpp
logits processor, say); `GroundedNumbers` is the thin transformers adapter. Numbers are read by the fact check's own
grammar (writemypaper.numbers): a *run* is what that grammar may read as one amount or list of amounts: a sign where a
sign counts, digits, '.', ',', 만/억/조 and 천/백/십 after digits, and one space after a scale word (1억 2천만).
While a run is open it must stay a prefix of a form the model may write: the summary's own runs and spellings of the
values the fact check reads in the summary (1,250 and 1250; 1200만 and 1천2백만; -3.5 but not 3.5 for −3.5). It may
end (at any other character, or at a stop token) only where one of those forms ends, after which one '.' or ','
may follow as punctuation. So every number decoding lets through is one the fact check finds in the summary
(units aside). Gemma's tokenizer writes digits one token each, but the vocabulary also has byte tokens that decode
to digits and multi-character tokens that hold run characters, so every such token is checked, whatever its length.
A value may be written as often as the summary writes it (in any form, as the fact check counts it) plus one
restatement: `Usage` counts what a row has written, and `constraint(..., used=...)` drops the forms used up.
"""

from __future__ import annotations

from collections import Counter
from typing import Iterable, Mapping, Sequence

from writemypaper.numbers import DIGITS, OPENERS, SCALE_CHARS, SIGNS, fold, read_run, spellings

NUMBER_CHARS = DIGITS | frozenset(".,")
RUN_CHARS = NUMBER_CHARS | SCALE_CHARS | SIGNS
_SMALL = frozenset("십백천")
_PUNCT = ".,"


def _other_digit(text: str) -> bool:
    """A decimal digit of another script (Bengali...; full-width ones fold to ASCII): a number we cannot check."""
    return any(c.isdecimal() and c not in DIGITS for c in text)


def _continues(run: str, c: str) -> bool:
    """Does character `c` carry on the open `run`, as the numbers grammar would read on?"""
    last = run[-1]
    if not DIGITS & set(run):  # a sign, a lone leading point, or both: only a digit (or the point) makes it a number
        return c in DIGITS or (c == "." and last in SIGNS)
    if c in DIGITS:
        return True
    if last == " ":  # after "1억 " only a digit goes on
        return False
    if c in _PUNCT:
        return last in DIGITS
    if c in SCALE_CHARS:
        return last in DIGITS or (c not in _SMALL and last in _SMALL)
    return c == " " and last in SCALE_CHARS


def scan(text: str, run: str | None) -> tuple[list[str], str | None]:
    """Read `text` on from state `run`: the open run (a non-empty string), "" (outside a number, after a character
    where a sign or leading point starts one) or None (outside, after any other character). Returns the runs that
    `text` closes and the state at its end."""
    closed = []
    for c in text:
        if run:
            if _continues(run, c):
                run += c
                continue
            closed.append(run)
            run = "" if run[-1] in OPENERS else None
        if c in DIGITS or (run == "" and (c in SIGNS or c == ".")):
            run = c
        else:
            run = "" if c in OPENERS else None
    return closed, run


def _relevant(text: str) -> bool:
    return bool(RUN_CHARS & set(text)) or _other_digit(text) or text[-1:] in OPENERS


class NumberTable:
    """What the constraint needs to know about one tokenizer, computed once: the (folded) text of each token that
    could open, carry or close a number or set a sign's context, and which tokens decode to nothing (specials).

    texts: token id -> decoded text; tokens not given, or holding none of those characters, are taken as plain text.
    """

    def __init__(self, texts: Mapping[int, str], empty_ids: Iterable[int] = ()):
        self.empty = frozenset(int(i) for i in empty_ids) | {int(i) for i, t in texts.items() if not t}
        self.texts = {int(i): fold(t) for i, t in texts.items() if t and _relevant(fold(t))}
        self.foreign = tuple(sorted(i for i, t in self.texts.items() if _other_digit(t)))
        foreign = set(self.foreign)
        # How each token reads from outside a number, after a plain character (None) and after an opener ("").
        self.fresh = {None: {}, "": {}}
        self.continuing: list[int] = []  # tokens whose first character may carry an open run on
        for i, t in self.texts.items():
            if i in foreign:
                continue
            for state, reads in self.fresh.items():
                reads[i] = scan(t, state)
            if t[0] in NUMBER_CHARS or t[0] in SCALE_CHARS or t[0] == " ":
                self.continuing.append(i)

    @classmethod
    def from_tokenizer(cls, tokenizer) -> "NumberTable":
        """For a transformers tokenizer. Candidates are found on the raw token strings (fast), then decoded one by
        one: byte tokens such as <0x35> decode to a digit, special tokens to nothing."""
        raw = tokenizer.convert_ids_to_tokens(list(range(len(tokenizer))))
        candidates = [i for i, s in enumerate(raw) if s and (_relevant(fold(s.replace("▁", " "))) or s[:3] == "<0x")]
        decoded = tokenizer.batch_decode([[i] for i in candidates], skip_special_tokens=True)
        special = set(tokenizer.all_special_ids)
        special |= {i for i, tok in getattr(tokenizer, "added_tokens_decoder", {}).items() if tok.special}
        return cls(dict(zip(candidates, decoded)), special)

    def trailing_run(self, ids: Sequence[int]) -> str | None:
        """The state at the end of the text that `ids` decode to (see `scan`): the open run, "" or None."""
        tail, start = "", None  # a token outside the table ends with a plain character
        for i in reversed(ids):
            i = int(i)
            if i in self.empty:
                continue
            t = self.texts.get(i)
            if t is None:
                break
            tail = t + tail
        else:
            start = ""  # the text begins here (after the prompt's newline)
        return scan(tail, start)[1]


def open_run(text: str) -> str | None:
    """The state at the end of `text` read from its start: the open run, "" or None (see `scan`)."""
    return scan(fold(text), "")[1]


def written_forms(number: str) -> set[str]:
    """The ways one run of the summary may be written: as written (trailing '.' and ',' dropped), and every spelling
    of each value it holds ("1,250" -> 1,250 and 1250; "27.30" -> 27.30 and 27.3); a list ("1,2,9") also allows
    its members. Nothing for a run the numbers grammar does not read."""
    number = fold(number).rstrip(_PUNCT + " ")
    values = read_run(number)
    if values is None:
        return set()
    return {number}.union(*(spellings(v) for v in values))


def summary_values(summary: str) -> set:
    """The values the fact check reads in `summary` (writemypaper.factcheck.quantities), signs included."""
    from writemypaper.factcheck import quantities

    return {v for v, _ in quantities(summary)}


def summary_counts(summary: str) -> Counter:
    """How many times `summary` writes each value, in any form and unit, as the fact check counts it (its quantities,
    Korean numeral words included)."""
    from writemypaper.factcheck import quantities

    return Counter(v for v, _ in quantities(summary))


def run_values(runs: Iterable[str]) -> Counter:
    """The values the runs with digits hold, each as often as it is written ('1,2,9' holds three)."""
    out: Counter = Counter()
    for r in runs:
        if DIGITS & set(r):
            out.update(read_run(r.rstrip(_PUNCT + " ")) or [])
    return out


def summary_numbers(summary: str) -> set[str]:
    """Every form the model may write a number of `summary` in: its runs as written and the spellings of every value
    the fact check reads in it (full-width digits as ASCII ones), each reading back to values the summary has."""
    values = summary_values(summary)
    closed, still_open = scan(fold(summary), "")
    forms = set().union(*(written_forms(r) for r in closed + [still_open or ""] if DIGITS & set(r)))
    forms |= set().union(*(spellings(v) for v in values))
    return {f for f in forms if set(read_run(f) or [None]) <= values}


class Grounding:
    """The constraint for one summary. `constraint(run, budget, used)` says which next tokens are allowed in state
    `run` (see `scan`: the number open at the end of the text so far, or "" / None outside one) when `budget` tokens
    are left to write (None: plenty) and the text so far holds the values `used` (a Counter, see `Usage`; None:
    nothing counted): ("ban", ids) or ("allow", ids). Near the end of the budget a number may start or go on only if
    it can still be finished, one character a token, so that a length cut never leaves "20" of "2015" behind."""

    def __init__(self, table: NumberTable, summary: str):
        # Each value may be used as often as the summary writes it, plus one restatement.
        limits = Counter({v: n + 1 for v, n in summary_counts(summary).items()})
        self._setup(table, frozenset(summary_numbers(summary)), limits, Counter())
        self._variants: dict[frozenset, Grounding] = {}
        self._root = self

    def _setup(self, table: NumberTable, every_form: frozenset, limits: Counter, used: Counter) -> None:
        self.table, self.every_form, self.limits, self.used = table, every_form, limits, used
        self.forms = frozenset(f for f in every_form
                               if all(used[v] + n <= limits[v] for v, n in run_values([f]).items()))
        self.need: dict[str, int] = {}  # open run -> fewest characters that finish it
        for f in self.forms:
            for k in range(1, len(f) + 1):
                self.need[f[:k]] = min(self.need.get(f[:k], len(f)), len(f) - k)
        self.prefixes = frozenset(self.need)
        self.longest = max(map(len, self.forms), default=0)
        self._cache: dict[tuple[str | None, int | None], tuple[str, tuple[int, ...]]] = {}

    def spent(self, used: Counter) -> "Grounding":
        """The constraint once the text holds the values `used`: the forms whose values are used up are gone. One
        object per distinct count, kept, so each keeps its own cache."""
        key = frozenset((v, n) for v, n in used.items() if n > 0 and v in self.limits)
        root = self._root
        if not key:
            return root
        g = root._variants.get(key)
        if g is None:
            g = object.__new__(Grounding)
            g._setup(root.table, root.every_form, root.limits, Counter(dict(key)))
            g._root = root
            root._variants[key] = g
        return g

    def ended_ok(self, run: str) -> bool:
        """May the number end here? Trailing '.', ',' and a space are not part of it; a sign alone is no number."""
        return not DIGITS & set(run) or run.rstrip(_PUNCT + " ") in self.forms

    def open_ok(self, run: str) -> bool:
        return run in self.prefixes or self.ended_ok(run)

    def _left_ok(self, run: str, left: int | None) -> bool:
        """Can the open `run` still be finished in `left` more tokens?"""
        return left is None or self.ended_ok(run) or self.need.get(run, left + 1) <= left

    def _text_ok(self, runs: tuple[list[str], str | None], left: int | None = None) -> bool:
        closed, still_open = runs
        if not all(self.ended_ok(r) for r in closed):
            return False
        g, values = self, run_values(closed)
        if values:  # one token may close two numbers: together they must still fit the counts
            if any(self.used[v] + n > self.limits[v] for v, n in values.items()):
                return False
            g = self.spent(self.used + values)
        return not still_open or (g.open_ok(still_open) and g._left_ok(still_open, left))

    def constraint(self, run: str | None, budget: int | None = None,
                   used: Counter | None = None) -> tuple[str, tuple[int, ...]]:
        if used:  # the values the whole text holds so far, whichever constraint is asked
            return self.spent(used).constraint(run, budget)
        if budget is not None and budget > self.longest + 1:
            budget = None  # far from the end: the budget changes nothing, and the cache stays small
        key = (run, budget)
        if key not in self._cache:
            self._cache[key] = self._constraint(run, None if budget is None else budget - 1)
        return self._cache[key]

    def _constraint(self, run: str | None, left: int | None) -> tuple[str, tuple[int, ...]]:
        t = self.table
        if run and not self.open_ok(run):
            run = None  # not reachable under the constraint (the text came from elsewhere): judge what follows only
        if not run:
            banned = [i for i, runs in t.fresh[run].items() if not self._text_ok(runs, left)]
            return "ban", tuple(sorted(banned + list(t.foreign)))
        # Tokens that carry the run on are read through; any other token first closes it (which needs it ended).
        after = "" if run[-1] in OPENERS else None
        carried = {i for i in t.continuing if _continues(run, t.texts[i][0])}
        ok = [i for i in carried if self._text_ok(scan(t.texts[i], run), left)]
        if not self.ended_ok(run) and ok:
            # The number is unfinished: only tokens that continue it may follow (no stop, no other text).
            return "allow", tuple(sorted(ok))
        # Finished, or (in a vocabulary with no token to go on with) stuck: other text may follow, no wrong number.
        ok_set = set(ok)
        banned = [i for i, runs in t.fresh[after].items()
                  if not ((i in ok_set) if i in carried else self._text_ok(runs, left))]
        return "ban", tuple(sorted(banned + list(t.foreign)))

    def allows(self, text: str) -> bool:
        """Could the constraint have let `text` be written, in full (its last number ended)? For tests and checks."""
        closed, still_open = scan(fold(text), "")
        g = self
        for run in closed + ([still_open] if still_open else []):
            if not g._text_ok(([run], None)):
                return False
            g = g.spent(g.used + run_values([run]))
        return True


class Usage:
    """What one row has written so far, read on token by token as it grows: the state at its end (see `scan`) and
    the values of the numbers it closed. Each adapter keeps one per row and hands both to `Grounding.constraint`."""

    def __init__(self, table: NumberTable):
        self.table = table
        self.seen, self.run, self.used = 0, "", Counter()  # the text begins after the prompt's newline

    def read(self, ids: Sequence[int], start: int = 0) -> tuple[str | None, Counter]:
        """The state and the values used once the row holds the generated `ids`, given from position `start` on (the
        adapters pass only the tail since the last step; a row from position 0 that is shorter starts over)."""
        if start == 0 and len(ids) < self.seen:
            self.seen, self.run, self.used = 0, "", Counter()
        if start > self.seen:
            raise ValueError(f"tokens from position {start} given, but only {self.seen} were read")
        for i in ids[self.seen - start:]:
            i = int(i)
            if i in self.table.empty:
                continue
            closed, self.run = scan(self.table.texts.get(i, "a"), self.run)  # "a": a token of plain text
            self.used.update(run_values(closed))
        self.seen = max(self.seen, start + len(ids))
        return self.run, self.used


# ---------------------------------------------------------------------------------------------------------------------
# transformers


class GroundedNumbers:
    """A transformers logits processor: each row of the batch is held to its own summary's numbers, each as often as
    the summary writes it plus once. Rows come in groups of `per_summary` (num_return_sequences repeats each prompt),
    and the generated part of a row starts at `prompt_length` (prompts are left-padded to one length). With
    `max_new_tokens`, no number is left unfinished by the length limit."""

    def __init__(self, table: NumberTable, summaries: Sequence[str], prompt_length: int, per_summary: int = 1,
                 max_new_tokens: int | None = None):
        self.table, self.prompt_length, self.per_summary = table, prompt_length, per_summary
        self.max_new_tokens = max_new_tokens
        self.rows = [Grounding(table, s) for s in summaries]
        self.usage = [Usage(table) for _ in range(len(summaries) * per_summary)]
        self._tensors: dict[tuple, object] = {}

    def __call__(self, input_ids, scores):
        import torch

        if input_ids.shape[0] != len(self.rows) * self.per_summary:
            raise ValueError(f"{input_ids.shape[0]} rows for {len(self.rows)} summaries x {self.per_summary}")
        # Each row's Usage reads only the tokens added since the last step.
        seen = min(u.seen for u in self.usage)
        generated = input_ids[:, self.prompt_length + seen:].tolist()
        vocab = scores.shape[-1]
        written = input_ids.shape[1] - self.prompt_length
        budget = None if self.max_new_tokens is None else self.max_new_tokens - written
        for r, ids in enumerate(generated):
            g_index = r // self.per_summary
            run, used = self.usage[r].read(ids, seen)
            row = self.rows[g_index].spent(used)
            budget_key = budget if budget is not None and budget <= row.longest + 1 else None
            mode, ids_ = row.constraint(run, budget_key)
            if not ids_:
                continue
            key = (g_index, run, budget_key, frozenset(row.used.items()))
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
