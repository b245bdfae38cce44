"""Score models on held-out pairs: ROUGE over Korean morphemes, a fact check, entity precision and recall, the
length in characters against its target, and loss/perplexity on the references, for each model under each decoding
(plain, grounded, best of N); write scores.json and report.html.

    writemypaper evaluate --data prepared --models base=gemma3-270m tuned=runs/demo --out eval
    writemypaper evaluate --predictions outputs.jsonl --target-chars 500 --out eval   # score outputs of any system
"""

from __future__ import annotations

import gc
import json
import re
import time
from dataclasses import asdict, dataclass, field, fields, replace
from pathlib import Path

from writemypaper.errors import UserError

SEPARATOR = " · "  # between model and decoding in a column's name: "tuned · grounded"


def parse_models(items: list[str]) -> dict[str, str]:
    """`name=ref` pairs (or a bare ref, named after itself)."""
    models: dict[str, str] = {}
    for item in items:
        name, _, ref = item.partition("=") if "=" in item else (Path(item).name or item, "", item)
        name, ref = name.strip(), ref.strip()
        if not name or not ref:
            raise UserError(f"--models {item}: use NAME=MODEL, e.g. tuned=runs/demo")
        if name in models:
            raise UserError(f"--models: the name '{name}' is used twice")
        models[name] = ref
    return models


# ---------------------------------------------------------------------------------------------------------------------
# Decodings


@dataclass(frozen=True)
class Decoding:
    """One way to decode: numbers grounded in the summary or not, best of `candidates`, other generation keys."""

    name: str
    grounded: bool = False
    candidates: int = 1
    overrides: dict = field(default_factory=dict)


_SHORT = re.compile(r"(plain|grounded)(?:\+([0-9]+))?")


def parse_decodings(items) -> list[Decoding]:
    """`plain`, `grounded`, `grounded+4` (best of 4), or {name, grounded, candidates, <generation key>: value}."""
    from writemypaper.config import to_dict

    if not isinstance(items, (list, tuple)):
        items = to_dict(items) if items is not None and not isinstance(items, str) else items
    if not isinstance(items, list) or not items:
        raise UserError("decodings: give a list, e.g. decodings=[plain,grounded,grounded+4]")
    out: list[Decoding] = []
    for item in items:
        if not isinstance(item, (str, dict)):
            item = to_dict(item)
        if isinstance(item, str):
            m = _SHORT.fullmatch(item.strip())
            if not m:
                raise UserError(f"decoding '{item}': use plain, grounded, plain+N or grounded+N "
                                "(or {name: ..., grounded: ..., candidates: ...})")
            d = Decoding(item.strip(), m[1] == "grounded", int(m[2] or 1))
        else:
            rest = dict(item)
            name = rest.pop("name", None)
            if not isinstance(name, str) or not name.strip() or SEPARATOR.strip() in name:
                raise UserError(f"decoding {item}: needs a name (text without '{SEPARATOR.strip()}')")
            grounded, candidates = rest.pop("grounded", False), rest.pop("candidates", 1)
            if not isinstance(grounded, bool) or not isinstance(candidates, int) or isinstance(candidates, bool):
                raise UserError(f"decoding '{name}': grounded must be true/false and candidates a whole number")
            d = Decoding(name.strip(), grounded, candidates, rest)
        if not 1 <= d.candidates <= 16:
            raise UserError(f"decoding '{d.name}': candidates={d.candidates} is not in [1, 16]")
        if d.name in {x.name for x in out}:
            raise UserError(f"decodings: the name '{d.name}' is used twice")
        out.append(d)
    return out


def decoding_settings(base, decoding: Decoding):
    """The generation settings for `decoding`, from the config's `generation:` section.

    Best of N needs N different abstracts, so candidates > 1 samples (with the seed, so reruns agree). A generator
    without grounding or candidates refuses a decoding that asks for them rather than quietly decoding plain.
    """
    names = {f.name for f in fields(base)}
    changes = dict(decoding.overrides)
    unknown = sorted(set(changes) - names)
    if unknown:
        raise UserError(f"decoding '{decoding.name}': unknown generation setting(s) {', '.join(unknown)}")
    if decoding.candidates > 1:
        changes["do_sample"] = True
    for key, value, default in (("grounded", decoding.grounded, False), ("candidates", decoding.candidates, 1)):
        if key in names:
            changes[key] = value
        elif value != default:
            raise UserError(f"decoding '{decoding.name}' needs {key}={value}, which this generator does not support; "
                            "use decodings=[plain]")
    settings = replace(base, **changes).validate()
    if decoding.candidates > 1 and settings.temperature <= 0:
        raise UserError(f"decoding '{decoding.name}': {decoding.candidates} candidates need temperature > 0")
    return settings


