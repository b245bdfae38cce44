"""Batched and streaming generation of abstracts from summaries, with the training prompt.

    writemypaper generate "요약문..." --model runs/demo
    writemypaper generate --data prepared --split test --model runs/demo --out predictions.jsonl
"""

from __future__ import annotations

import csv
import json
import re
import threading
from dataclasses import asdict, dataclass, fields
from pathlib import Path
from typing import Callable, Iterator

from writemypaper import prompts
from writemypaper.errors import UserError


@dataclass
class GenerationSettings:
    """Defaults suit abstracts: sampling at a moderate temperature with a repetition penalty, because greedy
    decoding with no repetition control loops on small models. The penalty covers the generated tokens only: this
    task must copy the summary's numbers and terms. `grounded` lets the model write only numbers the summary holds
    (writemypaper.grounding); `candidates` > 1 samples that many abstracts per summary in one batched call and ranks
    them by the fact check (fewest unsupported facts, then most coverage, then highest mean log-probability).

    These are the one place the defaults live: the generate and evaluate presets set only what they change, and a
    server request starts from them."""

    max_new_tokens: int = 512
    temperature: float = 0.7
    top_p: float = 0.9
    top_k: int = 50
    repetition_penalty: float = 1.15
    num_return_sequences: int = 1
    do_sample: bool = True
    seed: int | None = 0
    grounded: bool = True
    candidates: int = 1

    def problems(self) -> list[tuple[str, str]]:
        """Each setting out of range, as (field, message). The server names the field in its 400s; `validate`
        raises them all in one line."""
        problems = []
        if not 1 <= self.max_new_tokens <= 8192:
            problems.append(("max_new_tokens", f"max_new_tokens={self.max_new_tokens} is not in [1, 8192]"))
        if not 0.0 <= self.temperature <= 5.0:
            problems.append(("temperature", f"temperature={self.temperature} is not in [0, 5]"))
        elif 0.0 < self.temperature < 0.01:  # dividing the logits by it overflows to inf, and sampling fails
            problems.append(("temperature", f"temperature={self.temperature} is too small to sample with: send 0 "
                             "for greedy decoding, or at least 0.01"))
        if not 0.0 < self.top_p <= 1.0:
            problems.append(("top_p", f"top_p={self.top_p} is not in (0, 1]"))
        if self.top_k < 0:
            problems.append(("top_k", f"top_k={self.top_k} is negative"))
        if not 0.5 <= self.repetition_penalty <= 3.0:
            problems.append(("repetition_penalty",
                             f"repetition_penalty={self.repetition_penalty} is not in [0.5, 3]"))
        if not 1 <= self.num_return_sequences <= 16:
            problems.append(("num_return_sequences",
                             f"num_return_sequences={self.num_return_sequences} is not in [1, 16]"))
        elif self.num_return_sequences > 1 and not self.sampling:
            problems.append(("num_return_sequences", f"num_return_sequences={self.num_return_sequences} needs "
                             "sampling (do_sample=true, temperature > 0): greedy decoding writes the same abstract "
                             "every time"))
        if not isinstance(self.grounded, bool):
            problems.append(("grounded", f"grounded={self.grounded!r} is not true or false"))
        if not isinstance(self.candidates, int) or not 1 <= self.candidates <= 16:
            problems.append(("candidates", f"candidates={self.candidates} is not in [1, 16]"))
        elif self.candidates > 1:
            if not self.sampling:
                problems.append(("candidates", f"candidates={self.candidates} needs sampling (do_sample=true, "
                                 "temperature > 0): greedy decoding writes the same abstract every time"))
            if self.num_return_sequences > self.candidates:
                problems.append(("num_return_sequences", f"num_return_sequences={self.num_return_sequences} is more "
                                 f"than candidates={self.candidates}: the best ones are returned out of the "
                                 "candidates"))
        return problems

    def validate(self) -> "GenerationSettings":
        problems = self.problems()
        if problems:
            raise UserError("; ".join(message for _, message in problems))
        return self

    @property
    def sampling(self) -> bool:
        return self.do_sample and self.temperature > 0

    @property
    def rows_per_summary(self) -> int:
        """Sequences generated for each summary: the candidates, or the abstracts asked for."""
        return max(self.candidates, self.num_return_sequences)

    @classmethod
    def from_dict(cls, d: dict) -> "GenerationSettings":
        names = {f.name for f in fields(cls)}
        unknown = set(d) - names
        if unknown:
            raise UserError(f"unknown generation setting(s): {', '.join(sorted(unknown))} (known: {', '.join(sorted(names))})")
        return cls(**d).validate()

    def generate_kwargs(self, tokenizer) -> dict:
        """Keyword arguments for `model.generate`, without the repetition penalty: transformers would apply it to
        the prompt too. `Generator` adds it (and grounding) as logits processors; see `logits_processors`."""
        kw = dict(
            max_new_tokens=self.max_new_tokens,
            do_sample=self.sampling,
            repetition_penalty=1.0,  # explicit, so a model's generation_config cannot bring the prompt-wide one back
            num_return_sequences=self.rows_per_summary,
            eos_token_id=prompts.stop_token_ids(tokenizer),
            pad_token_id=tokenizer.pad_token_id,
        )
        if self.sampling:
            kw.update(temperature=self.temperature, top_p=self.top_p, top_k=self.top_k)
        else:
            kw.update(temperature=None, top_p=None, top_k=None)
        return kw


