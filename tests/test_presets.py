"""Every training preset, built into TRL's SFTTrainer on CPU with the embedded model: the labels that reach the model
mask the prompt and keep the abstract and its closing end-of-turn token, after TRL's own dataset preparation (packing
included, where the preset packs) and after its collator. TRL 1.0-1.6 dropped our labels when packing; this fails there.
`seed` is also checked for the notebook's recipe, read from the SFTConfig and LoraConfig the trainer was built with.
"""

import pytest

from conftest import SECTIONS
from writemypaper import config, models, prompts, train, weights

TRAIN_PRESETS = config.available_presets("train")

# What a CPU cannot run, replaced; packing, padding-free rows, batch shapes and the optimizer stay as the preset has them.
CPU = ["quantization=null", "precision=fp32", "compile_layers=false", "training.report_to=[]"]
# Pairs of different lengths, so that packing has something to arrange.
PAIRS = [(s, o) for o, s in SECTIONS] + [("짧은 요약.", "짧은 원문이지만 요약보다는 길다.")]


def _attn(cfg) -> str:
    # flex attention compiles its kernel on first use and flash attention needs CUDA; eager is Gemma's reference
    attn = cfg.get("attn_implementation")
    return "eager" if attn in ("flex_attention", "flash_attention_2", "flash_attention_3") else attn


@pytest.fixture(scope="module")
def tokenizer():
    return models.load_tokenizer(weights.EMBEDDED, padding_side="right")


@pytest.fixture(scope="module")
def expected(tokenizer):
    """Each pair's token ids and its prompt length, checked against the text it must decode to."""
    out = []
    for summary, original in PAIRS:
        ids = prompts.encode_example(tokenizer, summary, original)["input_ids"]
        n = len(prompts.encode_prompt(tokenizer, summary))
        assert tokenizer.decode(ids[:n]) == prompts.render_prompt(summary, None, tokenizer)
        assert tokenizer.decode(ids[n:]).startswith(original)
        out.append((ids, n))
    return out


def _build(name: str, tokenizer, tmp_path, extra=()):
    from datasets import Dataset

    cfg = config.load_config(name, CPU + list(extra), kind="train")
    cfg.attn_implementation = _attn(cfg)
    ds = Dataset.from_dict({"summary": [s for s, _ in PAIRS], "original": [o for _, o in PAIRS]})
    train_ds, dropped = train.tokenize_split(ds, tokenizer, cfg.get("instruction"), cfg.training.get("max_length"))
    assert dropped == 0
    eval_ds = train_ds if config.eval_enabled(cfg.training) else None
    ref = weights.resolve_model(weights.EMBEDDED)
    return cfg, train.build_trainer(cfg, ref, tmp_path, train_ds, eval_ds, tokenizer)


def _check_row(input_ids, labels, expected, pad_id) -> int:
    """A row (one pair, a packed bin, or a padding-free batch) must be whole pairs and padding, nothing else. Each
    pair: prompt tokens -100; every token after the prompt (abstract, end of turn, newline, eos) its own id.
    Padding: -100. Returns how many pairs the row held."""
    input_ids, labels = list(input_ids), list(labels)
    assert len(input_ids) == len(labels)
    i, found = 0, 0
    while i < len(input_ids):
        match = next(((ids, n) for ids, n in expected if input_ids[i:i + len(ids)] == ids), None)
        if match is None:
            assert input_ids[i] == pad_id and labels[i] == -100, f"token {i} is neither a whole pair nor padding"
            i += 1
            continue
        ids, n = match
        seg = labels[i:i + len(ids)]
        assert seg[:n] == [-100] * n, f"a prompt token reaches the loss: {seg[:n]}"
        assert seg[n:] == ids[n:], f"an abstract token is masked: {seg[n:]} != {ids[n:]}"
        i, found = i + len(ids), found + 1
    return found


