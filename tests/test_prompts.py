"""The one prompt format, and the notebook's three prompt defects, each shown mended."""

import pytest

from writemypaper import prompts

SUMMARY = "한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다."
ORIGINAL = "본 연구는 한ㆍ중ㆍ일 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다. 응답률은 87%였다."


def test_exact_rendering():
    assert prompts.render_example(SUMMARY, ORIGINAL) == (
        "<bos><start_of_turn>user\n다음 요약된 글을 한 문단으로 길게 써주세요.\n\n" + SUMMARY
        + "<end_of_turn>\n<start_of_turn>model\n" + ORIGINAL + "<end_of_turn>\n"
    )
    assert prompts.render_prompt(SUMMARY) == (
        "<bos><start_of_turn>user\n다음 요약된 글을 한 문단으로 길게 써주세요.\n\n" + SUMMARY
        + "<end_of_turn>\n<start_of_turn>model\n"
    )


def test_defect1_training_and_inference_share_one_instruction(embedded_tokenizer):
    # The notebook trained on "다음 글을 더 길게 써주세요:" and generated with "다음 요약된 글을 한 문단으로 길게 써주세요.:".
    # Here the generation prompt is, token for token, the start of every training example.
    ex = prompts.encode_example(embedded_tokenizer, SUMMARY, ORIGINAL)
    prompt = prompts.encode_prompt(embedded_tokenizer, SUMMARY)
    assert ex["input_ids"][: len(prompt)] == prompt
    # The chat template that we set on the tokenizer (and export) renders the same prompt.
    chat = embedded_tokenizer.apply_chat_template(
        [{"role": "user", "content": prompts.user_message(SUMMARY)}], tokenize=False, add_generation_prompt=True)
    assert chat == prompts.render_prompt(SUMMARY)
    # A custom instruction changes both sides alike.
    custom = prompts.encode_example(embedded_tokenizer, SUMMARY, ORIGINAL, instruction="초록을 쓰시오.")
    assert custom["input_ids"][: len(prompts.encode_prompt(embedded_tokenizer, SUMMARY, "초록을 쓰시오."))] == \
        prompts.encode_prompt(embedded_tokenizer, SUMMARY, "초록을 쓰시오.")


def test_defect2_no_indentation_inside_the_prompt():
    text = prompts.render_example("  " + SUMMARY + "\n", "\n" + ORIGINAL + "  ")
    for line in text.split("\n"):
        assert line == line.lstrip(" "), f"indented line: {line!r}"
    assert "    " not in text


def test_defect3_exactly_one_bos(embedded_tokenizer):
    bos = embedded_tokenizer.bos_token_id
    ex = prompts.encode_example(embedded_tokenizer, SUMMARY, ORIGINAL)
    assert ex["input_ids"][0] == bos and ex["input_ids"].count(bos) == 1
    assert prompts.encode_prompt(embedded_tokenizer, SUMMARY).count(bos) == 1
    # The trap itself: the notebook tokenized an already-rendered template with special tokens on.
    doubled = embedded_tokenizer(prompts.render_prompt(SUMMARY), add_special_tokens=True)["input_ids"]
    assert doubled[:2] == [bos, bos]


def test_loss_only_on_the_model_turn_including_end_of_turn(embedded_tokenizer):
    tok = embedded_tokenizer
    ex = prompts.encode_example(tok, SUMMARY, ORIGINAL)
    prompt_len = len(prompts.encode_prompt(tok, SUMMARY))
    assert ex["labels"][:prompt_len] == [-100] * prompt_len
    answer = ex["labels"][prompt_len:]
    assert -100 not in answer and answer == ex["input_ids"][prompt_len:]
    eot = tok.convert_tokens_to_ids("<end_of_turn>")
    assert answer[-3:] == [eot, tok.convert_tokens_to_ids("\n"), tok.eos_token_id]
    assert tok.decode(answer[:-3]) == ORIGINAL


def test_stop_tokens_are_looked_up(embedded_tokenizer):
    ids = prompts.stop_token_ids(embedded_tokenizer)
    # Gemma 3's <end_of_turn> is 106 (Gemma 2's is 107): looked up, never hard-coded.
    assert ids == [embedded_tokenizer.convert_tokens_to_ids("<end_of_turn>"), embedded_tokenizer.eos_token_id]
    assert ids[0] == 106


def test_system_text_is_folded_into_the_first_user_turn(embedded_tokenizer):
    text = embedded_tokenizer.apply_chat_template(
        [{"role": "system", "content": "간결하게."}, {"role": "user", "content": "안녕"},
         {"role": "assistant", "content": "네"}], tokenize=False)
    assert text == "<bos><start_of_turn>user\n간결하게.\n\n안녕<end_of_turn>\n<start_of_turn>model\n네<end_of_turn>\n"


@pytest.mark.parametrize("instruction", [None, "요약을 바탕으로 초록을 쓰시오."])
def test_generator_uses_the_training_prompt(embedded_tokenizer, instruction):
    from writemypaper.transformers_engine import Generator

    class NoModel:
        def parameters(self):
            import torch

            yield torch.zeros(1)

    gen = Generator(NoModel(), embedded_tokenizer, instruction=instruction)
    enc = gen._encode([SUMMARY])
    assert enc["input_ids"][0].tolist() == prompts.encode_prompt(embedded_tokenizer, SUMMARY, instruction)


@pytest.mark.parametrize("instruction", [None, '초록을 "두 문단"으로 쓰시오.\n숫자는 그대로: 50% {{ x }} %} \\ 끝.'])
def test_chat_template_is_rendered_with_the_instruction(embedded_tokenizer, instruction):
    """The export's template comes from templates/chat.jinja rendered with the instruction as a variable: any
    instruction (quotes, a newline, backslashes, template syntax) reaches the prompt as written, whether the client
    sends the bare summary or our own user message."""
    template = prompts.export_chat_template(instruction)
    assert template == prompts.chat_template(instruction or prompts.DEFAULT_INSTRUCTION)
    for content in (SUMMARY, prompts.user_message(SUMMARY, instruction)):
        chat = embedded_tokenizer.apply_chat_template([{"role": "user", "content": content}], chat_template=template,
                                                      tokenize=False, add_generation_prompt=True)
        assert chat == prompts.render_prompt(SUMMARY, instruction)
    # the template set on every tokenizer adds no instruction of its own
    plain = embedded_tokenizer.apply_chat_template([{"role": "user", "content": SUMMARY}],
                                                   chat_template=prompts.chat_template(), tokenize=False)
    assert plain == f"<bos><start_of_turn>user\n{SUMMARY}<end_of_turn>\n"
