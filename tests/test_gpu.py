"""GPU-only paths: 4-bit NF4 (QLoRA) training through build_trainer, bf16 chosen on a GPU, flex attention for
Gemma 2 (softcapping kept, packed sequences kept apart). Every training run here must learn: its logged loss falls
over its steps, not only stays finite. Skipped without CUDA; run on the device, results in
bench/RESULTS.md. Most of the few minutes it takes is torch.compile building flex attention's kernels, so every
flex call here has one row length (ROW) and Gemma 2's one softcap, and the compiled kernels are shared.

    pytest -m gpu tests/test_gpu.py
"""

from __future__ import annotations

import math

import pytest

torch = pytest.importorskip("torch")

pytestmark = [
    pytest.mark.gpu,
    pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA GPU (run on the device)"),
]

VOCAB = 512
ROW = 256  # tokens in every row that meets flex attention (packed rows are padded to it, as the presets do)
# Every answer repeats one word, which LoRA learns in a few steps. Answers of 16 random words could not be learned
# here: the frozen, tied output embeddings of a random tiny model are too small to single out many words at once.
ANSWER_WORD = 10
# Steps and a learning rate for a loss that falls well beyond step-to-step noise: on CPU in fp32 these runs end
# 20-30% below where they start (last two steps against the first two: seed 0.80, fast 0.72, low-memory 0.71).
STEPS = 12
LEARNING_RATE = "training.learning_rate=2e-3"


