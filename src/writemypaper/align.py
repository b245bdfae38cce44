"""The `align` verb: preference tuning of a finished training run with the fact check as the judge, so that the model
is faithful by itself, without grounded decoding. Pairs come from the run's own samples (the candidate with the
fewest unsupported facts against the one with the most) and from references with one figure changed (CLIFF's
contrastive negatives, which cost no sampling); TRL's DPOTrainer then continues the run's adapter against a frozen
copy of it, and the aligned run is again base + one adapter, written as `train` writes a run.

    writemypaper align --run runs/demo --data prepared --out runs/demo-aligned
"""

from __future__ import annotations

import random
import re
import sys
import time
from decimal import Decimal
from pathlib import Path

from writemypaper.errors import UserError

# How a candidate is judged: an unsupported figure or term weighs more than all of coverage and length together, so
# the fewer-unsupported candidate always wins; coverage of the summary comes next, closeness to the reference's
# length last.
W_UNSUPPORTED, W_COVERAGE, W_LENGTH = 1.0, 0.5, 0.25
# What DPOConfig must not be given in `training:`: writemypaper sets them, or they would break the run's guarantees.
RESERVED = {"output_dir": "--out", "resume_from_checkpoint": "--resume", "bf16": "precision=...",
            "fp16": "precision=...", "truncation_mode": "(pairs over max_length are dropped, never truncated)"}
PAIRS_FILE = "pairs.jsonl"  # the pairs a run trains on, kept so that --resume trains on the same ones


# ---------------------------------------------------------------------------------------------------------------------
# the judge: candidates scored by the fact check, pairs built from them


def score(summary: str, reference: str, text: str) -> dict:
    """The fact check's verdict on one candidate, and the one number pairs are built on (higher is better)."""
    from writemypaper.factcheck import faithfulness

    f = faithfulness(summary, text)
    ref_len = max(1, len(reference.strip()))
    length_off = min(1.0, abs(len(text.strip()) - ref_len) / ref_len)
    total = -W_UNSUPPORTED * len(f["unsupported"]) + W_COVERAGE * f["coverage"] - W_LENGTH * length_off
    return {"unsupported": len(f["unsupported"]), "coverage": round(f["coverage"], 4),
            "length_off": round(length_off, 4), "score": round(total, 4)}


def sampled_pair(summary: str, reference: str, texts: list[str], min_gap: float, min_coverage: float,
                 min_length: float = 0.0) -> dict | None:
    """The best candidate against the worst, or None where the judge cannot tell them apart (a gap under
    `min_gap`: a tie) or no candidate may be chosen. A candidate that covers less than `min_coverage` of the summary
    (an empty or a runaway text has few facts to get wrong) is never chosen, nor one shorter than `min_length` times
    the reference: the summary said again invents nothing, but it is not an abstract, and a model taught to prefer
    it learns to echo its input."""
    scored = sorted(({**score(summary, reference, t), "text": t} for t in texts), key=lambda c: -c["score"])
    shortest = min_length * len(reference.strip())
    eligible = [c for c in scored if c["text"].strip() and c["coverage"] >= min_coverage
                and len(c["text"].strip()) >= shortest]
    if not eligible:
        return None
    best, worst = eligible[0], scored[-1]
    gap = round(best["score"] - worst["score"], 4)
    if best is worst or gap < min_gap:
        return None
    return {"summary": summary, "chosen": best["text"], "rejected": worst["text"], "source": "sampled", "gap": gap}


_DIGITS = re.compile(r"[0-9]+(?:\.[0-9]+)?")


def _changed_values(digits: str, rng: random.Random) -> list[str]:
    """Other values written like `digits` (as many decimals): near ones first, as an invented figure would be."""
    if "." in digits:
        places = len(digits.split(".")[1])
        step = Decimal(1).scaleb(-places)
        value = Decimal(digits)
        out = [value + step * k for k in (1, 2, 5, 10)] + [value - step * k for k in (1, 2) if value - step * k > 0]
        return [f"{v:.{places}f}" for v in out]
    value = int(digits)
    out = [value + 1, value + 2, value * 2, value + 10] + ([value - 1] if value > 1 else [])
    rng.shuffle(out)
    return [str(v) for v in out]


