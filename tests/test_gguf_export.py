"""GGUF export checked by a reader we didn't write: transformers' GGUF loader must compute what the model we exported
computes (tiny random Gemma 2 and Gemma 3 here, with a 512-piece slice of the real vocabulary so that reading the file
is quick), and the file must follow llama.cpp's conventions (tensor names, +1 on norms, no tied head, metadata).
The embedded model and llama.cpp itself are in test_gguf_llamacpp.py (slow)."""

import os
import shutil
import subprocess
import sys

import pytest

from writemypaper import gguf_export, prompts
from writemypaper.errors import UserError

N_VOCAB = 512


def _tiny(arch: str):
    import torch
    from transformers import Gemma2Config, Gemma2ForCausalLM, Gemma3ForCausalLM, Gemma3TextConfig

    torch.manual_seed(0)
    # head_dim 256 = query_pre_attn_scalar, as in every Gemma but the 27B: llama.cpp scales queries by the head size.
    common = dict(vocab_size=N_VOCAB, hidden_size=64, intermediate_size=128, num_attention_heads=2,
                  num_key_value_heads=1, head_dim=256, query_pre_attn_scalar=256, max_position_embeddings=1024,
                  sliding_window=16, initializer_range=0.2, pad_token_id=0, bos_token_id=2, eos_token_id=1)
    if arch == "gemma2":
        model = Gemma2ForCausalLM(Gemma2Config(num_hidden_layers=2, attn_logit_softcapping=50.0,
                                               final_logit_softcapping=30.0, **common))
    else:  # six layers: five sliding-window layers and one global, as Gemma 3 alternates them
        model = Gemma3ForCausalLM(Gemma3TextConfig(num_hidden_layers=6, **common))
    with torch.no_grad():  # norms start at zero; random ones make a missing +1 show in the logits
        for name, p in model.named_parameters():
            if name.endswith("norm.weight"):
                p.normal_(0, 0.3)
    return model.eval()


@pytest.fixture(scope="module")
def small_vocab():
    full = gguf_export.read_vocab(gguf_export.embedded_gguf_path())
    return gguf_export.Vocab(full.tokens[:N_VOCAB], full.scores[:N_VOCAB], full.types[:N_VOCAB], full.source)


class _Tok:  # what write_vocab reads from a tokenizer
    bos_token_id, eos_token_id, unk_token_id, pad_token_id = 2, 1, 3, 0


@pytest.fixture(scope="module", params=["gemma2", "gemma3"])
def exported(request, tmp_path_factory, small_vocab):
    model = _tiny(request.param)
    out = tmp_path_factory.mktemp(f"gguf-{request.param}")
    files = {k: gguf_export.write_gguf(model, _Tok(), out / f"m-{k}.gguf", k, prompts.export_chat_template(),
                                       small_vocab) for k in ("f16", "q8_0")}
    return request.param, model, files


def _fields(path):
    import gguf

    r = gguf.GGUFReader(path)
    return r, {k: f.contents() for k, f in r.fields.items() if not k.startswith("tokenizer.ggml.")}


