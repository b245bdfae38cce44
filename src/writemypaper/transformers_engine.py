"""transformers as an engine: a loaded model and tokenizer that write abstracts in batches (left-padded, sorted by
length) or as a stream, with the repetition penalty over generated tokens only, grounded numbers and the length in
characters as logits processors. engines.py picks it for every model that is not a .gguf file.

    python -c "from writemypaper import engines; print(engines.load('gemma3-270m').generate(['요약문...']))"
"""

from __future__ import annotations

import threading
from typing import Callable, Iterator

from writemypaper import prompts
from writemypaper.decoding import LengthTarget, rank, run_instruction, targets_for
from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings


def logits_processors(settings: GenerationSettings, prompt_length: int, summaries: list[str] | None = None,
                      table=None, record=None, length=None) -> list:
    """The processors `Generator` passes to `model.generate`, in order: the log-probability recorder (raw logits),
    the repetition penalty over generated tokens only, grounded numbers, then the length (`LengthSteering`, last:
    it may leave a row nothing but its end of turn)."""
    from transformers import RepetitionPenaltyLogitsProcessor

    procs = [] if record is None else [record]
    if settings.repetition_penalty != 1.0:
        # An int prompt_ignore_length cuts every row at the same column: prompts are left-padded to one length,
        # so that column is where each row's generated text begins.
        procs.append(RepetitionPenaltyLogitsProcessor(float(settings.repetition_penalty),
                                                      prompt_ignore_length=prompt_length))
    if settings.grounded:
        from writemypaper.grounding import GroundedNumbers

        procs.append(GroundedNumbers(table, summaries, prompt_length, per_summary=settings.rows_per_summary,
                                     max_new_tokens=settings.max_new_tokens))
    if length is not None:
        procs.append(length)
    return procs