def contrastive_negative(summary: str, reference: str, rng: random.Random) -> dict | None:
    """The reference as chosen against the same reference with exactly one of its figures changed to a value the
    summary does not hold (the changed figure is unsupported, which the fact check confirms). A figure the summary
    supports is changed first: that is the error that turns a faithful abstract into an unfaithful one. None when the
    reference has no figure to change."""
    from writemypaper.factcheck import extract_facts, unsupported_facts
    from writemypaper.text import nfc

    reference = nfc(reference)
    before = {(f.start, f.end) for f in unsupported_facts(summary, reference)}
    facts = [f for f in extract_facts(reference) if f.kind in ("number", "year") and _DIGITS.search(f.text)]
    pool = [f for f in facts if (f.start, f.end) not in before]
    rng.shuffle(pool)
    rest = [f for f in facts if (f.start, f.end) in before]
    rng.shuffle(rest)
    for fact in pool + rest:
        m = _DIGITS.search(fact.text)
        for value in _changed_values(m.group(), rng):
            figure = fact.text[:m.start()] + value + fact.text[m.end():]
            text = reference[:fact.start] + figure + reference[fact.end:]
            if len(unsupported_facts(summary, text)) > len(before):
                return {"summary": summary, "chosen": reference, "rejected": text, "source": "constructed",
                        "changed": [fact.text, figure]}
    return None


FIGURE_KINDS = ("number", "year", "century")  # the fact check's kinds that are figures, not terms
# A sentence ends at . ! ? before whitespace (a decimal point has a digit after it, never a space).
_SENTENCE_END = re.compile(r"(?<=[.!?])\s+")


def trimmed_reference(summary: str, reference: str, min_coverage: float) -> dict | None:
    """The reference without its sentences that hold a figure the summary does not support, as chosen, against the
    whole reference: a human abstract adds figures its summary never states (the reference's own unsupported rate
    is about 0.4), and a model tuned on it learns to add figures too. This pair teaches the difference, with the
    rest of the text the same. None where no sentence holds one, where what is left is under half the reference,
    or where it covers less than `min_coverage` of the summary."""
    from writemypaper.factcheck import coverage, unsupported_facts
    from writemypaper.text import nfc

    reference = nfc(reference).strip()
    flagged = [f for f in unsupported_facts(summary, reference) if f.kind in FIGURE_KINDS]
    if not flagged:
        return None
    sentences, at = [], 0
    for part in _SENTENCE_END.split(reference):
        start = reference.index(part, at)
        sentences.append((part, start, start + len(part)))
        at = start + len(part)
    kept = [t for t, a, b in sentences if not any(a <= f.start < b for f in flagged)]
    chosen = " ".join(kept)
    if len(kept) == len(sentences) or 2 * len(chosen) < len(reference) or coverage(summary, chosen) < min_coverage:
        return None
    return {"summary": summary, "chosen": chosen, "rejected": reference, "source": "trimmed",
            "dropped": len(sentences) - len(kept)}


def build_pairs(rows: list[dict], samples: dict[int, list[str]], negatives: bool, min_gap: float,
                min_coverage: float, seed: int, trimmed: bool = False,
                min_length: float = 0.0) -> tuple[list[dict], dict]:
    """Pairs for every row ({"summary", "original"}): from its sampled candidates where it has some, a constructed
    negative if asked, and a trimmed reference if asked. Returns (pairs, counts)."""
    rng = random.Random(seed)
    pairs, counts = [], {"sampled": 0, "sampled_ties": 0, "constructed": 0, "no_figure": 0}
    if trimmed:
        counts.update(trimmed=0, untrimmed=0)
    for i, row in enumerate(rows):
        if i in samples:
            pair = sampled_pair(row["summary"], row["original"], samples[i], min_gap, min_coverage, min_length)
            counts["sampled" if pair else "sampled_ties"] += 1
            pairs += [pair] if pair else []
        if negatives:
            pair = contrastive_negative(row["summary"], row["original"], rng)
            counts["constructed" if pair else "no_figure"] += 1
            pairs += [pair] if pair else []
        if trimmed:
            pair = trimmed_reference(row["summary"], row["original"], min_coverage)
            counts["trimmed" if pair else "untrimmed"] += 1
            pairs += [pair] if pair else []
    return pairs, counts