def logits_processors(settings: GenerationSettings, prompt_length: int, summaries: list[str] | None = None,
                      table=None, record=None) -> list:
    """The processors `Generator` passes to `model.generate`, in order: the log-probability recorder (raw logits),
    the repetition penalty over generated tokens only, then grounded numbers."""
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
    return procs


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
    """A loaded model and tokenizer that write abstracts: `generate` for batches, `stream` for one summary."""

    def __init__(self, model, tokenizer, instruction: str | None = None):
        self.model = model
        self.tokenizer = tokenizer
        self.tokenizer.padding_side = "left"  # batched generation needs the prompts flush right
        self.instruction = instruction
        self.lock = threading.Lock()  # one generate call on the model at a time (the server shares one Generator)
        self._numbers = None

    @classmethod
    def load(cls, model: str | None = None, precision: str = "auto", device: str | None = None,
             instruction: str | None = None) -> "Generator":
        if model is not None and str(model).endswith(".gguf"):  # a GGUF file runs through llama.cpp (an extra)
            from writemypaper.llamacpp import LlamaCppGenerator

            return LlamaCppGenerator.load(model, instruction=instruction)
        from writemypaper.models import load_for_inference

        m, tok = load_for_inference(model, precision=precision, device=device)
        return cls(m, tok, instruction=instruction or _run_instruction(model))

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
        texts = [prompts.render_prompt(s, self.instruction, self.tokenizer.bos_token) for s in summaries]
        return self.tokenizer(texts, add_special_tokens=False, return_tensors="pt", padding=True).to(self.device)

    def _processors(self, settings, enc, summaries, record=None) -> dict:
        from transformers import LogitsProcessorList

        table = self.number_table if settings.grounded else None
        procs = logits_processors(settings, enc["input_ids"].shape[1], summaries, table, record)
        return {"logits_processor": LogitsProcessorList(procs)} if procs else {}

    def generate(self, summaries: list[str], settings: GenerationSettings | None = None, batch_size: int = 8,
                 progress: bool = False, stop: Callable[[], bool] | None = None, details: bool = False,
                 cancelled: Callable[[int], bool] | None = None) -> list:
        """One list of `num_return_sequences` abstracts per summary, in input order, best first when
        `candidates` > 1. `batch_size` counts summaries per model call (each brings `rows_per_summary` sequences).
        `stop()` returning true ends generation within a token (the server uses it when its clients have gone);
        `cancelled(i)` returning true ends summary i's rows only (their text comes back cut short), the others go on.

        details=True returns, per summary, {"text": the best, "candidates": [{"text", "unsupported", "coverage",
        "mean_logprob"}, ...]} (ranked when candidates > 1, else in sampled order)."""
        import torch
        from tqdm.auto import tqdm

        settings = (settings or GenerationSettings()).validate()
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
                                          **self._processors(settings, enc, batch, record))
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


