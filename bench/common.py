"""What the GPU benchmarks share: a Gemma-2-2B-shaped model with random weights, token-id data of realistic lengths,
the bf16 matmul ceiling of the card, and the FLOPs a LoRA step does per token.

    python bench/common.py make-model /tmp/gemma2-2b-random      # config of google/gemma-2-2b, random weights
    python bench/common.py peak /tmp/peak.json                   # time an 8192^3 bf16 matmul
"""

from __future__ import annotations

import gzip
import json
import platform
import shutil
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "src"))

# google/gemma-2-2b, from its config.json
GEMMA2_2B = dict(
    vocab_size=256000, hidden_size=2304, intermediate_size=9216, num_hidden_layers=26, num_attention_heads=8,
    num_key_value_heads=4, head_dim=256, attn_logit_softcapping=50.0, final_logit_softcapping=30.0,
    sliding_window=4096, query_pre_attn_scalar=256, max_position_embeddings=8192,
    hidden_activation="gelu_pytorch_tanh", bos_token_id=2, eos_token_id=1, pad_token_id=0, tie_word_embeddings=True,
)
# The same architecture at a size a CPU trains in seconds, to smoke-test the scripts before spending device time.
TINY = dict(GEMMA2_2B, hidden_size=128, intermediate_size=256, num_hidden_layers=2,
            num_attention_heads=4, num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32)

# Where a tokenizer comes from: the embedded model's (Gemma 3's, ids < 262144; ours stay under 256000), either
# converted here already or carried to the device as a gzipped copy (no network there).
TOKENIZER_SOURCES = (Path.home() / ".cache/writemypaper/models/gemma3-270m", REPO / ".whl/gemma3-tokenizer")


def copy_tokenizer(dst: Path) -> None:
    for src in TOKENIZER_SOURCES:
        if (src / "tokenizer.json").is_file():
            shutil.copy(src / "tokenizer.json", dst / "tokenizer.json")
        elif (src / "tokenizer.json.gz").is_file():
            with gzip.open(src / "tokenizer.json.gz", "rb") as f, open(dst / "tokenizer.json", "wb") as g:
                shutil.copyfileobj(f, g)
        else:
            continue
        for name in ("tokenizer_config.json", "chat_template.jinja"):
            if (src / name).is_file():
                shutil.copy(src / name, dst / name)
        return
    raise SystemExit(f"no tokenizer found in {', '.join(map(str, TOKENIZER_SOURCES))}")


