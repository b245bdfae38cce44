"""What the libraries underneath may print: the CLI's one policy for third-party warnings and log lines.

    WRITEMYPAPER_VERBOSE=1 writemypaper train --model google/gemma-2-2b-it ...   # show them all again

A user's terminal carries our progress and our one-line errors. transformers, huggingface_hub, kernels, bitsandbytes
and the rest speak to library authors: deprecation notices, "Skipping publisher trust check ... offline mode", optional
kernels that are missing. Above an error of ours they read as the cause. So, unless WRITEMYPAPER_VERBOSE is set, their
warnings are dropped and only their log records at ERROR and above reach stderr; our own loggers (`writemypaper.*`)
and our own warnings are untouched.
"""

from __future__ import annotations

import logging
import os
import sys
import warnings

VERBOSE_ENV = "WRITEMYPAPER_VERBOSE"
# Libraries that keep their own handler and verbosity switch, read when they are first imported: set before that.
_VERBOSITY_ENV = ("TRANSFORMERS_VERBOSITY", "HF_HUB_VERBOSITY", "DATASETS_VERBOSITY")
_HANDLER_NAME = "writemypaper-third-party"


class _CurrentStderr(logging.StreamHandler):
    """Writes to whatever sys.stderr is when a record comes, not the one there was when the handler was made (a test
    runner swaps sys.stderr per test and closes the old one)."""

    def __init__(self):
        super().__init__(sys.stderr)

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


class _OursOrSevere(logging.Filter):
    """Pass our own records at every level the logger allows, and other libraries' from ERROR up."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.name.split(".", 1)[0] == "writemypaper" or record.levelno >= logging.ERROR


def verbose() -> bool:
    return os.environ.get(VERBOSE_ENV, "").strip().lower() not in ("", "0", "false", "no")


def quiet_libraries() -> None:
    """Apply the policy for this process (idempotent; the CLI calls it before any verb imports a library)."""
    if verbose():
        return
    for name in _VERBOSITY_ENV:
        os.environ.setdefault(name, "error")
    # A warning raised inside a library (its module is not ours) is not shown; ours still are.
    warnings.filterwarnings("ignore")
    warnings.filterwarnings("default", module=r"writemypaper(\.|$)")
    # Without a handler, Python's last-resort handler prints every WARNING record of any logger to stderr (this is
    # how `kernels` printed its offline notice). One stderr handler on the root logger, filtered, takes its place.
    root = logging.getLogger()
    if not any(getattr(h, "name", None) == _HANDLER_NAME for h in root.handlers):
        handler = _CurrentStderr()
        handler.set_name(_HANDLER_NAME)
        handler.setFormatter(logging.Formatter("%(name)s: %(message)s"))
        handler.addFilter(_OursOrSevere())
        root.addHandler(handler)
    # Libraries imported already keep their own handlers (transformers sets one and stops propagation): lower them too.
    for lib in ("transformers", "huggingface_hub", "datasets", "accelerate", "peft", "trl", "bitsandbytes",
                "kernels", "torch", "llama_cpp"):
        if lib in sys.modules:
            logging.getLogger(lib).setLevel(logging.ERROR)
    if "transformers" in sys.modules:
        from transformers.utils import logging as hf_logging

        hf_logging.set_verbosity_error()
