"""YAML presets from `configs/` plus `key=value` overrides from the command line, merged by OmegaConf, and the checks
that report every unknown key and wrong type at once, one line each.

    writemypaper train --config seed --data prepared --out runs/seed training.learning_rate=1e-4 lora.r=16
"""

from __future__ import annotations

import enum
import functools
import re
import types
import typing
from pathlib import Path
from typing import Any, Literal

from writemypaper.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"
# Written by load_config itself: what the file is, where it was read from, and the overrides applied to it (saved
# with every output, and how `user_set` tells a value the user chose from one the preset brought).
FIXED = ("kind", "open_sections", "source", "overrides")


# ---------------------------------------------------------------------------------------------------------------------
# presets


@functools.lru_cache(maxsize=1)
def _kinds() -> dict[str, str | None]:
    """Each shipped YAML's `kind:` by name; accelerate's launcher configs (accelerate-*.yaml) have none. Read from the
    top-level `kind:` line rather than by parsing the files: `--help` lists the presets, and must stay fast."""
    kinds = {}
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        m = re.search(r"^kind:\s*([\w-]+)", p.read_text(encoding="utf-8"), re.MULTILINE)
        kinds[p.stem] = m.group(1) if m else None
    return kinds


def available_presets(kind: str | None = None) -> list[str]:
    """Preset names (file stems in configs/). `kind` keeps those whose top-level `kind:` is `kind`."""
    return [name for name, k in _kinds().items() if kind is None or k == kind]


def _what(name: str) -> str:
    kind = _kinds()[name]
    if kind is None:
        return f"an accelerate config, for `accelerate launch --config_file configs/{name}.yaml`"
    return f"a {kind} preset"


def preset_path(name: str, kind: str | None = None) -> Path:
    """A preset name (`seed`) or a path to a YAML file. With `kind`, a preset name must be a preset of that kind."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        return p
    names = available_presets(kind)
    listed = f"{kind} presets: {', '.join(names)}" if kind else f"available: {', '.join(names)}"
    if name not in _kinds():
        raise UserError(f"unknown preset '{name}'{did_you_mean(name, names)}; {listed} (or give a .yaml path)")
    if kind is not None and _kinds()[name] != kind:
        raise UserError(f"'{name}' is not a {kind} preset but {_what(name)}; {listed}")
    return CONFIG_DIR / f"{name}.yaml"


@functools.lru_cache(maxsize=None)
def _schema(kind: str | None) -> dict:
    """Every key that the shipped presets of `kind` have, with an example value; a section maps to its own keys."""
    import yaml

    def merge(into: dict, d: dict) -> None:
        for k, v in d.items():
            if isinstance(v, dict):
                merge(into.setdefault(k, {}), v)
            elif into.get(k) is None:
                into[k] = v

    schema: dict = {k: None for k in FIXED}
    for name in available_presets(kind):
        merge(schema, yaml.safe_load((CONFIG_DIR / f"{name}.yaml").read_text(encoding="utf-8")) or {})
    if kind in ("generate", "evaluate"):  # presets set only what they change; the keys are GenerationSettings' fields
        from dataclasses import asdict

        from writemypaper.settings import GenerationSettings

        merge(schema.setdefault("generation", {}), asdict(GenerationSettings()))
    return schema


def check_against_presets(values: dict, schema: dict, prefix: str = "", open_sections=()) -> list[str]:
    """Keys the shipped presets lack, and values of another type than the presets' (a number for a number, and so
    on; null is always allowed, for the verb to judge). Sections in `open_sections` are the verb's to check."""
    problems = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in schema:
            problems.append(f"unknown config key '{name}'{nearest_key(key, schema, prefix)}")
        elif isinstance(schema[key], dict):
            if key in open_sections:
                continue
            if isinstance(value, dict):
                problems += check_against_presets(value, schema[key], f"{name}.")
            else:
                problems.append(f"{name} must be a section with the keys {', '.join(schema[key])}")
        elif schema[key] is not None and value is not None and not matches(value, type(schema[key])):
            problems.append(f"{name}={show(value)} is not {describe(type(schema[key]))}")
    return problems