# One Kiwi instance serves the process: the server checks texts on other threads while the model's thread ranks.
FACT_CHECK_LOCK = threading.Lock()


def rank(summary: str, candidates: list[dict], sort: bool = True) -> list[dict]:
    """Candidates (dicts with "text" and "mean_logprob") scored by the fact check and, if `sort`, sorted best first:
    fewest unsupported facts, then most coverage of the summary, then highest mean log-probability."""
    from writemypaper.metrics import faithfulness

    scored = []
    for c in candidates:
        with FACT_CHECK_LOCK:
            f = faithfulness(summary, c["text"])
        scored.append({"text": c["text"], "unsupported": f["unsupported"], "coverage": round(f["coverage"], 4),
                       "mean_logprob": c["mean_logprob"]})
    if not sort:
        return scored
    return sorted(scored, key=lambda c: (len(c["unsupported"]), -c["coverage"], -(c["mean_logprob"] or 0.0)))


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


def _run_instruction(model: str | None) -> str | None:
    """A training run remembers its instruction, so generation uses the one it was trained with."""
    return instruction_in(Path(model)) if model else None


def instruction_in(folder: Path) -> str | None:
    """The `instruction` that the record of a run or an export in `folder` names, if it has one; a damaged record is
    a one-line error, not a traceback."""
    from writemypaper import record

    try:
        rec = record.read(folder)
    except record.RecordError as e:
        raise UserError(f"{e}; it is written by `writemypaper train` or `export`") from None
    return rec.instruction if rec else None


# ---------------------------------------------------------------------------------------------------------------------
# inputs


def read_inputs(path: str | Path) -> list[dict]:
    """Summaries from .txt (one a line), .jsonl (a `summary` field) or .csv (a `summary` column)."""
    from writemypaper.text import read_jsonl, read_text

    path = Path(path)
    if path.suffix not in (".txt", ".jsonl", ".csv"):
        raise UserError(f"{path}: use .txt (one summary a line), .jsonl (a 'summary' field) or .csv (a 'summary' column)")
    if path.suffix == ".jsonl":
        return [obj for _, obj in read_jsonl(path, "--input", ("summary",))]
    text = read_text(path, "--input")
    if path.suffix == ".txt":
        # Line breaks only: str.splitlines would also cut at a form feed or U+2028, which text pasted from a PDF holds.
        rows = [{"summary": line.strip()} for line in re.split(r"\r\n|\r|\n", text) if line.strip()]
    else:
        rows = _csv_rows(text, path)
    if not rows:
        raise UserError(f"{path}: no summaries in it")
    return rows


def _csv_rows(text: str, path: Path) -> list[dict]:
    """The rows of a CSV file with a `summary` column. The reader gets the text whole (newline=""), so a quoted
    cell that spans lines stays one cell with its line breaks, as a spreadsheet writes it."""
    import io

    # strict: an unclosed quote is an error, not a cell that swallows the rest of the file
    reader = csv.DictReader(io.StringIO(text, newline=""), strict=True)
    try:
        if "summary" not in (reader.fieldnames or []):
            raise UserError(f"{path}: no 'summary' column (columns: {', '.join(reader.fieldnames or [])})")
        rows = []
        for r in reader:
            if None in r:  # more cells than the header names
                raise UserError(f"{path}:{reader.line_num}: {len(reader.fieldnames) + len(r[None])} cells in a row "
                                f"under a header of {len(reader.fieldnames)}; quote cells that hold commas")
            if (r.get("summary") or "").strip():
                rows.append(dict(r))
    except csv.Error as e:  # an unclosed quote, a NUL byte, a cell over the size limit
        raise UserError(f"{path}:{reader.line_num}: not readable as CSV: {e}") from None
    return rows


