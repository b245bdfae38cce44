"""What every engine shares, so that each one decodes alike and none imports another: ranking candidates by the
fact check, steering an abstract towards a length in characters, and the instruction a run or an export was trained
with.

    python -c "from writemypaper.decoding import instruction_in; print(instruction_in('runs/demo'))"
"""

from __future__ import annotations

import re
import threading
from pathlib import Path

from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings
from writemypaper.text import char_count

# One Kiwi instance serves the process: the server checks texts on other threads while the model's thread ranks.
FACT_CHECK_LOCK = threading.Lock()


def rank(summary: str, candidates: list[dict], sort: bool = True) -> list[dict]:
    """Candidates (dicts with "text" and "mean_logprob") scored by the fact check and, if `sort`, sorted best first:
    fewest unsupported facts, then most coverage of the summary, then highest mean log-probability."""
    from writemypaper.metrics import faithfulness

    scored = []
    for c in candidates:
        with FACT_CHECK_LOCK:
            f = faithfulness(summary, c["text"])
        scored.append({"text": c["text"], "unsupported": f["unsupported"], "coverage": round(f["coverage"], 4),
                       "mean_logprob": c["mean_logprob"]})
    if not sort:
        return scored
    return sorted(scored, key=lambda c: (len(c["unsupported"]), -c["coverage"], -(c["mean_logprob"] or 0.0)))


# Below FLOOR x the target the abstract may not end; past CAP x the target it ends at its first sentence end, and past
# LAST x the target (a text with no sentence end in sight: a list, a base model's markup) at its first break: a comma,
# a bracket or a line's end. Gemma's tokens carry the space before a word, so a text rarely ends in one.
FLOOR, CAP, LAST = 0.85, 1.15, 1.3
# A sentence ends at "다." (any '.', '?' or '!' not after a digit) or at one followed by a space: "3." may still
# become "3.5", "3. " no longer can.
_SENTENCE_END = re.compile(r"(?:(?<!\d)[.?!]|[.?!]\s+)$")


def sentence_end(text: str) -> bool:
    return bool(_SENTENCE_END.search(text))


def clause_end(text: str) -> bool:
    return sentence_end(text) or text[-1:].isspace() or text[-1:] in _BREAKS


_BREAKS = frozenset(",;:)]}>」』”’")


class LengthTarget:
    """Steers one sequence towards `target` characters (text.char_count) by its logits alone, so the prompt stays
    the one the model was trained on: below FLOOR x target the stop tokens (`hold_ids`) are forbidden, and past
    CAP x target, at a sentence end, the end of turn (`end_id`) is the only token left (past LAST x target, at any
    `clause_end`). A soft floor: a model that cannot reach it within max_new_tokens just stops there. Each engine
    calls `steer` with the text written so far and the row of next-token scores (a torch or numpy vector, changed in
    place), after its other processors: a row that grounding has left nothing but a stop token keeps it."""

    def __init__(self, target: int | None, hold_ids, end_id: int, floor: float = FLOOR, cap: float = CAP,
                 last: float = LAST):
        self.target, self.hold_ids, self.end_id = target, list(hold_ids), int(end_id)
        self.floor, self.cap, self.last = floor, cap, last

    def action(self, text: str) -> str | None:
        """"hold" (may not end yet), "end" (must end now) or None (the model decides)."""
        if self.target is None:
            return None
        n = char_count(text)
        if n < self.floor * self.target:
            return "hold"
        if n >= self.cap * self.target and sentence_end(text):
            return "end"
        if n >= self.last * self.target and clause_end(text):
            return "end"
        return None

    def steer(self, text: str, row) -> None:
        action = self.action(text)
        if action == "hold":
            kept = [float(row[i]) for i in self.hold_ids]
            row[self.hold_ids] = float("-inf")
            if not bool((row > float("-inf")).any()):  # nothing else was allowed: ending beats an error
                for i, v in zip(self.hold_ids, kept):
                    row[i] = v
        elif action == "end":
            row[:] = float("-inf")
            row[self.end_id] = 0.0


def targets_for(targets: list[int | None] | None, settings: GenerationSettings, n: int) -> list[int | None]:
    """Each summary's target length in an engine's generate: its own from `targets`, checked as the settings' is,
    else the settings'."""
    from dataclasses import replace

    if targets is None:
        return [settings.target_chars] * n
    if len(targets) != n:
        raise UserError(f"{len(targets)} target lengths for {n} summaries")
    for t in targets:
        if t is not None:
            replace(settings, target_chars=t).validate()
    return list(targets)


def run_instruction(model: str | None) -> str | None:
    """A training run remembers its instruction, so generation uses the one it was trained with."""
    return instruction_in(Path(model)) if model else None


def instruction_in(folder: Path) -> str | None:
    """The `instruction` that the record of a run or an export in `folder` names, if it has one; a damaged record is
    a one-line error, not a traceback."""
    from writemypaper import record

    try:
        rec = record.read(folder)
    except record.RecordError as e:
        raise UserError(f"{e}; it is written by `writemypaper train` or `export`") from None
    return rec.instruction if rec else None
