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


def test_base_weights_say_which_base_an_adapter_goes_on(tmp_path):
    """Read from the run's files and returned, not set on the loaded model: evaluate and export ask for it by ref."""
    from writemypaper import models

    (tmp_path / "adapter_config.json").write_text("{}", encoding="utf-8")
    assert models.base_weights(str(tmp_path)) == "as saved"  # a LoRA run: its base as saved
    (tmp_path / "config.yaml").write_text("kind: train\nquantization: nf4\n", encoding="utf-8")
    (tmp_path / "metrics.json").write_text('{"precision": "float16"}', encoding="utf-8")
    assert models.base_weights(str(tmp_path)) == "NF4-dequantized (float16), as trained and validated"
    assert models.base_weights(str(tmp_path), nf4_base=False).startswith("unrounded")


def _qlora_run(base_dir, run_dir):
    """A QLoRA run as `train` leaves one: an adapter on the base loaded in 4-bit NF4 (bf16 compute), its config and
    base model recorded. The adapter starts random (not zero) so that merging it changes the weights."""
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM, BitsAndBytesConfig

    from writemypaper.atomic import atomic_write_json

    qc = BitsAndBytesConfig(load_in_4bit=True, bnb_4bit_quant_type="nf4", bnb_4bit_compute_dtype=torch.bfloat16,
                            bnb_4bit_quant_storage=torch.bfloat16)
    base = AutoModelForCausalLM.from_pretrained(base_dir, quantization_config=qc, device_map={"": "cpu"},
                                                dtype=torch.bfloat16)
    torch.manual_seed(1)
    targets = ["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]
    model = get_peft_model(base, LoraConfig(r=8, lora_alpha=16, target_modules=targets, init_lora_weights=False))
    model.save_pretrained(run_dir)
    (run_dir / "config.yaml").write_text("kind: train\nquantization: nf4\n", encoding="utf-8")
    atomic_write_json(run_dir / "writemypaper.json", {"base_model": str(base_dir), "instruction": None})
    atomic_write_json(run_dir / "metrics.json", {"precision": "bfloat16"})
    return model.eval()


@pytest.fixture(scope="module")
def gemma2_64(tmp_path_factory, embedded_tokenizer):
    """A 2-layer Gemma 2 of width 64 (bitsandbytes' CPU 4-bit kernels work in blocks of 64 inputs; the shared tiny
    model is 32 wide), saved with the embedded tokenizer."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(embedded_tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=32, max_position_embeddings=256,
        pad_token_id=embedded_tokenizer.pad_token_id, bos_token_id=embedded_tokenizer.bos_token_id,
        eos_token_id=embedded_tokenizer.eos_token_id,
    )
    path = tmp_path_factory.mktemp("gemma2-64")
    Gemma2ForCausalLM(config).save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return path


def test_qlora_export_merges_into_the_nf4_base_it_was_validated_on(gemma2_64, tmp_path):
    """The adapter on the 4-bit base (what training validated) against the merged export: the export merged into
    NF4-rounded weights agrees with it several times more closely than one merged into the unrounded base."""
    from transformers import AutoModelForCausalLM

    from writemypaper import export, models

    run = tmp_path / "run"
    on_nf4 = _qlora_run(gemma2_64, run)
    ids = torch.randint(10, 2000, (2, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        validated = on_nf4(input_ids=ids).logits.float()

    out = export.export(str(run), str(tmp_path / "export"), precision="fp32")
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32).eval()
    unrounded, _ = models.load_for_inference(str(run), precision="fp32", device="cpu", nf4_base=False)
    assert models.base_weights(str(run), nf4_base=False).startswith("unrounded")
    assert models.base_weights(str(run)).startswith("NF4-dequantized")
    with torch.no_grad():
        exported = merged(input_ids=ids).logits.float()
        naive = unrounded.merge_and_unload()(input_ids=ids).logits.float()

    scale = validated.abs().max()
    err_export = (exported - validated).abs().max() / scale
    err_naive = (naive - validated).abs().max() / scale
    assert err_export < 0.05, err_export  # bf16 compute in the 4-bit model against fp32 in the export
    assert err_export * 3 < err_naive, (err_export, err_naive)
    assert "NF4" in (out / "README.md").read_text(encoding="utf-8")
