"""The benchmarks can't rot unseen: every bench script answers --help, every option that bench/gpu_smoke.sh passes
to bench_train.py and bench_unsloth.py parses, the timing arithmetic is checked by hand, and bench_train.py and
bench_unsloth.py (its plain-TRL engine: Unsloth needs a GPU) run a few steps of a tiny model on the CPU."""

import json
import os
import re
import runpy
import shlex
import subprocess
import sys
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
BENCH = REPO / "bench"
sys.path.insert(0, str(BENCH))
SCRIPTS = sorted(p.name for p in BENCH.glob("bench_*.py")) + ["common.py"]


@pytest.mark.parametrize("script", SCRIPTS)
def test_every_bench_script_answers_help(script, monkeypatch, capsys):
    monkeypatch.setattr(sys, "argv", [script, "--help"])
    with pytest.raises(SystemExit) as e:
        runpy.run_path(str(BENCH / script), run_name="__main__")
    assert e.value.code == 0
    assert "usage:" in capsys.readouterr().out


@pytest.mark.parametrize("script", sorted(p.name for p in BENCH.glob("*.sh")))
def test_every_bench_shell_script_parses(script):
    assert subprocess.run(["bash", "-n", str(BENCH / script)], capture_output=True).returncode == 0


def _smoke_invocations(var: str) -> list[list[str]]:
    """The options every `$VAR ...` line of gpu_smoke.sh passes (continuation lines joined; shell variables and
    `--name "..."` kept as words)."""
    text = (BENCH / "gpu_smoke.sh").read_text().replace("\\\n", " ")
    found = []
    for line in text.splitlines():
        for m in re.finditer(rf"\${var}\b(.*?)(?:;;|$)", line):
            found.append(shlex.split(m.group(1).replace("$OUT", "/tmp/out").replace('"', '"')))
    return found


@pytest.mark.parametrize("var, module", [("TRAIN", "bench_train"), ("UNSLOTH", "bench_unsloth")])
def test_gpu_smoke_options_parse(var, module):
    """The device script's options against the parser: an option it passes that the script lacks (bench_train.py's
    --ab once) must fail here, not on the device."""
    mod = __import__(module)
    calls = _smoke_invocations(var)
    assert len(calls) >= 4
    for argv in calls:
        a = mod.parser().parse_args(["--model", "/tmp/m", *argv])
        assert a.warmup >= 1 and a.repeats >= 1


def test_bad_ab_is_one_line_error():
    import bench_train

    assert bench_train.parse_ab("nan-filter:2") == ("nan-filter", 2)
    assert bench_train.parse_ab(None) == ("", 0)
    with pytest.raises(SystemExit, match="use nan-filter:B"):
        bench_train.parse_ab("nan-filter:0")


# ---------------------------------------------------------------------------------------------------------------------
# the timing arithmetic, by hand


def test_summarize_takes_the_median_block_and_leaves_the_warmup_out():
    import timing

    # step ends (s): a 30 s first step (compilation), then steps of 1 s, one slow step (3 s) in block 2
    times = [30, 31, 32, 33, 34, 37, 38, 39]
    counts = [[1000 * (i + 1), 2 * (i + 1), 500 * (i + 1)] for i in range(8)]
    graphs = [5, 5, 5, 5, 5, 5, 5, 5]
    r = timing.summarize(times, counts, graphs, warmup=2, steps=2, repeats=3)
    # blocks: marks 1->3 (2000 tokens / 2 s), 3->5 (2000 / 4 s), 5->7 (2000 / 2 s)
    assert r["tokens_per_s_blocks"] == [1000, 500, 1000]
    assert r["tokens_per_s"] == 1000 and r["tokens_per_s_min"] == 500
    assert r["spread"] == pytest.approx(0.5)
    assert r["samples_per_s"] == 2 and r["loss_tokens_per_s"] == 500
    assert r["first_step_s"] == 30 and r["warmup_s"] == 31
    assert r["tokens_per_step"] == 1000 and r["step_s_max"] == 3
    assert r["graphs_compiled_in_timed_steps"] == 0


def test_summarize_reports_compilation_inside_the_timed_steps():
    import timing

    times = [10, 11, 12, 13]
    counts = [[100 * (i + 1)] * 3 for i in range(4)]
    r = timing.summarize(times, counts, [3, 3, 4, 4], warmup=1, steps=1, repeats=3)
    assert r["graphs_compiled_in_timed_steps"] == 1
    assert "WARNING" in timing.describe(r)
    with pytest.raises(ValueError, match="steps marked"):
        timing.summarize(times, counts, [0] * 4, warmup=2, steps=1, repeats=3)


