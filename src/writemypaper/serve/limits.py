"""What one request may ask for, and a request's summary and generation settings checked against it. Unset sampling
fields take GenerationSettings' defaults, so a request and `writemypaper generate` decode alike.

    writemypaper serve --max-new-tokens 512 --max-temperature 1.0 --max-batch-size 4
"""

from __future__ import annotations

from dataclasses import dataclass

from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings
from writemypaper.serve.errors import ApiError
from writemypaper.text import nfc

# Logits divided by a temperature near 0 overflow to inf, and sampling from them fails; 0 itself decodes greedily.
MIN_SAMPLING_TEMPERATURE = 0.01
# The server's names for GenerationSettings' fields, so a 400 names the field the client sent.
PARAMS = {"max_new_tokens": "max_tokens", "num_return_sequences": "n"}


@dataclass
class Limits:
    """What one request may ask for. A request past any of them gets a 400 (429 for a full queue)."""

    max_input_chars: int = 4000  # characters of the summary, after NFC normalisation
    max_new_tokens: int = 1024  # the largest max_tokens a request may ask for (the default is GenerationSettings')
    min_temperature: float = 0.0
    max_temperature: float = 2.0
    queue_depth: int = 64  # requests admitted at once, waiting or being written
    max_batch_size: int = 8  # sequences in one engine.generate call

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

    @property
    def max_text_chars(self) -> int:
        """The longest text /v1/writemypaper/check takes: room for any abstract this server may write."""
        return max(20_000, 8 * self.max_new_tokens)

    @property
    def max_sequences(self) -> int:
        """The most n or candidates one request may ask for: one batch, at most GenerationSettings' 16."""
        return min(16, self.max_batch_size)


def chat_summary(messages: list) -> str:
    """The last user message, the summary; the rest is ignored (see the package's docstring)."""
    users = [m for m in messages if m.role == "user"]
    if not users:
        raise ApiError(400, "messages has no user message: send the summary as the user message", "messages")
    content = users[-1].content
    return content if isinstance(content, str) else "\n".join(p.text for p in content or [])


def check_summary(text: str, limits: Limits, param: str) -> str:
    text = nfc(text).strip()
    if not text:
        raise ApiError(400, f"{param} is empty: send the summary of a paper", param)
    if len(text) > limits.max_input_chars:
        raise ApiError(400, f"the summary is {len(text)} characters; this server takes at most "
                            f"{limits.max_input_chars}", param, "context_length_exceeded")
    return text


def defaults(limits: Limits) -> tuple[int, float]:
    """The max_new_tokens and temperature of a request that sets neither: GenerationSettings', within the limits."""
    base = GenerationSettings()
    return (min(base.max_new_tokens, limits.max_new_tokens),
            min(max(base.temperature, limits.min_temperature), limits.max_temperature))


