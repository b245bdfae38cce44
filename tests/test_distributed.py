"""The distributed path on CPU: `accelerate launch` starts 2 gloo processes that train together (DDP through
`writemypaper train`; FSDP, with each of configs/accelerate-fsdp*.yaml; both on a tiny random Gemma 2), and their
run must be the run one process makes with both ranks' batches: same losses, same adapter, written once.

    python -m pytest tests/test_distributed.py -q
"""

import json
import os
import subprocess
import sys

import pytest
import torch

from conftest import REPO

# 2 steps at a learning rate high enough to move the adapter, no warm-up (so that step 1 updates the weights and
# step 2's loss depends on that update), no evaluation, no checkpoint before the end.
STEPS = ["max_train_samples=4", "training.max_length=160", "training.learning_rate=2e-3", "training.logging_steps=1",
         "training.max_steps=2", "training.warmup_steps=0", "training.eval_strategy=no",
         "early_stopping_patience=null", "training.save_steps=100", "training.report_to=none"]


def _train(launcher: list[str], model, data, out, batch: int, *extra: str) -> subprocess.CompletedProcess:
    cmd = [*launcher, "-m", "writemypaper", "train", "--config", "cpu-demo", "--model", str(model), "--data", str(data),
           "--out", str(out), *STEPS, f"training.per_device_train_batch_size={batch}", *extra]
    env = {**os.environ, "TOKENIZERS_PARALLELISM": "false"}
    env.pop("ACCELERATE_USE_CPU", None)  # train itself sees several processes and no GPU, and chooses gloo
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=900)
    assert done.returncode == 0, done.stderr[-3000:]
    return done


def _losses(run):
    return [h["loss"] for h in json.loads((run / "log_history.json").read_text()) if "loss" in h]


def _adapter(path):
    from safetensors.torch import load_file

    return load_file(str(path / "adapter_model.safetensors"))


@pytest.mark.slow
def test_two_gloo_processes_train_as_one(tiny_gemma2_dir, short_prepared, tmp_path):
    # 2 processes x 1 pair against 1 process x 2 pairs: accelerate's sampler gives rank r the r-th batch of the
    # same shuffled order, so both runs see the same pairs at each step.
    ddp, ref = tmp_path / "ddp", tmp_path / "ref"
    launch = [sys.executable, "-m", "accelerate.commands.launch", "--config_file",
              str(REPO / "configs" / "accelerate-cpu.yaml")]
    two = _train(launch, tiny_gemma2_dir, short_prepared, ddp, 1)
    _train([sys.executable], tiny_gemma2_dir, short_prepared, ref, 2)

    metrics = json.loads((ddp / "metrics.json").read_text())
    assert metrics["world_size"] == 2 and metrics["device"] == "cpu"
    assert metrics["global_step"] == 2
    assert two.stdout.count("run written to") == 1  # rank 1 reports nothing

    # The logged loss is the mean over both ranks' tokens, as one process computes it for both pairs; at step 2
    # it is the loss after an update made from both ranks' gradients.
    assert _losses(ddp) == pytest.approx(_losses(ref), rel=1e-4)

    # The adapter is the one a single process makes from the same pairs (up to the order of the gradient sums).
    # A rank that trained on its own pair alone would give another lora_B (zero at the start, so all update).
    got, want = _adapter(ddp), _adapter(ref)
    assert got.keys() == want.keys() and any(".lora_B." in k for k in got)
    for k in want:
        assert not torch.equal(want[k], torch.zeros_like(want[k])), k
        assert (got[k] - want[k]).norm() <= 1e-2 * want[k].norm(), k

    # One adapter, written once: the run's, and the final checkpoint's copy of it (same tensors); the checkpoint
    # keeps each rank's random state, which a resume needs.
    assert sorted(p.relative_to(ddp).as_posix() for p in ddp.rglob("adapter_model.safetensors")) == [
        "adapter_model.safetensors", "checkpoints/checkpoint-2/adapter_model.safetensors"]
    last = ddp / "checkpoints" / "checkpoint-2"
    assert all(torch.equal(t, got[k]) for k, t in _adapter(last).items())
    assert sorted(p.name for p in last.glob("rng_state*.pth")) == ["rng_state_0.pth", "rng_state_1.pth"]
    assert not list(ddp.glob(".*"))  # no temporary directory left behind by a second writer