def describe(settings: dict) -> str:
    """How a column was decoded, in words, from its settings (a GenerationSettings as a dict)."""
    sampled = settings.get("do_sample") and (settings.get("temperature") or 0) > 0
    parts = [f"sampled (temperature {settings['temperature']}, top-p {settings.get('top_p')}, top-k "
             f"{settings.get('top_k')}, seed {settings.get('seed')})" if sampled else "greedy"]
    parts.append("numbers grounded in the summary" if settings.get("grounded") else "numbers unconstrained")
    if (settings.get("candidates") or 1) > 1:
        parts.append(f"best of {settings['candidates']} by the fact check")
    if settings.get("repetition_penalty") not in (None, 1.0):
        parts.append(f"repetition penalty {settings['repetition_penalty']}")
    parts.append(f"up to {settings.get('max_new_tokens')} new tokens")
    return ", ".join(parts)


# ---------------------------------------------------------------------------------------------------------------------
# Inputs and reference loss


def read_predictions(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows with summary, reference and prediction from a JSONL file. A row's own `id` and `doc_id` are kept; a row
    with neither is named by its line number."""
    from writemypaper.text import read_jsonl

    samples, preds = [], []
    for n, row in read_jsonl(Path(path), "--predictions", ("summary", "reference")):
        # `writemypaper generate --split test --out FILE` names the abstract `generated`; other tools `prediction`
        pred = row.get("prediction", row.get("generated"))
        if not isinstance(pred, str) or not pred.strip():
            raise UserError(f"{path}:{n}: missing or non-text field(s): prediction (or generated, as "
                            f"`writemypaper generate` writes it)")
        ids = {k: row[k] for k in ("id", "doc_id") if row.get(k) is not None} or {"doc_id": str(n)}
        samples.append({**ids, "ipc": row.get("ipc"), "summary": row["summary"], "reference": row["reference"]})
        preds.append(pred)
    return samples, preds


def _log_history(refs: dict[str, str]) -> list[dict] | None:
    """The training curve of the first model that is a run, or a GGUF exported from one (its writemypaper.json
    names the run)."""
    from writemypaper import record

    for ref in refs.values():
        run = Path(ref)
        if run.suffix == ".gguf":
            try:
                rec = record.read(run.parent)
            except record.RecordError:
                rec = None
            run = Path(rec.extra.get("exported_from") or run) if rec else run
        p = run / "log_history.json"
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
    return None


# ---------------------------------------------------------------------------------------------------------------------
# The verb


def _from_predictions(items: list[str]) -> tuple[list[dict], dict[str, list[str]], dict[str, dict]]:
    samples, preds, columns = None, {}, {}
    for item in items:
        name, _, path = item.partition("=") if "=" in item else (Path(item).stem, "", item)
        if name in preds:
            raise UserError(f"--predictions: the name '{name}' is used twice; name them, e.g. a={path}")
        s, p = read_predictions(path)
        if samples is not None and [x["summary"] for x in s] != [x["summary"] for x in samples]:
            raise UserError(f"{path}: its summaries differ from the first predictions file's; score them apart")
        samples = s
        preds[name] = p
        columns[name] = {"model": name, "decoding": None, "description": f"read from {path}", "settings": None}
    return samples, preds, columns


def _test_samples(cfg, data: str) -> list[dict]:
    from writemypaper.data import load_split

    ds = load_split(data, cfg.split)
    n = min(cfg.n_samples, len(ds)) if cfg.n_samples else len(ds)
    if n == 0:
        raise UserError(f"{data}: the {cfg.split} split is empty")
    ds = ds.shuffle(seed=cfg.seed).select(range(n)) if n < len(ds) else ds
    return [{"doc_id": r["doc_id"], "ipc": r["ipc"], "summary": r["summary"], "reference": r["original"]} for r in ds]


def plan_decodings(cfg) -> list[tuple[Decoding, object]]:
    """Each configured decoding with its generation settings, checked before any data or model loads."""
    from writemypaper.config import settings_from_config

    base = settings_from_config(cfg)
    return [(d, decoding_settings(base, d)) for d in parse_decodings(cfg.get("decodings") or ["plain"])]


def _generate_all(cfg, models: dict[str, str], samples: list[dict], plans: list, progress: bool):
    """Each model writes every summary once per decoding; its loss on the references is computed once."""
    from writemypaper import engines

    summaries = [s["summary"] for s in samples]
    preds: dict[str, list[str]] = {}
    columns: dict[str, dict] = {}
    losses: dict[str, list[tuple[float, int]]] = {}
    for name, ref in models.items():
        print(f"[{name}] loading {ref}")
        gen = engines.load(ref, precision=cfg.precision, instruction=cfg.get("instruction"))
        for d, settings in plans:
            column = f"{name}{SEPARATOR}{d.name}"
            print(f"[{column}] {describe(asdict(settings))}")
            t0 = time.perf_counter()
            outs = gen.generate(summaries, settings, batch_size=cfg.batch_size, progress=progress)
            seconds = time.perf_counter() - t0
            preds[column] = [o[0] for o in outs]
            # Tokens of the abstracts kept (a best-of-N decoding also wrote N-1 that were dropped).
            tokens = sum(len(gen.tokenizer(p, add_special_tokens=False)["input_ids"]) for p in preds[column])
            columns[column] = {"model": name, "model_ref": ref, "decoding": d.name,
                               "base": gen.base,
                               "description": describe(asdict(settings)), "settings": asdict(settings),
                               "seconds": seconds, "output_tokens": tokens,
                               "output_tokens_per_s": tokens / seconds if seconds > 0 else None}
        losses[name] = gen.reference_losses(samples)  # every engine scores the same tokens of the same prompt
        del gen
        gc.collect()
    return preds, columns, losses


def evaluate(cfg, out: str, models: dict[str, str] | None = None, data: str | None = None,
             predictions: list[str] | None = None, progress: bool = True, overwrite: bool = False,
             target_chars: int | None = None) -> dict:
    """The `evaluate` verb: generate with each model under each decoding (or read predictions), score with
    intervals, and write OUT (scores.json, predictions.jsonl, config.yaml, report.html) in one rename, under the
    output policy (outputs.check_out): an earlier evaluation is replaced only with `overwrite`, any other folder
    never. `target_chars` is the length asked for: generation steers towards it (generation.target_chars, which a
    decoding may also set) and each column's length is measured against it; without one, against the reference's."""
    from writemypaper import metrics

    if bool(models) == bool(predictions):
        raise UserError("give either --models NAME=MODEL ... (with --data) or --predictions FILE.jsonl ...")
    if target_chars is not None:
        if isinstance(target_chars, bool) or not isinstance(target_chars, int) or target_chars < 1:
            raise UserError(f"--target-chars {target_chars}: give a whole number of characters, e.g. 500")
        if models:
            from omegaconf import OmegaConf

            OmegaConf.update(cfg, "generation.target_chars", target_chars, force_add=True)
    n_resamples, report_samples = cfg.get("bootstrap", 1000), cfg.get("report_samples", 50)
    if not isinstance(n_resamples, int) or not 100 <= n_resamples <= 100_000:
        raise UserError(f"bootstrap={n_resamples}: give a whole number of resamples in [100, 100000]")
    if not isinstance(report_samples, int) or report_samples < 0:
        raise UserError(f"report_samples={report_samples}: give a whole number >= 0")
    _check_out(out, overwrite, models or {}, data)
    losses: dict[str, list[tuple[float, int]]] = {}
    if predictions:
        samples, preds, columns = _from_predictions(predictions)
    else:
        if data is None:
            raise UserError("--models needs --data PREPARED_DIR (the test split is generated for)")
        plans = plan_decodings(cfg)
        samples = _test_samples(cfg, data)
        preds, columns, losses = _generate_all(cfg, models, samples, plans, progress)
    # Each column's target: what its decoding asked for (a decoding may set its own), or what --target-chars says.
    targets = {c: (info.get("settings") or {}).get("target_chars", target_chars) for c, info in columns.items()}
    scores = metrics.score(samples, preds, n_resamples=n_resamples, seed=cfg.seed, targets=targets)
    if losses:
        for column, info in columns.items():
            for row, (total, n) in zip(scores["samples"], losses.get(info["model"], [])):
                row["outputs"][column].update(loss=total / n if n else 0.0, loss_tokens=n)
        metrics.summarise(scores, n_resamples=n_resamples, seed=cfg.seed)
    scores["columns"] = columns
    scores["settings"] = {"models": models or None, "predictions": predictions or None,
                          "split": None if predictions else cfg.split, "bootstrap": n_resamples, "seed": cfg.seed,
                          "target_chars": target_chars}
    _write(cfg, out, overwrite, scores, samples, preds, models, data, report_samples)
    return scores


def _check_out(out: str, overwrite: bool, models: dict[str, str], data: str | None) -> None:
    """The output policy for OUT, before any model loads; and OUT may not hold what is evaluated."""
    from writemypaper.outputs import check_out

    inside = [p for p in [*models.values(), data] if p and Path(p).exists()
              and Path(out).resolve() in [Path(p).resolve(), *Path(p).resolve().parents]]
    if inside:
        raise UserError(f"--out {out} holds {inside[0]}, which is evaluated; pick an --out outside it")
    check_out(out, "eval", overwrite)


def _write(cfg, out: str, overwrite: bool, scores: dict, samples, preds, models, data, report_samples: int) -> None:
    """OUT written into a temporary folder and renamed into place, its record last."""
    from writemypaper import record, report
    from writemypaper.atomic import atomic_write_json, atomic_write_jsonl
    from writemypaper.config import save_config
    from writemypaper.outputs import output_dir

    rec = record.RunRecord(kind="eval", data_fingerprint=record.data_fingerprint(data) if data else None,
                           preset=record.preset_name(cfg.get("source")),
                           settings={"models": models or None, "n_samples": len(samples),
                                     "overrides": list(cfg.get("overrides") or [])},
                           versions=record.versions())
    with output_dir(out, "eval", overwrite, record=rec) as tmp:
        atomic_write_json(tmp / "scores.json", scores)
        atomic_write_jsonl(tmp / "predictions.jsonl", [
            {**s, "model": name, "prediction": preds[name][i]} for name in preds for i, s in enumerate(samples)])
        save_config(cfg, tmp / "config.yaml")
        report.write_report(scores, tmp / "report.html", log_history=_log_history(models or {}),
                            max_samples=report_samples)


def summary_table(scores: dict) -> str:
    """A short plain-text table of the aggregate scores for the terminal."""
    cols = ["rouge1", "rouge2", "rougeL", "rougeL_char", "unsupported_rate", "unsupported_rate_micro", "coverage",
            "prec_s", "entity_recall", "length_ratio", "length_chars", "length_deviation", "loss"]
    heads = ["rouge1", "rouge2", "rougeL", "rougeL_char", "unsupp_rate", "unsupp_micro", "coverage", "prec_s",
             "ent_recall", "length", "chars", "|chars-tgt|", "loss"]
    names = scores["models"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'model':<{width}} " + " ".join(f"{c:>11}" for c in heads)]
    for n in names + ["reference"]:
        agg = scores["aggregate"].get(n, {})
        cells = []
        for c in cols:
            v = agg.get(c)
            digits = 1 if c in ("length_chars", "length_deviation") else 3
            cells.append(f"{v:>11.{digits}f}" if isinstance(v, (int, float)) else f"{'':>11}")
        lines.append(f"{n:<{width}} " + " ".join(cells))
    target = (scores.get("settings") or {}).get("target_chars")
    return ("\n".join(lines) + f"\nROUGE over {scores['tokenization'].split(':')[0]} morphemes; lengths in "
            f"{scores.get('length_unit', 'characters')}, against "
            + (f"the target of {target}" if target else "each reference's length")
            + "; 95% intervals and paired differences in scores.json and the report")
