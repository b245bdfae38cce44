"""Loading models and tokenizers: the embedded models, local directories, Hub ids, training runs and merged exports
all go through `load_model` / `load_tokenizer` / `load_for_inference` here, each tokenizer finished for its model
family (families.py), and an untrained end-of-turn embedding mended at every load. Where the weights come from is
weights.py; the precision and attention they load in, policy.py.

    python -c "from writemypaper.models import load_for_inference; print(load_for_inference('gemma3-270m')[0])"
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

from writemypaper.errors import UserError
from writemypaper.policy import Policy, cuda_available, resolve_policy
from writemypaper.weights import (cache_root, finish_tokenizer, hub_errors, hub_token, is_run_dir, resolve_model,
                                  run_base_model)

# Still importable from here, where the server, the benchmarks and older scripts look for them.


# ---------------------------------------------------------------------------------------------------------------------
# tokenizers


# Parsing a tokenizer's files takes about 4.5 s for the embedded models' 262k-entry vocabularies (mostly JSON);
# unpickling a copy, about 1.5 s. The embedded models' tokenizers are kept pickled in the cache (cache_root()/
# tokenizers), so every process after the first loads them that way. Another local folder's is kept in memory once
# a process has loaded it twice (the demo loads one five times; evaluate, once a model). Each load is its own object,
# and the copy is taken before the family's finishing touches, so that only the libraries' versions and the folder's
# files decide it: they key it, the files by size and modification time, so a folder written again is read again.
_SEEN: set[tuple] = set()
_PICKLED: dict[tuple, bytes] = {}


def load_tokenizer(ref: str | None, padding_side: str = "right"):
    """Right padding for training, left padding for batched generation."""
    ref = resolve_model(ref)
    src = ref if not is_run_dir(ref) or (Path(ref) / "tokenizer_config.json").is_file() else resolve_model(run_base_model(ref))
    tok = _read_tokenizer(src)
    tok.padding_side = padding_side
    return finish_tokenizer(tok, model_type(ref))


def _read_tokenizer(src: str):
    """AutoTokenizer.from_pretrained(src), or the pickled copy of it that this process or the cache keeps."""
    import pickle

    key = _folder_key(src)
    kept = _kept_file(key)
    blob = _PICKLED.get(key) if key else None
    if blob is None and kept is not None and kept.is_file():
        blob = kept.read_bytes()
    if blob is not None:
        try:
            return pickle.loads(blob)
        except Exception:  # noqa: BLE001 - a truncated or foreign copy: the folder's files are read instead
            pass
    from transformers import AutoTokenizer

    with hub_errors(src):
        tok = AutoTokenizer.from_pretrained(src, token=hub_token())
    if key is not None and (kept is not None or key in _SEEN):
        _PICKLED[key] = blob = pickle.dumps(tok)
        if kept is not None:
            _write_kept(kept, blob)
    elif key is not None:
        _SEEN.add(key)
    return tok


def _folder_key(src: str) -> tuple | None:
    """What a local folder's tokenizer is loaded from (its files other than weights, with sizes and times, and the
    libraries that read them); None for a Hub id, which is never kept."""
    import tokenizers
    import transformers

    folder = Path(src)
    if not folder.is_dir():
        return None
    files = tuple(sorted((f.name, st.st_size, st.st_mtime_ns) for f in folder.iterdir()
                         if f.suffix in (".json", ".jinja", ".model", ".txt") and f.is_file() and (st := f.stat())))
    return str(folder.resolve()), files, transformers.__version__, tokenizers.__version__, sys.version_info[:2]


def _kept_file(key: tuple | None) -> Path | None:
    """Where the cache keeps an embedded model's tokenizer for `key`; None for any other folder."""
    import hashlib

    if key is None or Path(key[0]).parent != (cache_root() / "models").resolve():
        return None
    digest = hashlib.sha256(repr(key).encode()).hexdigest()[:16]
    return cache_root() / "tokenizers" / f"{Path(key[0]).name}-{digest}.pickle"


def _write_kept(path: Path, blob: bytes) -> None:
    """Written whole or not at all (a process reading it meanwhile sees the old file or none); a cache that can't be
    written only costs the next process the slower load."""
    from writemypaper.atomic import atomic_write_bytes

    try:
        atomic_write_bytes(path, blob)
    except OSError:
        pass


def model_type(ref: str) -> str:
    """The config's model_type of a resolved reference; a training run's is its base model's."""
    src = ref if (Path(ref) / "config.json").is_file() or not is_run_dir(ref) else resolve_model(run_base_model(ref))
    return load_model_config(src).model_type


# ---------------------------------------------------------------------------------------------------------------------
# the embedding repair: base checkpoints (the embedded Gemma 3 270M) never trained their end-of-turn token's row