_KEY = re.compile(r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*")


def is_override(word: str, kind: str) -> bool:
    """Whether a command-line word is a `key=value` override of a `kind` config rather than text: its key (before
    the first `=`) is a dotted name whose first part is a key of that kind's presets. `x=3일 때` and `runs/a=b` are
    text; `generation.temprature=0.3` is an override, for load_config to refuse with a suggestion."""
    key, sep, _ = word.partition("=")
    return bool(sep) and _KEY.fullmatch(key) is not None and key.split(".")[0] in _schema(kind)


def looks_like_override(word: str) -> bool:
    """`name=value` with an ASCII dotted name and no spaces: what a mistyped override looks like."""
    key, sep, value = word.partition("=")
    return bool(sep) and _KEY.fullmatch(key) is not None and not any(c.isspace() for c in value)


def nearest_key(key: str, schema: dict, prefix: str = "") -> str:
    """' (did you mean ...?)' for an unknown key: the closest key of this level, else the closest one a section down
    (`temprature` -> 'generation.temperature'); '' when nothing is close."""
    import difflib

    hint = did_you_mean(key, schema, prefix)
    if hint:
        return hint
    nested = {k: f"{section}.{k}" for section, v in schema.items() if isinstance(v, dict) for k in v}
    close = difflib.get_close_matches(key, list(nested), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{nested[close[0]]}'?)" if close else ""


def split_overrides(words: list[str], kind: str) -> tuple[list[str], list[str]]:
    """(overrides, other words) of a verb whose positionals mix text and overrides (generate's summary): a word is
    an override when `is_override` says so, or when it looks like one whose key is misspelt (`temprature=0.3`), so
    that load_config refuses it with the key it resembles, together with every other problem."""
    overrides, rest = [], []
    for word in words:
        misspelt = looks_like_override(word) and nearest_key(word.partition("=")[0], _schema(kind))
        (overrides if is_override(word, kind) or misspelt else rest).append(word)
    return overrides, rest


def load_config(name: str, overrides: list[str] | None = None, kind: str | None = None):
    """Load a preset and apply `a.b=value` overrides, reporting every problem at once. Keys are checked against the
    shipped presets of the config's kind, except a training config's: train.validate checks those with their values,
    against TRL's and PEFT's own classes, so that a misspelt key and a bad value are reported together."""
    from omegaconf import DictConfig, OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = preset_path(name, kind)
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError or OmegaConf's own: either way the file is at fault
        raise UserError(f"{path}: not a valid YAML config: {' '.join(str(e).split())}") from None
    if not isinstance(cfg, DictConfig):
        raise UserError(f"{path}: not a config (a YAML mapping of keys to values)")
    if kind is not None and cfg.get("kind") != kind:
        raise UserError(f"{path} is not a {kind} config: a {kind} config says `kind: {kind}` "
                        f"(this one has kind: {show(cfg.get('kind'))})")
    problems = []
    for item in overrides or []:
        key, sep, _ = item.partition("=")
        if not sep:
            problems.append(f"override '{item}' is not of the form key=value (e.g. training.learning_rate=1e-4)")
        elif key.split(".")[0] in FIXED:
            problems.append(f"'{key}' cannot be overridden")
        else:
            try:
                cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist([item]))
            except OmegaConfBaseException as e:
                problems.append(f"bad override '{item}': {str(e).splitlines()[0]}")
    cfg.source = str(path)
    cfg.overrides = [item.replace("${", "\\${") for item in overrides or []]  # kept as written, never interpolated
    if cfg.get("kind") != "train":
        problems += check_against_presets(to_dict(cfg), _schema(cfg.get("kind")),
                                          open_sections=cfg.get("open_sections") or ())
    if problems:
        raise UserError(*problems)
    return cfg


def user_set(cfg, key: str) -> bool:
    """Whether the user chose `key`'s value, in a command-line override or in a YAML file of their own, rather than
    taking a shipped preset's. Only a preset's values may be adjusted to fit another setting, and then silently."""
    source = cfg.get("source")
    if source is None or Path(source).resolve().parent != CONFIG_DIR:
        return True
    return any(key == k or key.startswith(f"{k}.") for k in (o.partition("=")[0] for o in cfg.get("overrides") or []))


def to_dict(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config next to an output, so every figure traces back to its settings."""
    import yaml

    from writemypaper.atomic import atomic_write_text

    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    return atomic_write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))


# ---------------------------------------------------------------------------------------------------------------------
# training configs: our own keys in a table; `training:` is TRL's SFTConfig and `lora:` PEFT's LoraConfig, whose
# fields and type hints are the schema of those sections

TRAIN_KEYS = {
    "kind": str, "open_sections": list[str], "source": str, "overrides": list[str], "model": str,
    "precision": Literal["auto", "bf16", "fp16", "fp32"], "attn_implementation": str | None,
    "quantization": Literal[None, "nf4", "4bit"], "compile_layers": bool | Literal["auto"], "instruction": str | None,
    "max_train_samples": int | None, "max_eval_samples": int | None, "early_stopping_patience": int | None,
    "lora": dict, "training": dict,
}
# What writemypaper sets in the SFTConfig itself, and the option that sets it.
RESERVED = {"output_dir": "--out", "resume_from_checkpoint": "--resume", "bf16": "precision=...",
            "fp16": "precision=..."}
_STEPS = (lambda v: v is None or v > 0, "must be positive (below 1: a share of the run's steps)")
_ONE = (lambda v: v >= 1, "must be at least 1")
_ZERO = (lambda v: v >= 0, "must not be negative")
# Ranges the libraries leave open: SFTConfig takes max_steps=-3 or learning_rate=0, LoraConfig r=0, without a word.
TRAIN_RANGES = {
    "training.learning_rate": (lambda v: v > 0, "must be positive"),
    "training.max_steps": (lambda v: v == -1 or v >= 1, "must be positive, or -1 to train for num_train_epochs"),
    "training.num_train_epochs": (lambda v: v > 0, "must be positive"),
    "training.per_device_train_batch_size": _ONE, "training.per_device_eval_batch_size": _ONE,
    "training.gradient_accumulation_steps": _ONE,
    "training.max_length": (lambda v: v is None or v >= 16, "is too small (at least 16)"),
    "training.logging_steps": _STEPS, "training.eval_steps": _STEPS, "training.save_steps": _STEPS,
    "training.warmup_steps": (lambda v: v >= 0, "must not be negative (below 1: a share of the run's steps)"),
    "training.weight_decay": _ZERO, "training.max_grad_norm": _ZERO, "training.dataloader_num_workers": _ZERO,
    "training.save_total_limit": (lambda v: v is None or v >= 1, "must be at least 1, or null to keep them all"),
    "lora.r": (lambda v: v >= 1, "must be positive"),
    "lora.lora_alpha": (lambda v: v > 0, "must be positive"),
    "lora.lora_dropout": (lambda v: 0 <= v < 1, "must be in [0, 1)"),
    "max_train_samples": (lambda v: v is None or v >= 1, "must be at least 1, or null for all"),
    "max_eval_samples": (lambda v: v is None or v >= 1, "must be at least 1, or null for all"),
    "early_stopping_patience": (lambda v: v is None or v >= 0, "must not be negative (null: no early stopping)"),
}


def train_problems(cfg) -> dict[str, list[str]]:
    """A training config's unknown keys, wrong types and values out of range, by section ("" for our own keys),
    one line each. train.validate adds the paths, and what SFTConfig and LoraConfig say when built."""
    from peft import LoraConfig
    from trl import SFTConfig

    c = to_dict(cfg)
    found = {"": check_section(c, TRAIN_KEYS, "", "unknown config key '{}'") + range_problems(c, TRAIN_RANGES)}
    for section, cls, option in (("training", SFTConfig, "an SFTConfig"), ("lora", LoraConfig, "a LoraConfig")):
        values = c.get(section)
        if not isinstance(values, dict):
            found[section] = []  # reported above, as not a section
            continue
        if section == "training":  # YAML reads an unquoted `no` as false; the run reads it as "no"
            values = {k: "no" if v is False and k.endswith("_strategy") else v for k, v in values.items()}
        problems = check_section(values, type_hints(cls), f"{section}.", f"{{}} is not {option} option")
        problems += range_problems(values, TRAIN_RANGES, f"{section}.")
        if section == "training":
            problems += [f"training.{k} is set by writemypaper (use {use})"
                         for k, use in RESERVED.items() if k in values]
            problems += _early_stopping_problems(cfg, c.get("early_stopping_patience"), values)
        found[section] = problems
    return found


def eval_enabled(training) -> bool:
    """YAML reads an unquoted `no` as false, so `eval_strategy=no` may arrive as False."""
    return training.get("eval_strategy", "no") not in (False, None, "no")


def _early_stopping_problems(cfg, patience, training: dict) -> list[str]:
    """Early stopping needs evaluation, and reloads the best checkpoint at the end, so checkpoints must be saved at
    evaluations: save_steps a multiple of eval_steps. A preset's save_steps follows eval_steps (trainer.sft_config);
    a save_steps the user set is never changed, so a conflict is refused, naming both keys."""
    if not isinstance(patience, int) or patience <= 0:
        return []
    if not eval_enabled(training):
        return ["early_stopping_patience needs evaluation: set training.eval_strategy=steps"]
    save, every = training.get("save_steps"), training.get("eval_steps")
    numbers = all(isinstance(v, (int, float)) and not isinstance(v, bool) and v >= 1 for v in (save, every))
    if not numbers or not user_set(cfg, "training.save_steps") or save % every == 0:
        return []  # shares of the run, or no eval_steps: SFTConfig's own check judges them
    return [f"training.save_steps={show(save)} is not a multiple of training.eval_steps={show(every)}, and early "
            f"stopping (early_stopping_patience={patience}) keeps the best checkpoint, so one must be saved at an "
            f"evaluation: set training.save_steps={show(every)} (or a multiple of it), or early_stopping_patience=null"]


# ---------------------------------------------------------------------------------------------------------------------
# keys and types, judged by a dataclass's fields and type hints (TRL's SFTConfig, PEFT's LoraConfig) or by a table


def did_you_mean(word: str, known, prefix: str = "") -> str:
    import difflib

    close = difflib.get_close_matches(word, list(known), n=1, cutoff=0.6)
    return f" (did you mean '{prefix}{close[0]}'?)" if close else ""


def type_hints(cls) -> dict[str, Any]:
    """A dataclass's init fields with their types; a field whose hint cannot be resolved takes any value."""
    import dataclasses

    try:
        hints = typing.get_type_hints(cls)
    except Exception:  # a forward reference to a package that is not installed
        hints = {}
    return {f.name: hints.get(f.name, Any) for f in dataclasses.fields(cls) if f.init}


def check_section(values: dict, hints: dict[str, Any], prefix: str, unknown: str) -> list[str]:
    """Keys `hints` lacks (`unknown` is the message, `{}` the key) and values not of their hinted type."""
    problems = []
    for key, value in values.items():
        name = f"{prefix}{key}"
        if key not in hints:
            problems.append(unknown.format(name) + did_you_mean(key, hints, prefix))
        elif not matches(value, hints[key]):
            problems.append(f"{name}={show(value)} is not {describe(hints[key])}")
    return problems


def range_problems(values: dict, ranges: dict, prefix: str = "") -> list[str]:
    """Values outside their range in `ranges` ({dotted key: (test, what it must be)}); a value of the wrong type is
    left to the type check."""
    problems = []
    for key, value in values.items():
        test, why = ranges.get(f"{prefix}{key}", (None, None))
        try:
            if test and not test(value):
                problems.append(f"{prefix}{key}={show(value)} {why}")
        except TypeError:
            pass
    return problems


def matches(value, hint) -> bool:
    """Whether a YAML value fits a type hint. A hint of a form not handled here accepts anything: the class itself
    judges the value when it is built."""
    origin, args = typing.get_origin(hint), typing.get_args(hint)
    if hint is Any:
        return True
    if origin in (typing.Union, types.UnionType):
        return any(matches(value, a) for a in args)
    if origin is typing.Literal:
        # PEFT spells a family of values as a pattern: 'pissa_niter_[number of iters]'
        return any((value == a and type(value) is type(a)) or
                   (isinstance(a, str) and "[" in a and isinstance(value, str) and value.startswith(a.split("[")[0]))
                   for a in args)
    if hint is type(None):
        return value is None
    if hint is bool:
        return isinstance(value, bool)
    if hint is int:
        return isinstance(value, int) and not isinstance(value, bool)
    if hint is float:
        return isinstance(value, (int, float)) and not isinstance(value, bool)
    if origin in (list, tuple, set):
        return isinstance(value, list) and (not args or all(matches(v, args[0]) for v in value))
    if origin is dict:
        return isinstance(value, dict)
    if isinstance(hint, type) and issubclass(hint, enum.Enum):
        return value in {m.value for m in hint}
    if isinstance(hint, type) and hint in (str, list, dict):
        return isinstance(value, hint)
    return True


def describe(hint) -> str:
    """A type hint in the user's words: `int | None` -> 'a whole number or null'."""
    parts = list(dict.fromkeys(_parts(hint)))
    return parts[0] if len(parts) == 1 else f"{', '.join(parts[:-1])} or {parts[-1]}"


def _parts(hint) -> list[str]:
    origin = typing.get_origin(hint)
    if origin in (typing.Union, types.UnionType):
        return [p for a in typing.get_args(hint) for p in _parts(a)]
    if origin is typing.Literal:
        return [show(a) for a in typing.get_args(hint)]
    words = {type(None): "null", bool: ["true", "false"], int: "a whole number", float: "a number", str: "text",
             list: "a list", tuple: "a list", set: "a list", dict: "a section of keys"}
    word = words.get(origin or hint, getattr(hint, "__name__", str(hint)))
    return word if isinstance(word, list) else [word]


def show(value) -> str:
    """A value as it would be written in YAML or on the command line."""
    if value is None:
        return "null"
    if isinstance(value, bool):
        return "true" if value else "false"
    return str(value)


# ---------------------------------------------------------------------------------------------------------------------
# generation


def settings_from_config(cfg):
    """The config's `generation:` section over GenerationSettings' defaults: a preset sets only what it changes.
    The full settings are written back into `cfg.generation`, so the config saved next to an output shows every
    value that was used."""
    from dataclasses import asdict

    from writemypaper.settings import GenerationSettings

    section = cfg.get("generation")
    settings = GenerationSettings.from_dict(to_dict(section) if section is not None else {})
    cfg.generation = asdict(settings)
    return settings