# ---------------------------------------------------------------------------------------------------------------------
# the config: a preset of kind `align`, picked for the device when none is given


def load(name: str | None, overrides: list[str], limit: int | None = None, sample: int | None = None,
         candidates: int | None = None, negatives: bool = True):
    """The align config: `name` (align-gpu on a GPU, align-cpu otherwise, said on stderr), its overrides, then the
    command line's options over both."""
    from omegaconf import OmegaConf

    from writemypaper.config import load_config
    from writemypaper.policy import cuda_available

    if name is None:
        name = "align-gpu" if cuda_available() else "align-cpu"
        print(f"writemypaper: preset: {name}", file=sys.stderr)
    cfg = load_config(name, overrides, kind="align")
    for key, value in (("limit", limit), ("sampling.summaries", sample), ("sampling.candidates", candidates)):
        if value is not None:
            OmegaConf.update(cfg, key, value)
    if not negatives:
        cfg.pairs.negatives = False
    return cfg


# ---------------------------------------------------------------------------------------------------------------------
# validation: every problem found before any model is loaded


def validate(cfg, run: str, data: str, out: str, resume: bool, overwrite: bool) -> None:
    """The run to align, the data, RUN_DIR under train's output policy, and the config's values (DPOConfig built as
    the run will build it, so TRL's own checks run now too), reported together, one line each."""
    from writemypaper.train import _out_problems

    problems = _run_problems(run)
    if not (Path(data) / "train.parquet").is_file():
        problems.append(f"--data {data}: no train.parquet; not a directory written by `writemypaper prepare`")
    if Path(out).resolve() == Path(run).resolve():
        problems.append(f"--out {out} is the run being aligned: pick another --out, the aligned run is a new run")
    else:
        problems += _out_problems(Path(out), resume, overwrite)
    problems += _pair_problems(cfg)
    problems += [f"training.{k} is set by writemypaper (use {use})" for k, use in RESERVED.items() if k in cfg.training]
    if not problems:
        import torch

        try:
            dpo_config(cfg, Path(out), torch.float32)
        except (ValueError, TypeError) as e:
            problems.append(f"training: {' '.join(str(e).split())}")
    if problems:
        raise UserError(*problems)


def _pair_problems(cfg) -> list[str]:
    """The sampling and pair settings: ranges, and the sampling settings as generation itself checks them."""
    problems = []
    n, k, limit = cfg.sampling.summaries, cfg.sampling.candidates, cfg.get("limit")
    if limit is not None and not (isinstance(limit, int) and limit >= 1):
        problems.append(f"limit={limit} must be at least 1, or null for every training summary")
    if not (isinstance(n, int) and n >= 0):
        problems.append(f"sampling.summaries={n} must be 0 (constructed pairs only) or more")
    elif n and not (isinstance(k, int) and k >= 2):
        problems.append(f"sampling.candidates={k}: sampling needs at least 2 candidates a summary to compare (or "
                        f"sampling.summaries=0 for constructed negatives only)")
    else:  # checked without sampling too: a value given on the command line is never silently ignored
        said = [m.replace("num_return_sequences", "candidates") for _, m in sampling_settings(cfg).problems()]
        problems += [f"sampling.{message}" for message in said]
    source = cfg.pairs.get("from_file")
    if source is not None and not Path(str(source)).is_file():
        problems.append(f"pairs.from_file={source}: no such file (an align run's {PAIRS_FILE})")
    if source is None and not n and not cfg.pairs.negatives and not cfg.pairs.get("trimmed"):
        problems.append("no pairs to train on: set sampling.summaries above 0, pairs.negatives=true or "
                        "pairs.trimmed=true")
    for key, low, high in (("min_gap", 0.0, None), ("min_coverage", 0.0, 1.0), ("min_length", 0.0, 1.0)):
        v = cfg.pairs.get(key, 0.0 if key == "min_length" else None)  # a run saved before min_length: none
        if not isinstance(v, (int, float)) or v < low or (high is not None and v > high):
            problems.append(f"pairs.{key}={v} must be a number in [{low}, {high if high is not None else 'inf'}]")
    return problems