@pytest.mark.parametrize("name", TRAIN_PRESETS)
def test_labels_reach_the_model(name, tokenizer, expected, tmp_path):
    cfg, trainer = _build(name, tokenizer, tmp_path)
    eot = tokenizer.convert_tokens_to_ids(prompts.end_of_turn(tokenizer))
    assert all(ids[-3] == eot for ids, _ in expected)  # ... end of turn, \n, eos: the closing turn is in seg[n:]
    packs = bool(cfg.training.get("packing"))
    assert trainer.args.packing == packs and trainer.args.padding_free == bool(cfg.training.get("padding_free"))

    # 1. the dataset as TRL prepared it (packed into bins where the preset packs)
    ds = trainer.train_dataset
    assert "labels" in ds.column_names, f"TRL dropped the labels column: {ds.column_names}"
    pad = tokenizer.pad_token_id
    counts = [_check_row(r["input_ids"], r["labels"], expected, pad) for r in ds]
    assert sum(counts) == len(PAIRS)
    if packs:
        assert len(ds) < len(PAIRS) and max(counts) > 1  # really packed: several pairs share a row

    # 2. a batch from the Trainer's own dataloader (TRL's collator: padding, or one flat padding-free row)
    batch = next(iter(trainer.get_train_dataloader()))
    rows = [_check_row(i, l, expected, pad) for i, l in zip(batch["input_ids"].tolist(), batch["labels"].tolist())]
    assert sum(rows) >= 1
    if trainer.args.padding_free:
        assert batch["input_ids"].shape[0] == 1 and "position_ids" in batch


def test_seed_carries_the_notebooks_recipe(tokenizer, tmp_path):
    preset = config.load_config("seed", kind="train")
    assert preset.precision == "fp16" and preset.quantization == "nf4"  # replaced for the CPU below
    _, trainer = _build("seed", tokenizer, tmp_path)
    a = trainer.args
    assert (a.learning_rate, a.per_device_train_batch_size, a.gradient_accumulation_steps) == (2e-4, 1, 4)
    assert (a.max_steps, a.max_length, a.warmup_steps, a.logging_steps) == (5000, 512, 0.03, 100)
    assert a.optim == "paged_adamw_8bit" and not a.packing
    lora = trainer.model.peft_config["default"]
    assert (lora.r, lora.lora_alpha, lora.lora_dropout) == (6, 8, 0.05)
    assert set(lora.target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"}
    assert str(lora.task_type.value if hasattr(lora.task_type, "value") else lora.task_type) == "CAUSAL_LM"
    # the LoRA layers were really injected with that rank
    ranks = {m.r["default"] for m in trainer.model.modules() if hasattr(m, "lora_A") and "default" in m.lora_A}
    assert ranks == {6}


@pytest.mark.parametrize("name", TRAIN_PRESETS)
def test_presets_name_no_family_specific_modules(name):
    """A preset works for every family: LoRA's targets are the family's own (auto) or PEFT's all-linear."""
    assert config.load_config(name, kind="train").lora.target_modules in ("auto", "all-linear")


def test_a_module_list_that_does_not_fit_names_the_family(tmp_path):
    from writemypaper.errors import UserError
    from writemypaper.trainer import lora_config

    cfg = config.load_config("cpu-demo", ["lora.target_modules=[q_proj,c_fc_0]"], kind="train")
    with pytest.raises(UserError) as e:
        lora_config(cfg, "gemma3_text")
    assert str(e.value) == ("lora.target_modules: c_fc_0 are not modules of Gemma 3 models; theirs are q_proj, "
                            "k_proj, v_proj, o_proj, gate_proj, up_proj, down_proj (or set target_modules: auto)")
    # a list that fits is kept as given; auto is the family's own
    ok = config.load_config("cpu-demo", ["lora.target_modules=[q_proj,v_proj]"], kind="train")
    assert set(lora_config(ok, "qwen2").target_modules) == {"q_proj", "v_proj"}
    auto = config.load_config("cpu-demo", kind="train")
    assert set(lora_config(auto, "llama").target_modules) == {"q_proj", "k_proj", "v_proj", "o_proj", "gate_proj",
                                                               "up_proj", "down_proj"}