class LengthSteering:
    """decoding.LengthTarget for each row of a batch: `targets` holds one target (or None) per summary, and each
    summary brings `per_summary` rows. Each step decodes every open row's text so far: characters are what journals
    count, and a token may hold a fraction of one (a byte) or several."""

    def __init__(self, tokenizer, targets: list[int | None], prompt_length: int, per_summary: int = 1):
        stops = prompts.stop_token_ids(tokenizer)  # the family's end of turn first, then eos
        self.targets = [LengthTarget(t, stops, stops[0]) for t in targets]
        self.tokenizer, self.prompt_length, self.per_summary = tokenizer, prompt_length, per_summary
        self.stops = set(stops)

    def __call__(self, input_ids, scores):
        for r, ids in enumerate(input_ids[:, self.prompt_length:].tolist()):
            target = self.targets[r // self.per_summary]
            if target.target is None or self.stops.intersection(ids):  # no target, or already ended (padding)
                continue
            target.steer(self.tokenizer.decode(ids, skip_special_tokens=True), scores[r])
        return scores


class LogprobRecorder:
    """Records the model's log-probability of each token it picks, from the raw logits (before penalty, grounding
    and temperature). Keeping `output_scores` instead would hold steps x rows x 262k floats; this holds one step."""

    def __init__(self):
        self.previous = None
        self.steps = []

    def __call__(self, input_ids, scores):
        if self.previous is not None:  # the token picked from the previous step's distribution is now known
            self.steps.append(self.previous.gather(1, input_ids[:, -1:]).squeeze(1))
        self.previous = scores.float().log_softmax(-1)
        return scores

    def per_token(self, new_ids):
        """(rows, generated tokens) log-probabilities, once generation is over."""
        import torch

        steps = list(self.steps)
        if self.previous is not None:
            steps.append(self.previous.gather(1, new_ids[:, -1:]).squeeze(1))
        return torch.stack(steps, 1)[:, :new_ids.shape[1]].cpu()


class Generator:
    """A loaded model and tokenizer that write abstracts: `generate` for batches, `stream` for one summary
    (engines.Engine)."""

    requires = None  # transformers and torch come with the base install
    install = None

    def __init__(self, model, tokenizer, instruction: str | None = None, base: str | None = None):
        self.model = model
        self.base = base  # which base weights the adapter sits on (models.base_weights), for evaluate's scores
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched generation needs the prompts flush right
        self.instruction = instruction
        self.lock = threading.Lock()  # one generate call on the model at a time (the server shares one Generator)
        self._numbers = None

    @classmethod
    def load(cls, model: str | None = None, precision: str = "auto", device: str | None = None,
             instruction: str | None = None) -> "Generator":
        from writemypaper.models import base_weights, load_for_inference

        m, tok = load_for_inference(model, precision=precision, device=device)
        return cls(m, tok, instruction=instruction or run_instruction(model), base=base_weights(model))

    def encode(self, summary: str) -> list[int]:
        """The prompt's ids, as `generate` feeds them to the model."""
        return prompts.encode_prompt(self.tokenizer, summary, self.instruction)

    def reference_losses(self, samples: list[dict]) -> list[tuple[float, int]]:
        """Per sample, the summed loss and the number of tokens of the model's turn (see `reference_losses`)."""
        return reference_losses(self.model, self.tokenizer, samples, self.instruction)

    @property
    def device(self):
        return next(self.model.parameters()).device

    @property
    def number_table(self):
        """The tokenizer's table for grounded numbers, built on first use (a fraction of a second)."""
        if self._numbers is None:
            from writemypaper.grounding import NumberTable

            self._numbers = NumberTable.from_tokenizer(self.tokenizer)
        return self._numbers

    def _encode(self, summaries: list[str]):
        # the training prompt's ids, exactly one BOS in every family (prompts.encode_text), padded on the left
        ids = [prompts.encode_prompt(self.tokenizer, s, self.instruction) for s in summaries]
        return self.tokenizer.pad({"input_ids": ids}, return_tensors="pt").to(self.device)

    def _processors(self, settings, enc, summaries, record=None, targets=None) -> dict:
        from transformers import LogitsProcessorList

        table = self.number_table if settings.grounded else None
        width = enc["input_ids"].shape[1]
        targets = targets or [settings.target_chars] * len(summaries)
        length = None
        if any(t is not None for t in targets):
            length = LengthSteering(self.tokenizer, targets, width, settings.rows_per_summary)
        procs = logits_processors(settings, width, summaries, table, record, length)
        return {"logits_processor": LogitsProcessorList(procs)} if procs else {}

    def generate(self, summaries: list[str], settings: GenerationSettings | None = None, batch_size: int = 8,
                 progress: bool = False, stop: Callable[[], bool] | None = None, details: bool = False,
                 cancelled: Callable[[int], bool] | None = None, targets: list[int | None] | None = None) -> list:
        """One list of `num_return_sequences` abstracts per summary, in input order, best first when
        `candidates` > 1. `targets` gives each summary its own target length in characters (None: none), in place of
        `settings.target_chars`. `batch_size` counts summaries per model call (each brings `rows_per_summary` sequences).
        `stop()` returning true ends generation within a token (the server uses it when its clients have gone);
        `cancelled(i)` returning true ends summary i's rows only (their text comes back cut short), the others go on.

        details=True returns, per summary, {"text": the best, "candidates": [{"text", "unsupported", "coverage",
        "mean_logprob"}, ...]} (ranked when candidates > 1, else in sampled order)."""
        import torch
        from tqdm.auto import tqdm

        settings = (settings or GenerationSettings()).validate()
        targets = targets_for(targets, settings, len(summaries))
        scored = details or settings.candidates > 1
        if settings.seed is not None:
            torch.manual_seed(settings.seed)
        # Sort by length so each batch pads little; restore the order at the end.
        order = sorted(range(len(summaries)), key=lambda i: len(summaries[i]), reverse=True)
        results: dict[int, list[dict]] = {}
        bar = tqdm(total=len(summaries), desc="generating", unit="abstract", disable=not progress)
        for start in range(0, len(order), batch_size):
            idx = order[start:start + batch_size]
            batch = [summaries[i] for i in idx]
            enc = self._encode(batch)
            record = LogprobRecorder() if scored else None
            with self.lock, torch.inference_mode():
                halt = _stopping(stop, cancelled, idx, settings.rows_per_summary)
                out = self.model.generate(**enc, **settings.generate_kwargs(self.tokenizer), **halt,
                                          **self._processors(settings, enc, batch, record,
                                                             [targets[i] for i in idx]))
            new = out[:, enc["input_ids"].shape[1]:]
            texts = [self.decode(row) for row in new]
            means = self._mean_logprobs(record.per_token(new), new) if scored else [None] * len(texts)
            k = settings.rows_per_summary
            for j, i in enumerate(idx):
                rows = slice(j * k, (j + 1) * k)
                cands = [{"text": t, "mean_logprob": m} for t, m in zip(texts[rows], means[rows])]
                results[i] = rank(summaries[i], cands, sort=settings.candidates > 1) if scored else cands
            bar.update(len(idx))
        bar.close()
        ordered = [results[i] for i in range(len(summaries))]
        if details:
            return [{"text": c[0]["text"], "candidates": c} for c in ordered]
        return [[c["text"] for c in cands[:settings.num_return_sequences]] for cands in ordered]

    def _mean_logprobs(self, logprobs, new) -> list[float]:
        """Mean log-probability of each row's tokens up to and including its first stop token."""
        stops = set(prompts.stop_token_ids(self.tokenizer))
        means = []
        for row, lp in zip(new.tolist(), logprobs):
            n = next((k + 1 for k, t in enumerate(row) if t in stops), len(row))
            means.append(round(float(lp[:n].mean()), 4) if n else 0.0)
        return means

    def decode(self, ids) -> str:
        """Text up to the first stop token, without special tokens."""
        stops = set(prompts.stop_token_ids(self.tokenizer))
        ids = [int(t) for t in ids]
        for k, t in enumerate(ids):
            if t in stops:
                ids = ids[:k]
                break
        return self.tokenizer.decode(ids, skip_special_tokens=True).strip()

    def stream(self, summary: str, settings: GenerationSettings | None = None,
               stop: Callable[[], bool] | None = None) -> Iterator[str]:
        """Yield the abstract piece by piece as the model writes it; `stop()` as in `generate`."""
        import torch
        from transformers import TextIteratorStreamer

        settings = (settings or GenerationSettings()).validate()
        if settings.num_return_sequences != 1:
            raise UserError("streaming writes one abstract: num_return_sequences must be 1")
        if settings.candidates != 1:
            raise UserError("streaming writes one abstract as it goes: candidates must be 1 (ranking needs them whole)")
        enc = self._encode([summary])
        streamer = TextIteratorStreamer(self.tokenizer, skip_prompt=True, skip_special_tokens=True, timeout=600)
        error: list[BaseException] = []

        def run():
            try:
                with self.lock, torch.inference_mode():
                    if settings.seed is not None:
                        torch.manual_seed(settings.seed)
                    self.model.generate(**enc, **settings.generate_kwargs(self.tokenizer), **_stopping(stop),
                                        **self._processors(settings, enc, [summary]), streamer=streamer)
            except BaseException as e:  # surfaced in the consumer's thread below
                error.append(e)
                streamer.end()

        thread = threading.Thread(target=run, daemon=True)
        thread.start()
        yield from streamer
        thread.join()
        if error:
            raise error[0]


def _stopping(stop: Callable[[], bool] | None, cancelled: Callable[[int], bool] | None = None,
              summaries: list[int] | None = None, rows_per_summary: int = 1) -> dict:
    """`stopping_criteria` for model.generate that ends every sequence once `stop()` is true, and the rows of
    summary `summaries[j]` once `cancelled(summaries[j])` is (rows come `rows_per_summary` to a summary)."""
    if stop is None and cancelled is None:
        return {}
    import torch
    from transformers import StoppingCriteria, StoppingCriteriaList

    class StopWhen(StoppingCriteria):
        def __call__(self, input_ids, scores, **kwargs):
            rows = input_ids.shape[0]
            if stop is not None and stop():
                return torch.ones(rows, dtype=torch.bool, device=input_ids.device)
            if cancelled is None or summaries is None:
                return torch.zeros(rows, dtype=torch.bool, device=input_ids.device)
            gone = [bool(cancelled(summaries[r // rows_per_summary])) for r in range(rows)]
            return torch.tensor(gone, dtype=torch.bool, device=input_ids.device)

    return {"stopping_criteria": StoppingCriteriaList([StopWhen()])}


def reference_losses(model, tokenizer, samples: list[dict], instruction: str | None = None,
                     chunk: int = 128, batch_size: int = 16) -> list[tuple[float, int]]:
    """Per sample, the summed loss and the number of tokens of the model's turn (the reference abstract and its end of
    turn). Samples go through the model `batch_size` at a time, right-padded (causal attention: padding after a row's
    tokens changes none of them), and the LM head is applied in chunks of positions: the (tokens, 262k) logits are
    never held at once. One transfer to the host per batch."""
    import torch
    import torch.nn.functional as F

    from writemypaper import prompts

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = base.get_decoder(), base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    device = next(model.parameters()).device
    examples = [prompts.encode_example(tokenizer, s["summary"], s["reference"], instruction) for s in samples]
    pad = tokenizer.pad_token_id if tokenizer.pad_token_id is not None else 0
    out = []
    with torch.inference_mode():
        for b in range(0, len(examples), batch_size):
            group = examples[b:b + batch_size]
            width = max(len(e["input_ids"]) for e in group)
            ids = torch.full((len(group), width), pad, dtype=torch.long)
            labels = torch.full((len(group), width), -100, dtype=torch.long)
            mask = torch.zeros((len(group), width), dtype=torch.long)
            for i, e in enumerate(group):
                n = len(e["input_ids"])
                ids[i, :n], labels[i, :n], mask[i, :n] = torch.tensor(e["input_ids"]), torch.tensor(e["labels"]), 1
            ids, labels, mask = ids.to(device), labels.to(device), mask.to(device)
            hidden = backbone(input_ids=ids, attention_mask=mask).last_hidden_state
            target = labels[:, 1:]  # position t predicts token t+1
            rows, pos = (target != -100).nonzero(as_tuple=True)
            sums = torch.zeros(len(group), dtype=torch.float32, device=device)
            for start in range(0, len(rows), chunk):
                r, p = rows[start:start + chunk], pos[start:start + chunk]
                logits = head(hidden[r, p]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                sums.index_add_(0, r, F.cross_entropy(logits, target[r, p], reduction="none"))
            out += zip(sums.tolist(), (target != -100).sum(1).tolist())
    return out


def reference_loss(model, tokenizer, samples: list[dict], instruction: str | None = None, chunk: int = 128) -> float:
    """Mean loss per token over all the samples' references."""
    losses = reference_losses(model, tokenizer, samples, instruction, chunk)
    return sum(t for t, _ in losses) / max(sum(n for _, n in losses), 1)
