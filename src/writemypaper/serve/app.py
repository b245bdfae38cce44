"""The FastAPI app around one loaded Generator: its state (generator, scheduler, limits, served name), its routers
(the OpenAI API, the page, health), its error handlers and the guards in front of them.

    from writemypaper.serve import create_app, serving
    with serving(create_app(Generator.load("gemma3-270m"))) as url: ...
"""

from __future__ import annotations

import asyncio
import time
from contextlib import asynccontextmanager

from fastapi import FastAPI

from writemypaper.serve import api, health
from writemypaper.serve.errors import HANDLERS
from writemypaper.serve.guards import ApiKey, BodyLimit, check_api_key
from writemypaper.serve.limits import Limits
from writemypaper.serve.page import page_router
from writemypaper.serve.scheduler import Scheduler


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Kiwi takes a couple of seconds to load: do it now rather than in the first request.
    warm = asyncio.create_task(asyncio.to_thread(api.check, "예열", "예열"))
    yield
    warm.cancel()
    await app.state.scheduler.close()


def create_app(generator, limits: Limits | None = None, model_name: str = "gemma3-270m", api_key: str | None = None):
    """The FastAPI app around one loaded Generator (or anything with its generate/stream/tokenizer). With `api_key`,
    the /v1 routes need `Authorization: Bearer <api_key>`."""
    limits = (limits or Limits()).validate()
    api_key = check_api_key(api_key)
    app = FastAPI(title="writemypaper", lifespan=lifespan, exception_handlers=HANDLERS, docs_url=None,
                  redoc_url=None, openapi_url=None)
    # What the routes read through request.app.state.
    app.state.generator = generator
    app.state.scheduler = Scheduler(generator, limits)
    app.state.limits = limits
    app.state.model_name = model_name
    app.state.api_key_required = bool(api_key)
    app.state.started = int(time.time())
    app.include_router(page_router())
    app.include_router(health.router)
    app.include_router(api.router)
    # Korean escaped as \uXXXX is 6 bytes a character; a body holds a summary (or a text to check) and little else.
    app.add_middleware(BodyLimit, max_bytes=65536 + 8 * limits.max_input_chars + 8 * limits.max_text_chars)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # added last, so it runs first: no body is read without the key
    return app
