"""The OpenAI-compatible routes under /v1, and our fact check. Each route takes the generator's scheduler, the limits
and the served name from `request.app.state` (create_app puts them there).

    curl -s localhost:8000/v1/writemypaper/check -H 'Content-Type: application/json' \
        -d '{"summary": "요약...", "text": "초록..."}'
"""

from __future__ import annotations

import asyncio
import json
import time
import uuid
from typing import Callable

from fastapi import APIRouter, Request
from sse_starlette import EventSourceResponse

from writemypaper.decoding import FACT_CHECK_LOCK
from writemypaper.errors import UserError
from writemypaper.serve.errors import ApiError, error_body
from writemypaper.serve.limits import chat_summary, check_summary, nfc, request_settings, request_stops
from writemypaper.serve.scheduler import END, Job
from writemypaper.serve.schemas import (ChatCompletion, ChatCompletionChunk, ChatRequest, CheckRequest,
                                        CheckResponse, Completion, CompletionChunk, CompletionRequest, ErrorResponse,
                                        ModelList, event_stream)
from writemypaper.settings import GenerationSettings
from writemypaper.text import char_count

# Every route's 4xx is an OpenAI-shaped error (errors.py); the OpenAPI schema says so. A body that fails validation
# is a 400 too, so FastAPI's 422 is not documented.
ERRORS = {"4XX": {"model": ErrorResponse, "description": "the request was refused; the body says why"}}

router = APIRouter(prefix="/v1", responses=ERRORS)


def check(summary: str, text: str) -> dict:
    """metrics.faithfulness on NFC text, with that text (the facts' offsets index it) and its length in characters
    as journals count it."""
    from writemypaper import metrics  # Kiwi comes with it: a server without the fact check never imports it

    text = nfc(text)
    # One Kiwi instance serves the process; the ranking of candidates uses it too, on the model's thread.
    with FACT_CHECK_LOCK:
        facts = metrics.faithfulness(nfc(summary), text)
    return {"text": text, **facts, "chars": char_count(text)}


# ---------------------------------------------------------------------------------------------------------------------
# routes


@router.get("/models", response_model=None, responses={200: {"model": ModelList}})
async def models(request: Request):
    state = request.app.state
    return {"object": "list", "data": [{"id": state.model_name, "object": "model", "created": state.started,
                                        "owned_by": "writemypaper"}]}


@router.post("/writemypaper/check", response_model=None, responses={200: {"model": CheckResponse}})
async def check_text(req: CheckRequest, request: Request):
    """The facts of `text` that `summary` does not support, with offsets into the returned NFC `text`."""
    if not request.app.state.fact_check:
        raise ApiError(404, "this server runs without the fact check (serve --no-fact-check)", code="fact_check_off")
    limits = request.app.state.limits
    summary = check_summary(req.summary, limits, "summary")
    if len(req.text) > limits.max_text_chars:
        raise ApiError(400, f"text is {len(req.text)} characters; at most {limits.max_text_chars}", "text")
    return await asyncio.to_thread(check, summary, req.text)


@router.post("/chat/completions", response_model=None,
             responses={200: {"model": ChatCompletion, "content": event_stream(ChatCompletionChunk),
                                   "description": "JSON, or server-sent events with stream"}})
