"""Config validation through the real command: every key, type and range is checked before anything loads, every
problem is reported at once (one line each, non-zero exit, no traceback), and nothing the user set is changed."""

import pytest

from writemypaper import config, train, trainer
from writemypaper.cli import main
from writemypaper.errors import UserError

PREFIX = "writemypaper: error: "


@pytest.fixture
def data_dir(tmp_path):
    """Enough of a prepared directory for validation, which runs before anything reads it."""
    d = tmp_path / "prepared"
    d.mkdir()
    (d / "train.parquet").write_bytes(b"")
    return d


def _problems(capsys, *args) -> list[str]:
    """Run the command in-process; it must fail with exit code 2 and only `writemypaper: error:` lines on stderr."""
    assert main(list(args)) == 2
    lines = capsys.readouterr().err.strip().splitlines()
    assert lines and all(line.startswith(PREFIX) for line in lines), lines
    return [line[len(PREFIX):] for line in lines]


def _train(data_dir, tmp_path, *overrides) -> list[str]:
    return ["train", "--config", "cpu-demo", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--dry-run",
            *overrides]


def test_a_learning_rate_that_is_not_a_number_is_one_line_without_a_traceback(data_dir, tmp_path, capsys):
    # in the test process: main() is the whole command but the interpreter (the CLI's process-level checks, argparse
    # and a traceback-free exit, run as a process in test_cli.py)
    assert _problems(capsys, *_train(data_dir, tmp_path, "training.learning_rate=abc")) == [
        "training.learning_rate=abc is not a number"]
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("override, problem", [
    ("training.max_steps=-3", "training.max_steps=-3 must be positive, or -1 to train for num_train_epochs"),
    ("training.max_steps=0", "training.max_steps=0 must be positive, or -1 to train for num_train_epochs"),
    ("training.learning_rate=0", "training.learning_rate=0 must be positive"),
    ("training.per_device_train_batch_size=0", "training.per_device_train_batch_size=0 must be at least 1"),
    ("lora.r=0", "lora.r=0 must be positive"),
    ("lora.lora_dropout=1.5", "lora.lora_dropout=1.5 must be in [0, 1)"),
    ("lora.bias=some", "lora.bias=some is not none, all or lora_only"),
    ("training.seed=1.5", "training.seed=1.5 is not a whole number"),
    ("early_stopping_patience=soon", "early_stopping_patience=soon is not a whole number or null"),
    ("quantization=int3", "quantization=int3 is not null, nf4 or 4bit"),
    # what only the library knows, from building its config class as the run will
    ("training.lr_scheduler_type=sideways", "training: sideways is not a valid SchedulerType"),
])
def test_a_value_out_of_range_or_of_the_wrong_type_is_refused(override, problem, data_dir, tmp_path, capsys):
    problems = _problems(capsys, *_train(data_dir, tmp_path, override))
    assert len(problems) == 1 and problems[0].startswith(problem), problems


@pytest.mark.parametrize("override, problem", [
    ("bogus=1", "unknown config key 'bogus'"),
    ("precison=fp32", "unknown config key 'precison' (did you mean 'precision'?)"),
    ("training.learnign_rate=1e-4", "training.learnign_rate is not an SFTConfig option "
                                    "(did you mean 'training.learning_rate'?)"),
    ("lora.rank=8", "lora.rank is not a LoraConfig option"),
])
def test_an_unknown_key_is_refused_with_the_nearest_known_one(override, problem, data_dir, tmp_path, capsys):
    assert _problems(capsys, *_train(data_dir, tmp_path, override)) == [problem]


def test_every_problem_is_reported_at_once_one_a_line(tmp_path, capsys):
    args = ["train", "--config", "cpu-demo", "--data", str(tmp_path / "missing"), "--out", str(tmp_path / "run"),
            "--dry-run", "training.learning_rate=abc", "training.max_steps=-3", "precison=fp32", "lora.r=0"]
    problems = _problems(capsys, *args)
    assert len(problems) == 5, problems
    assert problems[0].startswith(f"--data {tmp_path / 'missing'}: no such directory")
    assert "training.learning_rate=abc is not a number" in problems
    assert any(p.startswith("training.max_steps=-3 must be positive") for p in problems)
    assert any(p.startswith("unknown config key 'precison'") for p in problems)
    assert "lora.r=0 must be positive" in problems


