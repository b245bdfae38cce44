"""Padding-free packing must not let sequences attend to one another: the loss of a packed row equals the loss of
its sequences one by one. Built with TRL's own collator, as training uses it."""

import torch
from trl.trainer.sft_trainer import DataCollatorForLanguageModeling

from writemypaper import models, prompts

PAIRS = [
    ("한ㆍ중ㆍ일 대학생 1,200명의 정치 태도를 비교하였다.", "본 연구는 세 나라 대학생 1,200명의 정치 태도를 2019년 설문으로 비교하였다."),
    ("25℃에서 세 차례 반복 측정하였다.", "실험실 온도는 25℃로 유지하였고 표본은 세 차례 반복하여 측정하였다."),
    ("對句 표현의 빈도를 분석하였다.", "조선 후기 한시 312수에서 對句 표현의 빈도와 유형을 계량적으로 분석하였다."),
]


def _examples(tokenizer):
    return [prompts.encode_example(tokenizer, s, o) for s, o in PAIRS]


def _loss_sum(model, input_ids, labels, **kw):
    # use_cache=False as in training (TRL's compute_loss sets it): transformers detects packed rows from the position
    # ids only when no KV cache is in play.
    logits = model(input_ids=input_ids, use_cache=False, **kw).logits
    return torch.nn.functional.cross_entropy(
        logits[0, :-1], labels[0, 1:], ignore_index=-100, reduction="sum").item(), int((labels[0, 1:] != -100).sum())


def test_packed_loss_equals_one_by_one(tiny_gemma2_dir, embedded_tokenizer):
    # float64, so that a difference can only come from attention crossing sequences, not from rounding
    model = models.load_model(str(tiny_gemma2_dir), precision="fp32").double().eval()
    examples = _examples(embedded_tokenizer)

    total, count = 0.0, 0
    with torch.no_grad():
        for ex in examples:
            s, n = _loss_sum(model, torch.tensor([ex["input_ids"]]), torch.tensor([ex["labels"]]))
            total, count = total + s, count + n
    one_by_one = total / count

    batch = DataCollatorForLanguageModeling(pad_token_id=embedded_tokenizer.pad_token_id, padding_free=True)(examples)
    assert batch["input_ids"].shape[0] == 1 and "attention_mask" not in batch  # one flat row, no padding
    with torch.no_grad():
        s, n = _loss_sum(model, batch["input_ids"], batch["labels"], position_ids=batch["position_ids"])
    assert n == count
    assert abs(s / n - one_by_one) < 1e-9

    # The control: the same row read as one long sequence (positions running on) lets sequences see each other.
    run_on = torch.arange(batch["input_ids"].shape[1])[None]
    with torch.no_grad():
        s2, _ = _loss_sum(model, batch["input_ids"], batch["labels"], position_ids=run_on)
    assert abs(s2 / n - one_by_one) > 1e-6  # far above the float64 agreement asserted above
