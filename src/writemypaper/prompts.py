"""The one prompt format, used by training, generation, serving and the report, for every model family.

The prompt is the tokenizer's own chat template (or the family's file under templates/, see families.py), rendered
with one user turn: the instruction, a blank line, the summary. A training example is that prompt, the abstract and
the completion suffix: what the template writes after an assistant turn (`<|im_end|>\\n`, `<|eot_id|>`, ...), found by
rendering a sentinel answer. So the prompt is byte for byte the start of every training example, in every family.
The rendered text is tokenized without special tokens (a template that writes the BOS text would otherwise get two),
and a tokenizer that adds a BOS of its own gets it once, in front, where the template wrote none.

    python -c "from writemypaper import prompts; print(prompts.render_prompt('요약문'))"
"""

from __future__ import annotations

import functools

from writemypaper import families

DEFAULT_INSTRUCTION = "다음 요약된 글을 한 문단으로 길게 써주세요."
# The default model's family (the embedded model) renders prompts for callers that hold no tokenizer.
DEFAULT_FAMILY = families.DEFAULT
# Kept for callers that hold no tokenizer and speak the default family's format (llamacpp.py, gguf_export.py); with
# a tokenizer, use stop_token_ids / end_of_turn.
END_OF_TURN = families.family(DEFAULT_FAMILY).end_of_turn[0]
START_OF_TURN = "<start_of_turn>"
# Private-use characters: no template trims, escapes or splits them, and no answer contains them.
SENTINEL = "\ue000writemypaper\ue001"

# The meta tags of the templates/ files: the chat template's own {{ }} and {% %} pass through as text.
_TEMPLATE_TAGS = {"block_start_string": "[%", "block_end_string": "%]", "variable_start_string": "[[",
                  "variable_end_string": "]]", "comment_start_string": "[#", "comment_end_string": "#]"}


@functools.lru_cache(maxsize=32)
def chat_template(instruction: str | None = None, template: str = "chat.jinja") -> str:
    """A chat template from a file under templates/ (by default the default family's), so that plain
    `tokenizer.apply_chat_template` renders exactly what `render_prompt` does.

    The files are rendered once with `instruction` ([[ ]] / [% %] tags): with one (export_chat_template), the first
    user message gets it and a blank line before it, unless the message already starts with it; without one, the
    user's text is rendered as it is (the template set on every tokenizer we load, whose callers wrap the summary
    with `user_message` themselves)."""
    import json
    from importlib import resources

    import jinja2

    env = jinja2.Environment(undefined=jinja2.StrictUndefined, autoescape=False, **_TEMPLATE_TAGS)
    # A JSON string literal is also a valid Jinja string literal (quotes, backslashes and newlines escaped).
    env.filters["jinja_string"] = lambda text: json.dumps(text, ensure_ascii=False)
    source = resources.files("writemypaper").joinpath("templates", template).read_text(encoding="utf-8")
    return env.from_string(source).render(instruction=instruction)


# The instruction, built into a model's own template without touching it: the first user message is rewritten
# before the template runs, as templates/chat.jinja does for the default family.
_INSTRUCTION_PREFIX = """\
{%- set wmp = namespace(messages=[], first=true) -%}
{%- for m in messages -%}
{%- if m['role'] == 'user' and wmp.first -%}
{%- set wmp.first = false -%}
{%- set content = m['content'] | trim -%}
{%- if not content.startswith(INSTRUCTION) -%}
{%- set content = INSTRUCTION + '\\n\\n' + content -%}
{%- endif -%}
{%- set wmp.messages = wmp.messages + [{'role': 'user', 'content': content}] -%}
{%- else -%}
{%- set wmp.messages = wmp.messages + [m] -%}
{%- endif -%}
{%- endfor -%}
{%- set messages = wmp.messages -%}
"""


def export_chat_template(instruction: str | None = None, tokenizer=None) -> str:
    """The chat template with the instruction built in, for exported models: a consumer that knows nothing of
    writemypaper (a transformers pipeline, vLLM, llama.cpp) sends the bare summary and renders exactly
    `render_prompt(summary, instruction, tokenizer)`, and one that wraps the summary itself (our own `user_message`)
    renders the same prompt, not the instruction twice. Without a tokenizer, the default family's."""
    import json

    instruction = (instruction or DEFAULT_INSTRUCTION).strip()
    if tokenizer is None:
        return chat_template(instruction, families.family(DEFAULT_FAMILY).template)
    own = tokenizer.chat_template
    ours = _our_template_file(own)
    if ours is not None:  # a family that always renders our file (Gemma): the file, with the instruction in it
        return chat_template(instruction, ours)
    literal = json.dumps(instruction, ensure_ascii=False)  # a JSON string literal is a valid Jinja one
    # the template holds the family's variables already (weights.finish_tokenizer), so a consumer passing none works
    return _INSTRUCTION_PREFIX.replace("INSTRUCTION", literal) + own


