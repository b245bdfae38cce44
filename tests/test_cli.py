"""The command line: fast help, one-line errors for bad options, config overrides, dry run."""

import subprocess
import sys
import time

import pytest

from writemypaper.cli import main
from writemypaper.errors import UserError

VERBS = ["prepare", "train", "generate", "evaluate", "serve", "export", "demo"]


def test_help_is_fast_and_lists_every_verb():
    start = time.time()
    proc = subprocess.run([sys.executable, "-m", "writemypaper", "--help"], capture_output=True, text=True)
    assert proc.returncode == 0
    assert time.time() - start < 5  # no torch/transformers import at start-up
    for verb in VERBS:
        assert verb in proc.stdout


@pytest.mark.parametrize("verb", VERBS)
def test_each_verb_has_help(verb, capsys):
    with pytest.raises(SystemExit) as e:
        main([verb, "--help"])
    assert e.value.code == 0
    assert "usage: writemypaper " + verb in capsys.readouterr().out


def _help_entries(text: str) -> list[str]:
    """Each option's or positional's entry in a --help, its wrapped lines joined."""
    entries: list[str] = []
    listing = False
    for line in text.splitlines():
        if line.endswith(":") and not line.startswith(" "):
            listing = line in ("options:", "positional arguments:")
        elif listing and line.startswith("  ") and line.strip():
            if line.startswith("   ") and entries:
                entries[-1] += " " + line.strip()
            else:
                entries.append(line.strip())
    return [" ".join(e.split()) for e in entries]


@pytest.mark.parametrize("verb", VERBS)
def test_each_default_is_printed_once_and_only_when_there_is_one(verb, capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "100")  # wrapping must not hide a repeated default either
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    entries = _help_entries(capsys.readouterr().out)
    assert any(e.startswith("-h, --help") for e in entries), entries
    for entry in entries:
        assert entry.count("(default:") <= 1, entry
        for noise in ("(default: None)", "(default: False)", "(default: [])", "(default: ==SUPPRESS==)"):
            assert noise not in entry, entry
    # options with a real default say it
    if verb == "prepare":
        assert any(e.startswith("--seed SEED") and e.endswith("(default: 42)") for e in entries), entries


@pytest.mark.parametrize("verb, kind", [("train", "train"), ("generate", "generate"), ("evaluate", "evaluate")])
def test_config_offers_and_accepts_only_presets_of_the_verbs_kind(verb, kind, capsys, tmp_path):
    from writemypaper import config

    presets = config.available_presets(kind)
    assert presets and not set(presets) & {"accelerate-ddp", "accelerate-cpu", "accelerate-fsdp"}
    with pytest.raises(SystemExit):
        main([verb, "--help"])
    entry = next(e for e in _help_entries(capsys.readouterr().out) if e.startswith("--config"))
    offered = entry.split("(", 1)[1].split(")", 1)[0].split(", ")
    assert offered == presets, entry
    others = [p for p in config.available_presets() if p not in presets]
    assert {"accelerate-ddp", "cpu-demo" if kind != "train" else "generate"} <= set(others)
    for other in others:
        with pytest.raises(UserError, match=f"'{other}' is not a {kind} preset"):
            config.load_config(other, kind=kind)
    with pytest.raises(UserError, match="accelerate config, for `accelerate launch --config_file"):
        config.load_config("accelerate-ddp", kind=kind)


def _one_line_error(args, tmp_path):
    proc = subprocess.run([sys.executable, "-m", "writemypaper", *args], capture_output=True, text=True,
                          cwd=tmp_path, timeout=300)
    lines = proc.stderr.strip().splitlines()
    assert proc.returncode != 0
    assert "Traceback" not in proc.stderr, proc.stderr
    return proc.returncode, lines[-1]


@pytest.mark.parametrize("args, needle", [
    (["train", "--config", "nosuch", "--data", "d", "--out", "o"], "unknown preset 'nosuch'"),
    (["train", "--data", "d", "--out", "o", "training.nosuch=1"], "training.nosuch is not an SFTConfig option"),
    (["train", "--data", "d", "--out", "o", "bogus=1"], "unknown config key 'bogus'"),
    (["train", "--data", "d", "--out", "o", "lora.r=-4"], "lora.r=-4 must be positive"),
    (["train", "--data", "d", "--out", "o", "precision=fp8"], "precision=fp8"),
    (["train", "--config", "fast", "--data", "d", "--out", "o", "compile_layers=maybe"], "compile_layers=maybe is not"),
    (["train", "--data", "missing-dir", "--out", "o"], "no such directory"),
    (["train", "--data", "d", "--out", "o", "training.learning_rate"], "not of the form key=value"),
    (["generate", "--model", "gemma3-270m"], "give exactly one of"),
    (["generate", "x", "--model", "gemma3-270m", "generation.temperature=9"], "temperature=9"),
    (["generate", "--input", "nosuch.txt", "--model", "gemma3-270m"], "no such file"),
    (["evaluate", "--out", "e"], "give either --models"),
    (["evaluate", "--predictions", "nosuch.jsonl", "--out", "e"], "no such file"),
    (["export", "not-a-run", "--out", "x"], "not a finished training run"),
])
def test_bad_input_is_one_line(args, needle, tmp_path, monkeypatch, capsys):
    """In this process (a subprocess each would spend most of its time importing torch): an exception that escaped
    main() would fail the test itself. test_argparse_rejects_out_of_range_options runs the same path as a process."""
    (tmp_path / "d").mkdir()
    monkeypatch.chdir(tmp_path)
    try:
        code = main(args)
    except SystemExit as e:  # argparse's own errors
        code = e.code
    lines = capsys.readouterr().err.strip().splitlines()
    assert code == 2 and lines, lines
    assert lines[-1].startswith("writemypaper: error:") and needle in lines[-1], lines
    assert not (tmp_path / "o").exists() and not (tmp_path / "e").exists() and not (tmp_path / "x").exists()