def _run_problems(run: str) -> list[str]:
    from writemypaper import record
    from writemypaper.weights import is_run_dir

    if not Path(run).is_dir() or not is_run_dir(run):
        return [f"--run {run}: not a training run (no adapter_config.json); make one with `writemypaper train`"]
    try:
        rec = record.read(run)
    except record.RecordError as e:
        return [f"--run {e}"]
    if rec is not None and not rec.finished:
        return [f"--run {run}: the training run did not finish (its writemypaper.json says so); continue it with "
                f"`writemypaper train --resume --out {run} ...`"]
    return []


# ---------------------------------------------------------------------------------------------------------------------
# the verb


def align(cfg, run: str, data: str, out: str, resume: bool = False, overwrite: bool = False) -> dict:
    """The `align` verb. Returns the metrics written to RUN_DIR/metrics.json."""
    from writemypaper import models, train
    from writemypaper.trainer import count_parameters

    validate(cfg, run, data, out, resume, overwrite)
    _inherit(cfg, run)
    out_dir = Path(out)
    tokenizer = models.load_tokenizer(run, padding_side="right")
    policy = train._policy(cfg, models.resolve_model(cfg.model))
    model = _load_run(cfg, run, tokenizer, policy)
    rows = _rows(cfg, data)

    pairs, counts = _pairs(cfg, out_dir, model, tokenizer, rows, resume)
    train_ds, dropped = preference_dataset(pairs, tokenizer, cfg.instruction, cfg.training.get("max_length"))
    counts["dropped_over_max_length"] = dropped
    if len(train_ds) == 0:  # refused before RUN_DIR is touched
        raise UserError(f"no preference pairs to train on from {len(rows)} summaries ({_said(counts)}); raise --limit, "
                        f"sample more candidates, or lower pairs.min_gap")
    print(f"writemypaper: {len(train_ds)} preference pairs ({_said(counts)})", file=sys.stderr)
    rec = train._start_run(cfg, data, out_dir, overwrite and not resume)
    rec.extra["aligned_from"] = str(Path(run).resolve())
    _save_pairs(out_dir, pairs)
    trainer = build_dpo_trainer(cfg, model, tokenizer, train_ds, out_dir, policy.dtype)
    checkpoint = train._resume_from(out_dir) if resume else None
    start = time.time()
    result = train._fit(trainer, checkpoint, False)
    runtime = time.time() - start
    trainer.model.delete_adapter("ref")  # the frozen copy TRL added: the aligned run is base + one adapter
    sizes = {"train": len(train_ds), "validation": 0, "dropped_over_max_length": {"train": dropped, "validation": 0}}
    metrics = train._run_metrics(trainer, result, cfg, checkpoint, runtime, sizes,
                                 count_parameters(trainer.model), policy)
    metrics["align"] = _dpo_summary(trainer.state.log_history, counts)
    rec.extra["align"] = metrics["align"]
    train._write_run(trainer, tokenizer, out_dir, data, metrics, trainer.state.log_history, rec)
    return metrics


def _said(counts: dict) -> str:
    return ", ".join(f"{k.replace('_', ' ')}: {v}" for k, v in counts.items())


def _inherit(cfg, run: str) -> None:
    """What the aligned run keeps from the run it continues, never the preset's to choose: its base model,
    instruction and quantization (a QLoRA run is aligned on the same 4-bit base, and generate rounds the base
    through NF4 for it as for the run). Saved with the config, where generate and export read them."""
    from writemypaper import nf4, record
    from writemypaper.weights import run_base_model

    rec = record.read(run)
    cfg.model = run_base_model(run)
    cfg.instruction = rec.instruction if rec else None
    cfg.quantization = nf4.run_quantization(run)


def _load_run(cfg, run: str, tokenizer, policy):
    """The run's base (quantized as the run was) with its adapter, trainable: DPO continues it."""
    from peft import PeftModel

    from writemypaper import models

    base = models.load_model(cfg.model, quantization=cfg.quantization, tokenizer=tokenizer, policy=policy)
    model = PeftModel.from_pretrained(base, run, is_trainable=True)
    if cfg.quantization is None:
        model.to(models.default_device())
    return model


