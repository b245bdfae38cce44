"""Grounded numbers with Gemma's real tokenizer: the summary's numbers can be written, invented ones cannot, a number
ends only where one of the summary's ends, and each batch row keeps to its own summary.

    pytest tests/test_grounding.py
"""

import re

import pytest

from writemypaper.grounding import (Grounding, GroundedNumbers, NumberTable, Usage, open_run, summary_numbers,
                                    written_forms)

SUMMARY = "본 연구는 2015년 대학생 1,250명을 조사하였고 응답률은 0.18이었다. 자료는 1670~1671년의 것이다."


@pytest.fixture(scope="module")
def table(embedded_tokenizer):
    return NumberTable.from_tokenizer(embedded_tokenizer)


def ids_of(tok, text):
    return tok(text, add_special_tokens=False)["input_ids"]


# ---------------------------------------------------------------------------------------------------------------------
# what the tokenizer does, checked rather than assumed


def test_gemma_writes_digits_one_token_each_and_has_byte_digits(embedded_tokenizer, table):
    tok = embedded_tokenizer
    pieces = tok.convert_ids_to_tokens(ids_of(tok, "1,250명과 2015년"))
    assert pieces == ["1", ",", "2", "5", "0", "명", "과", "▁", "2", "0", "1", "5", "년"]
    # Every decodable token that holds a digit: the ten digits, the ten byte tokens <0x30>..<0x39>, and HTML
    # heading tags. The table holds all of them, with the text they decode to.
    with_digits = {t for t in table.texts.values() if re.search("[0-9]", t)}
    assert {str(d) for d in range(10)} <= with_digits
    headings = {f"<h{k}>" for k in range(1, 7)} | {f"</h{k}>" for k in range(1, 7)}
    assert with_digits - {str(d) for d in range(10)} == headings
    assert table.texts[tok.convert_tokens_to_ids("<0x35>")] == "5"
    # Digits of other scripts exist in the vocabulary; grounding never lets them through.
    assert len(table.foreign) > 100


def test_written_forms():
    assert written_forms("1,250") == {"1,250", "1250"}
    assert written_forms("1250") == {"1250", "1,250"}
    assert written_forms("27.30") == {"27.30", "27.3"}
    assert written_forms("0.18") == {"0.18"}
    assert {"1670", "1671", "2015", "1,250", "1250", "0.18"} <= summary_numbers(SUMMARY)
    assert "20" not in summary_numbers(SUMMARY) and "18" not in summary_numbers(SUMMARY)
    assert summary_numbers("１２명") == {"12"}  # full-width digits read as ASCII


def test_open_run():
    assert open_run("대학생 1,2") == "1,2"
    assert open_run("끝났다.") is None
    assert open_run("모두 3.") == "3."
    assert open_run("다..5") == "5"


# ---------------------------------------------------------------------------------------------------------------------
# the core, on token ids of the real tokenizer


def allowed(g: Grounding, run, token_id, used=None) -> bool:
    mode, ids = g.constraint(run, used=used)
    return (token_id in ids) == (mode == "allow")


def writable(tok, table, g: Grounding, text: str, stops=(1, 106)) -> bool:
    """Could `text` be written token by token under the constraint, and then end?"""
    ids = ids_of(tok, text)
    for k, t in enumerate(ids):
        run, used = Usage(table).read(ids[:k])
        assert run == table.trailing_run(ids[:k])  # the row's count reads the text as the tail does
        if not allowed(g, run, t, used):
            return False
    run, used = Usage(table).read(ids)
    return all(allowed(g, run, s, used) for s in stops)


@pytest.mark.parametrize("text", ["2015년에 1,250명을", "1250명 중", "응답률 0.18로", "1670~1671년", "1671년.",
                                  "2015. 이후", "1,250, 2015"])
def test_the_summarys_numbers_can_be_written(embedded_tokenizer, table, text):
    assert writable(embedded_tokenizer, table, Grounding(table, SUMMARY), text)


@pytest.mark.parametrize("text", ["2016년", "1,251명", "12,50명", "0.19", "0.1", "1672년", "20년", "201", "2015.5",
                                  "125명", "18%", "3배"])
def test_invented_or_cut_short_numbers_cannot(embedded_tokenizer, table, text):
    assert not writable(embedded_tokenizer, table, Grounding(table, SUMMARY), text)