def settings_from_config(cfg) -> GenerationSettings:
    """The config's `generation:` section over GenerationSettings' defaults: a preset sets only what it changes.
    The full settings are written back into `cfg.generation`, so the config saved next to an output shows every
    value that was used."""
    from writemypaper.config import to_dict

    section = cfg.get("generation")
    settings = GenerationSettings.from_dict(to_dict(section) if section is not None else {})
    cfg.generation = asdict(settings)
    return settings


def run(cfg, model: str | None, summary: str | None = None, input_path: str | None = None, data: str | None = None,
        split: str | None = None, out: str | None = None, limit: int | None = None,
        save_candidates: bool = False) -> list[dict] | None:
    """The `generate` verb. One summary streams to the terminal (or, with candidates, prints the best); many get a
    progress bar and a JSONL file."""
    import sys

    sources = sum(x is not None for x in (summary, input_path, split))
    if sources != 1:
        raise UserError("give exactly one of: a summary, --input FILE, or --split SPLIT (with --data DIR)")
    if split is not None and data is None:
        raise UserError("--split needs --data PREPARED_DIR")
    settings = settings_from_config(cfg)
    if save_candidates and out is None:
        raise UserError("--save-candidates writes into the JSONL file: give --out FILE.jsonl")
    gen = Generator.load(model or cfg.model, precision=cfg.precision, instruction=cfg.get("instruction"))
    if summary is not None and out is None:
        if settings.candidates == 1:
            for piece in gen.stream(summary, settings):
                sys.stdout.write(piece)
                sys.stdout.flush()
            sys.stdout.write("\n")
            return None
        [d] = gen.generate([summary], settings, details=True)
        print(d["text"])
        counts = ", ".join(str(len(c["unsupported"])) for c in d["candidates"])
        print(f"best of {settings.candidates} candidates (unsupported facts, best first: {counts})", file=sys.stderr)
        return None
    if summary is not None:
        rows = [{"summary": summary}]
    elif input_path is not None:
        rows = read_inputs(input_path)
    else:
        from writemypaper.data import load_split

        ds = load_split(data, split)
        rows = [{"doc_id": r["doc_id"], "summary": r["summary"], "reference": r["original"]} for r in ds]
    if limit:
        rows = rows[:limit]
    return _write_rows(cfg, gen, settings, rows, model or cfg.model, out, save_candidates)


def _write_rows(cfg, gen: Generator, settings: GenerationSettings, rows: list[dict], model: str, out: str | None,
                save_candidates: bool) -> list[dict]:
    from writemypaper.atomic import atomic_write_jsonl

    summaries = [r["summary"] for r in rows]
    if save_candidates:
        details = gen.generate(summaries, settings, batch_size=cfg.batch_size, progress=True, details=True)
    else:  # no fact check needed beyond the ranking generate does itself
        details = [{"candidates": [{"text": t} for t in texts]}
                   for texts in gen.generate(summaries, settings, batch_size=cfg.batch_size, progress=True)]
    # Every row says how it was written: grounding, candidates and sampling change what a reader should expect.
    record_settings = asdict(settings) | {"do_sample": settings.sampling, "model": model}
    results = []
    for r, d in zip(rows, details):
        for k, cand in enumerate(d["candidates"][:settings.num_return_sequences]):
            row = {**r, "generated": cand["text"], "sample": k, "settings": record_settings}
            if save_candidates:
                row["candidates"] = d["candidates"]
            results.append(row)
    if out is None:
        for r in results:
            print(json.dumps(r, ensure_ascii=False))
    else:
        from writemypaper.config import save_config

        atomic_write_jsonl(out, results)
        save_config(cfg, Path(out).with_suffix(".config.yaml"))
        print(f"wrote {len(results)} abstracts to {out}")
    return results