def test_llamacpp_conventions(exported, small_vocab):
    import gguf
    import numpy as np

    arch, model, files = exported
    reader, kv = _fields(files["f16"])
    cfg = model.config
    assert kv["general.architecture"] == arch
    assert kv[f"{arch}.block_count"] == cfg.num_hidden_layers and kv[f"{arch}.attention.key_length"] == 256
    assert kv[f"{arch}.attention.sliding_window"] == 16
    assert kv["general.file_type"] == gguf.LlamaFileType.MOSTLY_F16
    swa = kv[f"{arch}.attention.sliding_window_pattern"]
    assert swa == [t == "sliding_attention" for t in cfg.layer_types]
    if arch == "gemma2":
        assert kv["gemma2.attn_logit_softcapping"] == 50.0 and kv["gemma2.final_logit_softcapping"] == 30.0
        assert swa == [True, False]
    else:
        assert swa == [True] * 5 + [False]
        assert kv["gemma3.rope.freq_base"] == 1_000_000.0 and kv["gemma3.rope.freq_base_swa"] == 10_000.0
    assert kv["tokenizer.chat_template"] == prompts.export_chat_template()
    assert reader.fields["tokenizer.ggml.tokens"].contents()[:3] == ["<pad>", "<eos>", "<bos>"]
    tensors = {t.name: t for t in reader.tensors}
    assert "output.weight" not in tensors  # the head is tied to token_embd, as llama.cpp expects
    assert len(tensors) == 1 + 1 + cfg.num_hidden_layers * (11 if arch == "gemma2" else 13)
    # Gemma's RMSNorm computes x * (1 + w): llama.cpp's plain RMSNorm needs w + 1 stored
    hf = model.model.layers[0].input_layernorm.weight.detach().numpy()
    assert np.allclose(np.asarray(tensors["blk.0.attn_norm.weight"].data), hf + 1.0)
    if arch == "gemma3":
        hf_q = model.model.layers[0].self_attn.q_norm.weight.detach().numpy()
        assert np.allclose(np.asarray(tensors["blk.0.attn_q_norm.weight"].data), hf_q + 1.0)
    assert tensors["token_embd.weight"].tensor_type == gguf.GGMLQuantizationType.F16
    q8 = {t.name: t for t in gguf.GGUFReader(files["q8_0"]).tensors}
    assert q8["blk.0.ffn_up.weight"].tensor_type == gguf.GGMLQuantizationType.Q8_0
    assert q8["blk.0.attn_norm.weight"].tensor_type == gguf.GGMLQuantizationType.F32


# teacher-forced log-probabilities of the next token: f16 rounds every weight to 11 bits, q8_0 to 8 bits per block
TOLERANCE = {"f16": 0.01, "q8_0": 0.25}


@pytest.mark.parametrize("kind", ["f16", "q8_0"])
def test_transformers_reads_what_we_wrote(exported, kind):
    import torch
    from transformers import AutoModelForCausalLM

    arch, model, files = exported
    loaded = AutoModelForCausalLM.from_pretrained(files[kind].parent, gguf_file=files[kind].name,
                                                  dtype=torch.float32).eval()
    assert loaded.config.sliding_window == 16
    g = torch.Generator().manual_seed(1)
    ids = torch.cat([torch.tensor([[2]]), torch.randint(5, N_VOCAB, (1, 47), generator=g)], 1)  # > the window
    with torch.no_grad():
        ours = torch.log_softmax(model(ids).logits, -1)[0, :-1].gather(-1, ids[0, 1:, None])
        theirs = torch.log_softmax(loaded(ids).logits, -1)[0, :-1].gather(-1, ids[0, 1:, None])
        diff = (ours - theirs).abs().max().item()
        assert diff < TOLERANCE[kind], f"{arch} {kind}: max |Δ log p| = {diff:.4f}"
        a = model.generate(ids[:, :20], max_new_tokens=12, do_sample=False)
        b = loaded.generate(ids[:, :20], max_new_tokens=12, do_sample=False)
    assert a.tolist() == b.tolist()


def test_refuses_what_llamacpp_would_compute_differently(tiny_gemma2_dir, small_vocab, tmp_path):
    # The shared tiny Gemma 2 keeps Gemma 2's default query_pre_attn_scalar (256) with a head size of 16: llama.cpp
    # would scale its queries by 1/sqrt(16), so the file would be a different model.
    from transformers import AutoModelForCausalLM

    model = AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir)
    with pytest.raises(UserError, match="query_pre_attn_scalar"):
        gguf_export.write_gguf(model, _Tok(), tmp_path / "x.gguf", "f16", "", small_vocab)
    with pytest.raises(UserError, match="--gguf q5_k"):
        gguf_export.write_gguf(model, _Tok(), tmp_path / "x.gguf", "q5_k", "", small_vocab)
    assert not (tmp_path / "x.gguf").exists()