def test_a_number_ends_only_where_one_of_the_summarys_ends(embedded_tokenizer, table):
    tok, g = embedded_tokenizer, Grounding(table, SUMMARY)
    year, eot = tok.convert_tokens_to_ids("년"), tok.convert_tokens_to_ids("<end_of_turn>")
    assert not allowed(g, "20", year) and not allowed(g, "20", eot)  # "20" cut short from 2015
    assert allowed(g, "2015", year) and allowed(g, "2015", eot)
    assert allowed(g, "2015.", year)  # a full stop after the number, then text
    assert not allowed(g, "2015.", tok.convert_tokens_to_ids("5"))  # but not 2015.5
    # Mid-number only digits and separators that keep it a prefix may follow: "1," must become 1,250 or 1,670/1,671.
    mode, ids = g.constraint("1,")
    assert mode == "allow" and {table.texts[i] for i in ids} == {"2", "6"}


def test_a_figure_is_written_as_often_as_the_summary_has_it_plus_once(embedded_tokenizer, table):
    tok, g = embedded_tokenizer, Grounding(table, "댓글은 1.6배 많았고, 2015년과 2015년 자료를 비교하였다.")
    assert writable(tok, table, g, "댓글은 1.6배 많았다. 이는 1.6배 높다.")
    assert not writable(tok, table, g, "댓글은 1.6배 많았다. 이는 1.6배 높고 1.6배가 넘는다.")
    assert writable(tok, table, g, "2015년, 2015년, 2015년") and not writable(tok, table, g, "2015년, " * 4)
    # Once 1.6 is used up, no other number of the summary starts with 1: the digit 1 may not start one.
    one = tok.convert_tokens_to_ids("1")
    used = Usage(table).read(ids_of(tok, "1.6배, 1.6배 "))[1]
    assert allowed(g, None, one) and not allowed(g, None, one, used)
    # The reading goes on from where it stopped, as the adapter feeds it one step at a time.
    u, ids = Usage(table), ids_of(tok, "1.6배와 2015년, 1.6")
    for k in range(len(ids) + 1):
        state = u.read(ids[u.seen:k], u.seen)
    assert state == Usage(table).read(ids) and state[0] == "1.6"


def test_the_adapter_counts_each_rows_figures(tiny):
    # Pushed to write the summary's 1,250 four times, the row writes it twice (once + one restatement).
    target = ids_of(tiny.tokenizer, "1,250명 1,250명 1,250명 1,250명")
    text = pushed_generate(tiny, ["대학생 1,250명을 조사하였다."], [target], max_new_tokens=len(target))[0]
    assert text.startswith("1,250명 1,250명") and numbers_in(text).count("1,250") == 2, text


def test_no_number_is_started_that_the_length_limit_would_cut(embedded_tokenizer, table):
    g = Grounding(table, "2015년 조사")
    two, one = embedded_tokenizer.convert_tokens_to_ids("2"), embedded_tokenizer.convert_tokens_to_ids("1")
    assert not allowed_in_budget(g, None, two, budget=3)  # "2015" needs four tokens
    assert allowed_in_budget(g, None, two, budget=4) and allowed_in_budget(g, None, two, budget=None)
    assert allowed_in_budget(g, "20", one, budget=2)  # "1" then "5": just in time


def allowed_in_budget(g, run, token_id, budget):
    mode, ids = g.constraint(run, budget)
    return (token_id in ids) == (mode == "allow")


def test_no_numbers_in_the_summary_means_no_digits(embedded_tokenizer, table):
    g = Grounding(table, "한ㆍ중ㆍ일 대학생의 정치 태도를 비교하였다.")
    mode, banned = g.constraint(None)
    assert mode == "ban"
    assert {str(d) for d in range(10)} <= {table.texts[i] for i in banned}
    assert writable(embedded_tokenizer, table, g, "세 나라를 비교하였다. 그 결과는 다음과 같다...")


# ---------------------------------------------------------------------------------------------------------------------
# Korean numbers, read as the fact check reads them (writemypaper.numbers): what decoding lets through, the check
# accepts


KOREAN = "예산은 1천2백만 원이고 변화율은 −3.5%, 1,2,9단계, 응답률 ９５％, p<.05, 3~5%였다."


@pytest.mark.parametrize("text", ["1천2백만 원", "1200만 원", "12,000,000원", "1,200만 원", "-3.5%", "−3.5%",
                                  "1,2,9단계", "9단계", "95%", "p<.05", "p<0.05", "3~5%", "3%에서 5%"])
def test_the_summarys_korean_numbers_can_be_written(embedded_tokenizer, table, text):
    from writemypaper.factcheck import unsupported_facts

    assert writable(embedded_tokenizer, table, Grounding(table, KOREAN), text)
    assert unsupported_facts(KOREAN, text) == []  # and the fact check accepts what decoding wrote


@pytest.mark.parametrize("text", ["1억 원", "2백만 원", "12만 원", "3.5%", "+3.5%", "p<.5", "1,2,8단계", "6%"])
def test_scale_words_signs_and_leading_points_are_held_too(embedded_tokenizer, table, text):
    # 1 and 2 are digits of the summary, but 1억 and 2백만 are not its values; 3.5% flips −3.5%'s sign.
    assert not writable(embedded_tokenizer, table, Grounding(table, KOREAN), text)


