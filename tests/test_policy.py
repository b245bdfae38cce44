"""The device policy: precision, attention and compiled layers chosen for the GPU at hand. The GPU is faked through
torch.cuda's own functions (capability, name, shared memory), so `resolve_policy` runs unchanged."""

import types

import pytest
import torch

from writemypaper import policy
from writemypaper.errors import UserError

# name, compute capability, shared memory per block (opt-in) in bytes, as the real boards report them
T4 = ("Tesla T4", (7, 5), 65536)
A100 = ("NVIDIA A100-SXM4-80GB", (8, 0), 166912)
L4 = ("NVIDIA L4", (8, 9), 101376)
H200 = ("NVIDIA H200", (9, 0), 232448)


@pytest.fixture
def fake_gpu(monkeypatch):
    def install(board, bf16_anywhere=True):
        name, cap, smem = board
        monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
        monkeypatch.setattr(torch.cuda, "current_device", lambda: 0)
        monkeypatch.setattr(torch.cuda, "get_device_name", lambda *a: name)
        monkeypatch.setattr(torch.cuda, "get_device_capability", lambda *a: cap)
        monkeypatch.setattr(torch.cuda, "get_device_properties",
                            lambda *a: types.SimpleNamespace(major=cap[0], minor=cap[1], name=name,
                                                             shared_memory_per_block_optin=smem))
        # what torch says on a T4: yes, because it counts emulation (the pitfall this policy exists for)
        monkeypatch.setattr(torch.cuda, "is_bf16_supported", lambda including_emulation=True: bf16_anywhere)

    return install


@pytest.fixture
def gemma2():
    from transformers import Gemma2Config

    return Gemma2Config()  # head_dim 256, attention softcapping 50: google/gemma-2-2b's shape


@pytest.fixture
def gemma3():
    from transformers import Gemma3TextConfig

    return Gemma3TextConfig()


@pytest.mark.parametrize("board, precision, compiled, notes", [
    (T4, "fp16", False, 2),
    (A100, "bf16", True, 0),
    (L4, "bf16", True, 0),
    (H200, "bf16", True, 0),
])
def test_auto_follows_the_compute_capability(fake_gpu, gemma2, board, precision, compiled, notes):
    fake_gpu(board)
    p = policy.resolve_policy("auto", "auto", "auto", config=gemma2)
    assert (p.precision, p.attn_implementation, p.compile_layers) == (precision, "eager", compiled)
    assert p.capability == board[1] and p.device == board[0]
    assert p.dtype == {"fp16": torch.float16, "bf16": torch.bfloat16}[precision]
    assert len(p.notes) == notes


def test_a_t4_says_what_it_chose_and_why(fake_gpu, gemma2, capsys):
    fake_gpu(T4)
    p = policy.resolve_policy("auto", "auto", "auto", config=gemma2)
    p.announce()
    err = capsys.readouterr().err.splitlines()
    assert len(err) == 2
    assert err[0].startswith("writemypaper: note: precision auto: fp16") and "Tesla T4" in err[0] and "bf16" in err[0]
    assert err[1].startswith("writemypaper: note: compile_layers auto: off") and "7.5" in err[1]


def test_gemma3_never_gets_fp16(fake_gpu, gemma3):
    fake_gpu(T4)
    p = policy.resolve_policy("auto", "auto", "auto", config=gemma3)
    assert (p.precision, p.attn_implementation) == ("fp32", "sdpa")
    assert any("Gemma 3 overflows in fp16" in n for n in p.notes)
    assert policy.resolve_policy("fp16", config=gemma3).precision == "fp32"
    fake_gpu(L4)
    assert policy.resolve_policy("auto", config=gemma3).precision == "bf16"
    p = policy.resolve_policy("fp16", config=gemma3)
    assert p.precision == "bf16" and p.notes[0].startswith("warning: Gemma 3 overflows in fp16; using bf16")


