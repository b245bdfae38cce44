"""The FastAPI app around one loaded engine (engines.Engine): its state (generator, scheduler, limits, served name),
its routers (the OpenAI API, the page, health), its error handlers and the guards in front of them.

    from writemypaper.serve import create_app, serving
    with serving(create_app(engines.load("gemma3-270m"))) as url: ...
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
from writemypaper.serve.schemas import CHUNKS


@asynccontextmanager
async def lifespan(app: FastAPI):
    # Kiwi takes a couple of seconds to load: do it now rather than in the first request (if it is used at all).
    warm = asyncio.create_task(asyncio.to_thread(api.check, "예열", "예열")) if app.state.fact_check else None
    yield
    if warm is not None:
        warm.cancel()
    await app.state.scheduler.close()


def create_app(generator, limits: Limits | None = None, model_name: str = "gemma3-270m", api_key: str | None = None,
               fact_check: bool = True):
    """The FastAPI app around one loaded engine (or anything with its generate/stream/tokenizer). With `api_key`,
    the /v1 routes need `Authorization: Bearer <api_key>`. With fact_check=False, answers carry no fact check,
    candidates > 1 and /v1/writemypaper/check are refused, and Kiwi is never imported (its model is an 88 MB
    package that some machines cannot hold)."""
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
    app.state.fact_check = fact_check
    app.state.started = int(time.time())
    app.include_router(page_router())
    app.include_router(health.router)
    app.include_router(api.router)
    # Korean escaped as \uXXXX is 6 bytes a character; a body holds a summary (or a text to check) and little else.
    app.add_middleware(BodyLimit, max_bytes=65536 + 8 * limits.max_input_chars + 8 * limits.max_text_chars)
    if api_key:
        app.add_middleware(ApiKey, key=api_key)  # added last, so it runs first: no body is read without the key
    app.openapi = lambda: _openapi(app)
    return app


def _openapi(app: FastAPI) -> dict:
    """FastAPI's schema, plus the streamed chunks that the event streams' contentSchema names (FastAPI adds only
    the models of JSON responses). Not served (openapi_url=None); tests/test_serve_fuzz.py fuzzes against it."""
    if app.openapi_schema is None:
        from fastapi.openapi.utils import get_openapi
        from pydantic.json_schema import models_json_schema

        schema = get_openapi(title=app.title, version=app.version, routes=app.routes)
        _, chunks = models_json_schema([(m, "serialization") for m in CHUNKS],
                                       ref_template="#/components/schemas/{model}")
        schema["components"]["schemas"].update(chunks["$defs"])
        app.openapi_schema = schema
    return app.openapi_schema
