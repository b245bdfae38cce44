"""What a QLoRA run's base looked like in training: the 4-bit NF4 weights, dequantized.

A QLoRA adapter is trained and validated against NF4-rounded base weights. Evaluating it or merging it on the
unrounded base gives a slightly different model from the one that was validated, so `evaluate`, `generate` and
`export` round the base through bitsandbytes' own NF4 quantizer first (on any device, the CPU included).

    python -c "from writemypaper import nf4; print(nf4.run_quantization('runs/low-memory'))"
"""

from __future__ import annotations

import json
from pathlib import Path

# What bitsandbytes' 4-bit loading uses for our BitsAndBytesConfig (models.quantization_config): NF4 in blocks of 64
# weights with one absmax each, no double quantization.
BLOCKSIZE = 64


def run_quantization(run_dir: str | Path) -> str | None:
    """The `quantization` a training run was made with (nf4 for QLoRA), from its saved config; None otherwise."""
    import yaml

    path = Path(run_dir) / "config.yaml"
    if not path.is_file():
        return None
    cfg = yaml.safe_load(path.read_text(encoding="utf-8")) or {}
    q = cfg.get("quantization")
    return q if q in ("nf4", "4bit") else None


def run_compute_dtype(run_dir: str | Path):
    """The dtype the run computed in (its metrics.json records it), bf16 when it does not say."""
    import torch

    path = Path(run_dir) / "metrics.json"
    name = "bfloat16"
    if path.is_file():
        name = json.loads(path.read_text(encoding="utf-8")).get("precision") or name
    return {"bfloat16": torch.bfloat16, "float16": torch.float16, "float32": torch.float32}.get(name, torch.bfloat16)


def quantized_linears(model) -> list[tuple[str, object]]:
    """The layers bitsandbytes' 4-bit loading converts: every nn.Linear except the output head, which transformers
    keeps in full precision (for Gemma it is the tied embedding)."""
    import torch

    head = model.get_output_embeddings()
    return [(n, m) for n, m in model.named_modules() if isinstance(m, torch.nn.Linear) and m is not head]


def round_trip_(model, compute_dtype) -> int:
    """Replace each quantized layer's weight, in place, by its NF4 quantization dequantized to `compute_dtype`: the
    values the 4-bit model multiplies with. Returns the number of layers changed."""
    import torch

    from writemypaper.errors import UserError

    try:
        import bitsandbytes.functional as bnbf
    except ImportError:
        raise UserError("this run was trained on a 4-bit (NF4) base; evaluating or merging it on that base needs "
                        "bitsandbytes: pip install 'writemypaper[gpu]'") from None
    layers = quantized_linears(model)
    with torch.no_grad():
        for _, layer in layers:
            w = layer.weight.data
            src = w.to(compute_dtype)
            # bitsandbytes quantizes on the weight's own device; keep it there and back
            q, state = bnbf.quantize_4bit(src, blocksize=BLOCKSIZE, quant_type="nf4", quant_storage=torch.uint8)
            layer.weight.data = bnbf.dequantize_4bit(q, state).to(compute_dtype).to(w.dtype)
    return len(layers)
