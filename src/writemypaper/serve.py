r"""An OpenAI-compatible server and a web page for one loaded model, with a fact check on every abstract.

    writemypaper serve --model runs/demo        # then open http://127.0.0.1:8000/
    curl -s localhost:8000/v1/chat/completions -H 'Content-Type: application/json' \
        -d '{"messages": [{"role": "user", "content": "요약..."}], "max_tokens": 256}'

The user turn is the summary: Generator adds the project's instruction and prompt, so clients need not know them.
Only the last user message counts; system text and earlier turns are ignored, because the model was tuned on one
instruction (Gemma has no system role to put them in anyway). Non-streaming choices carry a non-standard
`writemypaper` field, `metrics.faithfulness(summary, content)`; streams can be checked afterwards with
POST /v1/writemypaper/check. `usage` and `finish_reason` come from re-tokenizing the returned text.
Two extra body fields: `grounded` (default true: only the summary's numbers can be written) and `candidates`
(default 1: sample that many and return the best by the fact check; not with stream).

With `--api-key KEY` (or WRITEMYPAPER_API_KEY) every /v1 route needs `Authorization: Bearer KEY`; the page and
/health stay open. Listening beyond loopback without a key is refused unless `--allow-no-key`.
"""

from __future__ import annotations

import asyncio
import collections
import hmac
import ipaddress
import json
import logging
import socket
import threading
import time
import unicodedata
import uuid
from contextlib import asynccontextmanager, contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterator, Literal

from fastapi import FastAPI, Request
from fastapi.exceptions import RequestValidationError
from fastapi.responses import JSONResponse, Response
from pydantic import BaseModel, ConfigDict
from sse_starlette import EventSourceResponse
from starlette.exceptions import HTTPException

from writemypaper import metrics, prompts
from writemypaper.errors import UserError
from writemypaper.generate import FACT_CHECK_LOCK, GenerationSettings, Generator
from writemypaper.models import EMBEDDED

log = logging.getLogger("writemypaper.serve")

STATIC = Path(__file__).parent / "static"
# The page's files, read once at startup: no route turns a request's path into a file path.
PAGE_FILES = {
    "/": ("index.html", "text/html; charset=utf-8"),
    "/static/app.js": ("app.js", "text/javascript; charset=utf-8"),
    "/static/style.css": ("style.css", "text/css; charset=utf-8"),
}
# Everything the page loads comes from this server; the browser enforces it.
PAGE_CSP = ("default-src 'self'; script-src 'self'; style-src 'self'; connect-src 'self'; img-src 'self' data:; "
            "font-src 'self' data:; base-uri 'none'; form-action 'none'; frame-ancestors 'none'")


@dataclass
class Limits:
    """What one request may ask for. A request past any of them gets a 400 (429 for a full queue)."""

    max_input_chars: int = 4000  # characters of the summary, after NFC normalisation
    max_new_tokens: int = 1024  # the largest max_tokens a request may ask for
    min_temperature: float = 0.0
    max_temperature: float = 2.0
    queue_depth: int = 64  # requests admitted at once, waiting or being written
    max_batch_size: int = 8  # sequences in one Generator.generate call

    def validate(self) -> "Limits":
        problems = []
        for name in ("max_input_chars", "max_new_tokens", "queue_depth", "max_batch_size"):
            if getattr(self, name) < 1:
                problems.append(f"{name}={getattr(self, name)} must be at least 1")
        if self.max_new_tokens > 8192:
            problems.append(f"max_new_tokens={self.max_new_tokens} is over 8192")
        if not 0.0 <= self.min_temperature <= self.max_temperature <= 5.0:
            problems.append(f"temperature range [{self.min_temperature}, {self.max_temperature}] is not within [0, 5]")
        if problems:
            raise UserError("; ".join(problems))
        return self


# ---------------------------------------------------------------------------------------------------------------------
# errors: every failure is an OpenAI-shaped body, {"error": {"message", "type", "param", "code"}}


class ApiError(Exception):
    def __init__(self, status: int, message: str, param: str | None = None, code: str | None = None,
                 type: str | None = None):
        super().__init__(message)
        self.status, self.message, self.param, self.code = status, message, param, code
        self.type = type or ("invalid_request_error" if status < 500 else "server_error")


def error_body(message: str, type: str, param: str | None = None, code: str | None = None) -> dict:
    return {"error": {"message": message, "type": type, "param": param, "code": code}}


