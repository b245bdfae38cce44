"""The request bodies the server accepts: strict types (a string is not a number), and a parameter the server does not
honour is refused with a 400, never dropped in silence. What the values may be is checked in limits.py; these only
say what shape they have. The response models document the answers in the OpenAPI schema (app.openapi()).

    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"prompt": "요약...", "n": 2}'
"""

from __future__ import annotations

from typing import Annotated, Literal

from pydantic import AfterValidator, BaseModel, ConfigDict, Field
from pydantic_core import PydanticCustomError


def _unicode(text: str) -> str:
    # JSON's "\ud800" decodes to a lone surrogate, which no UTF-8 encoder (the tokenizer, Kiwi, our own responses)
    # accepts: refuse it here, as bad input, rather than fail deep inside.
    try:
        text.encode("utf-8")
    except UnicodeEncodeError:
        raise PydanticCustomError("invalid_unicode", "holds a lone surrogate (such as \\ud800), which is not text")
    return text


Text = Annotated[str, AfterValidator(_unicode)]


def _doc(default=None, **bounds):
    """A field whose bounds the OpenAPI schema states, for clients and the fuzzing; the server checks them itself
    (limits.py, against its own limits and GenerationSettings' ranges), so that a 400 names the field."""
    return Field(default, json_schema_extra=bounds)


class _Strict(BaseModel):
    # extra="forbid": a field we do not read would be a parameter accepted and ignored.
    model_config = ConfigDict(strict=True, extra="forbid")


class TextPart(_Strict):
    type: Literal["text"]
    text: Text


class Message(_Strict):
    # Only the last user message is read (see the package's docstring): other fields of a turn (name, tool calls)
    # change nothing, so they are let through.
    model_config = ConfigDict(strict=True, extra="ignore")

    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: Text | list[TextPart] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """The fields both completion routes share. None means "the project's default" (GenerationSettings)."""

    model: Text | None = None
    max_tokens: int | None = _doc(minimum=1, maximum=8192)  # and at most the server's --max-new-tokens
    temperature: float | None = _doc(minimum=0, maximum=5)  # and within the server's range
    top_p: float | None = _doc(exclusiveMinimum=0, maximum=1)
    top_k: int | None = _doc(minimum=0)  # not OpenAI's; vLLM and others accept it too
    repetition_penalty: float | None = _doc(minimum=0.5, maximum=3)  # likewise
    n: int = _doc(1, minimum=1, maximum=16)  # and at most the server's --max-batch-size
    seed: int | None = _doc(minimum=0, maximum=2**63 - 1)
    stop: Text | list[Text] | None = _doc(minLength=1, maxLength=64, maxItems=4)  # the text ends before the first
    stream: bool = False
    stream_options: StreamOptions | None = None
    # Code exported from OpenAI's playground sends these at their neutral values; only those are accepted.
    presence_penalty: float | None = _doc(minimum=0, maximum=0)
    frequency_penalty: float | None = _doc(minimum=0, maximum=0)
    grounded: bool | None = None  # ours: only the summary's numbers (default true)
    candidates: int | None = _doc(minimum=1, maximum=16)  # ours: best of this many by the fact check (default 1)
    target_chars: int | None = _doc(minimum=50, maximum=5000)  # ours: the abstract's length, 공백 포함 (default none)


class ChatRequest(Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = _doc(minimum=1, maximum=8192)
    logprobs: bool | None = _doc(enum=[False, None])


class CompletionRequest(Sampling):
    prompt: Text | list[Text]
    logprobs: int | None = _doc(enum=[0, None])


class CheckRequest(_Strict):
    summary: Text
    text: Text


# ---------------------------------------------------------------------------------------------------------------------
# responses: what the OpenAPI schema promises (tests/test_serve_fuzz.py holds every answer to it)


class ErrorDetail(BaseModel):
    message: str
    type: str
    param: str | None
    code: str | None


class ErrorResponse(BaseModel):
    error: ErrorDetail


class Fact(BaseModel):
    text: str
    kind: str
    start: int
    end: int
    reason: str  # why it is unsupported: absent | repeated | noun (writemypaper.factcheck.REASONS)


class FactCheck(BaseModel):
    unsupported: list[Fact]
    n_facts: int
    unsupported_rate: float
    coverage: float
    chars: int  # the text's length in characters including spaces, as journals count it (text.char_count)


class ChoiceCheck(FactCheck):
    target_chars: int | None  # the length the request steered to (its target_chars), or null


class CheckResponse(FactCheck):
    text: str


class Usage(BaseModel):
    prompt_tokens: int
    completion_tokens: int
    total_tokens: int


class ChatMessage(BaseModel):
    role: Literal["assistant"]
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessage
    logprobs: None
    finish_reason: Literal["stop", "length"]
    writemypaper: ChoiceCheck | None = None  # absent when the server runs with --no-fact-check


class ChatCompletion(BaseModel):
    id: str
    object: Literal["chat.completion"]
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage


class CompletionChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"]
    writemypaper: ChoiceCheck | None = None


class Completion(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage


class Model(BaseModel):
    id: str
    object: Literal["model"]
    created: int
    owned_by: str


class ModelList(BaseModel):
    object: Literal["list"]
    data: list[Model]


# With stream=true: server-sent events whose data is one of these chunks (or an error), and last "[DONE]".


class Delta(BaseModel):
    role: Literal["assistant"] | None = None
    content: str | None = None


class ChatChunkChoice(BaseModel):
    index: int
    delta: Delta
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class ChatCompletionChunk(BaseModel):
    id: str
    object: Literal["chat.completion.chunk"]
    created: int
    model: str
    choices: list[ChatChunkChoice]  # empty in the last chunk, which carries usage when stream_options asks for it
    usage: Usage | None = None


class CompletionChunkChoice(BaseModel):
    index: int
    text: str
    logprobs: None
    finish_reason: Literal["stop", "length"] | None


class CompletionChunk(BaseModel):
    id: str
    object: Literal["text_completion"]
    created: int
    model: str
    choices: list[CompletionChunkChoice]
    usage: Usage | None = None


CHUNKS = (ChatCompletionChunk, CompletionChunk)  # create_app adds them to the OpenAPI schema's components


def event_stream(chunk: type[BaseModel]) -> dict:
    """The OpenAPI content of a stream of `chunk`s: each event's data is "[DONE]" or JSON, a chunk or an error."""
    json_data = {"type": "string", "contentMediaType": "application/json",
                 "contentSchema": {"anyOf": [{"$ref": f"#/components/schemas/{chunk.__name__}"},
                                             {"$ref": "#/components/schemas/ErrorResponse"}]}}
    event = {"type": "object", "required": ["data"],
             "properties": {"data": {"anyOf": [{"const": "[DONE]"}, json_data]}}}
    return {"text/event-stream": {"schema": event}}
