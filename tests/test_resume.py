"""`train --resume` after `kill -9`: it continues from the last complete checkpoint, never a half-written one,
and the step count and the loss carry on."""

import json
import os
import signal
import subprocess
import sys
import time

import pytest

from conftest import TINY_TRAIN
from writemypaper.cli import main
from writemypaper.trainer import COMPLETE, complete_checkpoints

pytestmark = pytest.mark.slow


def test_resume_after_kill(short_prepared, tmp_path, capfd):
    out = tmp_path / "run"
    cmd = [sys.executable, "-m", "writemypaper", "train", "--config", "cpu-demo", "--data", str(short_prepared),
           "--out", str(out), *TINY_TRAIN, "training.max_steps=6", "training.save_steps=2",
           "training.per_device_train_batch_size=2",
           "training.eval_strategy=no", "early_stopping_patience=null"]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, start_new_session=True)
    marker = out / "checkpoints" / "checkpoint-2" / COMPLETE
    deadline = time.time() + 900
    while not marker.exists():
        assert proc.poll() is None, proc.stderr.read().decode()[-2000:]
        assert time.time() < deadline, "no checkpoint-2 within the time limit"
        time.sleep(0.1)
    os.killpg(proc.pid, signal.SIGKILL)
    proc.wait()
    assert not (out / "adapter_config.json").exists()  # a killed run never looks finished

    # A checkpoint the kill cut short: files written, no completion marker. It must not be picked.
    half = out / "checkpoints" / "checkpoint-4"
    if not (half / COMPLETE).exists():
        half.mkdir(exist_ok=True)
        (half / "trainer_state.json").write_text('{"global_step": 4, "log_hist')
    done = complete_checkpoints(out)
    assert done and done[-1].name in ("checkpoint-2", "checkpoint-4")
    assert all((c / COMPLETE).is_file() for c in done)
    last = done[-1].name

    # Without --resume the run refuses to overwrite (in this process: the refusal comes before anything loads).
    capfd.readouterr()
    assert main(cmd[3:]) == 2 and "--resume" in capfd.readouterr().err

    resumed = subprocess.run(cmd + ["--resume"], capture_output=True, text=True)
    assert resumed.returncode == 0, resumed.stderr[-3000:]
    metrics = json.loads((out / "metrics.json").read_text())
    assert metrics["global_step"] == 6
    assert metrics["resumed_from"].endswith(last)
    history = json.loads((out / "log_history.json").read_text())
    steps = [h["step"] for h in history if "loss" in h]
    assert steps == list(range(1, 7))  # every step logged once: nothing repeated, nothing lost
    losses = [h["loss"] for h in history if "loss" in h]
    resumed_at = int(last.split("-")[1])
    # the loss carries on from where it was, rather than starting over
    assert max(losses[resumed_at:]) < losses[0]
