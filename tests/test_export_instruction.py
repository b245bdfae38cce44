"""`writemypaper export` end to end on a tiny Gemma 3 training run (a real PEFT adapter with a custom instruction):
the export carries the instruction in its chat template, the GGUF and the Modelfile are written beside the
safetensors model, and the model card says so."""

import json

import pytest

from writemypaper import prompts
from writemypaper.cli import main

SUMMARY = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."
INSTRUCTION = "다음 요약을 바탕으로 논문 초록을 쓰시오."


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory, embedded_tokenizer):
    """A tiny Gemma 3 base (the real vocabulary) and a LoRA run on it that remembers a custom instruction."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    tok = embedded_tokenizer
    config = Gemma3TextConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
                              num_attention_heads=2, num_key_value_heads=1, head_dim=256, max_position_embeddings=512,
                              pad_token_id=tok.pad_token_id, bos_token_id=tok.bos_token_id,
                              eos_token_id=tok.eos_token_id)
    base = tmp_path_factory.mktemp("tiny-gemma3")
    Gemma3ForCausalLM(config).save_pretrained(base)
    tok.save_pretrained(base)
    model = get_peft_model(Gemma3ForCausalLM.from_pretrained(base),
                           LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj"], task_type="CAUSAL_LM"))
    with torch.no_grad():  # a trained adapter is not zero: make B non-zero so merging changes the weights
        for name, p in model.named_parameters():
            if "lora_B" in name:
                p.normal_(0, 0.5)
    run = tmp_path_factory.mktemp("run")
    model.save_pretrained(run)
    (run / "writemypaper.json").write_text(json.dumps({"base_model": str(base), "instruction": INSTRUCTION}))
    return run


def test_export_writes_gguf_modelfile_and_carries_the_instruction(tiny_run, tmp_path, capsys):
    from transformers import AutoTokenizer

    out = tmp_path / "tuned"
    assert main(["export", str(tiny_run), "--out", str(out), "--gguf", "q8_0"]) == 0
    files = sorted(p.name for p in out.iterdir())
    assert "tuned-q8_0.gguf" in files and "Modelfile" in files and "model.safetensors" in files
    printed = capsys.readouterr().out
    assert "GGUF written to" in printed and "ollama create tuned -f Modelfile" in printed
    # Any consumer that sends the bare summary gets the training prompt, with the run's instruction, byte for byte.
    tok = AutoTokenizer.from_pretrained(out)
    chat = tok.apply_chat_template([{"role": "user", "content": SUMMARY}], tokenize=False, add_generation_prompt=True)
    assert chat == prompts.render_prompt(SUMMARY, INSTRUCTION)
    # A message already wrapped in the instruction (what our own code sends) renders the same, not twice.
    wrapped = tok.apply_chat_template([{"role": "user", "content": prompts.user_message(SUMMARY, INSTRUCTION)}],
                                      tokenize=False, add_generation_prompt=True)
    assert wrapped == chat
    # generate/serve read the instruction from writemypaper.json, as they do for a training run
    info = json.loads((out / "writemypaper.json").read_text())
    assert info["instruction"] == INSTRUCTION and info["gguf"] == "q8_0"
    from writemypaper import engines

    gen = engines.load(str(out), precision="fp32", device="cpu")
    assert gen.instruction == INSTRUCTION
    assert gen._encode([SUMMARY])["input_ids"][0].tolist() == tok(chat, add_special_tokens=False)["input_ids"]
    modelfile = (out / "Modelfile").read_text()
    assert "FROM ./tuned-q8_0.gguf" in modelfile and INSTRUCTION in modelfile
    card = (out / "README.md").read_text()
    assert "tuned-q8_0.gguf" in card and "ollama create" in card
    assert (out / "tuned-q8_0.gguf").stat().st_mode & 0o777 == 0o644


def test_export_gguf_only_of_a_base_model(tiny_run, tmp_path):
    import gguf

    base = json.loads((tiny_run / "writemypaper.json").read_text())["base_model"]
    out = tmp_path / "base"
    assert main(["export", base, "--out", str(out), "--gguf", "f16", "--no-safetensors"]) == 0
    assert sorted(p.name for p in out.iterdir()) == ["Modelfile", "README.md", "base-f16.gguf", "writemypaper.json"]
    reader = gguf.GGUFReader(out / "base-f16.gguf")
    assert reader.fields["tokenizer.chat_template"].contents() == prompts.export_chat_template(None)


def test_export_refusals(tiny_run, tmp_path, capsys):
    assert main(["export", str(tmp_path), "--out", str(tmp_path / "x")]) == 2
    assert "not a finished training run" in capsys.readouterr().err
    assert main(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--no-safetensors"]) == 2
    assert "--no-safetensors leaves nothing" in capsys.readouterr().err
    with pytest.raises(SystemExit):
        main(["export", str(tiny_run), "--out", str(tmp_path / "x"), "--gguf", "q5_k"])
    assert not (tmp_path / "x").exists()


def test_the_card_decodes_with_the_generation_defaults(tmp_path):
    """The card's snippet takes its numbers from GenerationSettings, not a copy of them."""
    from writemypaper.export import _card
    from writemypaper.settings import GenerationSettings

    g = GenerationSettings()
    card = _card(tmp_path, "gemma3-270m", None, None)
    assert f"RepetitionPenaltyLogitsProcessor({g.repetition_penalty}, " in card
    assert (f"max_new_tokens={g.max_new_tokens}, do_sample=True, temperature={g.temperature}, top_p={g.top_p}, "
            f"top_k={g.top_k}") in card