def _rows(cfg, data: str) -> list[dict]:
    """The training pairs aligned on: `limit` of them, a seeded subset stratified by field as train draws one."""
    from writemypaper.data import load_split
    from writemypaper.examples import stratified_subset

    ds = stratified_subset(load_split(data, "train"), cfg.get("limit"), cfg.training.get("seed", 42))
    if len(ds) == 0:
        raise UserError(f"--data {data}: the train split is empty")
    return [{"summary": s, "original": o} for s, o in zip(ds["summary"], ds["original"])]


def _pairs(cfg, out_dir: Path, model, tokenizer, rows: list[dict], resume: bool) -> tuple[list[dict], dict]:
    """The preference pairs: those a resumed run started with (RUN_DIR/pairs.jsonl: the very pairs, not a new
    draw of samples), else sampled and constructed now."""
    from writemypaper.text import read_jsonl

    # a rejected text may be empty: a sampled candidate that stopped at once is the worst of its summary
    fields, may_be_empty = ("summary", "chosen"), ("rejected",)
    path = out_dir / PAIRS_FILE
    if resume and path.is_file():
        pairs = [obj for _, obj in read_jsonl(path, "--resume", fields, may_be_empty)]
        return pairs, {"reused": len(pairs)}
    source = cfg.pairs.get("from_file")
    if source is not None:  # another run's pairs: a sweep over training settings samples once
        pairs = [obj for _, obj in read_jsonl(Path(str(source)), "pairs.from_file", fields, may_be_empty)]
        return pairs, {"from_file": len(pairs)}
    n = min(int(cfg.sampling.summaries or 0), len(rows))
    samples = sample_candidates(model, tokenizer, cfg, [r["summary"] for r in rows[:n]]) if n else []
    return build_pairs(rows, dict(enumerate(samples)), bool(cfg.pairs.negatives), cfg.pairs.min_gap,
                       cfg.pairs.min_coverage, cfg.training.get("seed", 42), bool(cfg.pairs.get("trimmed", False)),
                       float(cfg.pairs.get("min_length", 0.0)))


def _save_pairs(out_dir: Path, pairs: list[dict]) -> None:
    import json

    from writemypaper.atomic import atomic_write_text

    atomic_write_text(out_dir / PAIRS_FILE, "".join(json.dumps(p, ensure_ascii=False) + "\n" for p in pairs))


def sampling_settings(cfg):
    """Plain decoding, as a user of the model decodes it anywhere: sampled, without grounding."""
    from writemypaper.settings import GenerationSettings

    s = cfg.sampling
    return GenerationSettings(max_new_tokens=s.max_new_tokens, temperature=s.temperature, top_p=s.top_p,
                              repetition_penalty=s.repetition_penalty, num_return_sequences=s.candidates,
                              do_sample=True, seed=s.seed, grounded=False)


def sample_candidates(model, tokenizer, cfg, summaries: list[str]) -> list[list[str]]:
    """`sampling.candidates` abstracts per summary from the run's own model with plain decoding: no grounding, since
    the point is a model that is faithful without it."""
    from writemypaper.transformers_engine import Generator

    model.eval()
    try:
        texts = Generator(model, tokenizer, instruction=cfg.instruction).generate(
            summaries, sampling_settings(cfg).validate(), batch_size=cfg.sampling.batch_size, progress=True)
    finally:
        tokenizer.padding_side = "right"  # the Generator pads on the left; training pads on the right
    return texts


# ---------------------------------------------------------------------------------------------------------------------
# the DPO trainer: our prompt, one BOS, the end of turn inside the loss


