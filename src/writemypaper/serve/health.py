"""GET /health: whether the server is up, what it serves, how full its queue is and what it has served. It needs no
API key, so a load balancer or a person can ask without a secret.

    curl -s localhost:8000/health
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

from writemypaper.serve.limits import defaults
from writemypaper.serve.page import FACT_LABELS, FACT_REASONS

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    """Also what the page needs to know: the limits, the length and temperature a request gets when it sets none,
    whether answers carry the fact check, and the words for its kinds of fact and for why one is unsupported."""
    state = request.app.state
    scheduler, limits = state.scheduler, state.limits
    from writemypaper.settings import GENEROUS_CHARS_PER_TOKEN, TARGET_CHARS_RANGE

    max_new_tokens, temperature = defaults(limits)
    return {"status": "ok", "model": state.model_name, "api_key_required": state.api_key_required,
            "queue": {"active": scheduler.active, "waiting": len(scheduler.waiting), "depth": limits.queue_depth},
            "limits": asdict(limits), "target_chars": {"range": TARGET_CHARS_RANGE,
                                                        "chars_per_token": GENEROUS_CHARS_PER_TOKEN},
            "defaults": {"max_tokens": max_new_tokens, "temperature": temperature},
            "fact_check": state.fact_check, "fact_kinds": FACT_LABELS,
            "fact_reasons": FACT_REASONS, "served": scheduler.stats}
