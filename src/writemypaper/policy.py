"""What precision, attention and layer compilation a run uses on this machine's device: the Gemma pitfalls (fp16
overflow, dropped softcapping, emulated bf16, flex attention's shared memory) are decided here, once, for training,
inference and the benchmarks alike.

    python -c "from writemypaper.policy import resolve_policy; print(resolve_policy().describe())"
"""

from __future__ import annotations

import dataclasses
import os
import sys

from writemypaper.errors import UserError


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


FAST_MIN_GIB = 20  # `fast` peaked at 15 GiB on an H200 (bench/RESULTS.md); a margin over that for other models' shapes


def gpu_memory_gib() -> float | None:
    """The current CUDA device's memory in GiB; None without a GPU or where the device does not say."""
    import torch

    if not torch.cuda.is_available():
        return None
    total = getattr(torch.cuda.get_device_properties(torch.cuda.current_device()), "total_memory", None)
    return total / 2**30 if total else None


def pick_train_preset() -> tuple[str, str]:
    """(preset, why) for `train` without --config, from this machine's device: cpu-demo with no GPU; gpu-16gb
    where `fast` would not run as measured (no native bf16, too little shared memory for flex attention's backward
    kernel, or under FAST_MIN_GIB of memory); fast otherwise. `why` is one line for stderr."""
    gpu = gpu_info()
    if gpu is None:
        return "cpu-demo", "no --config given and no GPU found: the embedded Gemma 3 270M on the sample corpus"
    name, cap, smem = gpu
    gib = gpu_memory_gib()
    has = f"no --config given; {name} has " + (f"{gib:.0f} GiB and " if gib else "")
    if cap < NATIVE_BF16:
        return "gpu-16gb", f"{has}no bf16 (sm {cap[0]}.{cap[1]})"
    if smem and smem < FLEX_BWD_SMEM:
        return "gpu-16gb", (f"{has}{smem // 1024} KiB of shared memory per block, too little for flex attention's "
                            f"backward kernel")
    if gib is not None and gib < FAST_MIN_GIB:
        return "gpu-16gb", f"{has}bf16, but `fast` wants {FAST_MIN_GIB} GiB"
    return "fast", f"{has}bf16 (sm {cap[0]}.{cap[1]})"


def _precision(precision: str, model_type: str, gpu, notes: list) -> str:
    """`auto` is bf16 where the GPU has it natively (compute capability 8.0+; `torch.cuda.is_bf16_supported()` also
    says yes on a T4, where bf16 is only emulated), fp16 on older GPUs, fp32 on CPU. A family that overflows in fp16
    (families.py: Gemma 3) gets bf16 where that is native and fp32 elsewhere."""
    import torch

    from writemypaper import families

    precision = (precision or "auto").lower()
    if precision not in PRECISIONS:
        raise UserError(f"precision '{precision}' is not one of {', '.join(PRECISIONS)}")
    native = gpu is not None and gpu[1] >= NATIVE_BF16
    where = f"{gpu[0]} (sm {gpu[1][0]}.{gpu[1][1]})" if gpu else "this CPU"
    fam = families.FAMILIES.get(model_type)  # a model of no family we know: nothing known against fp16
    no_fp16 = fam is not None and not fam.fp16
    if precision == "auto":
        if gpu is None or native:
            return "bf16" if native else "fp32"
        if no_fp16:
            notes.append(f"note: precision auto: fp32, since {where} has no native bf16 and {fam.name} overflows "
                         f"in fp16")
            return "fp32"
        notes.append(f"note: precision auto: fp16 with a loss scaler, since {where} has no native bf16 (it needs "
                     f"compute capability 8.0)")
        return "fp16"
    if precision == "fp16" and no_fp16:
        chosen = "bf16" if native else "fp32"
        notes.append(f"warning: {fam.name} overflows in fp16; using {chosen}")
        return chosen
    if precision == "bf16" and gpu is not None and not native:
        if not torch.cuda.is_bf16_supported():
            raise UserError(f"precision bf16: {where} has no bf16; use precision=auto (fp16 where the model allows "
                            f"it) or fp32")
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