# ---------------------------------------------------------------------------------------------------------------------
# FSDP on CPU: the configs' sharding of a LoRA model, run by accelerate itself on 2 gloo processes


def _fsdp_worker(model_dir: str, out: str) -> None:
    """Run under `accelerate launch --config_file configs/accelerate-fsdp*.yaml`: wrap a LoRA model as the Trainer
    does (transformers' update_fsdp_plugin_peft, then accelerator.prepare), train 2 steps, gather the adapter and
    save it once; rank 0 also trains a copy on both ranks' batches in one process, for the test to compare."""
    import copy
    import json
    from pathlib import Path

    from accelerate import Accelerator
    from accelerate.utils import DistributedType, FullyShardedDataParallelPlugin
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForCausalLM
    from transformers.distributed.fsdp import update_fsdp_plugin_peft

    plugin = FullyShardedDataParallelPlugin()  # from the FSDP_* variables `accelerate launch` set from the config
    accelerator = Accelerator()
    # accelerate 1.15 turns FSDP on for GPU-like devices only (AcceleratorState), so on gloo CPUs we set what it
    # would have set; everything after this (wrapping, mixed precision, gathering) is accelerate's own code.
    accelerator.state.distributed_type = DistributedType.FSDP
    accelerator.state.fsdp_plugin = plugin

    torch.manual_seed(0)
    model = get_peft_model(AutoModelForCausalLM.from_pretrained(model_dir, dtype=torch.float32), LoraConfig(
        r=8, lora_alpha=16, task_type="CAUSAL_LM",
        target_modules=["q_proj", "k_proj", "v_proj", "o_proj", "gate_proj", "up_proj", "down_proj"]))
    reference = copy.deepcopy(model)
    kinds = model.get_base_model()._no_split_modules
    layer_cls = type(next(m for m in model.modules() if type(m).__name__ in kinds))  # Gemma2DecoderLayer
    trainable = lambda m: [p for p in m.parameters() if p.requires_grad]  # noqa: E731
    if plugin.fsdp_version == 2:  # the Trainer prepares model and optimizer together (FSDP2 needs both at once)
        model, opt = accelerator.prepare(model, torch.optim.AdamW(trainable(model), lr=1e-2))
    else:  # the Trainer wraps the LoRA layers apart (PEFT's policy), then builds the optimizer on the wrapped model
        update_fsdp_plugin_peft(model, accelerator)
        model = accelerator.prepare(model)
        opt = accelerator.prepare(torch.optim.AdamW(trainable(model), lr=1e-2))

    ids = torch.randint(2, model.config.vocab_size, (4, 24), generator=torch.Generator().manual_seed(1))
    rank, world = accelerator.process_index, accelerator.num_processes
    losses = []
    for _ in range(2):
        mine = ids[rank * 2:(rank + 1) * 2]
        loss = model(input_ids=mine, labels=mine).loss
        accelerator.backward(loss)
        opt.step()
        opt.zero_grad()
        losses.append(accelerator.reduce(loss.detach(), "mean").item())

    # every decoder layer its own unit, so that only one layer's weights are gathered at a time
    if plugin.fsdp_version == 2:
        from torch.distributed.fsdp import FSDPModule

        units = sum(isinstance(m, FSDPModule) and isinstance(m, layer_cls) for m in model.modules())
    else:
        from torch.distributed.fsdp import FullyShardedDataParallel as FSDP

        units = sum(isinstance(m, FSDP) and isinstance(m.module, layer_cls) for m in model.modules())
    # The adapter's full tensors, gathered by every rank (a collective) and kept on rank 0, as `train` has to do
    # under FSDP. FSDP2: the trainable weights only, so that a 9B base is never gathered whole; FSDP1: accelerate's
    # gather of the whole model (torch's adapter-only gather failed on FSDP1's flat parameters on CPU).
    from torch.distributed.checkpoint.state_dict import StateDictOptions, get_model_state_dict

    if plugin.fsdp_version == 2:
        state = get_model_state_dict(model, options=StateDictOptions(full_state_dict=True, cpu_offload=True,
                                                                     ignore_frozen_params=True))
    else:
        state = accelerator.get_state_dict(model)
    if accelerator.is_main_process:
        # Saved through a twin on the meta device: PEFT (0.21.2) picks the adapter's keys by module name, and FSDP1
        # nests `_fsdp_wrapped_module` inside those names, so the wrapped model itself saves an empty adapter.
        peft_config = accelerator.unwrap_model(model).peft_config["default"]
        with torch.device("meta"):
            twin = get_peft_model(AutoModelForCausalLM.from_config(reference.config), peft_config)
        twin.save_pretrained(Path(out) / "adapter", state_dict=state)
        ref_opt = torch.optim.AdamW(trainable(reference), lr=1e-2)
        ref_losses = []
        for _ in range(2):
            loss = reference(input_ids=ids, labels=ids).loss
            loss.backward()
            ref_opt.step()
            ref_opt.zero_grad()
            ref_losses.append(loss.item())
        reference.save_pretrained(Path(out) / "reference")
        (Path(out) / "fsdp.json").write_text(json.dumps({
            "world": world, "fsdp_version": plugin.fsdp_version, "state_dict_type": str(plugin.state_dict_type),
            "layers": sum(isinstance(m, layer_cls) for m in reference.modules()), "layer_units": units,
            "losses": losses, "reference_losses": ref_losses}))
    accelerator.wait_for_everyone()
    accelerator.end_training()


