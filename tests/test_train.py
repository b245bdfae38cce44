"""A real fine-tune of the embedded Gemma 3 270M on CPU, through `writemypaper train`, and what it must show:
the loss falls, the adapter changes and the base does not, the model stops by itself, and the merged export
writes the same text."""

import json

import pytest
import torch

from conftest import TINY_TRAIN
from writemypaper import models, prompts
from writemypaper.cli import main

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def run_dir(short_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["train", "--config", "cpu-demo", "--data", str(short_prepared), "--out", str(out), *TINY_TRAIN,
               "training.max_steps=12", "training.eval_steps=6", "training.save_steps=6"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def train_summaries(short_prepared):
    from writemypaper.data import load_split

    return list(load_split(str(short_prepared), "train").select(range(4))["summary"])


def test_run_directory_holds_everything(run_dir):
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "metrics.json",
                 "data_stats.json", "loss_curve.png", "log_history.json", "writemypaper.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((run_dir / "writemypaper.json").read_text())["base_model"] == "gemma3-270m"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert "checkpoint-12" in ckpts and all((run_dir / "checkpoints" / c / "writemypaper-complete").is_file() for c in ckpts)


def test_loss_falls(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["global_step"] == 12
    assert m["train_loss_last"] < 0.5 * m["train_loss_first"]
    assert len(m["eval_losses"]) == 2 and all(x == x for x in m["eval_losses"])  # evaluated, and not NaN
    assert m["trainable_parameters"] < 0.02 * m["total_parameters"]


def test_adapter_changed_and_base_did_not(run_dir, embedded_tokenizer):
    tuned, _ = models.load_for_inference(str(run_dir), device="cpu")
    base = models.load_model("gemma3-270m", tokenizer=embedded_tokenizer)
    base_params = dict(base.named_parameters())
    lora_b = [(n, p) for n, p in tuned.named_parameters() if "lora_B" in n]
    assert lora_b and all(p.abs().sum() > 0 for _, p in lora_b)  # LoRA's B starts at zero: non-zero means trained
    compared = 0
    for name, p in tuned.get_base_model().named_parameters():
        if "lora_" in name:
            continue
        key = name.replace(".base_layer", "")
        assert torch.equal(p, base_params[key]), key
        compared += 1
    assert compared == len(base_params)


def test_tuned_model_stops_by_itself(run_dir, train_summaries):
    """Generations end at <end_of_turn> (or eos) well before max_new_tokens."""
    from writemypaper.generate import GenerationSettings, Generator

    gen = Generator.load(str(run_dir), device="cpu")
    settings = GenerationSettings(max_new_tokens=128, do_sample=False, repetition_penalty=1.0)
    enc = gen._encode(train_summaries)
    with torch.inference_mode():
        out = gen.model.generate(**enc, **settings.generate_kwargs(gen.tokenizer))
    stops = set(prompts.stop_token_ids(gen.tokenizer))
    for row in out[:, enc["input_ids"].shape[1]:].tolist():
        ends = [i for i, t in enumerate(row) if t in stops]
        assert ends and ends[0] < 100, f"no stop token within 100 of 128 new tokens: {gen.tokenizer.decode(row)!r}"
    texts = [o[0] for o in gen.generate(train_summaries, settings)]
    assert all(t and "<end_of_turn>" not in t for t in texts)


def test_merged_export_generates_the_same_text(run_dir, tmp_path, train_summaries):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from writemypaper.generate import GenerationSettings, Generator

    out = tmp_path / "merged"
    assert main(["export", str(run_dir), "--out", str(out)]) == 0
    card = (out / "README.md").read_text()
    assert "gemma3-270m" in card and "train_loss_last" in card
    # Plain transformers loads it, with the chat template set to our prompt format.
    tok = AutoTokenizer.from_pretrained(out)
    merged = AutoModelForCausalLM.from_pretrained(out, dtype=torch.float32)
    msg = [{"role": "user", "content": prompts.user_message(train_summaries[0])}]
    assert tok.apply_chat_template(msg, tokenize=False, add_generation_prompt=True) == prompts.render_prompt(train_summaries[0])
    settings = GenerationSettings(max_new_tokens=32, do_sample=False, repetition_penalty=1.0)
    adapter = Generator.load(str(run_dir), device="cpu").generate(train_summaries[:2], settings)
    exported = Generator(merged, tok).generate(train_summaries[:2], settings)
    assert adapter == exported


def test_generate_cli_batches_and_streams(run_dir, tmp_path, train_summaries, capfd):
    inp = tmp_path / "summaries.txt"
    inp.write_text("\n".join(train_summaries[:3]) + "\n", encoding="utf-8")
    out = tmp_path / "abstracts.jsonl"
    assert main(["generate", "--model", str(run_dir), "--input", str(inp), "--out", str(out), "--max-new-tokens", "12",
                 "--seed", "3"]) == 0
    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert [r["summary"] for r in rows] == train_summaries[:3]
    assert all(r["settings"]["max_new_tokens"] == 12 and r["settings"]["seed"] == 3 for r in rows)
    # the same seed reproduces the sampled output
    again = tmp_path / "again.jsonl"
    assert main(["generate", "--model", str(run_dir), "--input", str(inp), "--out", str(again), "--max-new-tokens", "12",
                 "--seed", "3"]) == 0
    assert [json.loads(line)["generated"] for line in again.read_text(encoding="utf-8").splitlines()] == \
        [r["generated"] for r in rows]
    capfd.readouterr()
    assert main(["generate", train_summaries[0], "--model", str(run_dir), "--max-new-tokens", "12", "--greedy"]) == 0
    streamed = capfd.readouterr().out.strip()
    assert streamed and "<end_of_turn>" not in streamed