def _error_response(e: ApiError) -> JSONResponse:
    headers = {"Retry-After": "1"} if e.status == 429 else None
    return JSONResponse(error_body(e.message, e.type, e.param, e.code), status_code=e.status, headers=headers)


def _validation_error(errors: list[dict]) -> ApiError:
    """One line for the first problem pydantic found; never echo the input back."""
    err = errors[0]
    # Drop "body" and the union members pydantic names in the path ("content.str", "prompt.list[str]").
    loc = [str(x) for x in err.get("loc", ()) if x != "body" and x not in ("str", "int", "float", "bool")
           and "[" not in str(x)]
    kind = err.get("type", "")
    if kind == "json_invalid":
        return ApiError(400, f"malformed JSON in the request body: {err.get('ctx', {}).get('error', err['msg'])}",
                        code="invalid_json")
    if kind == "model_attributes_type" and not loc:
        return ApiError(400, "the request body must be a JSON object (Content-Type: application/json)",
                        code="invalid_json")
    param = ".".join(loc) or None
    if kind == "missing":
        return ApiError(400, f"missing required parameter '{param}'", param, "missing_required_parameter")
    typed = kind.endswith("_type") or kind in ("literal_error", "union_tag_invalid")
    code = "invalid_type" if typed else "invalid_value"
    return ApiError(400, f"{param}: {err['msg']}" if param else err["msg"], param, code)


# ---------------------------------------------------------------------------------------------------------------------
# requests: strict types (a string is not a number), unknown OpenAI fields ignored


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class _TextPart(_Strict):
    type: Literal["text"]
    text: str


class _Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[_TextPart] | None = None


class _StreamOptions(_Strict):
    include_usage: bool = False


class _Sampling(_Strict):
    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; vLLM and others accept it too
    repetition_penalty: float | None = None  # likewise
    n: int = 1
    seed: int | None = None
    stream: bool = False
    stream_options: _StreamOptions | None = None
    grounded: bool | None = None  # ours: only the summary's numbers (default true)
    candidates: int | None = None  # ours: best of this many by the fact check (default 1)


class ChatRequest(_Sampling):
    messages: list[_Message]
    max_completion_tokens: int | None = None


class CompletionRequest(_Sampling):
    prompt: str | list[str]


class CheckRequest(_Strict):
    summary: str
    text: str


def _nfc(text: str) -> str:
    return unicodedata.normalize("NFC", text)


def _chat_summary(messages: list) -> str:
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages has no user message: send the summary as the user message", "messages")
    content = users[-1].content
    text = content if isinstance(content, str) else "\n".join(p.text for p in content or [])
    return text


def _check_summary(text: str, limits: Limits, param: str) -> str:
    text = _nfc(text).strip()
    if not text:
        raise ApiError(400, f"{param} is empty: send the summary of a paper", param)
    if len(text) > limits.max_input_chars:
        raise ApiError(400, f"the summary is {len(text)} characters; this server takes at most "
                            f"{limits.max_input_chars}", param, "context_length_exceeded")
    return text


