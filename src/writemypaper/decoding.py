"""What every engine shares, so that each one decodes alike and none imports another: ranking candidates by the
fact check, and the instruction a run or an export was trained with.

    python -c "from writemypaper.decoding import instruction_in; print(instruction_in('runs/demo'))"
"""

from __future__ import annotations

import threading
from pathlib import Path

from writemypaper.errors import UserError

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