def test_a_save_steps_the_user_set_is_never_replaced_behind_their_back(data_dir, tmp_path, capsys):
    # cpu-demo stops early (patience 3) and evaluates every 8 steps: checkpoints must fall on evaluations
    problems = _problems(capsys, *_train(data_dir, tmp_path, "training.save_steps=2"))
    assert len(problems) == 1
    assert problems[0].startswith("training.save_steps=2 is not a multiple of training.eval_steps=8")
    assert "set training.save_steps=8" in problems[0] and "early_stopping_patience=null" in problems[0]
    # the same setting in a YAML file of the user's own is theirs too
    own = tmp_path / "mine.yaml"
    own.write_text(config.CONFIG_DIR.joinpath("cpu-demo.yaml").read_text(encoding="utf-8")
                   .replace("save_steps: 8", "save_steps: 3"), encoding="utf-8")
    args = ["train", "--config", str(own), "--data", str(data_dir), "--out", str(tmp_path / "run"), "--dry-run"]
    assert _problems(capsys, *args)[0].startswith("training.save_steps=3 is not a multiple of training.eval_steps=8")


def test_a_compatible_save_steps_is_kept_and_only_a_presets_is_aligned(tmp_path):
    import torch

    def built(*overrides):
        cfg = config.load_config("cpu-demo", list(overrides), kind="train")
        return trainer.sft_config(cfg, tmp_path / "run", torch.float32)

    assert built("training.save_steps=16").save_steps == 16  # the user's multiple of eval_steps stays
    assert built("training.eval_steps=4").save_steps == 4  # the preset's 8 follows the user's eval_steps
    assert built("training.save_steps=2", "early_stopping_patience=null").save_steps == 2  # no early stopping


def test_every_shipped_preset_is_known_by_its_kind():
    """--help reads each preset's kind from its `kind:` line, without a YAML parser: the same answer as one."""
    import yaml

    for name, kind in config._kinds().items():
        text = (config.CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8")
        assert kind == (yaml.safe_load(text) or {}).get("kind"), name
    train_presets = config.available_presets("train")
    assert "cpu-demo" in train_presets and not [n for n in train_presets if n.startswith("accelerate-")]


def test_every_shipped_train_preset_validates_cleanly(data_dir, tmp_path):
    for name in config.available_presets("train"):
        cfg = config.load_config(name, kind="train")
        train.validate(cfg, str(data_dir), str(tmp_path / name), resume=False)
        assert config.train_problems(cfg) == {"": [], "training": [], "lora": []}, name


def test_generate_and_evaluate_configs_refuse_unknown_keys_and_wrong_types(tmp_path, capsys):
    problems = _problems(capsys, "generate", "x", "generation.temprature=1", "batchsize=8", "batch_size=many",
                         "--model", "gemma3-270m")
    assert problems == ["batch_size=many is not a whole number",
                        "unknown config key 'generation.temprature' (did you mean 'generation.temperature'?)",
                        "unknown config key 'batchsize' (did you mean 'batch_size'?)"]
    assert _problems(capsys, "evaluate", "--out", str(tmp_path / "e"), "n_sample=3") == [
        "unknown config key 'n_sample' (did you mean 'n_samples'?)"]
    # a user's own YAML file is held to the keys of the shipped preset of its kind
    own = tmp_path / "gen.yaml"
    own.write_text("kind: generate\nmodel: gemma3-270m\nprecison: auto\ngeneration:\n  top_q: 0.5\n", encoding="utf-8")
    with pytest.raises(UserError) as e:
        config.load_config(str(own), kind="generate")
    assert e.value.problems == ["unknown config key 'precison' (did you mean 'precision'?)",
                                "unknown config key 'generation.top_q' (did you mean 'generation.top_p'?)"]
    for name in ("generate", "evaluate"):
        config.load_config(name, kind=name)  # the shipped presets pass their own check


def test_overrides_may_follow_options(data_dir, tmp_path, capsys):
    """KEY=VALUE items on both sides of an option all arrive (argparse alone would refuse the second run of them)."""
    args = ["train", "lora.r=0", "--config", "cpu-demo", "--data", str(data_dir), "training.max_steps=-3",
            "--out", str(tmp_path / "run"), "--dry-run"]
    problems = _problems(capsys, *args)
    assert "lora.r=0 must be positive" in problems
    assert any(p.startswith("training.max_steps=-3") for p in problems) and len(problems) == 2
    with pytest.raises(SystemExit) as e:
        main(["train", "--data", str(data_dir), "--out", str(tmp_path / "run"), "--no-such-option"])
    assert e.value.code == 2 and "unrecognized arguments: --no-such-option" in capsys.readouterr().err