def test_a_sign_flip_or_a_scale_word_is_refused(embedded_tokenizer, table):
    tok, g = embedded_tokenizer, Grounding(table, "변화율은 3.5% 증가하였고 응답자는 3명, 12.5만 명이었다.")
    assert writable(tok, table, g, "3.5%") and writable(tok, table, g, "125,000명")
    assert not writable(tok, table, g, "-3.5%") and not writable(tok, table, g, "−3.5%")
    assert not writable(tok, table, g, "3만 명")  # the digit 3 is the summary's, 30,000 is not
    assert writable(tok, table, g, "3명, 3-3.5%")  # a hyphen after a digit is no sign but a range
    # Tokens that carry a scale word are read through: after "3" no token may write "3억" or "3만".
    mode, ids = g.constraint("3")
    assert mode == "ban" and {tok.convert_tokens_to_ids(w) for w in ("억", "만")} <= set(ids)


# ---------------------------------------------------------------------------------------------------------------------
# the transformers adapter, inside model.generate, with the logits pushed toward numbers


class Push:
    """A logits processor that biases each row toward the next token of `target[row]`, as if the model badly wanted
    to write that text; None rows are pushed toward every digit instead."""

    def __init__(self, targets, prompt_length, strength=1e4):
        self.targets, self.prompt_length, self.strength = targets, prompt_length, strength

    def __call__(self, input_ids, scores):
        k = input_ids.shape[1] - self.prompt_length
        for r, target in enumerate(self.targets):
            if target is None:
                scores[r, DIGIT_IDS] += self.strength
            elif k < len(target):
                scores[r, target[k]] += self.strength
        return scores


DIGIT_IDS: list[int] = []


@pytest.fixture(scope="module")
def tiny(tiny_gemma2_dir, embedded_tokenizer):
    from transformers import AutoModelForCausalLM

    from writemypaper.transformers_engine import Generator

    DIGIT_IDS[:] = [embedded_tokenizer.convert_tokens_to_ids(str(d)) for d in range(10)]
    return Generator(AutoModelForCausalLM.from_pretrained(tiny_gemma2_dir), embedded_tokenizer)


def pushed_generate(gen, summaries, targets, grounded=True, n=1, max_new_tokens=12):
    import torch
    from transformers import LogitsProcessorList

    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import logits_processors

    # n > 1: n sampled candidates per summary (num_return_sequences repeats each prompt n times).
    settings = GenerationSettings(max_new_tokens=max_new_tokens, do_sample=n > 1, temperature=1.0, candidates=n,
                                  grounded=grounded, repetition_penalty=1.0, seed=0)
    enc = gen._encode(summaries)
    length = enc["input_ids"].shape[1]
    rows = [t for t in targets for _ in range(n)]
    procs = [Push(rows, length), *logits_processors(settings, length, summaries, gen.number_table)]
    torch.manual_seed(0)
    with torch.inference_mode():
        out = gen.model.generate(**enc, **settings.generate_kwargs(gen.tokenizer),
                                 logits_processor=LogitsProcessorList(procs))
    return [gen.decode(row) for row in out[:, length:]]


def numbers_in(text):
    return [m.group().rstrip(".,") for m in re.finditer(r"[0-9][0-9.,]*", text)]


def test_an_invented_number_cannot_be_produced(tiny):
    tok = tiny.tokenizer
    invented = ids_of(tok, "4,321명")
    plain = pushed_generate(tiny, [SUMMARY], [invented], grounded=False)[0]
    assert plain.startswith("4,321명")  # the push works: without grounding the model writes the invented number
    grounded = pushed_generate(tiny, [SUMMARY], [invented])[0]
    assert "4,321" not in grounded and "4321" not in grounded
    assert all(n in summary_numbers(SUMMARY) for n in numbers_in(grounded)), grounded


def test_the_summarys_own_number_is_produced(tiny):
    target = ids_of(tiny.tokenizer, "1,250명")
    assert pushed_generate(tiny, [SUMMARY], [target])[0].startswith("1,250명")


def test_rows_are_held_to_their_own_summary(tiny):
    """Two summaries in one batch, two sequences each, every row pushed to write digits all the time."""
    a, b = "대학생 1,250명을 조사하였다.", "2019년 자료를 분석하였다."
    outs = pushed_generate(tiny, [a, b], [None, None], n=2, max_new_tokens=10)
    assert len(outs) == 4
    for summary, text in zip([a, a, b, b], outs):
        found = numbers_in(text)
        assert found, f"the push toward digits wrote no number: {text!r}"
        assert all(n in summary_numbers(summary) for n in found), (summary, text)
    assert not any("2019" in t for t in outs[:2]) and not any("1250" in t or "1,250" in t for t in outs[2:])