async def chat(req: ChatRequest, request: Request):
    state = request.app.state
    _check_model(state, req.model)
    summary = check_summary(chat_summary(req.messages), state.limits, "messages")
    settings, stops = _settings(req, state)
    rid, created, name = _new_id("chatcmpl"), int(time.time()), state.model_name
    if req.stream:
        def chunk(piece, finish):
            delta = {"role": "assistant", "content": ""} if piece is None else ({"content": piece} if piece else {})
            return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": name,
                    "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

        return _stream(state.scheduler, Job(summary, settings, stream=True, stop=stops), chunk, _include_usage(req))
    [(texts, prompt_tokens, counts, stopped)] = await _run_jobs(request, [summary], settings, stops)
    texts = [nfc(t) for t in texts]
    facts = await _checks(state, summary, texts, settings)
    choices = []
    for i, (t, c, hit, f) in enumerate(zip(texts, counts, stopped, facts)):
        choices.append({"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                        "finish_reason": _finish(c, settings, hit), **f})
    return {"id": rid, "object": "chat.completion", "created": created, "model": name, "choices": choices,
            "usage": _usage(prompt_tokens, sum(counts))}


@router.post("/completions", response_model=None,
             responses={200: {"model": Completion, "content": event_stream(CompletionChunk),
                                   "description": "JSON, or server-sent events with stream"}})
async def completions(req: CompletionRequest, request: Request):
    state = request.app.state
    _check_model(state, req.model)
    limits = state.limits
    prompts_ = [req.prompt] if isinstance(req.prompt, str) else req.prompt
    if not 1 <= len(prompts_) <= limits.max_batch_size:
        raise ApiError(400, f"prompt holds {len(prompts_)} summaries; send 1 to {limits.max_batch_size}", "prompt")
    if req.stream and len(prompts_) != 1:
        raise ApiError(400, "streaming writes one abstract: send one prompt", "prompt")
    summaries = [check_summary(p, limits, "prompt") for p in prompts_]
    settings, stops = _settings(req, state)
    rid, created, name = _new_id("cmpl"), int(time.time()), state.model_name
    if req.stream:
        def chunk(piece, finish):
            return {"id": rid, "object": "text_completion", "created": created, "model": name,
                    "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}]}

        job = Job(summaries[0], settings, stream=True, stop=stops)
        return _stream(state.scheduler, job, chunk, _include_usage(req))
    results = await _run_jobs(request, summaries, settings, stops)
    choices, prompt_total, completion_total = [], 0, 0
    for summary, (texts, prompt_tokens, counts, stopped) in zip(summaries, results):
        texts = [nfc(t) for t in texts]
        prompt_total += prompt_tokens
        completion_total += sum(counts)
        for t, c, hit, f in zip(texts, counts, stopped, await _checks(state, summary, texts, settings)):
            choices.append({"index": len(choices), "text": t, "logprobs": None,
                            "finish_reason": _finish(c, settings, hit), **f})
    return {"id": rid, "object": "text_completion", "created": created, "model": name,
            "choices": choices, "usage": _usage(prompt_total, completion_total)}


# ---------------------------------------------------------------------------------------------------------------------
# what the routes share


def _check_model(state, name: str | None) -> None:
    if name and name != state.model_name:
        raise ApiError(404, f"the model '{name}' does not exist here; this server serves '{state.model_name}'",
                       "model", "model_not_found")


def _new_id(prefix: str) -> str:
    return f"{prefix}-{uuid.uuid4().hex[:24]}"


def _include_usage(req) -> bool:
    return bool(req.stream_options and req.stream_options.include_usage)


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _settings(req, state) -> tuple[GenerationSettings, tuple[str, ...]]:
    settings = request_settings(req, state.limits)
    if settings.candidates > 1 and not state.fact_check:
        raise ApiError(400, "candidates are ranked by the fact check, which this server runs without "
                            "(serve --no-fact-check): send candidates=1", "candidates")
    return settings, tuple(nfc(s) for s in request_stops(req.stop))


def _finish(completion_tokens: int, settings: GenerationSettings, stopped: bool = False) -> str:
    return "length" if completion_tokens >= settings.max_new_tokens and not stopped else "stop"


async def _checks(state, summary: str, texts: list[str], settings: GenerationSettings) -> list[dict]:
    """{"writemypaper": the fact check, the length and its target} for each text; {} each when the server runs
    without the fact check."""
    if not state.fact_check:
        return [{} for _ in texts]
    out = []
    for t in texts:
        c = await asyncio.to_thread(check, summary, t)
        del c["text"]
        out.append({"writemypaper": {**c, "target_chars": settings.target_chars}})
    return out


async def _run_jobs(request: Request, summaries: list[str], settings: GenerationSettings,
                    stops: tuple[str, ...]) -> list[tuple]:
    """Queue one job a summary and wait for them all; a client that hangs up takes its jobs out of the queue."""
    scheduler = request.app.state.scheduler
    loop = asyncio.get_running_loop()
    jobs = [Job(s, settings, future=loop.create_future(), stop=stops) for s in summaries]
    scheduler.submit(jobs)
    try:
        pending = {j.future for j in jobs}
        while pending:
            _, pending = await asyncio.wait(pending, timeout=0.5)
            if pending and await request.is_disconnected():
                raise ApiError(499, "the client closed the request")
        return [j.future.result() for j in jobs]
    except UserError as e:
        raise ApiError(400, str(e)) from None
    finally:
        for j in jobs:
            if not j.future.done():
                scheduler.cancel(j)


def _stream(scheduler, job: Job, chunk: Callable[[str | None, str | None], dict],
            include_usage: bool) -> EventSourceResponse:
    """SSE of `chunk(piece, finish_reason)` objects, then usage if asked, then [DONE]. The job is queued
    now, so a full queue is a 429 before any byte is streamed."""
    job.pieces = asyncio.Queue()
    scheduler.submit([job])

    def data(obj) -> dict:
        return {"data": json.dumps(obj, ensure_ascii=False)}

    async def events():
        try:
            yield data(chunk(None, None))
            while (item := await job.pieces.get()) is not END:
                if isinstance(item, Exception):
                    yield data(error_body(f"generation failed: {type(item).__name__}", "server_error"))
                    break
                if isinstance(item, tuple):
                    prompt_tokens, completion_tokens, stopped = item
                    yield data(chunk("", _finish(completion_tokens, job.settings, stopped)))
                    if include_usage:
                        usage = _usage(prompt_tokens, completion_tokens)
                        yield data({**chunk("", None), "choices": [], "usage": usage})
                    continue
                yield data(chunk(item, None))  # leading whitespace is gone: StopScanner drops it
            yield {"data": "[DONE]"}
        finally:
            # Reached on [DONE] and when the client disconnects (sse-starlette closes this generator).
            scheduler.cancel(job)

    async def closed(message):  # also covers a client gone before the first event
        scheduler.cancel(job)

    return EventSourceResponse(events(), sep="\n", ping=15, client_close_handler_callable=closed)