def make_model(out: str | Path, tiny: bool = False, vocab: int | None = None) -> Path:
    """A Gemma2ForCausalLM shaped like google/gemma-2-2b with random weights, saved in bf16 with a tokenizer, so that
    models.load_model(out, ...) loads it by the same path as any local model. `vocab` shrinks the vocabulary (the
    synthetic pairs then draw their ids below it), for CPU smoke tests whose time the 256k-wide LM head would take."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    out = Path(out)
    if (out / "config.json").is_file() and (out / "tokenizer.json").is_file():
        return out
    out.mkdir(parents=True, exist_ok=True)
    config = Gemma2Config(**dict(TINY if tiny else GEMMA2_2B, **({"vocab_size": vocab} if vocab else {})),
                          dtype="bfloat16")
    device = "cuda" if torch.cuda.is_available() else "cpu"
    torch.manual_seed(0)
    with torch.device(device):
        model = Gemma2ForCausalLM(config).to(torch.bfloat16)  # initialised by transformers (normal, std 0.02)
    model.generation_config.eos_token_id = [1, 106]  # <eos>, <end_of_turn> of the tokenizer below
    model.generation_config.pad_token_id = 0
    model.save_pretrained(out)
    copy_tokenizer(out)
    del model
    return out


def bf16_peak_tflops(n: int = 8192, reps: int = 20) -> float:
    """Measured ceiling: median time of an n^3 bf16 matmul on random data, as TFLOP/s."""
    import torch

    a = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    b = torch.randn(n, n, device="cuda", dtype=torch.bfloat16)
    for _ in range(3):
        a @ b
    times = []
    for _ in range(reps):
        s, e = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
        s.record()
        a @ b
        e.record()
        e.synchronize()
        times.append(s.elapsed_time(e) / 1e3)
    times.sort()
    return 2 * n**3 / times[len(times) // 2] / 1e12


# ---------------------------------------------------------------------------------------------------------------------
# data: token ids only, the same for every variant


def synthetic_pairs(n: int, seed: int = 0, max_length: int = 512, vocab: int = 256000):
    """Pre-tokenized pairs shaped like ours: `<bos>` + a prompt of 60-200 tokens (labels -100) + a completion of
    150-330 tokens ending in `<end_of_turn>`, `\\n`, `<eos>`, capped at max_length. Ids are drawn from a Zipf-like
    law over 20k ids (as Korean text uses a small part of the vocabulary), so the loss has something to fall to."""
    import numpy as np

    rng = np.random.default_rng(seed)
    lo, span = 300, min(20000, vocab - 400)
    p = 1.0 / (np.arange(span) + 10.0)
    p /= p.sum()
    rows = {"input_ids": [], "labels": []}
    for _ in range(n):
        lp = int(rng.integers(60, 201))
        lc = int(rng.integers(150, 331))
        lc = min(lc, max_length - lp)
        prompt = [2] + (lo + rng.choice(span, size=lp - 1, p=p)).tolist()
        completion = (lo + rng.choice(span, size=lc - 3, p=p)).tolist() + [106, 107, 1]
        rows["input_ids"].append(prompt + completion)
        rows["labels"].append([-100] * lp + completion)
    return rows


def data_stats(rows) -> dict:
    lengths = [len(x) for x in rows["input_ids"]]
    loss_tokens = sum(sum(1 for t in lab if t != -100) for lab in rows["labels"])
    total = sum(lengths)
    return {
        "samples": len(lengths), "tokens": total, "mean_length": total / len(lengths),
        "min_length": min(lengths), "max_length": max(lengths),
        "loss_token_fraction": loss_tokens / total,
        # mean number of keys a token attends to (causal, within its own sequence)
        "mean_context": sum(n * (n + 1) / 2 for n in lengths) / total,
    }


def dataset(rows):
    from datasets import Dataset

    return Dataset.from_dict(rows)


# ---------------------------------------------------------------------------------------------------------------------
# FLOPs


def lora_flops_per_token(config, r: int, targets, stats: dict) -> dict:
    """Model FLOPs of one LoRA training token. Frozen weights: 2 per parameter forward + 2 backward (activation
    gradients only); LoRA weights: 6 (their own gradients too); the LM head (tied, frozen) only on tokens with a
    label; attention scores and values: 4 * heads * head_dim * context forward, times 3 for forward + backward.
    Recomputation under gradient checkpointing is not counted (it is overhead, not model work)."""
    h, inter, L, V = config.hidden_size, config.intermediate_size, config.num_hidden_layers, config.vocab_size
    nq, nkv = config.num_attention_heads, config.num_key_value_heads
    hd = getattr(config, "head_dim", None) or h // nq
    shapes = {"q_proj": (h, nq * hd), "k_proj": (h, nkv * hd), "v_proj": (h, nkv * hd), "o_proj": (nq * hd, h),
              "gate_proj": (h, inter), "up_proj": (h, inter), "down_proj": (inter, h)}
    body = L * sum(i * o for i, o in shapes.values())
    lora = L * sum(r * (shapes[t][0] + shapes[t][1]) for t in targets if t in shapes)
    head = V * h
    attn = L * 4 * nq * hd * stats["mean_context"] * 3
    total = 4 * body + 6 * lora + 4 * head * stats["loss_token_fraction"] + attn
    return {"flops_per_token": total, "body_params": body, "lora_params": lora, "attention_flops_per_token": attn}


# ---------------------------------------------------------------------------------------------------------------------
# provenance


def environment() -> dict:
    import importlib.metadata as md

    import torch

    v = {"python": platform.python_version(), "torch": torch.__version__}
    for name in ("transformers", "trl", "peft", "accelerate", "datasets", "bitsandbytes", "liger-kernel", "triton"):
        try:
            v[name] = md.version(name)
        except md.PackageNotFoundError:
            v[name] = None
    dev = torch.cuda.get_device_name(0) if torch.cuda.is_available() else "cpu"
    return {"device": dev, "gpus": torch.cuda.device_count(), "versions": v,
            "date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())}


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    sub = ap.add_subparsers(dest="cmd", required=True)
    m = sub.add_parser("make-model")
    m.add_argument("out")
    m.add_argument("--tiny", action="store_true", help="a 2-layer model of the same architecture (CPU smoke tests)")
    m.add_argument("--vocab", type=int, help="vocabulary size (default Gemma 2's 256000; >= 1024)")
    p = sub.add_parser("peak")
    p.add_argument("out")
    a = ap.parse_args()
    if a.cmd == "make-model":
        t = time.time()
        if a.vocab is not None and a.vocab < 1024:  # the synthetic pairs draw ids from 300 up, specials below
            ap.error("--vocab must be at least 1024")
        print(f"model in {make_model(a.out, a.tiny, a.vocab)} ({time.time() - t:.0f} s)")
    else:
        tf = bf16_peak_tflops()
        Path(a.out).write_text(json.dumps({"bf16_matmul_tflops": tf, **environment()}, indent=1))
        print(f"bf16 8192^3 matmul: {tf:.0f} TFLOP/s")