def test_table_pairs_each_preset_with_unsloths_best_row_of_its_config():
    import bench_train

    def row(name, tps, peak, **kw):
        return {"name": name, "tokens_per_s": tps, "peak_mem_train_gib": peak, **kw}

    rows = [row("seed", 1000, 4.0), row("low-memory", 12000, 3.6), row("fast", 26000, 15.0),
            row("U 4bit off", 3000, 2.9, engine="unsloth", config="4bit"),
            row("U 4bit on", 4000, 3.0, engine="unsloth", config="4bit"),
            row("TRL 4bit", 9000, 2.0, engine="trl", config="4bit")]
    lines = bench_train.pairs(rows)
    assert lines[-1] == "| low-memory | U 4bit on | 3.00x | 1.20x |"  # the faster Unsloth row; TRL's is no pair
    assert not any("| fast |" in x for x in lines)  # no bf16 row of Unsloth's: no pair


# ---------------------------------------------------------------------------------------------------------------------
# a tiny model on the CPU, through the real training code


@pytest.fixture(scope="module")
def tiny_bench_model(tmp_path_factory, embedded_tokenizer):
    import common

    common.TOKENIZER_SOURCES = (Path(embedded_tokenizer.name_or_path),) + common.TOKENIZER_SOURCES
    out = tmp_path_factory.mktemp("bench-model")
    return common.make_model(out, tiny=True, vocab=2048)


def _rows(path: Path) -> list[dict]:
    return [json.loads(x) for x in path.read_text().splitlines()]


# The fast preset as a CPU runs it quickly: no compiled layers, eager attention, one packed row of 512 tokens a step.
CPU_FAST = ["--preset", "fast", "--set", "compile_layers=false", "--set", "attn_implementation=eager",
            "--set", "training.max_length=512", "--set", "training.pad_to_multiple_of=512",
            "--set", "training.per_device_train_batch_size=1", "--set", "training.gradient_accumulation_steps=1"]


@pytest.mark.slow
def test_bench_train_runs_on_a_tiny_model(tiny_bench_model, tmp_path, capsys):
    """bench_train.py end to end on the CPU: three timed blocks of one step, the nan-filter A/B, the table."""
    import bench_train

    out = tmp_path / "train.jsonl"
    bench_train.main(["--model", str(tiny_bench_model), *CPU_FAST, "--no-eval", "--samples", "64", "--warmup", "1",
                      "--steps", "1", "--repeats", "3", "--ab", "nan-filter:1", "--out", str(out)])
    [r] = _rows(out)
    assert len(r["tokens_per_s_blocks"]) == 3 and r["tokens_per_s"] > 0
    assert 200 < r["tokens_per_step"] <= 512  # one packed row of 512 tokens, its padding not counted
    assert len(r["losses"]) == 4 and r["first_step_s"] > 0
    assert r["ab"]["off"]["steps"] + r["ab"]["on"]["steps"] == 3
    bench_train.main(["--table", str(out), "--baseline", "fast"])
    assert "| fast | 1 |" in capsys.readouterr().out


@pytest.mark.slow
def test_bench_unsloth_recipe_runs_through_plain_trl(tiny_bench_model, tmp_path):
    """bench_unsloth.py's data, recipe, counting and row on the CPU, with --engine trl (Unsloth needs a GPU). Its
    padded batches are counted without their padding: tokens per step = mean pair length x batch x accumulation."""
    import bench_unsloth

    out = tmp_path / "unsloth.jsonl"
    bench_unsloth.main(["--model", str(tiny_bench_model), "--config", "bf16", "--engine", "trl", "--batch", "2",
                        "--samples", "32", "--warmup", "1", "--steps", "1", "--repeats", "2", "--out", str(out)])
    [r] = _rows(out)
    mean = r["data"]["mean_length"]
    assert 0.5 * mean * 2 < r["tokens_per_step"] < 1.5 * mean * 2
    assert r["samples_per_step"] == 2 and r["engine"] == "trl" and len(r["losses"]) == 3
    assert r["recipe"]["gradient_checkpointing"] == "none" and r["micro_batch"] == 2


