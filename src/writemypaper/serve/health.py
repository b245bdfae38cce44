"""GET /health: whether the server is up, what it serves, how full its queue is and what it has served. It needs no
API key, so a load balancer or a person can ask without a secret.

    curl -s localhost:8000/health
"""

from __future__ import annotations

from dataclasses import asdict

from fastapi import APIRouter, Request

router = APIRouter()


@router.get("/health")
async def health(request: Request):
    state = request.app.state
    scheduler, limits = state.scheduler, state.limits
    return {"status": "ok", "model": state.model_name, "api_key_required": state.api_key_required,
            "queue": {"active": scheduler.active, "waiting": len(scheduler.waiting), "depth": limits.queue_depth},
            "limits": asdict(limits), "served": scheduler.stats}
