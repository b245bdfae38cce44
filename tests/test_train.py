"""A real fine-tune of the embedded Gemma 3 270M on CPU, through `writemypaper train`, and what it must show:
the loss falls, the adapter changes and the base does not, the model stops by itself, and the merged export
writes the same text. Before it: the batched, cached tokenization, stratified subsets and the length report."""

import json
import os
import re
from collections import Counter

import pytest
import torch

from conftest import REPO, TINY_TRAIN
from writemypaper import models, prompts
from writemypaper.cli import main

slow = pytest.mark.slow  # the tests on a fine-tuned run_dir; the tokenization tests below are quick


@pytest.fixture(scope="module")
def run_dir(short_prepared, tmp_path_factory):
    out = tmp_path_factory.mktemp("runs") / "tiny"
    rc = main(["train", "--config", "cpu-demo", "--data", str(short_prepared), "--out", str(out), *TINY_TRAIN,
               "training.max_steps=10", "training.eval_steps=5", "training.save_steps=5",
               "training.per_device_train_batch_size=2"])
    assert rc == 0
    return out


@pytest.fixture(scope="module")
def train_summaries(short_prepared):
    from writemypaper.data import load_split

    return list(load_split(str(short_prepared), "train").select(range(4))["summary"])


@slow
def test_run_directory_holds_everything(run_dir):
    for name in ("adapter_model.safetensors", "adapter_config.json", "tokenizer.json", "config.yaml", "metrics.json",
                 "data_stats.json", "loss_curve.png", "log_history.json", "writemypaper.json"):
        assert (run_dir / name).is_file(), name
    assert list((run_dir / "tensorboard").rglob("events.out.tfevents.*"))
    assert json.loads((run_dir / "writemypaper.json").read_text())["base_model"] == "gemma3-270m"
    ckpts = sorted(p.name for p in (run_dir / "checkpoints").glob("checkpoint-*"))
    assert "checkpoint-10" in ckpts and all((run_dir / "checkpoints" / c / "writemypaper-complete").is_file() for c in ckpts)


@slow
def test_loss_falls(run_dir):
    m = json.loads((run_dir / "metrics.json").read_text())
    assert m["global_step"] == 10
    assert m["train_loss_last"] < 0.5 * m["train_loss_first"]
    assert len(m["eval_losses"]) == 2 and all(x == x for x in m["eval_losses"])  # evaluated, and not NaN
    assert m["trainable_parameters"] < 0.02 * m["total_parameters"]
    assert m["compile_layers"] in (True, False)  # the policy train resolved, passed along (not read off the trainer)


@slow
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


@slow
def test_tuned_model_stops_by_itself(run_dir, train_summaries):
    """Generations end at <end_of_turn> (or eos) well before max_new_tokens."""
    from writemypaper import engines
    from writemypaper.settings import GenerationSettings

    gen = engines.load(str(run_dir), device="cpu")
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


@slow
def test_merged_export_generates_the_same_text(run_dir, tmp_path, train_summaries):
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from writemypaper import engines
    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import Generator

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
    adapter = engines.load(str(run_dir), device="cpu").generate(train_summaries[:2], settings)
    exported = Generator(merged, tok).generate(train_summaries[:2], settings)
    assert adapter == exported


@slow
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


# ---------------------------------------------------------------------------------------------------------------------
# before the first step: tokenization, subsets, pairs dropped for length


@pytest.fixture(scope="module")
def both_prepared(tmp_path_factory):
    """The whole sample corpus, whole abstracts and sections (about 800 pairs)."""
    out = tmp_path_factory.mktemp("prepared") / "both"
    assert main(["prepare", "--input", str(REPO / "data" / "sample"), "--out", str(out), "-q",
                 "--granularity", "both"]) == 0
    return out


