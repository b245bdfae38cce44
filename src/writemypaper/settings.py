"""Generation settings: the decoding options every engine, preset and server request starts from. Data only, so that
config (presets), the engines and the server all import it from below them.

    python -c "from writemypaper.settings import GenerationSettings; print(GenerationSettings())"
"""

from __future__ import annotations

from dataclasses import dataclass, fields

from writemypaper import prompts
from writemypaper.errors import UserError

# The range of abstract lengths journals ask for, in characters; and more characters than any Korean text puts in one
# token of Gemma's vocabulary (about 1.7 on the sample corpus): a target that cannot fit in max_new_tokens even at
# this rate cannot be reached.
TARGET_CHARS_RANGE = (50, 5000)
GENEROUS_CHARS_PER_TOKEN = 4

@dataclass
class GenerationSettings:
    """Defaults suit abstracts: sampling at a moderate temperature with a repetition penalty, because greedy
    decoding with no repetition control loops on small models. The penalty covers the generated tokens only: this
    task must copy the summary's numbers and terms. `grounded` lets the model write only numbers the summary holds
    (writemypaper.grounding); `candidates` > 1 samples that many abstracts per summary in one batched call and ranks
    them by the fact check (fewest unsupported facts, then most coverage, then highest mean log-probability).
    `target_chars` steers each abstract towards the length a journal asks for, in characters including spaces
    (text.char_count), without touching the prompt (decoding.LengthTarget); None writes as long as the model likes.

    These are the one place the defaults live: the generate and evaluate presets set only what they change, and a
    server request starts from them."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.15
    num_return_sequences: int = 1
    do_sample: bool = True
    seed: int | None = 0
    grounded: bool = True
    candidates: int = 1
    target_chars: int | None = None

    def problems(self) -> list[tuple[str, str]]:
        """Each setting out of range, as (field, message). The server names the field in its 400s; `validate`
        raises them all in one line."""
        problems = []
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append(("max_new_tokens", f"max_new_tokens={self.max_new_tokens} is not in [1, 8192]"))
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(("temperature", f"temperature={self.temperature} is not in [0, 5]"))
        elif 0.0 < self.temperature < 0.01:  # dividing the logits by it overflows to inf, and sampling fails
            problems.append(("temperature", f"temperature={self.temperature} is too small to sample with: send 0 "
                             "for greedy decoding, or at least 0.01"))
        if not 0.0 < self.top_p <= 1.0:
            problems.append(("top_p", f"top_p={self.top_p} is not in (0, 1]"))
        if self.top_k < 0:
            problems.append(("top_k", f"top_k={self.top_k} is negative"))
        if not 0.5 <= self.repetition_penalty <= 3.0:
            problems.append(("repetition_penalty",
                             f"repetition_penalty={self.repetition_penalty} is not in [0.5, 3]"))
        if not 1 <= self.num_return_sequences <= 16:
            problems.append(("num_return_sequences",
                             f"num_return_sequences={self.num_return_sequences} is not in [1, 16]"))
        elif self.num_return_sequences > 1 and not self.sampling:
            problems.append(("num_return_sequences", f"num_return_sequences={self.num_return_sequences} needs "
                             "sampling (do_sample=true, temperature > 0): greedy decoding writes the same abstract "
                             "every time"))
        if not isinstance(self.grounded, bool):
            problems.append(("grounded", f"grounded={self.grounded!r} is not true or false"))
        if not isinstance(self.candidates, int) or not 1 <= self.candidates <= 16:
            problems.append(("candidates", f"candidates={self.candidates} is not in [1, 16]"))
        elif self.candidates > 1:
            if not self.sampling:
                problems.append(("candidates", f"candidates={self.candidates} needs sampling (do_sample=true, "
                                 "temperature > 0): greedy decoding writes the same abstract every time"))
            if self.num_return_sequences > self.candidates:
                problems.append(("num_return_sequences", f"num_return_sequences={self.num_return_sequences} is more "
                                 f"than candidates={self.candidates}: the best ones are returned out of the "
                                 "candidates"))
        problems += self._target_problems()
        return problems

    def _target_problems(self) -> list[tuple[str, str]]:
        target = self.target_chars
        if target is None:
            return []
        lo, hi = TARGET_CHARS_RANGE
        if isinstance(target, bool) or not isinstance(target, int) or not lo <= target <= hi:
            return [("target_chars", f"target_chars={target!r} is not a whole number of characters in [{lo}, {hi}]")]
        most = self.max_new_tokens * GENEROUS_CHARS_PER_TOKEN
        if isinstance(self.max_new_tokens, int) and target > most:
            return [("target_chars", f"target_chars={target} cannot fit in max_new_tokens={self.max_new_tokens} "
                     f"(at most about {most} characters at {GENEROUS_CHARS_PER_TOKEN} a token): raise max_new_tokens "
                     f"to at least {-(-target // GENEROUS_CHARS_PER_TOKEN)} or lower target_chars")]
        return []

    def validate(self) -> "GenerationSettings":
        problems = self.problems()
        if problems:
            raise UserError("; ".join(message for _, message in problems))
        return self

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature > 0

    @property
    def rows_per_summary(self) -> int:
        """Sequences generated for each summary: the candidates, or the abstracts asked for."""
        return max(self.candidates, self.num_return_sequences)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown generation setting(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
        return cls(**d).validate()

    def generate_kwargs(self, tokenizer) -> dict:
        """Keyword arguments for `model.generate`, without the repetition penalty: transformers would apply it to
        the prompt too. The transformers engine adds it (and grounding) as logits processors; see
        transformers_engine.logits_processors."""
        kw = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.sampling,
            repetition_penalty=1.0,  # explicit, so a model's generation_config cannot bring the prompt-wide one back
            num_return_sequences=self.rows_per_summary,
            eos_token_id=prompts.stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        if self.sampling:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw
