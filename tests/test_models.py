"""Model loading: one path for the embedded model, local directories and Hub ids, and the Gemma pitfalls."""

import subprocess
import sys

import pytest
import torch

from writemypaper import models, policy, weights
from writemypaper.errors import UserError


def test_gemma2_gets_an_attention_that_keeps_softcapping(tiny_gemma2_dir):
    from transformers import AutoConfig

    cfg = AutoConfig.from_pretrained(tiny_gemma2_dir)
    assert policy.resolve_attention("auto", cfg) == "eager"
    assert policy.resolve_attention("flex_attention", cfg) == "flex_attention"
    with pytest.raises(UserError, match="softcapping"):
        policy.resolve_attention("sdpa", cfg)
    model = models.load_model(str(tiny_gemma2_dir))
    assert model.config._attn_implementation == "eager"
    # and no layer swapped for the Hub's kernels (transformers 5.25's default; on a GPU it fetched code offline)
    assert not getattr(model, "use_kernels", False)


def test_dropping_the_softcap_changes_gemma2_outputs(tiny_gemma2_dir):
    """Why an attention without softcapping (plain sdpa) is refused: once raw scores pass the cap, the uncapped
    attention computes a different function."""
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir, attn_implementation="eager", dtype=torch.float32)
    with torch.no_grad():
        for layer in model.model.layers:  # scale q and k so raw scores exceed the softcap of 50
            layer.self_attn.q_proj.weight.mul_(40)
            layer.self_attn.k_proj.weight.mul_(40)
    ids = torch.randint(10, 1000, (1, 24), generator=torch.Generator().manual_seed(0))
    with torch.no_grad():
        capped = model(input_ids=ids).logits
        for layer in model.model.layers:
            layer.self_attn.attn_logit_softcapping = None
        uncapped = model(input_ids=ids).logits
    assert not torch.allclose(capped, uncapped, atol=1e-3)


def test_precision_on_cpu():
    assert policy.resolve_dtype("auto", "gemma2") == torch.float32
    assert policy.resolve_dtype("fp32", "gemma3_text") == torch.float32
    # Gemma 3 overflows in fp16: asked for, it gets bf16 on a GPU that has it, fp32 here.
    assert policy.resolve_dtype("fp16", "gemma3_text") != torch.float16
    assert policy.resolve_dtype("fp16", "gemma2") == torch.float16
    with pytest.raises(UserError):
        policy.resolve_dtype("int3", "gemma2")


@pytest.mark.skipif(torch.cuda.is_available(), reason="checks the message on a machine without CUDA")
def test_4bit_without_cuda_is_a_clear_error(tiny_gemma2_dir):
    with pytest.raises(UserError, match="4-bit quantization needs a CUDA GPU"):
        models.load_model(str(tiny_gemma2_dir), quantization="nf4")


def test_hub_id_without_network_is_one_line(tmp_path, short_prepared):
    """google/gemma-2-2b-it goes through the same loading code; offline it fails in one line that says what to do, and
    nothing from the libraries underneath (kernels' offline notice, say) sits above it."""
    env = {"HF_HUB_OFFLINE": "1", "HF_HOME": str(tmp_path / "hf"), "PATH": "/usr/bin:/bin"}
    proc = subprocess.run(
        [sys.executable, "-m", "writemypaper", "train", "--data", str(short_prepared), "--out", str(tmp_path / "run"),
         "--model", "google/gemma-2-2b-it", "--dry-run"],
        capture_output=True, text=True, env=env, timeout=120,
    )
    assert proc.returncode == 2, proc.stderr
    lines = proc.stderr.strip().splitlines()
    assert "Traceback" not in proc.stderr
    # our own lines only: the preset train picked (no --config given), then the one error, about the Hub
    assert all(line.startswith("writemypaper: ") for line in lines), lines
    errors = [line for line in lines if line.startswith("writemypaper: error:")]
    assert errors == [lines[-1]] and "google/gemma-2-2b-it" in errors[0], lines


def test_hub_errors_are_translated():
    with pytest.raises(UserError, match="no network"):
        with weights.hub_errors("google/gemma-2-2b-it"):
            raise OSError("We couldn't connect to 'https://huggingface.co' to load the files, and couldn't find them "
                          "in the cached files.")
    with pytest.raises(UserError, match="gated"):
        with weights.hub_errors("google/gemma-2-2b-it"):
            raise OSError("You are trying to access a gated repo. Make sure to have access to it. 401 Client Error.")
    with pytest.raises(UserError, match="neither a local directory"):
        with weights.hub_errors("nobody/nothing"):
            raise OSError("nobody/nothing is not a local folder and is not a valid model identifier listed on "
                          "'https://huggingface.co/models'")


def test_resolve_model(tmp_path, tiny_gemma2_dir):
    assert weights.resolve_model(str(tiny_gemma2_dir)) == str(tiny_gemma2_dir)
    assert weights.resolve_model("google/gemma-2-2b-it") == "google/gemma-2-2b-it"
    with pytest.raises(UserError, match="no config.json"):
        weights.resolve_model(str(tmp_path))
    with pytest.raises(UserError, match="no such directory"):
        weights.resolve_model("./missing-model")


def test_a_tokenizer_loaded_again_is_its_own_object_and_a_folder_written_again_is_read_again(smollm2_tokenizer,
                                                                                            tmp_path):
    """From the third load of one folder's tokenizer, a process unpickles the copy it kept instead of parsing the
    files again. Each load is still its own object, a caller's change to one never reaches the next, and a folder
    whose tokenizer files changed is read again."""
    import json
    import shutil
    from pathlib import Path

    folder = tmp_path / "tok"
    folder.mkdir()
    for f in Path(weights.resolve_model("smollm2-135m")).iterdir():
        if f.suffix in (".json", ".jinja"):
            shutil.copy(f, folder / f.name)
    first, second, third = (models.load_tokenizer(str(folder), side) for side in ("right", "left", "right"))
    assert models._folder_key(str(folder)) in models._PICKLED  # the third was unpickled
    assert models._kept_file(models._folder_key(str(folder))) is None  # a folder of the user's: kept in memory only
    assert (first.padding_side, second.padding_side, third.padding_side) == ("right", "left", "right")
    text = "요약문 1,200명의 정치 태도"
    assert third(text).input_ids == first(text).input_ids and third.chat_template == first.chat_template
    third.chat_template = "changed"
    third.pad_token = third.eos_token
    fourth = models.load_tokenizer(str(folder))
    assert fourth is not third and fourth.chat_template == first.chat_template and fourth.pad_token == first.pad_token
    cfg = json.loads((folder / "tokenizer_config.json").read_text(encoding="utf-8"))
    cfg["model_max_length"] = 77
    (folder / "tokenizer_config.json").write_text(json.dumps(cfg), encoding="utf-8")
    assert models.load_tokenizer(str(folder)).model_max_length == 77
    assert models.load_tokenizer("smollm2-135m").model_max_length != 77  # another folder: its own


def test_an_embedded_tokenizer_is_kept_pickled_in_the_cache_and_a_broken_copy_is_read_around(smollm2_tokenizer):
    """Every process after the first unpickles an embedded model's tokenizer from the cache; a copy that can't be
    unpickled (cut short, or written by other library versions under a colliding name) is read around and replaced."""
    import pickle

    key = models._folder_key(weights.resolve_model("smollm2-135m"))
    kept = models._kept_file(key)
    assert kept is not None and kept.parent == weights.cache_root() / "tokenizers"
    good = models.load_tokenizer("smollm2-135m")
    assert kept.is_file()
    text = "요약문 1,200명의 정치 태도"
    kept.write_bytes(b"not a pickle")
    models._PICKLED.pop(key, None)  # as a new process would find it
    again = models.load_tokenizer("smollm2-135m")
    assert again(text).input_ids == good(text).input_ids and again.chat_template == good.chat_template
    assert pickle.loads(kept.read_bytes())(text).input_ids == good(text).input_ids  # written anew


def test_embedded_model_is_a_plain_safetensors_directory():
    path = weights.embedded_model_dir()
    assert (path / "model.safetensors").is_file() and (path / "tokenizer.json").is_file()
    assert weights.resolve_model("gemma3-270m") == str(path)


def test_untrained_end_of_turn_is_mended(embedded_tokenizer):
    """The base Gemma 3 270M's <end_of_turn> row sits among thousands of identical untrained rows, so LoRA alone
    can never make it the likeliest token; loading gives it eos's row. A trained row is left alone."""
    from transformers import AutoModelForCausalLM

    path = weights.embedded_model_dir()
    raw = AutoModelForCausalLM.from_pretrained(path, dtype=torch.float32)
    assert models.end_of_turn_untrained(raw, embedded_tokenizer)
    fixed = models.load_model("gemma3-270m", tokenizer=embedded_tokenizer)
    emb = fixed.get_input_embeddings().weight
    eot = embedded_tokenizer.convert_tokens_to_ids("<end_of_turn>")
    assert torch.equal(emb[eot], emb[embedded_tokenizer.eos_token_id])
    assert not models.end_of_turn_untrained(fixed, embedded_tokenizer)
    assert not models.fix_end_of_turn(fixed, embedded_tokenizer)  # idempotent: nothing left to mend
