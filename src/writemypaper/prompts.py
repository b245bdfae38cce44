"""The one prompt format, used by training, generation, serving and the report.

Gemma's turn format, byte for byte:
    <bos><start_of_turn>user\\n{instruction}\\n\\n{summary}<end_of_turn>\\n<start_of_turn>model\\n{original}<end_of_turn>\\n
followed by the tokenizer's eos in training. The rendered text already holds `<bos>`, so it is always tokenized
with `add_special_tokens=False`: tokenizing it again with special tokens would double the BOS.
"""

from __future__ import annotations

import functools

DEFAULT_INSTRUCTION = "다음 요약된 글을 한 문단으로 길게 써주세요."
END_OF_TURN = "<end_of_turn>"
START_OF_TURN = "<start_of_turn>"

# The meta tags of templates/chat.jinja: the chat template's own {{ }} and {% %} pass through as text.
_TEMPLATE_TAGS = {"block_start_string": "[%", "block_end_string": "%]", "variable_start_string": "[[",
                  "variable_end_string": "]]", "comment_start_string": "[#", "comment_end_string": "#]"}


@functools.lru_cache(maxsize=32)
def chat_template(instruction: str | None = None) -> str:
    """Gemma's turn format as a chat template, rendered from templates/chat.jinja, so that plain
    `tokenizer.apply_chat_template` renders exactly what `render_prompt` does. Gemma has no system role: system text
    is folded into the first user turn (Gemma's own template refuses it outright).

    With an instruction (export_chat_template), the first user message gets it and a blank line before it, unless
    the message already starts with it; without one, the user's text is rendered as it is (the template set on
    every tokenizer we load, whose callers wrap the summary with `user_message` themselves)."""
    import json
    from importlib import resources

    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, **_TEMPLATE_TAGS)
    # A JSON string literal is also a valid Jinja string literal (quotes, backslashes and newlines escaped).
    env.filters["jinja_string"] = lambda text: json.dumps(text, ensure_ascii=False)
    source = resources.files("writemypaper").joinpath("templates", "chat.jinja").read_text(encoding="utf-8")
    return env.from_string(source).render(instruction=instruction)


def export_chat_template(instruction: str | None = None) -> str:
    """The chat template with the instruction built in, for exported models: a consumer that knows nothing of
    writemypaper (a transformers pipeline, vLLM, llama.cpp) sends the bare summary and renders exactly
    `render_prompt(summary, instruction)`, and one that wraps the summary itself (our own `user_message`) renders
    the same prompt, not the instruction twice."""
    return chat_template((instruction or DEFAULT_INSTRUCTION).strip())


def user_message(summary: str, instruction: str | None = None) -> str:
    """The user turn's text: the instruction, a blank line, the summary."""
    return f"{instruction or DEFAULT_INSTRUCTION}\n\n{summary.strip()}"


def render_prompt(summary: str, instruction: str | None = None, bos: str = "<bos>") -> str:
    """Everything up to where the model starts writing (the generation prompt)."""
    return f"{bos}{START_OF_TURN}user\n{user_message(summary, instruction)}{END_OF_TURN}\n{START_OF_TURN}model\n"


def render_example(summary: str, original: str, instruction: str | None = None, bos: str = "<bos>") -> str:
    """A whole training example, without the trailing eos (which is added as a token id)."""
    return f"{render_prompt(summary, instruction, bos)}{original.strip()}{END_OF_TURN}\n"


def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops on `<end_of_turn>` and on eos. Look the ids up: they differ between Gemma versions."""
    ids = [tokenizer.convert_tokens_to_ids(END_OF_TURN), tokenizer.eos_token_id]
    return [i for i in dict.fromkeys(ids) if i is not None and i != tokenizer.unk_token_id]


def encode_prompt(tokenizer, summary: str, instruction: str | None = None) -> list[int]:
    return tokenizer(render_prompt(summary, instruction, tokenizer.bos_token), add_special_tokens=False)["input_ids"]


def encode_example(tokenizer, summary: str, original: str, instruction: str | None = None) -> dict[str, list[int]]:
    """Token ids and labels for one training pair. Labels are -100 on the prompt, so the loss falls only on the
    model's turn: the abstract, its `<end_of_turn>`, the newline after it and the eos."""
    prompt_ids = encode_prompt(tokenizer, summary, instruction)
    full = render_example(summary, original, instruction, tokenizer.bos_token)
    ids = tokenizer(full, add_special_tokens=False)["input_ids"] + [tokenizer.eos_token_id]
    return {"input_ids": ids, "labels": mask_prompt(prompt_ids, ids)}


def mask_prompt(prompt_ids: list[int], ids: list[int]) -> list[int]:
    """`ids` as labels, -100 over the prompt. The prompt ends in "model\n", and a tokenizer may merge that newline
    with the answer's first characters: then the mask covers the longest common prefix, so no answer token is ever
    hidden from the loss."""
    n = 0
    while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
        n += 1
    return [-100] * n + ids[n:]