# On CPUs the run is fp32 (bf16 would blur the comparison with the reference), and FSDP1's rank-0 loading
# (sync_module_states) is off: accelerate 1.15 builds its parameter initialiser for a GPU-like device only.
CPU_ONLY = {"accelerate-fsdp.yaml": [],
            "accelerate-fsdp-qlora.yaml": ["--fsdp_sync_module_states", "false",
                                           "--fsdp_cpu_ram_efficient_loading", "false"]}


@pytest.mark.parametrize("config", sorted(CPU_ONLY))
def test_fsdp_config_shards_lora_on_gloo(config, tiny_gemma2_dir, tmp_path):
    # The worker prepares PEFT for FSDP as the Trainer does, through transformers' own helper (absent in 5.0.0)
    pytest.importorskip("transformers.distributed.fsdp", reason="this transformers has no FSDP helper for PEFT")
    # ACCELERATE_TORCH_DEVICE: FSDP1 refuses accelerate's per-rank "cpu:N" devices (its compute device is "cpu")
    env = {**os.environ, "ACCELERATE_USE_CPU": "true", "ACCELERATE_TORCH_DEVICE": "cpu",
           "TOKENIZERS_PARALLELISM": "false"}
    cmd = [sys.executable, "-m", "accelerate.commands.launch", "--config_file", str(REPO / "configs" / config),
           "--mixed_precision", "no", "--main_process_port", "0", *CPU_ONLY[config],
           __file__, str(tiny_gemma2_dir), str(tmp_path)]
    done = subprocess.run(cmd, capture_output=True, text=True, env=env, cwd=REPO, timeout=600)
    assert done.returncode == 0, done.stderr[-3000:]
    report = json.loads((tmp_path / "fsdp.json").read_text())
    assert report["world"] == 2
    assert report["layer_units"] == report["layers"] == 2, report
    assert report["losses"] == pytest.approx(report["reference_losses"], rel=1e-4)

    from peft import PeftModel
    from transformers import AutoModelForCausalLM

    got, want = _adapter(tmp_path / "adapter"), _adapter(tmp_path / "reference")
    assert got.keys() == want.keys() and got
    for k in want:
        assert (got[k] - want[k]).norm() <= 1e-3 * want[k].norm(), k
    # plain PEFT loads the adapter that FSDP gathered
    loaded = PeftModel.from_pretrained(AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir), tmp_path / "adapter")
    trained = [p for n, p in loaded.named_parameters() if "lora_B" in n]
    assert len(trained) == 14 and all(p.abs().sum() > 0 for p in trained)  # 2 layers x 7 projections, all moved


if __name__ == "__main__":
    _fsdp_worker(sys.argv[1], sys.argv[2])