def _tokenizer():
    """A word-level tokenizer with Gemma's special tokens: the data below is token ids, so no real vocabulary is
    needed, and nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    vocab = {t: i for i, t in enumerate(specials + [f"w{i}" for i in range(VOCAB - len(specials))])}
    tok = Tokenizer(models.WordLevel(vocab, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=specials[4:])


def _save_gemma2(path, **overrides):
    """A 2-layer Gemma 2 with random weights and its tokenizer, loadable by models.load_model like any local model."""
    from transformers import Gemma2Config, Gemma2ForCausalLM

    kw = dict(vocab_size=VOCAB, hidden_size=128, intermediate_size=256, num_hidden_layers=2, num_attention_heads=4,
              num_key_value_heads=2, head_dim=32, query_pre_attn_scalar=32, attn_logit_softcapping=50.0,
              final_logit_softcapping=30.0, sliding_window=4096, bos_token_id=2, eos_token_id=1, pad_token_id=0)
    kw.update(overrides)
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(**kw))
    model.save_pretrained(path)
    _tokenizer().save_pretrained(path)
    return str(path)


@pytest.fixture(scope="module")
def gemma2_dir(tmp_path_factory):
    return _save_gemma2(tmp_path_factory.mktemp("gemma2"))


def _pairs(n, seed=0):
    """Pre-tokenized pairs as train.tokenize_split makes them: `<bos>` prompt (labels -100), answer,
    `<end_of_turn>`, `<eos>`."""
    import random

    from datasets import Dataset

    rng = random.Random(seed)
    rows = {"input_ids": [], "labels": []}
    for _ in range(n):
        prompt = [2] + [rng.randrange(10, VOCAB) for _ in range(rng.randrange(4, 12))]
        answer = [ANSWER_WORD] * rng.randrange(8, 24) + [5, 1]
        rows["input_ids"].append(prompt + answer)
        rows["labels"].append([-100] * len(prompt) + answer)
    return Dataset.from_dict(rows)


def _train(preset, model_dir, tmp_path, *overrides, steps=STEPS):
    from writemypaper import models
    from writemypaper.config import load_config
    from writemypaper.train import build_trainer

    cfg = load_config(preset, [f"training.max_steps={steps}", "training.logging_steps=1", "training.report_to=none",
                               "training.max_length=64", "early_stopping_patience=null", LEARNING_RATE, *overrides],
                      kind="train")
    cfg.training.save_strategy = "no"
    if cfg.training.get("eval_strategy") not in (None, "no", False):
        cfg.training.eval_steps = steps
    tok = models.load_tokenizer(model_dir, padding_side="right")
    eval_ds = _pairs(8, seed=1) if cfg.training.get("eval_strategy") not in (None, "no", False) else None
    trainer = build_trainer(cfg, model_dir, tmp_path, _pairs(64), eval_ds, tok)
    lora_before = {n: p.detach().float().clone() for n, p in trainer.model.named_parameters() if p.requires_grad}
    trainer.train()
    lora_after = {n: p.detach().float() for n, p in trainer.model.named_parameters() if p.requires_grad}
    losses = [h["loss"] for h in trainer.state.log_history if "loss" in h]  # what the run logged, one per step
    return trainer, losses, lora_before, lora_after


def _learned(losses, steps=STEPS):
    """Every step logged a finite loss, and the last two steps' mean is at least 10% below the first two's."""
    assert len(losses) == steps and all(math.isfinite(x) for x in losses), losses
    first, last = sum(losses[:2]) / 2, sum(losses[-2:]) / 2
    assert last < 0.9 * first, f"the loss did not fall: {first:.3f} -> {last:.3f} over {steps} steps ({losses})"


# 4 packing bins of max_length=64, flattened and padded to one row of ROW tokens, in training and evaluation
ROWS_OF_4_BINS = ("training.per_device_train_batch_size=4", "training.per_device_eval_batch_size=4",
                  f"training.pad_to_multiple_of={ROW}")


def _changed(before, after):
    return [n for n in before if not torch.equal(before[n], after[n].to(before[n].device))]


# ---------------------------------------------------------------------------------------------------------------------
# precision


def test_auto_precision_is_bf16_on_a_gpu(gemma2_dir):
    from writemypaper import models, policy

    assert torch.cuda.is_bf16_supported()
    assert policy.resolve_dtype("auto", "gemma2") is torch.bfloat16
    assert policy.resolve_dtype("fp16", "gemma3_text") is torch.bfloat16  # Gemma 3 overflows in fp16
    model = models.load_model(gemma2_dir, precision="auto")
    assert model.dtype is torch.bfloat16


# ---------------------------------------------------------------------------------------------------------------------
# attention: flex keeps Gemma 2's softcapping and keeps packed sequences apart


def _logits(model_dir, attn, ids, **kw):
    from writemypaper import models

    model = models.load_model(model_dir, precision="fp32", attn_implementation=attn).cuda().eval()
    with torch.no_grad():  # no KV cache: with one, transformers ignores packed position ids (as in generation)
        return model(input_ids=ids.cuda(), use_cache=False, **{k: v.cuda() for k, v in kw.items()}).logits.float().cpu()


def test_flex_attention_matches_eager_with_softcapping(tmp_path):
    # A cap of 0.5 on scores scaled up (query_pre_attn_scalar=1): capped and uncapped attention differ clearly.
    capped = _save_gemma2(tmp_path / "capped", attn_logit_softcapping=0.5, query_pre_attn_scalar=1)
    uncapped = _save_gemma2(tmp_path / "uncapped", attn_logit_softcapping=None, query_pre_attn_scalar=1)
    ids = torch.randint(10, VOCAB, (1, ROW), generator=torch.Generator().manual_seed(0))
    # Kernels compiled for one cap must not meet another value: torch.compile would then trace the cap as a
    # symbolic float, which flex attention's lowering rejects (seen with torch 2.13 on CPU). Gemma 2 has one cap.
    try:
        torch._dynamo.reset()
        eager = _logits(capped, "eager", ids)
        flex = _logits(capped, "flex_attention", ids)
        torch._dynamo.reset()
        no_cap = _logits(uncapped, "flex_attention", ids)
    finally:
        torch._dynamo.reset()
    assert (flex - eager).abs().max() < 1e-3 * eager.abs().max()
    assert (no_cap - eager).abs().max() > 1e-2 * eager.abs().max()  # so the cap is really in force


def test_packed_rows_under_flex_attention_equal_separate_sequences(gemma2_dir):
    """Padding-free packing: one row, position ids restarting at 0 per sequence. Under flex attention each
    sequence's logits must equal those of the sequence alone (no attention across the boundary)."""
    g = torch.Generator().manual_seed(1)
    seqs = [torch.randint(10, VOCAB, (n,), generator=g) for n in (70, 119, 41)]
    tail = torch.zeros(ROW - sum(map(len, seqs)), dtype=torch.long)  # padding, as pad_to_multiple_of adds it
    packed = torch.cat([*seqs, tail])[None]
    position_ids = torch.cat([*(torch.arange(len(s)) for s in seqs), tail])[None]
    together = _logits(gemma2_dir, "flex_attention", packed, position_ids=position_ids)[0]
    start = 0
    for s in seqs:  # each sequence alone, right-padded to the same row length, the padding masked out
        row, mask = torch.zeros(1, ROW, dtype=torch.long), torch.zeros(1, ROW, dtype=torch.long)
        row[0, :len(s)], mask[0, :len(s)] = s, 1
        ref = _logits(gemma2_dir, "flex_attention", row, attention_mask=mask)[0, :len(s)]
        assert (together[start:start + len(s)] - ref).abs().max() < 1e-3 * ref.abs().max()
        start += len(s)


# ---------------------------------------------------------------------------------------------------------------------
# training through build_trainer: the code path of `writemypaper train`


def test_fast_preset_trains_in_bf16_with_flex_attention(gemma2_dir, tmp_path):
    trainer, losses, before, after = _train("fast", gemma2_dir, tmp_path, *ROWS_OF_4_BINS)
    assert trainer.args.bf16 and not trainer.args.fp16
    assert trainer.model.config._attn_implementation == "flex_attention"
    layers = trainer.model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)  # compile_layers: true
    _learned(losses)
    assert _changed(before, after), "no LoRA weight changed"
    assert any("eval_loss" in h for h in trainer.state.log_history)


def test_fast_preset_learns_the_same_with_and_without_compiled_layers(gemma2_dir, tmp_path):
    """The same data, seed and steps: compiled layers (flex attention generated inside them) and plain layers give
    the same losses up to bf16 rounding."""
    _, compiled, _, _ = _train("fast", gemma2_dir, tmp_path / "on", *ROWS_OF_4_BINS)
    trainer, plain, _, _ = _train("fast", gemma2_dir, tmp_path / "off", *ROWS_OF_4_BINS, "compile_layers=false")
    assert all(layer._compiled_call_impl is None for layer in trainer.model.get_base_model().model.layers)
    _learned(compiled)
    _learned(plain)
    for a, b in zip(compiled, plain):
        assert abs(a - b) < 0.02 * abs(b), (compiled, plain)


@pytest.mark.parametrize("preset", ["seed", "low-memory"])
def test_qlora_nf4_trains_through_build_trainer(preset, gemma2_dir, tmp_path):
    """seed: NF4 with fp16 compute, paged AdamW 8-bit, batch 1 x 4; low-memory: NF4 with bf16, flex attention,
    packing, gradient checkpointing, evaluation."""
    import bitsandbytes as bnb

    trainer, losses, before, after = _train(preset, gemma2_dir, tmp_path,
                                            *(ROWS_OF_4_BINS if preset == "low-memory" else []))
    base = trainer.model.get_base_model()
    q = base.model.layers[0].self_attn.q_proj.base_layer
    assert isinstance(q, bnb.nn.Linear4bit) and q.weight.quant_state.quant_type == "nf4"
    assert trainer.args.fp16 == (preset == "seed")
    if trainer.args.fp16:  # fp16's GradScaler needs fp32 trainable weights (train.build_trainer sees to it)
        assert all(p.dtype == torch.float32 for p in trainer.model.parameters() if p.requires_grad)
    _learned(losses)
    assert _changed(before, after), "no LoRA weight changed"