def test_argparse_rejects_out_of_range_options(tmp_path):
    code, last = _one_line_error(["prepare", "--input", "x", "--out", "y", "--val-fraction", "1.5"], tmp_path)
    assert code == 2 and "not in [0, 1)" in last


def test_dry_run_prints_and_writes_nothing(short_prepared, tmp_path, capsys):
    out = tmp_path / "run"
    assert main(["train", "--config", "cpu-demo", "--data", str(short_prepared), "--out", str(out), "--dry-run",
                 "lora.r=4"]) == 0
    text = capsys.readouterr().out
    assert "trainable parameters: " in text and "r: 4" in text and "train / " in text
    assert not out.exists()


def test_presets_are_valid(tmp_path):
    """Every train preset loads, and its training section is accepted by SFTConfig (torchtune-style check)."""
    from writemypaper import config, train

    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "train.parquet").write_bytes(b"")
    for name in config.available_presets("train"):
        cfg = config.load_config(name, kind="train")
        train.validate(cfg, str(tmp_path / "d"), str(tmp_path / "out"), resume=False)
        assert cfg.lora.r > 0 and cfg.training.max_length >= 16
    seed = config.load_config("seed", kind="train")
    assert seed.compile_layers is False and config.load_config("fast", kind="train").compile_layers is True
    assert (seed.quantization, seed.precision, seed.lora.r, seed.lora.lora_alpha, seed.lora.lora_dropout) == ("nf4", "fp16", 6, 8, 0.05)
    t = seed.training
    assert (t.learning_rate, t.warmup_steps, t.per_device_train_batch_size, t.gradient_accumulation_steps,
            t.max_steps, t.max_length, t.optim, t.logging_steps) == (2e-4, 0.03, 1, 4, 5000, 512, "paged_adamw_8bit", 100)


def test_generate_inputs_are_read_or_refused_in_one_line(tmp_path):
    from writemypaper.errors import UserError
    from writemypaper.evaluate import read_predictions
    from writemypaper.generate import read_inputs

    (tmp_path / "a.txt").write_text("첫 요약\n\n둘째 요약\n", encoding="utf-8")
    (tmp_path / "b.jsonl").write_text('{"summary": "첫 요약", "id": 1}\n', encoding="utf-8")
    (tmp_path / "c.csv").write_text("id,summary\n1,첫 요약\n2,둘째 요약\n", encoding="utf-8")
    assert [r["summary"] for r in read_inputs(tmp_path / "a.txt")] == ["첫 요약", "둘째 요약"]
    assert read_inputs(tmp_path / "b.jsonl") == [{"summary": "첫 요약", "id": 1}]
    assert [r["summary"] for r in read_inputs(tmp_path / "c.csv")] == ["첫 요약", "둘째 요약"]
    bad = {
        "d.jsonl": ('{"summary": "x"}\n{"summary": \n', "d.jsonl:2: malformed JSON"),
        "e.jsonl": ('{"text": "x"}\n', "missing or non-text field(s): summary"),
        "f.jsonl": ('["x"]\n', "expected a JSON object"),
        "g.csv": ("text\nx\n", "no 'summary' column"),
        "h.md": ("x", "use .txt"),
        "i.txt": ("\n\n", "no summaries"),
    }
    for name, (content, needle) in bad.items():
        (tmp_path / name).write_text(content, encoding="utf-8")
        with pytest.raises(UserError, match=needle.replace("(", r"\(").replace(")", r"\)")):
            read_inputs(tmp_path / name)
    (tmp_path / "p.jsonl").write_text('{"summary": "s", "reference": "r"}\n', encoding="utf-8")
    with pytest.raises(UserError, match="prediction"):
        read_predictions(tmp_path / "p.jsonl")
    (tmp_path / "q.txt").write_bytes(b"\xff\xfe")
    with pytest.raises(UserError, match="not UTF-8"):
        read_inputs(tmp_path / "q.txt")