def preference_dataset(pairs: list[dict], tokenizer, instruction: str | None, max_length: int | None):
    """TRL's tokenized preference rows (prompt_ids, chosen_ids, rejected_ids), each side encoded by
    prompts.encode_example exactly as training encodes the pair: our rendering of the prompt with one BOS, then the
    model's turn with its end-of-turn token and eos, which the collator puts inside the loss. TRL's own tokenization
    would tokenize the rendered text again with the tokenizer's special tokens (a second BOS) and merge the prompt's
    end with the answer, so the trainer takes these rows as they are (build_dpo_trainer). A pair longer than
    max_length is dropped, never truncated: a cut completion would lose its end of turn. Returns (dataset, pairs
    dropped)."""
    from datasets import Dataset

    from writemypaper import prompts

    rows, dropped = {"prompt_ids": [], "chosen_ids": [], "rejected_ids": []}, 0
    for p in pairs:
        sides = [prompts.encode_example(tokenizer, p["summary"], p[k], instruction) for k in ("chosen", "rejected")]
        n = sum(1 for label in sides[0]["labels"] if label == -100)  # the prompt: masked out of training's loss
        prompt_ids = sides[0]["input_ids"][:n]
        if (max_length and max(len(e["input_ids"]) for e in sides) > max_length) \
                or sides[1]["input_ids"][:n] != prompt_ids:
            dropped += 1
            continue
        rows["prompt_ids"].append(prompt_ids)
        rows["chosen_ids"].append(sides[0]["input_ids"][n:])
        rows["rejected_ids"].append(sides[1]["input_ids"][n:])
    return Dataset.from_dict(rows), dropped


def dpo_config(cfg, out: Path, dtype):
    """TRL's DPOConfig from the preset's `training:`, with what writemypaper sets itself: checkpoints under RUN_DIR,
    the device's precision, no truncation (preference_dataset drops long pairs), and evaluation off."""
    import torch
    from trl import DPOConfig

    from writemypaper.config import to_dict
    from writemypaper.trainer import CHECKPOINTS

    kw = to_dict(cfg.training)
    kw.update(output_dir=str(out / CHECKPOINTS), bf16=dtype == torch.bfloat16, fp16=dtype == torch.float16,
              eval_strategy="no", prediction_loss_only=True)
    if kw.get("save_strategy") is False:  # YAML reads an unquoted `no` as false
        kw["save_strategy"] = "no"
    kw.setdefault("report_to", ["tensorboard"])
    kw.setdefault("disable_tqdm", False)
    kw.setdefault("dataloader_pin_memory", torch.cuda.is_available())
    if kw.get("gradient_checkpointing"):
        kw.setdefault("gradient_checkpointing_kwargs", {"use_reentrant": False})
    return DPOConfig(**kw)


def build_dpo_trainer(cfg, model, tokenizer, train_ds, out_dir: Path, dtype):
    """TRL's DPOTrainer on the run's PEFT model: given a model that already holds a trained adapter, TRL copies it
    into a frozen `ref` adapter and computes the reference log-probabilities with it (its equivalent of
    model_adapter_name/ref_adapter_name), so the SFT adapter itself is the reference. Our callbacks mark complete
    checkpoints and show the losses. The rows come tokenized (preference_dataset) and are taken as they are."""
    import os

    from transformers.trainer_callback import ProgressCallback
    from trl import DPOTrainer

    from writemypaper.trainer import _callbacks

    class Tokenized(DPOTrainer):
        def _prepare_dataset(self, dataset, *args, **kwargs):
            return dataset  # preference_dataset's ids, encoded as training encodes: TRL would render them again

    os.environ["TENSORBOARD_LOGGING_DIR"] = str(Path(out_dir) / "tensorboard")
    trainer = Tokenized(model=model, args=dpo_config(cfg, out_dir, dtype), train_dataset=train_ds,
                         processing_class=tokenizer, callbacks=_callbacks(None))
    for cb in list(trainer.callback_handler.callbacks):
        if type(cb) is ProgressCallback:  # ours (LossBar) replaces the stock bar
            trainer.remove_callback(cb)
    return trainer


def _dpo_summary(history: list[dict], counts: dict) -> dict:
    """What the record keeps of the preference tuning: its pairs, and DPO's losses and reward margins (the policy's
    log-ratio of chosen over rejected, against the frozen run), with the last share of pairs ranked right."""
    def series(key):
        return [h[key] for h in history if key in h]

    losses, margins, accuracies = series("loss"), series("rewards/margins"), series("rewards/accuracies")
    return {"pairs": counts, "dpo_losses": losses, "reward_margins": margins,
            "reward_margin_first": margins[0] if margins else None,
            "reward_margin_last": margins[-1] if margins else None,
            "reward_accuracy_last": accuracies[-1] if accuracies else None}