def _our_template_file(template: str | None) -> str | None:
    """The templates/ file of a family that never uses a model's own template, where `template` is that file."""
    bare = families.without_template_variables(template or "")
    for fam in families.FAMILIES.values():
        if not fam.own_template and fam.template and bare == chat_template(None, fam.template):
            return fam.template
    return None


def user_message(summary: str, instruction: str | None = None) -> str:
    """The user turn's text: the instruction, a blank line, the summary."""
    return f"{instruction or DEFAULT_INSTRUCTION}\n\n{summary.strip()}"


# ---------------------------------------------------------------------------------------------------------------------
# rendering through the tokenizer's template


class ChatFormat:
    """What rendering needs of a tokenizer, for callers that hold none (llama.cpp reads these from a GGUF): a chat
    template and the special tokens' text. It renders (render_prompt, render_example, completion_suffix); tokenizing
    is the caller's."""

    def __init__(self, chat_template: str, bos_token: str | None, eos_token: str | None):
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token


def _default_format(bos: str | None = None) -> ChatFormat:
    fam = families.family(DEFAULT_FAMILY)
    return ChatFormat(chat_template(None, fam.template), "<bos>" if bos is None else bos, "<eos>")


def _render(tokenizer, messages: list[dict], add_generation_prompt: bool) -> str:
    """The template as any library renders it: no variables passed (the family's are in the template)."""
    if not getattr(tokenizer, "chat_template", None):
        raise families.UserError("the tokenizer has no chat template; load it with models.load_tokenizer")
    if hasattr(tokenizer, "apply_chat_template"):
        return tokenizer.apply_chat_template(messages, tokenize=False, add_generation_prompt=add_generation_prompt)
    from transformers.utils.chat_template_utils import render_jinja_template

    text, _ = render_jinja_template(conversations=[messages], chat_template=tokenizer.chat_template,
                                    add_generation_prompt=add_generation_prompt, bos_token=tokenizer.bos_token,
                                    eos_token=tokenizer.eos_token)
    return text[0]


def _tokenizer(tokenizer, bos: str | None):
    if tokenizer is None or isinstance(tokenizer, str):  # a bos text, as the format before families was called
        return _default_format(tokenizer if isinstance(tokenizer, str) else bos)
    return tokenizer


def render_prompt(summary: str, instruction: str | None = None, tokenizer=None, bos: str | None = None) -> str:
    """Everything up to where the model starts writing (the generation prompt), through `tokenizer`'s chat template;
    without one, the default family's format with `bos` (default `<bos>`)."""
    tokenizer = _tokenizer(tokenizer, bos)
    return _render(tokenizer, [{"role": "user", "content": user_message(summary, instruction)}], True)


# completion suffixes by everything their rendering reads: the template, its variables and the special tokens
_SUFFIXES: dict[tuple, str] = {}


def _render_key(tokenizer) -> tuple:
    tokens = getattr(tokenizer, "special_tokens_map", None) or {"bos": tokenizer.bos_token, "eos": tokenizer.eos_token}
    return (tokenizer.chat_template, repr(sorted(tokens.items())))


def completion_suffix(tokenizer=None) -> str:
    """What the template writes after the model's answer (`<|im_end|>\\n`, `<|eot_id|>`, ...): rendered with a
    sentinel answer, whose text must follow the generation prompt exactly, else the template is refused in one line
    (the prompt would differ between training and generation)."""
    tokenizer = _tokenizer(tokenizer, None)
    if not getattr(tokenizer, "chat_template", None):
        raise families.UserError("the tokenizer has no chat template; load it with models.load_tokenizer")
    key = _render_key(tokenizer)
    if key not in _SUFFIXES:
        user = [{"role": "user", "content": "x"}]
        head = _render(tokenizer, user, True) + SENTINEL
        full = _render(tokenizer, user + [{"role": "assistant", "content": SENTINEL}], False)
        if not full.startswith(head):
            raise families.UserError(
                "the chat template does not render the answer right after its generation prompt, so the prompt would "
                "differ between training and generation; give the model a template that does")
        _SUFFIXES[key] = full[len(head):]
    return _SUFFIXES[key]


def render_example(summary: str, original: str, instruction: str | None = None, tokenizer=None,
                   bos: str | None = None) -> str:
    """A whole training example: the prompt, the abstract and the completion suffix. The eos is added as a token id
    where the suffix does not already hold it (encode_example)."""
    tokenizer = _tokenizer(tokenizer, bos)
    return f"{render_prompt(summary, instruction, tokenizer)}{original.strip()}{completion_suffix(tokenizer)}"


# ---------------------------------------------------------------------------------------------------------------------
# token ids