@pytest.mark.parametrize("model_type", ["gemma2", "gemma3", "gemma3_text", "llama", "qwen2", "qwen3", "exaone"])
def test_the_family_decides_fp16(fake_gpu, model_type):
    """Precision asks the model's family (families.py) whether fp16 is safe; no model_type is matched by name."""
    from writemypaper import families

    fam = families.family(model_type)
    fake_gpu(T4)
    p = policy.resolve_policy("auto", "eager", config=types.SimpleNamespace(model_type=model_type))
    assert p.precision == ("fp16" if fam.fp16 else "fp32")
    assert policy.resolve_policy("fp16", "eager", model_type=model_type).precision == ("fp16" if fam.fp16 else "fp32")


def test_a_family_marked_unsafe_in_fp16_never_gets_it(fake_gpu, monkeypatch):
    """A new family entry with fp16=False is enough: Llama marked so gets fp32 on a T4 and a warning naming it."""
    import dataclasses

    from writemypaper import families

    monkeypatch.setitem(families.FAMILIES, "llama", dataclasses.replace(families.FAMILIES["llama"], fp16=False))
    fake_gpu(T4)
    p = policy.resolve_policy("fp16", "eager", model_type="llama")
    assert p.precision == "fp32" and p.notes[0] == "warning: Llama overflows in fp16; using fp32"


def test_explicit_settings_are_respected_with_a_warning(fake_gpu, gemma2):
    fake_gpu(T4)
    p = policy.resolve_policy("bf16", "eager", True, config=gemma2)
    assert (p.precision, p.compile_layers) == ("bf16", True)
    assert [n.split(":")[0] for n in p.notes] == ["warning", "warning"]
    assert "emulated" in p.notes[0] and "compile_layers=auto" in p.notes[1]
    p = policy.resolve_policy("fp16", "eager", False, config=gemma2)
    assert (p.precision, p.compile_layers, p.notes) == ("fp16", False, ())


def test_flex_attention_below_sm80_is_refused_in_one_line(fake_gpu, gemma2):
    fake_gpu(T4)
    with pytest.raises(UserError, match="flex_attention needs a GPU of compute capability 8.0") as e:
        policy.resolve_policy("auto", "flex_attention", True, config=gemma2)
    assert "gpu-16gb" in str(e.value) and "\n" not in str(e.value)


def test_flex_attention_warns_where_its_backward_kernel_may_not_fit(fake_gpu, gemma2):
    fake_gpu(L4)
    p = policy.resolve_policy("auto", "flex_attention", True, config=gemma2)
    assert p.attn_implementation == "flex_attention"
    assert len(p.notes) == 1 and "shared memory" in p.notes[0] and "head_dim 256" in p.notes[0]
    for board in (A100, H200):
        fake_gpu(board)
        assert policy.resolve_policy("auto", "flex_attention", True, config=gemma2).notes == ()


def test_no_bf16_at_all_is_an_error(fake_gpu, gemma2):
    fake_gpu(("Tesla P100-PCIE-16GB", (6, 0), 49152), bf16_anywhere=False)
    with pytest.raises(UserError, match="has no bf16"):
        policy.resolve_policy("bf16", config=gemma2)
    assert policy.resolve_policy("auto", config=gemma2).precision == "fp16"


def test_cpu(gemma2, gemma3, monkeypatch):
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    p = policy.resolve_policy("auto", "auto", "auto", config=gemma2)
    assert (p.precision, p.attn_implementation, p.compile_layers, p.capability, p.notes) == \
        ("fp32", "eager", False, None, ())
    assert policy.resolve_policy("auto", "auto", True, config=gemma3).compile_layers is True  # asked for: compiled
    assert policy.resolve_policy("bf16", config=gemma3).precision == "bf16"
    with pytest.raises(UserError, match="compile_layers=maybe"):
        policy.resolve_policy("auto", "auto", "maybe", config=gemma2)


def test_only_the_main_process_announces(fake_gpu, gemma2, capsys, monkeypatch):
    fake_gpu(T4)
    p = policy.resolve_policy("auto", "auto", "auto", config=gemma2)
    monkeypatch.setenv("RANK", "1")
    p.announce()
    assert capsys.readouterr().err == ""
