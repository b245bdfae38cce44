"""The CLI's policy for third-party output (logs.py): library warnings and log lines stay off a user's stderr unless
WRITEMYPAPER_VERBOSE is set; our own loggers and warnings, and library errors, still reach it."""

import os
import subprocess
import sys
import textwrap

SCRIPT = textwrap.dedent("""
    import logging, warnings
    from writemypaper.logs import quiet_libraries
    quiet_libraries()
    quiet_libraries()  # idempotent: still one handler, one line a record
    # what kernels 0.19 does offline, through Python's last-resort handler when nobody configured logging
    logging.getLogger("kernels._internals.hf_hub").warning("Skipping publisher trust check")
    logging.getLogger("bitsandbytes.cextension").error("library error line")
    logging.getLogger("writemypaper.serve").warning("our warning line")
    exec(compile("import warnings; warnings.warn('library deprecation', FutureWarning)", "thirdparty.py", "exec"),
         {"__name__": "thirdparty"})
    exec(compile("import warnings; warnings.warn('our own warning', UserWarning)", "ours.py", "exec"),
         {"__name__": "writemypaper.ours"})
    import transformers
    from transformers.utils import logging as hf_logging
    hf_logging.get_logger("transformers.modeling_utils").warning("transformers warning line")
""")


def _run(verbose: bool) -> str:
    env = {k: v for k, v in os.environ.items() if not k.endswith("VERBOSITY") and k != "WRITEMYPAPER_VERBOSE"}
    if verbose:
        env["WRITEMYPAPER_VERBOSE"] = "1"
    proc = subprocess.run([sys.executable, "-c", SCRIPT], capture_output=True, text=True, env=env, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stderr


def test_third_party_warnings_and_logs_are_kept_off_stderr():
    err = _run(verbose=False)
    assert "Skipping publisher trust check" not in err
    assert "library deprecation" not in err
    assert "transformers warning line" not in err
    assert err.count("library error line") == 1  # a library's error still shows, once
    assert err.count("our warning line") == 1
    assert "our own warning" in err


def test_verbose_shows_them_again():
    err = _run(verbose=True)
    for line in ("Skipping publisher trust check", "library deprecation", "transformers warning line"):
        assert line in err