def end_of_turn(tokenizer) -> str:
    """The name of the token that ends the model's turn: the first token the template writes after an answer (the
    family's end of turn, checked when the tokenizer was finished: weights.finish_tokenizer)."""
    ids = tokenizer(completion_suffix(tokenizer), add_special_tokens=False)["input_ids"]
    return tokenizer.convert_ids_to_tokens(ids[0])


def stop_token_ids(tokenizer) -> list[int]:
    """Generation stops on the end-of-turn token and on eos. Look the ids up: they differ between models."""
    ids = [tokenizer.convert_tokens_to_ids(end_of_turn(tokenizer)), tokenizer.eos_token_id]
    return [i for i in dict.fromkeys(ids) if i is not None and i != tokenizer.unk_token_id]


def prompt_renderer(tokenizer, instruction: str | None = None):
    """`render_prompt` for many summaries at once (training's batched map): the template is rendered once with a
    sentinel as the user's text, and each prompt is the text around it with the user message in its place, about
    twenty times faster than rendering each. Used only where that is exactly what the template renders: the message
    has no surrounding whitespace for a template to trim, and probes with newlines, quotes and template syntax come
    out placed as they went in; otherwise, and for any message that is not, each prompt is rendered whole."""
    parts = _prompt_parts(tokenizer)

    def render(summary: str) -> str:
        text = user_message(summary, instruction)
        if parts is None or text != text.strip():
            return render_prompt(summary, instruction, tokenizer)
        return parts[0] + text + parts[1]

    return render


def _prompt_parts(tokenizer) -> tuple[str, str] | None:
    def rendered(text):
        return _render(tokenizer, [{"role": "user", "content": text}], True)

    whole = rendered(SENTINEL)
    if whole.count(SENTINEL) != 1:
        return None
    head, tail = whole.split(SENTINEL)
    probes = ("a", "요약.\n\n본문 1,200명 {{ x }} {% y %} '\"\\ 끝", user_message("x"))
    return (head, tail) if all(rendered(p) == head + p + tail for p in probes) else None


@functools.lru_cache(maxsize=16)
def _adds_bos(tokenizer) -> bool:
    bos = tokenizer.bos_token_id
    return bos is not None and tokenizer("x", add_special_tokens=True)["input_ids"][:1] == [bos]


def encode_text(tokenizer, text: str) -> list[int]:
    """A rendered prompt or example as ids: without special tokens (the template wrote those it wants), plus the BOS
    in front where the tokenizer would add one and the template did not write it: exactly one either way."""
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    return bos_once(tokenizer, ids)


def bos_once(tokenizer, ids: list[int]) -> list[int]:
    if _adds_bos(tokenizer) and ids[:1] != [tokenizer.bos_token_id]:
        return [tokenizer.bos_token_id] + ids
    return ids


def eos_ids(tokenizer) -> list[int]:
    """The eos appended to a training example, unless the completion suffix already ends the sequence with it."""
    eos = tokenizer.eos_token_id
    if eos is None or eos in tokenizer(completion_suffix(tokenizer), add_special_tokens=False)["input_ids"]:
        return []
    return [eos]


def encode_prompt(tokenizer, summary: str, instruction: str | None = None) -> list[int]:
    return encode_text(tokenizer, render_prompt(summary, instruction, tokenizer))


def answer_text(original: str, tokenizer=None) -> str:
    """The model's turn as the template writes it after the generation prompt: the abstract and the suffix."""
    return original.strip() + completion_suffix(tokenizer)


def encode_example(tokenizer, summary: str, original: str, instruction: str | None = None) -> dict[str, list[int]]:
    """Token ids and labels for one training pair: the prompt's ids exactly as generation encodes them, then the
    model's turn (the abstract, the completion suffix with its end-of-turn token, and the eos). Labels are -100 on
    the prompt, so the loss falls only on the model's turn. The two halves are tokenized apart: a BPE tokenizer
    would otherwise merge the prompt's last characters (the blank line after Llama 3's header) with the answer's
    first ones, and the model would be trained on a prompt it never sees at generation."""
    prompt_ids = encode_prompt(tokenizer, summary, instruction)
    answer = tokenizer(answer_text(original, tokenizer), add_special_tokens=False)["input_ids"] + eos_ids(tokenizer)
    return {"input_ids": prompt_ids + answer, "labels": [-100] * len(prompt_ids) + answer}


def mask_prompt(prompt_ids: list[int], ids: list[int]) -> list[int]:
    """`ids` as labels, -100 over the prompt. A tokenizer may merge the prompt's last characters with the answer's
    first ones: then the mask covers the longest common prefix, so no answer token is ever hidden from the loss."""
    n = 0
    while n < min(len(ids), len(prompt_ids)) and ids[n] == prompt_ids[n]:
        n += 1
    return [-100] * n + ids[n:]