def _settings(req, limits: Limits) -> GenerationSettings:
    """The request's sampling parameters, checked against the limits; unset ones take the project's defaults."""
    base = GenerationSettings()
    # Chat clients now send max_completion_tokens (max_tokens is its deprecated name there).
    name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
    max_tokens = getattr(req, name)
    if max_tokens is None:
        max_tokens = min(base.max_new_tokens, limits.max_new_tokens)
    if not 1 <= max_tokens <= limits.max_new_tokens:
        raise ApiError(400, f"{name}={max_tokens} is not in [1, {limits.max_new_tokens}]", name)
    lo, hi = limits.min_temperature, limits.max_temperature
    temperature = min(max(base.temperature, lo), hi) if req.temperature is None else req.temperature
    if not lo <= temperature <= hi:
        raise ApiError(400, f"temperature={temperature} is not in [{lo}, {hi}]", "temperature")
    top_p = base.top_p if req.top_p is None else req.top_p
    if not 0.0 < top_p <= 1.0:
        raise ApiError(400, f"top_p={top_p} is not in (0, 1]", "top_p")
    top_k = base.top_k if req.top_k is None else req.top_k
    if top_k < 0:
        raise ApiError(400, f"top_k={top_k} is negative", "top_k")
    penalty = base.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty
    if not 0.5 <= penalty <= 3.0:
        raise ApiError(400, f"repetition_penalty={penalty} is not in [0.5, 3]", "repetition_penalty")
    most_n = min(16, limits.max_batch_size)
    if not 1 <= req.n <= most_n:
        raise ApiError(400, f"n={req.n} is not in [1, {most_n}]", "n")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise ApiError(400, f"seed={req.seed} is not in [0, 2^63)", "seed")
    if req.stream and req.n != 1:
        raise ApiError(400, "streaming writes one abstract: n must be 1", "n")
    candidates = base.candidates if req.candidates is None else req.candidates
    if not 1 <= candidates <= most_n:
        raise ApiError(400, f"candidates={candidates} is not in [1, {most_n}]", "candidates")
    if candidates > 1:
        if req.stream:
            raise ApiError(400, "candidates are ranked once written in full: use stream=false", "candidates")
        if temperature == 0:
            raise ApiError(400, "candidates need sampling: temperature must be above 0", "candidates")
        if req.n > candidates:
            raise ApiError(400, f"n={req.n} is more than candidates={candidates}", "n")
    grounded = base.grounded if req.grounded is None else req.grounded
    try:
        return GenerationSettings(max_new_tokens=max_tokens, temperature=temperature, top_p=top_p, top_k=top_k,
                                  repetition_penalty=penalty, num_return_sequences=req.n, seed=req.seed,
                                  grounded=grounded, candidates=candidates).validate()
    except UserError as e:
        raise ApiError(400, str(e)) from None


# ---------------------------------------------------------------------------------------------------------------------
# the queue: one model, one call at a time; waiting non-streaming requests with equal settings share a call


_END = object()


@dataclass(eq=False)
class Job:
    summary: str
    settings: GenerationSettings
    stream: bool = False
    future: asyncio.Future | None = None  # non-streaming: (texts, prompt_tokens, completion_tokens per text)
    pieces: asyncio.Queue | None = None  # streaming: text pieces, then (prompt_tokens, completion_tokens), then _END
    cancelled: threading.Event = field(default_factory=threading.Event)  # read by the model's thread