def test_stream_is_grounded_too(tiny, monkeypatch):
    """The streamed path builds its own processors: push every row toward digits inside it."""
    from writemypaper.settings import GenerationSettings

    generate = tiny.model.generate

    def pushed(**kw):
        kw["logits_processor"].insert(0, Push([None], kw["input_ids"].shape[1]))
        return generate(**kw)

    monkeypatch.setattr(tiny.model, "generate", pushed)
    settings = GenerationSettings(max_new_tokens=12, do_sample=False)
    text = "".join(tiny.stream("2019년 자료를 분석하였다.", settings))
    assert numbers_in(text) and all(n == "2019" for n in numbers_in(text)), text
    monkeypatch.setattr(tiny.model, "generate", pushed)
    text = "".join(tiny.stream("2019년 자료를 분석하였다.", GenerationSettings(max_new_tokens=12, do_sample=False,
                                                                      grounded=False)))
    assert any(n != "2019" for n in numbers_in(text)), text  # without grounding the push writes other numbers


def test_adapter_checks_row_count(table):
    import torch

    p = GroundedNumbers(table, ["1"], prompt_length=0, per_summary=2)
    with pytest.raises(ValueError):
        p(torch.zeros((3, 1), dtype=torch.long), torch.zeros((3, 10)))


# ---------------------------------------------------------------------------------------------------------------------
# on a GPU (run on the device): the same constraint with the scores on CUDA, multi-digit tokens included


def _word_tokenizer():
    """Gemma's special tokens plus words, some of them whole numbers ("1,250", "2019"), so that one token can carry
    a number, and nothing is downloaded."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast

    specials = ["<pad>", "<eos>", "<bos>", "<unk>", "<start_of_turn>", "<end_of_turn>"]
    words = ["1,250", "4,321", "2019", "2020", "12", "명", "년", "조사", "하였다", "."] + [f"w{i}" for i in range(100)]
    tok = Tokenizer(models.WordLevel({t: i for i, t in enumerate(specials + words)}, unk_token="<unk>"))
    tok.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    return PreTrainedTokenizerFast(tokenizer_object=tok, bos_token="<bos>", eos_token="<eos>", pad_token="<pad>",
                                   unk_token="<unk>", additional_special_tokens=specials[4:])


@pytest.mark.gpu
def test_grounding_on_cuda():
    torch = pytest.importorskip("torch")
    if not torch.cuda.is_available():
        pytest.skip("needs a CUDA GPU (run on the device)")
    from transformers import Gemma2Config, Gemma2ForCausalLM

    from writemypaper.settings import GenerationSettings
    from writemypaper.transformers_engine import Generator

    tok = _word_tokenizer()
    torch.manual_seed(0)
    model = Gemma2ForCausalLM(Gemma2Config(vocab_size=len(tok), hidden_size=64, intermediate_size=128,
                                           num_hidden_layers=2, num_attention_heads=2, num_key_value_heads=1,
                                           head_dim=32, bos_token_id=2, eos_token_id=1, pad_token_id=0))
    gen = Generator(model.to("cuda", torch.bfloat16), tok)
    summaries = ["1,250 명 조사 하였다", "2019 년 조사 하였다"]
    invented, own = tok.convert_tokens_to_ids("4,321"), tok.convert_tokens_to_ids("1,250")
    outs = pushed_generate(gen, summaries, [[invented] * 6, [own] * 6], max_new_tokens=6)
    assert "4,321" not in outs[0] and "1,250" not in outs[1]
    assert pushed_generate(gen, summaries[:1], [[own]], max_new_tokens=2)[0].startswith("1,250")
    assert "4,321" in pushed_generate(gen, summaries[:1], [[invented]], grounded=False, max_new_tokens=2)[0]
    # The log-probabilities that rank candidates, recorded on the device, match transformers' own.
    from writemypaper.transformers_engine import LogprobRecorder

    settings = GenerationSettings(max_new_tokens=5, do_sample=False, repetition_penalty=1.0)
    enc, record = gen._encode(summaries), LogprobRecorder()
    with torch.inference_mode():
        out = gen.model.generate(**enc, **settings.generate_kwargs(tok), logits_processor=[record],
                                 output_logits=True, return_dict_in_generate=True)
    expected = gen.model.compute_transition_scores(out.sequences, out.logits, normalize_logits=True)
    new = out.sequences[:, enc["input_ids"].shape[1]:]
    assert torch.allclose(record.per_token(new), expected.float().cpu(), atol=1e-3)