def test_batched_tokenization_gives_encode_examples_labels(both_prepared, embedded_tokenizer):
    """Every pair of the sample corpus, through the batched map: ids and labels equal prompts.encode_example's,
    one pair at a time, and the pairs over max_length are the ones dropped."""
    from datasets import concatenate_datasets

    from writemypaper import train
    from writemypaper.data import SPLITS, load_split

    raw = concatenate_datasets([load_split(str(both_prepared), s) for s in SPLITS])
    instruction = "다음 요약을 논문 초록으로 쓰세요."
    want = [prompts.encode_example(embedded_tokenizer, r["summary"], r["original"], instruction) for r in raw]
    ds, dropped = train.tokenize_split(raw, embedded_tokenizer, instruction, None)
    assert dropped == 0 and len(ds) == len(raw) > 600
    assert ds["input_ids"] == [w["input_ids"] for w in want]
    assert ds["labels"] == [w["labels"] for w in want]

    longest = max(len(w["input_ids"]) for w in want)
    limit = sorted(len(w["input_ids"]) for w in want)[len(want) // 2]
    ds, dropped = train.tokenize_split(raw, embedded_tokenizer, instruction, limit)
    kept = [w for w in want if len(w["input_ids"]) <= limit]
    assert limit < longest and dropped == len(want) - len(kept) > 0
    assert ds["labels"] == [w["labels"] for w in kept] and ds["input_ids"] == [w["input_ids"] for w in kept]


def test_tokenization_is_cached_under_a_key_stable_across_runs(short_prepared, embedded_tokenizer, tmp_path):
    """A second process with its own tokenizer finds the first one's cache file: the fingerprint does not change
    from run to run. A different instruction or max_length is a different key."""
    import subprocess
    import sys

    from writemypaper import train
    from writemypaper.data import load_split

    env = {**os.environ, "HF_DATASETS_CACHE": str(tmp_path / "cache"), "PYTHONPATH": os.pathsep.join(sys.path)}
    code = ("import sys; from writemypaper import models, train; from writemypaper.data import load_split; "
            "ds, _ = train.tokenize_split(load_split(sys.argv[1], 'train'), models.load_tokenizer('gemma3-270m'), "
            "None, 160); print(ds._fingerprint, ds.cache_files[0]['filename'])")
    runs = [subprocess.run([sys.executable, "-c", code, str(short_prepared)], env=env, capture_output=True, text=True,
                           timeout=300) for _ in range(2)]
    assert all(r.returncode == 0 for r in runs), runs[0].stderr[-2000:]
    (fp1, file1), (fp2, file2) = (r.stdout.split() for r in runs)
    assert fp1 == fp2 and file1 == file2
    assert "tokenizing" in runs[0].stderr and "tokenizing" not in runs[1].stderr  # the second run never mapped

    # in this process: the same key from the same inputs, another one when the instruction or max_length change
    os.environ["HF_DATASETS_CACHE"], old = str(tmp_path / "cache2"), os.environ.get("HF_DATASETS_CACHE")
    try:
        raw = load_split(str(short_prepared), "train")
        keys = {train.tokenize_split(raw, embedded_tokenizer, instr, n)[0]._fingerprint
                for instr, n in ((None, 160), (None, 160), ("다른 지시", 160), (None, 150))}
    finally:
        os.environ.pop("HF_DATASETS_CACHE") if old is None else os.environ.update(HF_DATASETS_CACHE=old)
    assert len(keys) == 3


def test_tokenizer_key_is_kept_beside_the_tokenizer_not_set_on_it(short_prepared):
    """The tokenization cache key is computed once per tokenizer and remembered by the package, and the tokenizer
    (a library object) comes back with exactly the attributes it had."""
    from writemypaper import examples, train
    from writemypaper.data import load_split

    tok = models.load_tokenizer("gemma3-270m", padding_side="right")
    before = dict(vars(tok))
    train.tokenize_split(load_split(str(short_prepared), "train"), tok, None, 160, 4)
    assert vars(tok).keys() == before.keys()
    assert examples._TOKENIZER_KEYS[tok] == examples._tokenizer_key(tok)


def test_subsets_are_a_seeded_shuffle_stratified_by_field():
    from datasets import Dataset

    from writemypaper.examples import stratified_subset

    # in reading order, one field fills the first 60 rows: the first N rows would all be 인문학
    ipc = ["인문학"] * 60 + ["공학"] * 30 + ["의약학"] * 10
    ds = Dataset.from_dict({"ipc": ipc, "n": list(range(100))})
    sub = stratified_subset(ds, 10, seed=42)
    assert sorted(Counter(sub["ipc"]).items()) == [("공학", 3), ("의약학", 1), ("인문학", 6)]
    assert sub["n"] != list(range(10)) and sub["n"] == sorted(sub["n"])
    assert stratified_subset(ds, 10, seed=42)["n"] == sub["n"]  # seeded
    assert stratified_subset(ds, 10, seed=7)["n"] != sub["n"]
    for n in (1, 3, 7, 33, 99):
        counts = Counter(stratified_subset(ds, n, seed=n)["ipc"])
        assert sum(counts.values()) == n
        for field, total in Counter(ipc).items():  # every field within one row of its share
            assert abs(counts[field] - n * total / 100) < 1, (n, counts)
    assert stratified_subset(ds, 100, seed=0) is ds and stratified_subset(ds, None, seed=0) is ds


def test_train_says_at_the_start_how_many_pairs_it_dropped(short_prepared, tmp_path, capfd):
    args = ["train", "--config", "cpu-demo", "--data", str(short_prepared), "--out", str(tmp_path / "run"),
            "--dry-run"]
    assert main([*args, "training.max_length=4096"]) == 0
    out, err = capfd.readouterr()
    assert "on this machine: fp32, sdpa attention, compiled layers off, on cpu" in out  # the resolved policy
    assert "writemypaper: train: 0 of " in err and "(0.0%) are longer than max_length=4096" in err
    assert "warning" not in err
    assert main([*args, "training.max_length=125"]) == 0
    err = [line for line in capfd.readouterr().err.splitlines() if "longer than max_length=125" in line]
    assert len(err) == 2 and all(line.startswith("writemypaper: warning: ") for line in err)  # train and validation
    dropped, total = map(int, re.search(r"train: (\d+) of (\d+) pairs", err[0]).groups())
    assert total > dropped > 0.05 * total
