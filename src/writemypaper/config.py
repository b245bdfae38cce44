"""YAML presets from `configs/` plus `key=value` overrides from the command line, merged by OmegaConf.

    writemypaper train --config seed --data prepared --out runs/seed training.learning_rate=1e-4 lora.r=16
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from writemypaper.errors import UserError

CONFIG_DIR = Path(__file__).resolve().parent / "configs"


def available_presets(kind: str | None = None) -> list[str]:
    """Preset names (file stems in configs/). `kind` filters on the preset's top-level `kind:` key."""
    import yaml

    names = []
    for p in sorted(CONFIG_DIR.glob("*.yaml")):
        if kind is None or (yaml.safe_load(p.read_text(encoding="utf-8")) or {}).get("kind") == kind:
            names.append(p.stem)
    return names


def preset_path(name: str) -> Path:
    """A preset name (`seed`) or a path to a YAML file."""
    p = Path(name)
    if p.suffix in (".yaml", ".yml") or p.exists():
        if not p.is_file():
            raise UserError(f"config file not found: {p}")
        return p
    p = CONFIG_DIR / f"{name}.yaml"
    if not p.is_file():
        raise UserError(f"unknown preset '{name}'; available: {', '.join(available_presets())} (or give a .yaml path)")
    return p


def load_config(name: str, overrides: list[str] | None = None, kind: str | None = None):
    """Load a preset and apply `a.b=value` overrides. Every override must name a key the preset has,
    except under sections that the preset marks open (`open_sections:`), whose keys the verb validates."""
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    path = preset_path(name)
    try:
        cfg = OmegaConf.load(path)
    except Exception as e:  # yaml.YAMLError or OmegaConf's own: either way the file is at fault
        raise UserError(f"{path}: not a valid YAML config: {' '.join(str(e).split())}") from None
    if kind is not None and cfg.get("kind") != kind:
        raise UserError(f"{path} is a '{cfg.get('kind')}' config, not a '{kind}' config")
    open_sections = set(cfg.get("open_sections") or [])
    for item in overrides or []:
        if "=" not in item:
            raise UserError(f"override '{item}' is not of the form key=value (e.g. training.learning_rate=1e-4)")
        key, _ = item.split("=", 1)
        head = key.split(".")[0]
        if head in ("kind", "open_sections"):
            raise UserError(f"'{key}' cannot be overridden")
        if OmegaConf.select(cfg, key, default="__missing__") == "__missing__" and head not in open_sections:
            known = ", ".join(k for k in cfg.keys() if k not in ("kind", "open_sections"))
            raise UserError(f"unknown config key '{key}' (top-level keys: {known})")
    try:
        cfg = OmegaConf.merge(cfg, OmegaConf.from_dotlist(list(overrides or [])))
    except OmegaConfBaseException as e:
        raise UserError(f"bad override: {str(e).splitlines()[0]}") from None
    cfg.source = str(path)
    return cfg


def to_dict(cfg) -> dict[str, Any]:
    from omegaconf import OmegaConf

    return OmegaConf.to_container(cfg, resolve=True)


def save_config(cfg, path: str | Path) -> Path:
    """Write the resolved config next to an output, so every figure traces back to its settings."""
    import yaml

    from writemypaper.atomic import atomic_write_text

    data = cfg if isinstance(cfg, dict) else to_dict(cfg)
    return atomic_write_text(path, yaml.safe_dump(data, allow_unicode=True, sort_keys=False))