def request_settings(req, limits: Limits) -> GenerationSettings:
    """The request's sampling fields, checked against the limits; unset ones take GenerationSettings' defaults,
    except the seed: a request without one is sampled afresh, as OpenAI's API does, not with the fixed seed that
    makes `generate` and `evaluate` repeatable."""
    base = GenerationSettings()
    # The API's names stop here: chat clients now send max_completion_tokens (max_tokens is its deprecated name
    # there), and both are max_new_tokens inside; an error names the field the client sent.
    name = "max_completion_tokens" if getattr(req, "max_completion_tokens", None) is not None else "max_tokens"
    max_new_tokens = getattr(req, name)
    default_tokens, default_temperature = defaults(limits)
    if max_new_tokens is None:
        max_new_tokens = default_tokens
    if not 1 <= max_new_tokens <= limits.max_new_tokens:
        raise ApiError(400, f"{name}={max_new_tokens} is not in [1, {limits.max_new_tokens}]", name)
    lo, hi = limits.min_temperature, limits.max_temperature
    temperature = default_temperature if req.temperature is None else req.temperature
    if not lo <= temperature <= hi:
        raise ApiError(400, f"temperature={temperature} is not in [{lo}, {hi}]", "temperature")
    if 0 < temperature < MIN_SAMPLING_TEMPERATURE:
        raise ApiError(400, f"temperature={temperature} is too small to sample with: send 0 for greedy decoding, or "
                            f"at least {MIN_SAMPLING_TEMPERATURE}", "temperature")
    _check_counts(req, limits, temperature, base)
    _check_neutral(req)
    settings = GenerationSettings(
        max_new_tokens=max_new_tokens, temperature=temperature, num_return_sequences=req.n, seed=req.seed,
        top_p=base.top_p if req.top_p is None else req.top_p,
        top_k=base.top_k if req.top_k is None else req.top_k,
        repetition_penalty=base.repetition_penalty if req.repetition_penalty is None else req.repetition_penalty,
        grounded=base.grounded if req.grounded is None else req.grounded,
        candidates=base.candidates if req.candidates is None else req.candidates,
        target_chars=base.target_chars if req.target_chars is None else req.target_chars)
    # The ranges are GenerationSettings' own: top_p, top_k and the penalty are checked there, not restated here.
    problems = settings.problems()
    if problems:
        field, message = problems[0]
        raise ApiError(400, message, PARAMS.get(field, field))
    return settings


def _check_counts(req, limits: Limits, temperature: float, base: GenerationSettings) -> None:
    """n, seed, stream and candidates: what fits in one batch, and what streaming or ranking needs."""
    most = limits.max_sequences
    if not 1 <= req.n <= most:
        raise ApiError(400, f"n={req.n} is not in [1, {most}]", "n")
    if req.seed is not None and not 0 <= req.seed < 2**63:
        raise ApiError(400, f"seed={req.seed} is not in [0, 2^63)", "seed")
    if req.stream and req.n != 1:
        raise ApiError(400, "streaming writes one abstract: n must be 1", "n")
    if req.n > 1 and temperature == 0:
        raise ApiError(400, f"n={req.n} needs sampling: greedy decoding (temperature 0) writes one abstract only; "
                            "set temperature above 0 or n=1", "n")
    candidates = base.candidates if req.candidates is None else req.candidates
    if not 1 <= candidates <= most:
        raise ApiError(400, f"candidates={candidates} is not in [1, {most}]", "candidates")
    if candidates > 1:
        if req.stream:
            raise ApiError(400, "candidates are ranked once written in full: use stream=false", "candidates")
        if temperature == 0:
            raise ApiError(400, "candidates need sampling: temperature must be above 0", "candidates")
        if req.n > candidates:
            raise ApiError(400, f"n={req.n} is more than candidates={candidates}", "n")


def _check_neutral(req) -> None:
    """OpenAI's fields this server accepts only at their neutral value: any other value would be ignored."""
    for name in ("presence_penalty", "frequency_penalty"):
        if getattr(req, name) not in (None, 0):
            raise ApiError(400, f"{name} is not supported here (only 0); use repetition_penalty", name,
                           "unsupported_parameter")
    if req.logprobs:
        raise ApiError(400, "logprobs are not returned by this server: leave logprobs unset", "logprobs",
                       "unsupported_parameter")


MAX_STOPS, MAX_STOP_CHARS = 4, 64


def request_stops(stop: str | list[str] | None) -> tuple[str, ...]:
    """The request's stop strings: OpenAI's up to 4, none empty (an empty one would end every text at once)."""
    stops = () if stop is None else (stop,) if isinstance(stop, str) else tuple(stop)
    if len(stops) > MAX_STOPS:
        raise ApiError(400, f"stop holds {len(stops)} strings; at most {MAX_STOPS}", "stop")
    if any(not 1 <= len(s) <= MAX_STOP_CHARS for s in stops):
        raise ApiError(400, f"each stop string must be 1 to {MAX_STOP_CHARS} characters", "stop")
    return stops
