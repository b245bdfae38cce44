"""What differs between model families, as data: one entry per family, keyed by the model config's `model_type`.
prompts.py renders every family through the tokenizer's chat template; this table says which template, which token
ends a turn, which pad token, which LoRA modules, which precisions and how the GGUF export names the architecture.
Adding a family is one entry here and its test in tests/test_families.py.

    python -c "from writemypaper import families; print(families.family('qwen2'))"
"""

from __future__ import annotations

from dataclasses import dataclass

from writemypaper.errors import UserError

# Every projection of a Llama-shaped decoder layer: attention and the gated MLP.
LLAMA_MODULES = ("q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj")


@dataclass(frozen=True)
class Family:
    name: str  # for people: errors, the README's table
    # The token *names* that may end the model's turn, the first one the tokenizer knows wins (the Llama family
    # holds Llama 3's own format and ChatML ones such as SmolLM2); ids are looked up in each tokenizer.
    end_of_turn: tuple[str, ...]
    target_modules: tuple[str, ...] = LLAMA_MODULES  # LoRA's default (`target_modules: auto`), as transformers names them
    system_role: bool = True  # False: the template folds system text into the first user turn
    # The template: None renders the tokenizer's own chat_template. A file under templates/ is used when the
    # tokenizer has none (a GGUF without one), or always where `own_template` is False.
    template: str | None = None
    own_template: bool = True
    # variables for the template (Qwen 3's thinking off), written into it as defaults (with_template_variables)
    template_kwargs: tuple[tuple[str, object], ...] = ()
    pad_tokens: tuple[str, ...] = ()  # tried in order when the tokenizer has no pad token; else eos pads
    fp16: bool = True  # False: activations overflow in fp16, so bf16 (or fp32 where bf16 is not native) is used
    gguf_arch: str | None = None  # llama.cpp's architecture name (gguf.MODEL_ARCH member); None: no GGUF export
    norm_plus_one: bool = False  # RMSNorm computes x * (1 + w): llama.cpp's converter stores w + 1
    licence: str | None = None  # a note for the model card and README where the weights' licence restricts use


_GEMMA = dict(end_of_turn=("<end_of_turn>",), system_role=False, template="chat.jinja", own_template=False,
              pad_tokens=("<pad>",), norm_plus_one=True)

FAMILIES: dict[str, Family] = {
    # Gemma: templates/chat.jinja always, since Gemma's own template refuses a system message and the embedded GGUF
    # carries none; our template is Gemma's turn format with system text folded into the first user turn.
    "gemma2": Family("Gemma 2", gguf_arch="GEMMA2", **_GEMMA),
    # Gemma 3 overflows in fp16 (transformers #36822; LLaMA-Factory #7755: the loss drops to 0).
    "gemma3": Family("Gemma 3", fp16=False, gguf_arch="GEMMA3", **_GEMMA),
    "gemma3_text": Family("Gemma 3", fp16=False, gguf_arch="GEMMA3", **_GEMMA),
    # Llama 3.x, SmolLM2 (ChatML in a Llama body), Bllossom: their own templates; Llama 3.1+ has a reserved pad token.
    # Llama 3.2's template writes today's date into the system turn unless given one: a fixed date (its own
    # fallback) keeps the prompt byte-exact between a training day and a generation day.
    "llama": Family("Llama", end_of_turn=("<|eot_id|>", "<|im_end|>"), template="llama3.jinja",
                    template_kwargs=(("date_string", "26 Jul 2024"),),
                    pad_tokens=("<|finetune_right_pad_id|>", "<|end_of_text|>"), gguf_arch="LLAMA"),
    "qwen2": Family("Qwen 2/2.5", end_of_turn=("<|im_end|>",), template="chatml.jinja", pad_tokens=("<|endoftext|>",),
                    gguf_arch="QWEN2"),
    # Qwen 3 thinks before it answers unless told not to: with thinking off, the generation prompt ends in an empty
    # <think></think> block, which is exactly what its template renders before a final answer.
    "qwen3": Family("Qwen 3", end_of_turn=("<|im_end|>",), template="chatml.jinja", pad_tokens=("<|endoftext|>",),
                    template_kwargs=(("enable_thinking", False),), gguf_arch="QWEN3"),
    # EXAONE 3.5's checkpoints name the projections out_proj, c_fc_0, c_fc_1 and c_proj; transformers 5 loads them
    # into Llama's modules (its conversion mapping renames them), so Llama's names are the ones LoRA sees.
    "exaone": Family("EXAONE 3.5", end_of_turn=("[|endofturn|]",), gguf_arch="EXAONE",
                     licence="EXAONE AI Model License 1.1 - NC: research and non-commercial use only; the tuned "
                             "model inherits that licence"),
}