@pytest.mark.parametrize("engine", ["unsloth", "trl"])
def test_bench_unsloth_refuses_4bit_on_the_cpu_in_one_line(engine, tmp_path, capsys):
    import torch

    import bench_unsloth

    if torch.cuda.is_available():
        pytest.skip("this machine has a GPU")
    (tmp_path / "config.json").write_text("{}")
    with pytest.raises(SystemExit) as e:
        bench_unsloth.main(["--model", str(tmp_path), "--engine", engine, "--config", "4bit"])
    assert e.value.code == 2 and "--config 4bit needs a CUDA GPU" in capsys.readouterr().err


@pytest.mark.slow
def test_bench_unsloth_runs_unsloth_itself_on_the_cpu(tiny_bench_model, tmp_path):
    """Unsloth's own path (FastLanguageModel from a local directory, fix_tokenizer=False, get_peft_model, its
    patched SFTTrainer on our labels), in its CPU fallback. Unsloth is no dependency of the product: it runs from a
    --target directory of bench/fetch_unsloth.sh's wheels named by WRITEMYPAPER_UNSLOTH_SITE, apart from the venv
    (it needs trl <= 1.15 and datasets < 5). Its token count must equal TRL's own `num_tokens` (no padding)."""
    import os

    site = os.environ.get("WRITEMYPAPER_UNSLOTH_SITE")
    if not site or not (Path(site) / "unsloth").is_dir():
        pytest.skip("WRITEMYPAPER_UNSLOTH_SITE names no Unsloth target (pip install --target DIR .whl/unsloth/*.whl)")
    out = tmp_path / "u.jsonl"
    env = dict(os.environ, PYTHONPATH=os.pathsep.join([site, str(BENCH.parent / "src")]))
    proc = subprocess.run([sys.executable, str(BENCH / "bench_unsloth.py"), "--model", str(tiny_bench_model),
                           "--config", "bf16", "--batch", "2", "--samples", "32", "--warmup", "1", "--steps", "1",
                           "--repeats", "2", "--out", str(out)], capture_output=True, text=True, timeout=600,
                          env=env, cwd=tmp_path)
    assert proc.returncode == 0, proc.stderr[-2000:]
    [r] = _rows(out)
    assert r["engine"] == "unsloth" and r["versions"]["unsloth"] and r["versions"]["trl"].startswith("1.15")
    logged = [float(x) for x in re.findall(r"'num_tokens': '([0-9.e+]+)'", proc.stdout + proc.stderr)]
    assert len(logged) == 3 and r["tokens_per_step"] == pytest.approx((logged[2] - logged[0]) / 2)


def _bench_serve(*args: str) -> subprocess.CompletedProcess:
    """bench_serve.py as the GPU machine runs it: its own process, so its server, threads and logging start clean
    (in the test process they met pytest's output capture, which another worker's tests had left closed)."""
    return subprocess.run([sys.executable, str(REPO / "bench" / "bench_serve.py"), *args], capture_output=True,
                          text=True, timeout=600, env={**os.environ, "PYTHONPATH": str(REPO / "src")})


@pytest.mark.slow
def test_bench_serve_without_the_fact_check(tmp_path_factory, embedded_tokenizer, tmp_path):
    """The GPU machine's load test, on a tiny model with the tokenizer's whole vocabulary: every request answered,
    the fact check off (Kiwi's model can't be carried there)."""
    import common

    common.TOKENIZER_SOURCES = (Path(embedded_tokenizer.name_or_path),) + common.TOKENIZER_SOURCES
    model = common.make_model(tmp_path_factory.mktemp("serve-model"), tiny=True)
    out = tmp_path / "serve.jsonl"
    proc = _bench_serve("--model", str(model), "--requests", "6", "--stream", "2", "--max-tokens", "4",
                        "--max-batch-size", "4", "--no-fact-check", "--out", str(out))
    assert proc.returncode == 0, proc.stderr[-2000:]
    [r] = _rows(out)
    assert r["answered"] == 6 and r["lost"] == 0 and r["fact_check"] is False and r["p99_s"] >= r["p50_s"] > 0


@pytest.mark.slow
def test_bench_serve_says_in_one_line_when_nothing_was_answered(tiny_bench_model):
    """Every answer fails (the model's 2,048-entry vocabulary can't embed Korean text): a failed stream is an error
    event without `choices`, and the bench must say so instead of failing on it."""
    proc = _bench_serve("--model", str(tiny_bench_model), "--requests", "3", "--stream", "1", "--max-tokens", "4",
                        "--no-fact-check")
    # the server's own log shows each failed generation; the bench's last word is one line that says what happened
    assert proc.returncode != 0 and "none of the 3 requests" in proc.stderr.strip().splitlines()[-1], proc.stderr[-2000:]