def end_of_turn_untrained(model, tokenizer, threshold: float = 0.9, sample: int = 16384) -> bool:
    """True when the end-of-turn token's embedding row sits in the collapsed cluster of rows that pretraining never
    updated. Base (not instruction-tuned) checkpoints may have it there: in the embedded Gemma 3 270M it is
    near-identical (cosine > 0.9) to about 6,400 other rows, so no LoRA on the layers can make it the likeliest token
    and a tuned model never stops. A trained row has almost no such neighbours."""
    import torch

    from writemypaper import prompts

    eot = tokenizer.convert_tokens_to_ids(prompts.end_of_turn(tokenizer))
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
    """Give an untrained end-of-turn token the embedding (and, if untied, the output row) of eos, which pretraining did
    train: the tuned model then ends its turn where the base model ended documents. Applied at every load, so
    training, generation and the merged export all see the same weights."""
    import torch

    from writemypaper import prompts

    if not end_of_turn_untrained(model, tokenizer):
        return False
    eot, eos = tokenizer.convert_tokens_to_ids(prompts.end_of_turn(tokenizer)), tokenizer.eos_token_id
    with torch.no_grad():
        emb = model.get_input_embeddings().weight
        emb[eot] = emb[eos]
        out = model.get_output_embeddings()
        if out is not None and out.weight.data_ptr() != emb.data_ptr():
            out.weight[eot] = out.weight[eos]
    return True


# ---------------------------------------------------------------------------------------------------------------------
# loading


def load_model_config(ref: str):
    from transformers import AutoConfig

    with hub_errors(ref):
        return AutoConfig.from_pretrained(ref, token=hub_token())


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
    With the tokenizer given, an untrained end-of-turn row is mended (see fix_end_of_turn). A `policy` already
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
    # use_kernels=False: transformers 5.25 swaps layers for the Hub's `kernels` by default (5.0 did not), which on a
    # GPU fetches code from the Hub at load time, fails offline ("kernels-community/rotary ... not available in the
    # local cache"), and kernelizes for inference even when training. The policy's attention is what we measured.
    kwargs = dict(dtype=dtype, attn_implementation=attn, token=hub_token(), use_safetensors=True,
                  trust_remote_code=False, use_kernels=False)
    qc = quantization_config(quantization, dtype)
    if qc is not None:
        kwargs["quantization_config"] = qc
        kwargs["device_map"] = device_map or {"": int(os.environ.get("LOCAL_RANK", 0))}
    elif device_map is not None:
        kwargs["device_map"] = device_map
    with hub_errors(ref):
        model = AutoModelForCausalLM.from_pretrained(ref, **kwargs)
    if tokenizer is not None and fix_end_of_turn(model, tokenizer):
        from writemypaper import prompts

        print(f"writemypaper: note: {ref}: {prompts.end_of_turn(tokenizer)} had an untrained embedding; it now shares "
              f"eos's, so a tuned model can end its turn", file=sys.stderr)
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
    same way (writemypaper.nf4) before the adapter goes on; `nf4_base=False` keeps the unrounded base. Which one is
    used, `base_weights` says, for evaluate's scores and export's model card."""
    ref = resolve_model(ref)
    device = device or default_device()
    tokenizer = load_tokenizer(ref, padding_side="left")
    if is_run_dir(ref):
        from peft import PeftModel

        from writemypaper import nf4, record

        if not record.is_finished(ref):  # its adapter may be one half-way through training, or none at all
            raise UserError(f"{ref} is a training run that did not finish (its writemypaper.json says so): continue "
                            f"it with `writemypaper train --resume --out {ref} ...`, or give one of its checkpoints")

        base = load_model(run_base_model(ref), precision=precision, tokenizer=tokenizer)
        if nf4.run_quantization(ref):
            if nf4_base:
                dtype = nf4.run_compute_dtype(ref)
                base.to(device)  # bitsandbytes quantizes on the weights' device: the GPU is much faster
                n = nf4.round_trip_(base, dtype)
                print(f"writemypaper: note: {ref} is a QLoRA run: its base's {n} projections are rounded through NF4, "
                      f"as in training", file=sys.stderr)
        model = PeftModel.from_pretrained(base, ref, is_trainable=False)
    else:
        model = load_model(ref, precision=precision, tokenizer=tokenizer)
    model.to(device)
    model.eval()
    return model, tokenizer


def base_weights(ref: str | None, nf4_base: bool = True) -> str:
    """Which base weights `load_for_inference(ref, nf4_base=...)` puts the adapter on, in words: "as saved", or for
    a QLoRA run its NF4-rounded base (or the unrounded one). Read from the run's files, without loading weights."""
    from writemypaper import nf4

    ref = resolve_model(ref)
    if not is_run_dir(ref) or not nf4.run_quantization(ref):
        return "as saved"
    if not nf4_base:
        return "unrounded (the QLoRA run was trained on NF4 weights)"
    dtype = nf4.run_compute_dtype(ref)
    return f"NF4-dequantized ({str(dtype).replace('torch.', '')}), as trained and validated"