def test_demo_engine_choice(monkeypatch, capsys, tmp_path):
    """`demo --engine`: auto takes llama.cpp only on a machine without a GPU that has the extra; asking for llama.cpp
    without the extra is a one-line error naming the install."""
    import importlib.util

    import torch

    from writemypaper.demo import resolve_engine

    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llama_cpp" else real(name, *a))
    assert resolve_engine("auto") == "transformers" and resolve_engine("transformers") == "transformers"
    assert main(["demo", "--engine", "llama.cpp", "--out", str(tmp_path / "demo")]) == 2
    assert not (tmp_path / "demo").exists()
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and "llamacpp" in err[0] and "GGML_NATIVE=OFF" in err[0]
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: object() if name == "llama_cpp" else real(name, *a))
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    assert resolve_engine("auto") == "llama.cpp"
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    assert resolve_engine("auto") == "transformers" and resolve_engine("llama.cpp") == "llama.cpp"


# ---------------------------------------------------------------------------------------------------------------------
# generate's words: a summary, or overrides whose key is a generate config key


def test_a_summary_that_starts_like_an_override_stays_a_summary(monkeypatch):
    from writemypaper import generate

    seen = {}

    def fake_run(cfg, model, summary, **kw):
        seen.update(summary=summary, seed=cfg.generation.get("seed"), model=model)

    monkeypatch.setattr(generate, "run", fake_run)
    assert main(["generate", "x=3일 때 y=2x의 값은 6이다.", "--model", "runs/lr=1e-4", "generation.seed=7"]) == 0
    assert seen == {"summary": "x=3일 때 y=2x의 값은 6이다.", "seed": 7, "model": "runs/lr=1e-4"}
    # unquoted words: p=0.05 and a path holding `=` are text, model= and generation.* are overrides
    assert main(["generate", "p=0.05에서", "유의하였다", "data/a=b.txt", "model=gemma3-270m"]) == 0
    assert seen["summary"] == "p=0.05에서 유의하였다 data/a=b.txt" and seen["model"] is None


def test_a_misspelt_key_is_refused_naming_the_key_it_resembles(capsys):
    assert main(["generate", "요약", "temprature=0.3", "--model", "m"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert err == ["writemypaper: error: unknown config key 'temprature' (did you mean 'generation.temperature'?)"]
    assert main(["generate", "요약", "generation.temprature=0.3", "batchsize=2", "--model", "m"]) == 2
    assert capsys.readouterr().err.strip().splitlines() == [  # every problem at once, as always
        "writemypaper: error: unknown config key 'generation.temprature' (did you mean 'generation.temperature'?)",
        "writemypaper: error: unknown config key 'batchsize' (did you mean 'batch_size'?)"]


def test_generate_help_says_how_words_are_told_apart(capsys, monkeypatch):
    monkeypatch.setenv("COLUMNS", "200")
    with pytest.raises(SystemExit):
        main(["generate", "--help"])
    out = " ".join(capsys.readouterr().out.split())
    assert "is a config override when KEY is a key of the generate config" in out
    assert "every other word is summary text" in out


# ---------------------------------------------------------------------------------------------------------------------
# train without --config: the preset picked for the device, said in one line


@pytest.fixture
def fake_gpu(monkeypatch):
    """torch.cuda's own functions answering as the board would (as tests/test_policy.py fakes them)."""
    import types

    import torch

    def install(name, cap, smem, gib):
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
        monkeypatch.setattr(torch.cuda, "get_device_properties", lambda *a: types.SimpleNamespace(
            major=cap[0], minor=cap[1], name=name, shared_memory_per_block_optin=smem,
            total_memory=int(gib * 2**30)))

    return install


@pytest.mark.parametrize("board, preset, why", [
    (("Tesla T4", (7, 5), 65536, 14.75), "gpu-16gb", "Tesla T4 has 15 GiB and no bf16 (sm 7.5)"),
    (("NVIDIA L4", (8, 9), 101376, 22.0), "gpu-16gb", "99 KiB of shared memory per block, too little for flex"),
    (("NVIDIA A10G", (8, 6), 166912, 14.0), "gpu-16gb", "`fast` wants 20 GiB"),
    (("NVIDIA H100 80GB HBM3", (9, 0), 232448, 79.1), "fast", "NVIDIA H100 80GB HBM3 has 79 GiB and bf16 (sm 9.0)"),
    (None, "cpu-demo", "no GPU found"),
])
def test_train_without_config_says_which_preset_and_why(fake_gpu, board, preset, why, monkeypatch, capsys):
    from pathlib import Path

    from writemypaper import train

    if board:
        fake_gpu(*board)
    else:
        import torch

        assert not torch.cuda.is_available()
    used = []
    # the run itself is train's to test; here only which config it is handed
    monkeypatch.setattr(train, "train", lambda cfg, **kw: used.append(Path(cfg.source).stem) or {})
    assert main(["train", "--data", "d", "--out", "o", "lora.r=4"]) == 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith(f"writemypaper: preset: {preset} (no --config given"), err
    assert why in err[0] and used == [preset]
    assert main(["train", "--config", "cpu-demo", "--data", "d", "--out", "o"]) == 0
    assert capsys.readouterr().err == "" and used[-1] == "cpu-demo"  # a preset asked for is not announced