def test_modelfile_carries_the_training_prompt():
    text = gguf_export.modelfile("run-q8_0.gguf", "초록을 쓰시오.")
    lines = text.splitlines()
    assert "FROM ./run-q8_0.gguf" in lines
    assert 'PARAMETER stop "<end_of_turn>"' in lines
    assert "PARAMETER temperature 0.7" in lines and "PARAMETER repeat_penalty 1.0" in lines  # Ollama's covers the prompt
    template = text.split('TEMPLATE """', 1)[1].split('"""', 1)[0]
    # Ollama puts the user's message in .Prompt and adds <bos> itself: with the summary as the message, the template
    # is the training prompt after <bos>, byte for byte.
    summary = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
    assert "<bos>" + template.replace("{{ .Prompt }}", summary) == prompts.render_prompt(summary, "초록을 쓰시오.")
    assert prompts.DEFAULT_INSTRUCTION in gguf_export.modelfile("x.gguf", None)


def test_sentencepiece_vocabulary_as_llamacpp_writes_it(embedded_tokenizer, tmp_path):
    """Gemma 2's vocabulary comes from its SentencePiece tokenizer.model. Google's own file for Gemma 3 can't be
    fetched here, so one is rebuilt from the vocabulary that llama.cpp's converter wrote into the embedded GGUF; read
    back through the gguf package, it must give that GGUF's pieces, scores and types exactly."""
    pytest.importorskip("sentencepiece")
    from sentencepiece import sentencepiece_model_pb2 as spm

    ref = gguf_export.read_vocab(gguf_export.embedded_gguf_path())
    proto = spm.ModelProto()
    proto.trainer_spec.model_type = spm.TrainerSpec.BPE
    proto.trainer_spec.byte_fallback = True
    P = spm.ModelProto.SentencePiece
    kinds = {1: P.NORMAL, 2: P.UNKNOWN, 3: P.CONTROL, 4: P.USER_DEFINED, 6: P.BYTE}
    for text, score, t in zip(ref.tokens, ref.scores, ref.types):
        text = text.decode("utf-8")
        if t == 4 and text.strip(" ") == "":
            text = text.replace(" ", "▁")  # SentencePiece spells spaces as '▁'; the GGUF as spaces
        proto.pieces.add(piece=text, score=score, type=kinds[t])
    # <unk> is CONTROL in the GGUF (transformers marks it special) but UNKNOWN in a SentencePiece model
    proto.pieces[3].type = P.UNKNOWN
    (tmp_path / "tokenizer.model").write_bytes(proto.SerializeToString())
    got = gguf_export.sentencepiece_vocab(embedded_tokenizer, tmp_path / "tokenizer.model")
    assert got.tokens == ref.tokens and got.types == ref.types and got.scores == ref.scores



@pytest.mark.skipif(not shutil.which("taskset"), reason="needs taskset (util-linux)")
def test_llamacpp_threads_follow_the_cores_the_process_may_use():
    """Under `taskset -c 0` (or a container's CPU share) llama.cpp gets one thread, not one per core of the machine:
    more threads than usable cores make every token wait for a descheduled thread."""
    code = "from writemypaper.llamacpp import usable_cores; print(usable_cores())"
    env = {k: v for k, v in os.environ.items() if k != "OMP_NUM_THREADS"}
    out = subprocess.run(["taskset", "-c", "0", sys.executable, "-c", code], capture_output=True, text=True, check=True,
                         env=env)
    assert out.stdout.strip() == "1"


def test_llamacpp_threads_follow_omp_num_threads(monkeypatch):
    """OMP_NUM_THREADS caps llama.cpp's threads as it caps PyTorch's: processes that share the cores each take their
    share. A value that is not a positive number is ignored."""
    from writemypaper.llamacpp import usable_cores

    cores = len(os.sched_getaffinity(0))
    monkeypatch.setenv("OMP_NUM_THREADS", "1")
    assert usable_cores() == 1
    monkeypatch.setenv("OMP_NUM_THREADS", str(cores + 8))
    assert usable_cores() == cores
    for junk in ("", "0", "-2", "auto"):
        monkeypatch.setenv("OMP_NUM_THREADS", junk)
        assert usable_cores() == cores