# The embedded default model's family: the format of prompts rendered without a tokenizer.
DEFAULT = "gemma3_text"


def family(model_type: str | None) -> Family:
    """The family of a config's model_type. An unknown one is refused, naming the ones we support: a family we have
    not tested may need a different pad token, template or precision, and a wrong one fails silently in training."""
    entry = FAMILIES.get((model_type or "").lower())
    if entry is None:
        raise UserError(f"model_type {model_type!r} is not a supported model family; supported: "
                        f"{', '.join(sorted(FAMILIES))}")
    return entry


def of_config(config) -> Family:
    """The family of a transformers config (a multimodal Gemma 3 config gives its text config's type)."""
    return family(getattr(config, "model_type", None))


def end_of_turn_token(fam: Family, tokenizer) -> str:
    """The end-of-turn token's name as this tokenizer knows it (the Llama family holds ChatML tokenizers too)."""
    for name in fam.end_of_turn:
        i = tokenizer.convert_tokens_to_ids(name)
        if i is not None and i != tokenizer.unk_token_id:
            return name
    raise UserError(f"the tokenizer has no {' or '.join(fam.end_of_turn)} token, which ends a turn in {fam.name} "
                    f"models")


def target_modules(fam: Family, requested) -> list[str] | str:
    """LoRA's target modules for `lora.target_modules`: `auto` (or none) is the family's default, `all-linear` is
    PEFT's own choice, and an explicit list must name modules of this family."""
    if requested in (None, "auto"):
        return list(fam.target_modules)
    if requested == "all-linear":
        return requested
    names = [requested] if isinstance(requested, str) else list(requested)
    unknown = [n for n in names if n not in fam.target_modules]
    if unknown:
        raise UserError(f"lora.target_modules: {', '.join(unknown)} are not modules of {fam.name} models; theirs are "
                        f"{', '.join(fam.target_modules)} (or set target_modules: auto)")
    return names


# The family's template variables, set where a caller passes none: a template finished with them renders our prompt
# through any library's plain apply_chat_template, and nothing outside the template has to carry the family.
_VARS_OPEN = "{#- writemypaper: the family's template variables, where the caller passes none -#}\n"
_VARS_CLOSE = "{#- writemypaper: end of the family's template variables -#}\n"


def with_template_variables(template: str, fam: Family) -> str:
    """`template` with the family's template variables as defaults ahead of it (once: a finished one is kept)."""
    import json

    if not fam.template_kwargs or template.startswith(_VARS_OPEN):
        return template
    defaults = "".join(f"{{%- if {k} is not defined -%}}{{%- set {k} = {json.dumps(v)} -%}}{{%- endif -%}}\n"
                       for k, v in fam.template_kwargs)
    return _VARS_OPEN + defaults + _VARS_CLOSE + template


def without_template_variables(template: str) -> str:
    """`template` as it was before with_template_variables."""
    if template.startswith(_VARS_OPEN) and _VARS_CLOSE in template:
        return template.split(_VARS_CLOSE, 1)[1]
    return template


def template_source(fam: Family) -> str | None:
    """The text of the family's template file under templates/, or None where it has none."""
    from importlib import resources

    if fam.template is None:
        return None
    return resources.files("writemypaper").joinpath("templates", fam.template).read_text(encoding="utf-8")


__all__ = ["FAMILIES", "Family", "end_of_turn_token", "family", "of_config", "target_modules", "template_source"]
