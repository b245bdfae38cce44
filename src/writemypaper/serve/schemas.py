"""The request bodies the server accepts: strict types (a string is not a number), unknown OpenAI fields ignored.
What the values may be is checked in limits.py; these only say what shape they have.

    curl -s localhost:8000/v1/completions -H 'Content-Type: application/json' -d '{"prompt": "요약...", "n": 2}'
"""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, ConfigDict


class _Strict(BaseModel):
    model_config = ConfigDict(strict=True, extra="ignore")


class TextPart(_Strict):
    type: Literal["text"]
    text: str


class Message(_Strict):
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None


class StreamOptions(_Strict):
    include_usage: bool = False


class Sampling(_Strict):
    """The fields both completion routes share. None means "the project's default" (GenerationSettings)."""

    model: str | None = None
    max_tokens: int | None = None
    temperature: float | None = None
    top_p: float | None = None
    top_k: int | None = None  # not OpenAI's; vLLM and others accept it too
    repetition_penalty: float | None = None  # likewise
    n: int = 1
    seed: int | None = None
    stream: bool = False
    stream_options: StreamOptions | None = None
    grounded: bool | None = None  # ours: only the summary's numbers (default true)
    candidates: int | None = None  # ours: best of this many by the fact check (default 1)


class ChatRequest(Sampling):
    messages: list[Message]
    max_completion_tokens: int | None = None


class CompletionRequest(Sampling):
    prompt: str | list[str]


class CheckRequest(_Strict):
    summary: str
    text: str
