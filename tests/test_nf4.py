"""A QLoRA run's base, rebuilt as the NF4 weights it was trained on: checked against bitsandbytes' own 4-bit layer."""

import pytest
import torch

bnb = pytest.importorskip("bitsandbytes")

from writemypaper import nf4  # noqa: E402


def _params4bit(weight):
    """A bitsandbytes 4-bit layer holding `weight`, quantized as transformers' 4-bit loading does (NF4, blocks of 64)."""
    layer = bnb.nn.Linear4bit(weight.shape[1], weight.shape[0], bias=False, compute_dtype=torch.bfloat16,
                              quant_type="nf4")
    layer.weight = bnb.nn.Params4bit(weight.to(torch.bfloat16).clone(), requires_grad=False, quant_type="nf4",
                                     blocksize=nf4.BLOCKSIZE)
    return layer.to("cpu")


def test_round_trip_is_what_the_4bit_layer_computes(tiny_gemma2_dir):
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir, dtype=torch.float32)
    name, layer = nf4.quantized_linears(model)[0]
    original = layer.weight.detach().clone()
    four_bit = _params4bit(original)
    head_before = model.get_output_embeddings().weight.detach().clone()

    changed = nf4.round_trip_(model, torch.bfloat16)

    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert changed == len(linears) - 1  # every projection, not the (tied) output head
    assert torch.equal(model.get_output_embeddings().weight, head_before)
    x = torch.randn(4, original.shape[1], dtype=torch.bfloat16)
    ours = torch.nn.functional.linear(x, layer.weight.to(torch.bfloat16))
    theirs = four_bit(x)
    unrounded = torch.nn.functional.linear(x, original.to(torch.bfloat16))
    # the same values up to bf16 rounding of the product, and far from the unrounded weights' output
    assert (ours - theirs).abs().max() < 0.02 * theirs.abs().max()
    assert (ours - unrounded).abs().max() > 5 * (ours - theirs).abs().max()
    # NF4 has 16 levels per block of 64: a block holds at most 16 distinct values
    block = layer.weight.detach().flatten()[: nf4.BLOCKSIZE]
    assert len(torch.unique(block)) <= 16 < len(torch.unique(original.flatten()[: nf4.BLOCKSIZE]))


def test_run_quantization_reads_the_saved_config(tmp_path):
    assert nf4.run_quantization(tmp_path) is None
    (tmp_path / "config.yaml").write_text("kind: train\nquantization: nf4\n", encoding="utf-8")
    assert nf4.run_quantization(tmp_path) == "nf4"
    (tmp_path / "config.yaml").write_text("kind: train\nquantization: null\n", encoding="utf-8")
    assert nf4.run_quantization(tmp_path) is None
    assert nf4.run_compute_dtype(tmp_path) == torch.bfloat16
    (tmp_path / "metrics.json").write_text('{"precision": "float16"}', encoding="utf-8")
    assert nf4.run_compute_dtype(tmp_path) == torch.float16