class Scheduler:
    """Admits up to `queue_depth` requests (waiting or being written; more get a 429) and feeds them to the
    model one call at a time. A non-streaming request takes with it the waiting ones with equal settings, up to
    `max_batch_size` sequences, into one Generator.generate call. A streaming request has the model to itself."""

    def __init__(self, generator, limits: Limits):
        self.generator, self.limits = generator, limits
        self.waiting: collections.deque[Job] = collections.deque()
        self.running: list[Job] = []
        self.active = 0
        self.stats = {"requests": 0, "model_calls": 0, "largest_batch": 0}
        self._wake: asyncio.Event | None = None
        self._task: asyncio.Task | None = None

    def submit(self, jobs: list[Job]) -> None:
        if self.active + len(jobs) > self.limits.queue_depth:
            raise ApiError(429, f"the server is busy: {self.active} requests are queued (limit "
                                f"{self.limits.queue_depth}); retry in a moment", code="queue_full",
                           type="rate_limit_error")
        if self._task is None or self._task.done():
            self._wake = asyncio.Event()
            self._task = asyncio.get_running_loop().create_task(self._work())
        self.active += len(jobs)
        self.stats["requests"] += len(jobs)
        self.waiting.extend(jobs)
        self._wake.set()

    def cancel(self, job: Job) -> None:
        """The client went away: drop the job if it waits, stop the model at its next token if it runs."""
        job.cancelled.set()
        if job in self.waiting:
            self.waiting.remove(job)
            self.active -= 1

    async def close(self) -> None:
        for job in [*self.waiting, *self.running]:
            job.cancelled.set()
        if self._task is not None:
            self._task.cancel()

    def _take_batch(self, first: Job) -> list[Job]:
        batch, size = [first], first.settings.rows_per_summary
        for job in list(self.waiting):
            n = job.settings.rows_per_summary
            if not job.stream and job.settings == first.settings and size + n <= self.limits.max_batch_size:
                self.waiting.remove(job)
                batch.append(job)
                size += n
        return batch

    async def _work(self) -> None:
        while True:
            if not self.waiting:
                self._wake.clear()
                await self._wake.wait()
                continue
            first = self.waiting.popleft()
            batch = [first] if first.stream else self._take_batch(first)
            self.running = batch
            self.stats["model_calls"] += 1
            self.stats["largest_batch"] = max(self.stats["largest_batch"], len(batch))
            try:
                await (self._stream(first) if first.stream else self._generate(batch))
            finally:
                self.running = []
                self.active -= len(batch)

    def _count(self, text: str) -> int:
        return len(self.generator.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _prompt_tokens(self, summary: str) -> int:
        instruction = getattr(self.generator, "instruction", None)
        return len(prompts.encode_prompt(self.generator.tokenizer, summary, instruction))

    async def _generate(self, batch: list[Job]) -> None:
        settings = batch[0].settings

        def gone() -> bool:
            return all(j.cancelled.is_set() for j in batch)

        def run():
            # Tokenizer work stays on this one thread: a fast tokenizer used from two threads at once can fail.
            outs = self.generator.generate([j.summary for j in batch], settings, batch_size=len(batch), stop=gone)
            return [(texts, self._prompt_tokens(j.summary), [self._count(t) for t in texts])
                    for j, texts in zip(batch, outs)]

        try:
            results = await asyncio.to_thread(run)
        except Exception as e:  # the requests fail, the server lives on
            log.exception("generation failed")
            for j in batch:
                if not j.future.done():
                    j.future.set_exception(e)
            return
        for j, result in zip(batch, results):
            if not j.future.done():
                j.future.set_result(result)

    async def _stream(self, job: Job) -> None:
        loop = asyncio.get_running_loop()

        def run():
            text = []
            # A cancelled job keeps draining the stream: the stopping criterion ends it within a token, and the
            # next job must not start while this generation thread still holds the tokenizer.
            for piece in self.generator.stream(job.summary, job.settings, stop=job.cancelled.is_set):
                if piece and not job.cancelled.is_set():
                    text.append(piece)
                    loop.call_soon_threadsafe(job.pieces.put_nowait, piece)
            return self._prompt_tokens(job.summary), self._count("".join(text).strip())

        try:
            job.pieces.put_nowait(await asyncio.to_thread(run))
        except Exception as e:
            log.exception("streaming generation failed")
            job.pieces.put_nowait(e)
        job.pieces.put_nowait(_END)


# ---------------------------------------------------------------------------------------------------------------------
# responses


def _usage(prompt_tokens: int, completion_tokens: int) -> dict:
    return {"prompt_tokens": prompt_tokens, "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens}


def _finish(completion_tokens: int, settings: GenerationSettings) -> str:
    return "length" if completion_tokens >= settings.max_new_tokens else "stop"


class _BodyLimit:
    """413 for a body past `max_bytes`: on its Content-Length before anything is read, or as chunks arrive."""

    def __init__(self, app, max_bytes: int):
        self.app, self.max_bytes = app, max_bytes

    async def __call__(self, scope, receive, send):
        if scope["type"] != "http":
            return await self.app(scope, receive, send)
        length = dict(scope["headers"]).get(b"content-length", b"0")
        if not length.isdigit() or int(length) > self.max_bytes:
            return await _error_response(ApiError(413, "the request body is too large"))(scope, receive, send)
        seen = 0

        async def counted():
            nonlocal seen
            message = await receive()
            seen += len(message.get("body", b""))
            if seen > self.max_bytes:  # FastAPI re-raises an HTTPException met while reading the body
                raise HTTPException(413)
            return message

        await self.app(scope, counted, send)


class _ApiKey:
    """401, OpenAI-shaped, for a /v1 request without `Authorization: Bearer <key>`. The page and /health stay open:
    the page must load to ask for the key, and a health check must not need a secret."""

    def __init__(self, app, key: str):
        self.app, self.key = app, key.encode()

    async def __call__(self, scope, receive, send):
        if scope["type"] == "http" and (scope["path"] == "/v1" or scope["path"].startswith("/v1/")):
            sent = dict(scope["headers"]).get(b"authorization", b"")
            scheme, _, token = sent.partition(b" ")
            if not sent:
                message = "this server needs an API key: send the header 'Authorization: Bearer KEY'"
            elif scheme.lower() != b"bearer" or not hmac.compare_digest(token.strip(), self.key):
                message = "the API key is not valid"
            else:
                return await self.app(scope, receive, send)
            response = _error_response(ApiError(401, message, code="invalid_api_key"))
            response.headers["WWW-Authenticate"] = "Bearer"
            return await response(scope, receive, send)
        return await self.app(scope, receive, send)


def check_api_key(key: str | None) -> str | None:
    """A key must fit in an HTTP header: printable ASCII without spaces."""
    if key is None:
        return None
    if not key or not all(33 <= ord(c) <= 126 for c in key):
        raise UserError("--api-key must be non-empty printable ASCII without spaces")
    return key


def is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host.strip("[]")).is_loopback
    except ValueError:
        return False  # a host name other than localhost may resolve anywhere


_check_lock = FACT_CHECK_LOCK  # shared with the ranking of candidates, which runs on the model's thread


def check(summary: str, text: str) -> dict:
    """metrics.faithfulness on NFC text, with that text: the facts' offsets index it."""
    text = _nfc(text)
    with _check_lock:  # one Kiwi instance serves the process
        return {"text": text, **metrics.faithfulness(_nfc(summary), text)}


def _served_name(model: str | None) -> str:
    """The name clients see and send back: never a local path, which would tell them about this machine."""
    if model is None or model == EMBEDDED:
        return EMBEDDED
    p = Path(model).expanduser()
    return p.resolve().name if p.exists() else model


def create_app(generator, limits: Limits | None = None, model_name: str = "gemma3-270m", api_key: str | None = None):
    """The FastAPI app around one loaded Generator (or anything with its generate/stream/tokenizer). With `api_key`,
    the /v1 routes need `Authorization: Bearer <api_key>`."""
    limits = (limits or Limits()).validate()
    api_key = check_api_key(api_key)
    scheduler = Scheduler(generator, limits)
    page = {route: ((STATIC / name).read_bytes(), mime) for route, (name, mime) in PAGE_FILES.items()}
    started = int(time.time())
    max_text_chars = max(20_000, 8 * limits.max_new_tokens)

    @asynccontextmanager
    async def lifespan(app):
        # Kiwi takes a couple of seconds to load: do it now rather than in the first request.
        warm = asyncio.create_task(asyncio.to_thread(check, "예열", "예열"))
        yield
        warm.cancel()
        await scheduler.close()

    app = FastAPI(title="writemypaper", lifespan=lifespan, docs_url=None, redoc_url=None, openapi_url=None)
    # Korean escaped as \uXXXX is 6 bytes a character; a body holds a summary (or a text to check) and little else.
    app.add_middleware(_BodyLimit, max_bytes=65536 + 8 * limits.max_input_chars + 8 * max_text_chars)
    if api_key:
        app.add_middleware(_ApiKey, key=api_key)  # added last, so it runs first: no body is read without the key
    app.state.scheduler = scheduler

    @app.exception_handler(ApiError)
    async def _api_error(request, e: ApiError):
        return _error_response(e)

    @app.exception_handler(RequestValidationError)
    async def _invalid(request, e: RequestValidationError):
        return _error_response(_validation_error(e.errors()))

    @app.exception_handler(HTTPException)
    async def _http(request, e: HTTPException):
        messages = {404: f"no route {request.method} {request.url.path}", 405: f"{request.method} is not allowed here",
                    413: "the request body is too large"}
        return _error_response(ApiError(e.status_code, messages.get(e.status_code, str(e.detail))))

    @app.exception_handler(Exception)
    async def _bug(request, e: Exception):
        log.exception("unexpected error")
        return _error_response(ApiError(500, f"internal error: {type(e).__name__}"))

    def check_model(name: str | None) -> None:
        if name and name != model_name:
            raise ApiError(404, f"the model '{name}' does not exist here; this server serves '{model_name}'",
                           "model", "model_not_found")

    def new_id(prefix: str) -> str:
        return f"{prefix}-{uuid.uuid4().hex[:24]}"

    # -- the page and status -------------------------------------------------------------------------------------

    def static(route: str):
        body, mime = page[route]
        return lambda: Response(body, media_type=mime, headers={
            "Content-Security-Policy": PAGE_CSP, "X-Content-Type-Options": "nosniff", "Cache-Control": "no-cache"})

    for route in page:
        app.get(route, include_in_schema=False)(static(route))

    @app.get("/health")
    async def health():
        return {"status": "ok", "model": model_name, "api_key_required": bool(api_key),
                "queue": {"active": scheduler.active, "waiting": len(scheduler.waiting), "depth": limits.queue_depth},
                "limits": asdict(limits), "served": scheduler.stats}

    @app.get("/v1/models")
    async def models():
        return {"object": "list", "data": [{"id": model_name, "object": "model", "created": started,
                                            "owned_by": "writemypaper"}]}

    @app.post("/v1/writemypaper/check")
    async def check_text(req: CheckRequest):
        """The facts of `text` that `summary` does not support, with offsets into the returned NFC `text`."""
        summary = _check_summary(req.summary, limits, "summary")
        if len(req.text) > max_text_chars:
            raise ApiError(400, f"text is {len(req.text)} characters; at most {max_text_chars}", "text")
        return await asyncio.to_thread(check, summary, req.text)

    # -- generation ---------------------------------------------------------------------------------------------

    async def run_jobs(request: Request, summaries: list[str], settings: GenerationSettings) -> list[tuple]:
        loop = asyncio.get_running_loop()
        jobs = [Job(s, settings, future=loop.create_future()) for s in summaries]
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

    async def checks(summary: str, texts: list[str]) -> list[dict]:
        out = []
        for t in texts:
            c = await asyncio.to_thread(check, summary, t)
            del c["text"]
            out.append(c)
        return out

    def stream(summary: str, settings: GenerationSettings, chunk: Callable[[str | None, str | None], dict],
               include_usage: bool):
        """SSE of `chunk(piece, finish_reason)` objects, then usage if asked, then [DONE]. The job is queued
        now, so a full queue is a 429 before any byte is streamed."""
        job = Job(summary, settings, stream=True, pieces=asyncio.Queue())
        scheduler.submit([job])

        def data(obj) -> dict:
            return {"data": json.dumps(obj, ensure_ascii=False)}

        async def events():
            try:
                yield data(chunk(None, None))
                begun = False
                while (item := await job.pieces.get()) is not _END:
                    if isinstance(item, Exception):
                        yield data(error_body(f"generation failed: {type(item).__name__}", "server_error"))
                        break
                    if isinstance(item, tuple):
                        prompt_tokens, completion_tokens = item
                        yield data(chunk("", _finish(completion_tokens, settings)))
                        if include_usage:
                            yield data({**chunk("", None), "choices": [],
                                        "usage": _usage(prompt_tokens, completion_tokens)})
                        continue
                    if not begun:  # the same text as a non-streaming response, which is stripped
                        item = item.lstrip()
                        begun = bool(item)
                    if item:
                        yield data(chunk(item, None))
                yield {"data": "[DONE]"}
            finally:
                # Reached on [DONE] and when the client disconnects (sse-starlette closes this generator).
                scheduler.cancel(job)

        async def closed(message):  # also covers a client gone before the first event
            scheduler.cancel(job)

        return EventSourceResponse(events(), sep="\n", ping=15, client_close_handler_callable=closed)

    @app.post("/v1/chat/completions")
    async def chat(req: ChatRequest, request: Request):
        check_model(req.model)
        summary = _check_summary(_chat_summary(req.messages), limits, "messages")
        settings = _settings(req, limits)
        rid, created = new_id("chatcmpl"), int(time.time())
        if req.stream:
            def chunk(piece, finish):
                delta = {"role": "assistant", "content": ""} if piece is None else ({"content": piece} if piece else {})
                return {"id": rid, "object": "chat.completion.chunk", "created": created, "model": model_name,
                        "choices": [{"index": 0, "delta": delta, "logprobs": None, "finish_reason": finish}]}

            return stream(summary, settings, chunk, bool(req.stream_options and req.stream_options.include_usage))
        [(texts, prompt_tokens, counts)] = await run_jobs(request, [summary], settings)
        texts = [_nfc(t) for t in texts]
        facts = await checks(summary, texts)
        return {"id": rid, "object": "chat.completion", "created": created, "model": model_name,
                "choices": [{"index": i, "message": {"role": "assistant", "content": t}, "logprobs": None,
                             "finish_reason": _finish(c, settings), "writemypaper": f}
                            for i, (t, c, f) in enumerate(zip(texts, counts, facts))],
                "usage": _usage(prompt_tokens, sum(counts))}

    @app.post("/v1/completions")
    async def completions(req: CompletionRequest, request: Request):
        check_model(req.model)
        prompts_ = [req.prompt] if isinstance(req.prompt, str) else req.prompt
        if not 1 <= len(prompts_) <= limits.max_batch_size:
            raise ApiError(400, f"prompt holds {len(prompts_)} summaries; send 1 to {limits.max_batch_size}", "prompt")
        if req.stream and len(prompts_) != 1:
            raise ApiError(400, "streaming writes one abstract: send one prompt", "prompt")
        summaries = [_check_summary(p, limits, "prompt") for p in prompts_]
        settings = _settings(req, limits)
        rid, created = new_id("cmpl"), int(time.time())
        if req.stream:
            def chunk(piece, finish):
                return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                        "choices": [{"index": 0, "text": piece or "", "logprobs": None, "finish_reason": finish}]}

            return stream(summaries[0], settings, chunk, bool(req.stream_options and req.stream_options.include_usage))
        results = await run_jobs(request, summaries, settings)
        choices, prompt_total, completion_total = [], 0, 0
        for summary, (texts, prompt_tokens, counts) in zip(summaries, results):
            texts = [_nfc(t) for t in texts]
            prompt_total += prompt_tokens
            completion_total += sum(counts)
            for t, c, f in zip(texts, counts, await checks(summary, texts)):
                choices.append({"index": len(choices), "text": t, "logprobs": None,
                                "finish_reason": _finish(c, settings), "writemypaper": f})
        return {"id": rid, "object": "text_completion", "created": created, "model": model_name,
                "choices": choices, "usage": _usage(prompt_total, completion_total)}

    return app


