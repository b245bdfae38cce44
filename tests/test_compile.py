"""compile_layers: each decoder layer is compiled in place (the `fast` preset's default), and a compiled LoRA
model computes what the uncompiled one does, gradients included, with its parameter names unchanged (so adapters
and checkpoints stay loadable). Runs inductor for real, on the CPU."""

from __future__ import annotations

import os
import subprocess
import sys

import pytest

from conftest import TINY_TRAIN

torch = pytest.importorskip("torch")


def _lora_model(model_dir):
    from peft import LoraConfig, get_peft_model

    from writemypaper import models

    base = models.load_model(model_dir, precision="fp32", attn_implementation="eager")
    torch.manual_seed(0)
    cfg = LoraConfig(r=4, lora_alpha=8, target_modules=["q_proj", "v_proj", "down_proj"], task_type="CAUSAL_LM",
                     init_lora_weights=False)  # random B as well, so the adapter changes the output
    return get_peft_model(base, cfg)


def _loss_and_grads(model, ids, position_ids):
    model.zero_grad(set_to_none=True)
    out = model(input_ids=ids, position_ids=position_ids, labels=ids, use_cache=False)
    out.loss.backward()
    grads = {n: p.grad.clone() for n, p in model.named_parameters() if p.requires_grad}
    return out.logits.detach(), out.loss.detach(), grads


def test_compiled_layers_compute_what_eager_layers_do(tiny_gemma2_dir):
    from writemypaper.trainer import compile_layers

    torch._dynamo.reset()
    eager_model, compiled_model = _lora_model(tiny_gemma2_dir), _lora_model(tiny_gemma2_dir)
    names = [n for n, _ in compiled_model.named_parameters()]
    assert compile_layers(compiled_model) == 2
    layers = compiled_model.get_base_model().model.layers
    assert all(layer._compiled_call_impl is not None for layer in layers)
    assert [n for n, _ in compiled_model.named_parameters()] == names  # no `_orig_mod.` in any name
    assert not any("_orig_mod" in k for k in compiled_model.state_dict())

    g = torch.Generator().manual_seed(0)
    ids = torch.randint(10, 2000, (1, 48), generator=g)
    position_ids = torch.cat([torch.arange(20), torch.arange(28)])[None]  # two packed sequences
    try:
        ref_logits, ref_loss, ref_grads = _loss_and_grads(eager_model, ids, position_ids)
        logits, loss, grads = _loss_and_grads(compiled_model, ids, position_ids)
    finally:
        torch._dynamo.reset()
    assert torch.allclose(logits, ref_logits, rtol=1e-4, atol=1e-4)
    assert torch.allclose(loss, ref_loss, rtol=1e-5)
    assert grads.keys() == ref_grads.keys() and len(grads) == 2 * 3 * 2  # A and B, 3 targets, 2 layers
    for n in grads:
        assert ref_grads[n].abs().sum() > 0, n
        assert torch.allclose(grads[n], ref_grads[n], rtol=1e-3, atol=1e-6), n


def test_compile_layers_refuses_a_model_without_decoder_layers():
    from writemypaper.errors import UserError
    from writemypaper.trainer import compile_layers

    with pytest.raises(UserError, match="no decoder layers"):
        compile_layers(torch.nn.Sequential(torch.nn.Linear(4, 4), torch.nn.Linear(4, 4)))


def test_a_compile_failure_is_one_line_that_says_what_to_do(tiny_gemma2_dir, short_prepared, tmp_path):
    """A machine where torch.compile cannot work fails `train` in one line naming the way out, not a traceback.
    The failure is torch's own, from a real run: with no C++ compiler (CXX names none, as on a bare container),
    inductor cannot build the compiled decoder layer's CPU kernels at the first step, and dynamo raises that out of
    the Trainer. A fresh process and an empty inductor cache, so no kernel built earlier hides the missing compiler."""
    env = {**os.environ, "CXX": str(tmp_path / "no-c++-here"), "TORCHINDUCTOR_CACHE_DIR": str(tmp_path / "inductor"),
           "HF_HUB_OFFLINE": "1"}
    env.pop("TORCH_INDUCTOR_INSTALL_GXX", None)  # would fetch a compiler from conda instead of failing
    proc = subprocess.run(
        [sys.executable, "-m", "writemypaper", "train", "--config", "cpu-demo", "--data", str(short_prepared),
         "--model", str(tiny_gemma2_dir), "--out", str(tmp_path / "run"), *TINY_TRAIN, "training.report_to=[]",
         "compile_layers=true"],
        capture_output=True, text=True, env=env, timeout=600,
    )
    assert proc.returncode == 2, proc.stderr[-3000:]
    err = proc.stderr.strip().splitlines()
    assert err[-1].startswith("writemypaper: error: compiling the decoder layers failed (InvalidCxxCompiler: No "
                              "working C++ compiler found"), err[-3:]
    assert str(tmp_path / "no-c++-here") in err[-1]  # inductor's own words, naming the compiler it looked for
    assert err[-1].endswith("add compile_layers=false to train without compiling")
    assert "Traceback" not in proc.stderr


def test_build_trainer_compiles_the_layers_only_when_asked(tiny_gemma2_dir, embedded_tokenizer, short_prepared,
                                                            tmp_path):
    """The train verb's own path: compile_layers=true compiles the PEFT-wrapped model's layers, false leaves them."""
    from writemypaper import config, train
    from writemypaper.data import load_split

    train_ds, _ = train.tokenize_split(load_split(str(short_prepared), "train"), embedded_tokenizer, None, 160, 4)
    for flag in (True, False):
        cfg = config.load_config("cpu-demo", [f"compile_layers={str(flag).lower()}", "training.report_to=[]",
                                              "training.eval_strategy=no", "early_stopping_patience=null"],
                                 kind="train")
        trainer = train.build_trainer(cfg, str(tiny_gemma2_dir), tmp_path / str(flag), train_ds, None,
                                      embedded_tokenizer)
        layers = trainer.model.get_base_model().model.layers
        assert [layer._compiled_call_impl is not None for layer in layers] == [flag] * len(layers)
        # what the run needs to know of the policy comes from train._policy, never from attributes set on the trainer
        assert not [name for name in vars(trainer) if "writemypaper" in name]
