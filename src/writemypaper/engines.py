"""The engine registry: the verbs (generate, evaluate, serve, demo) ask here for an engine by name or by the model's
file type, and never import a concrete engine themselves. A third engine is one new module with a class that fits
`Engine`, plus one entry in `ENGINES` (and, if it reads a file type of its own, one in `SUFFIXES`). The entries name
modules, imported on first use, so the registry stays as light as `--help` needs.

    python -c "from writemypaper import engines; print(engines.NAMES, engines.name_for('out/demo-q8_0.gguf'))"
"""

from __future__ import annotations

import importlib
import importlib.util
import os
from typing import Callable, Iterator, Protocol

from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings


class Engine(Protocol):
    """What every engine does. `stop()` returning true ends all of a call's sequences within a token (the server's
    clients went away); `cancelled(i)` ends summary i's only. `tokenizer(text)["input_ids"]` counts tokens."""

    tokenizer: object
    instruction: str | None
    requires: str | None  # the module it needs beyond the base install (None: nothing), and `install` says how
    base: str | None  # which base weights an adapter was put on (models.base_weights); None where not ours to say

    @classmethod
    def load(cls, model: str, precision: str = "auto", device: str | None = None,
             instruction: str | None = None) -> "Engine":
        """The model at `model` (a name, a folder, a file) ready to write; a missing model is a UserError."""

    def generate(self, summaries: list[str], settings: GenerationSettings | None = None, batch_size: int = 8,
                 progress: bool = False, stop: Callable[[], bool] | None = None, details: bool = False,
                 cancelled: Callable[[int], bool] | None = None) -> list:
        """One list of abstracts per summary, in input order, ranked by the fact check when candidates > 1
        (decoding.rank); with `details`, per summary {"text", "candidates": [...]}."""

    def stream(self, summary: str, settings: GenerationSettings | None = None,
               stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """One abstract, piece by piece as the model writes it."""

    def encode(self, summary: str) -> list[int]:
        """The prompt's ids for one summary, exactly as the engine feeds them to its model (the server counts them)."""

    def reference_losses(self, samples: list[dict]) -> list[tuple[float, int]]:
        """Per sample ({"summary", "reference"}), the summed loss and the token count of the model's turn."""


# name -> (module, class): imported only when asked for, so that `--help` and a server that never loads a .gguf
# import neither llama.cpp nor torch through here.
ENGINES = {
    "transformers": ("writemypaper.transformers_engine", "Generator"),
    "llama.cpp": ("writemypaper.llamacpp", "LlamaCppGenerator"),
}
NAMES = tuple(ENGINES)
# A model file's type picks its engine; anything else (a name, a folder, a run) is transformers'.
SUFFIXES = {".gguf": "llama.cpp"}
DEFAULT = "transformers"


def name_for(model: str | os.PathLike | None) -> str:
    """The engine that reads `model`, by its file type."""
    suffix = os.path.splitext(str(model))[1] if model is not None else ""
    return SUFFIXES.get(suffix, DEFAULT)


def missing(name: str) -> str | None:
    """How to install the library engine `name` needs beyond the base install (its class's `requires` and
    `install`), where it is not installed; None where it is. Imports the engine's module, not its library."""
    cls = engine_class(name)
    requires = getattr(cls, "requires", None)
    return cls.install if requires and importlib.util.find_spec(requires) is None else None


def engine_class(name: str) -> type:
    if name not in ENGINES:
        raise UserError(f"no engine '{name}': choose one of {', '.join(NAMES)}")
    module, cls = ENGINES[name]
    return getattr(importlib.import_module(module), cls)


def load(model: str | None, engine: str | None = None, precision: str = "auto", device: str | None = None,
         instruction: str | None = None) -> Engine:
    """`model` loaded in `engine`, or in the engine its file type asks for."""
    cls = engine_class(engine or name_for(model))
    return cls.load(model, precision=precision, device=device, instruction=instruction)