@contextmanager
def serving(app, host: str = "127.0.0.1") -> Iterator[str]:
    """Run `app` with uvicorn in a background thread on a free port; yields its base URL. For tests and benches."""
    import uvicorn

    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.bind((host, 0))  # the kernel picks the port, and we hold it: no race with another process
    server = uvicorn.Server(uvicorn.Config(app, log_level="warning", timeout_graceful_shutdown=5))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 30
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://{host}:{sock.getsockname()[1]}"
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        sock.close()


# ---------------------------------------------------------------------------------------------------------------------
# the `serve` verb


def _check_port(host: str, port: int) -> None:
    """Fail in one line before the model loads, rather than after, when the address is taken."""
    if not 0 <= port <= 65535:
        raise UserError(f"--port {port} is not in [0, 65535]")
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as e:
        raise UserError(f"--host {host}: {e.strerror}") from None
    family, _, _, _, addr = infos[0]
    with socket.socket(family, socket.SOCK_STREAM) as s:
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        try:
            s.bind(addr)
        except OSError as e:
            raise UserError(f"cannot listen on {host}:{port}: {e.strerror}; choose another --port") from None


def main(model: str | None = None, host: str = "127.0.0.1", port: int = 8000, precision: str = "auto",
         max_input_chars: int = 4000, max_new_tokens: int = 1024, min_temperature: float = 0.0,
         max_temperature: float = 2.0, queue_depth: int = 64, max_batch_size: int = 8, api_key: str | None = None,
         allow_no_key: bool = False) -> None:
    """Load the model once and serve the OpenAI-compatible API and the page until interrupted."""
    import os

    import uvicorn

    limits = Limits(max_input_chars, max_new_tokens, min_temperature, max_temperature, queue_depth,
                    max_batch_size).validate()
    api_key = check_api_key(api_key if api_key is not None else os.environ.get("WRITEMYPAPER_API_KEY") or None)
    if not api_key and not is_loopback(host) and not allow_no_key:
        raise UserError(f"--host {host} lets other machines use this server: give --api-key KEY (or set "
                        "WRITEMYPAPER_API_KEY), or --allow-no-key to serve it without one")
    _check_port(host, port)
    name = _served_name(model)
    generator = Generator.load(model, precision=precision)
    app = create_app(generator, limits, model_name=name, api_key=api_key)
    if not api_key and not is_loopback(host):
        print(f"writemypaper: warning: listening on {host} with no API key: anyone who can reach it can use it")
    shown = f"[{host}]" if ":" in host else host
    auth = "; the API needs 'Authorization: Bearer KEY'" if api_key else ""
    print(f"writemypaper: serving {name} at http://{shown}:{port}/  (OpenAI API: http://{shown}:{port}/v1{auth})")
    uvicorn.run(app, host=host, port=port, log_level="info", timeout_graceful_shutdown=5)
