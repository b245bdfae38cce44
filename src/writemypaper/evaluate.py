"""Score models on held-out pairs: ROUGE over Korean morphemes, a fact check, length, and loss/perplexity on the
references; write scores.json and a self-contained report.html.

    writemypaper evaluate --data prepared --models base=gemma3-270m tuned=runs/demo --out eval
    writemypaper evaluate --predictions outputs.jsonl --out eval          # score outputs of any system
"""

from __future__ import annotations

import gc
import json
import math
from pathlib import Path

from writemypaper.errors import UserError


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


def read_predictions(path: str | Path) -> tuple[list[dict], list[str]]:
    """Rows with summary, reference and prediction from a JSONL file."""
    from writemypaper.generate import read_jsonl

    samples, preds = [], []
    for n, row in read_jsonl(Path(path), "--predictions", ("summary", "reference", "prediction")):
        samples.append({"doc_id": row.get("doc_id", str(n)), "ipc": row.get("ipc"), "summary": row["summary"],
                        "reference": row["reference"]})
        preds.append(row["prediction"])
    return samples, preds


def reference_loss(model, tokenizer, samples: list[dict], instruction: str | None = None, chunk: int = 128) -> float:
    """Mean loss per token of the model's turn (the reference abstract and its end of turn), computed from the
    hidden states with the LM head applied in chunks: the (tokens, 262k) logits are never held at once."""
    import torch
    import torch.nn.functional as F

    from writemypaper import prompts

    base = model.get_base_model() if hasattr(model, "get_base_model") else model
    backbone, head = base.get_decoder(), base.get_output_embeddings()
    cap = getattr(base.config, "final_logit_softcapping", None)
    device = next(model.parameters()).device
    total, count = 0.0, 0
    with torch.inference_mode():
        for s in samples:
            ex = prompts.encode_example(tokenizer, s["summary"], s["reference"], instruction)
            ids = torch.tensor([ex["input_ids"]], device=device)
            labels = torch.tensor(ex["labels"], device=device)
            hidden = backbone(input_ids=ids).last_hidden_state[0]
            # position t predicts token t+1
            keep = (labels[1:] != -100).nonzero().squeeze(-1)
            for start in range(0, len(keep), chunk):
                pos = keep[start:start + chunk]
                logits = head(hidden[pos]).float()
                if cap:
                    logits = torch.tanh(logits / cap) * cap
                total += F.cross_entropy(logits, labels[pos + 1], reduction="sum").item()
                count += len(pos)
    return total / max(count, 1)


def _log_history(refs: dict[str, str]) -> list[dict] | None:
    for ref in refs.values():
        p = Path(ref) / "log_history.json"
        if p.is_file():
            return json.loads(p.read_text(encoding="utf-8"))
    return None


def evaluate(cfg, out: str, models: dict[str, str] | None = None, data: str | None = None,
             predictions: list[str] | None = None, progress: bool = True) -> dict:
    """The `evaluate` verb: generate with each model (or read predictions), score, and write the report."""
    from writemypaper import metrics, report
    from writemypaper.atomic import atomic_write_json, atomic_write_jsonl
    from writemypaper.config import save_config
    from writemypaper.generate import Generator, settings_from_config

    if bool(models) == bool(predictions):
        raise UserError("give either --models NAME=MODEL ... (with --data) or --predictions FILE.jsonl ...")
    out_dir = Path(out)
    preds: dict[str, list[str]] = {}
    losses: dict[str, float] = {}
    if predictions:
        samples = None
        for item in predictions:
            name, _, path = item.partition("=") if "=" in item else (Path(item).stem, "", item)
            s, p = read_predictions(path)
            if samples is not None and [x["summary"] for x in s] != [x["summary"] for x in samples]:
                raise UserError(f"{path}: its summaries differ from the first predictions file's; score them apart")
            samples = s
            preds[name] = p
        settings = None
    else:
        if data is None:
            raise UserError("--models needs --data PREPARED_DIR (the test split is generated for)")
        from writemypaper.data import load_split

        ds = load_split(data, cfg.split)
        n = min(cfg.n_samples, len(ds)) if cfg.n_samples else len(ds)
        if n == 0:
            raise UserError(f"{data}: the {cfg.split} split is empty")
        ds = ds.shuffle(seed=cfg.seed).select(range(n)) if n < len(ds) else ds
        samples = [{"doc_id": r["doc_id"], "ipc": r["ipc"], "summary": r["summary"], "reference": r["original"]}
                   for r in ds]
        settings = settings_from_config(cfg)
        for name, ref in models.items():
            print(f"[{name}] loading {ref}")
            gen = Generator.load(ref, precision=cfg.precision, instruction=cfg.get("instruction"))
            outs = gen.generate([s["summary"] for s in samples], settings, batch_size=cfg.batch_size, progress=progress)
            preds[name] = [o[0] for o in outs]
            losses[name] = reference_loss(gen.model, gen.tokenizer, samples, gen.instruction)
            del gen
            gc.collect()
    scores = metrics.score(samples, preds)
    for name, loss in losses.items():
        scores["aggregate"][name]["loss"] = loss
        scores["aggregate"][name]["perplexity"] = math.exp(loss) if loss < 50 else None
    scores["settings"] = {"generation": settings.__dict__ if settings else None, "models": models or None,
                          "predictions": predictions or None, "split": None if predictions else cfg.split}
    out_dir.mkdir(parents=True, exist_ok=True)
    atomic_write_json(out_dir / "scores.json", scores)
    atomic_write_jsonl(out_dir / "predictions.jsonl", [
        {**s, "model": name, "prediction": preds[name][i]} for name in preds for i, s in enumerate(samples)])
    save_config(cfg, out_dir / "config.yaml")
    report.write_report(scores, out_dir / "report.html", log_history=_log_history(models or {}))
    return scores


def summary_table(scores: dict) -> str:
    """A short plain-text table of the aggregate scores for the terminal."""
    cols = ["rouge1", "rouge2", "rougeL", "rougeL_char", "unsupported_rate", "coverage", "length_ratio", "loss"]
    names = scores["models"]
    width = max(12, *(len(n) for n in names))
    lines = [f"{'model':<{width}} " + " ".join(f"{c:>16}" for c in cols)]
    for n in names + ["reference"]:
        agg = scores["aggregate"].get(n, {})
        cells = []
        for c in cols:
            v = agg.get(c)
            cells.append(f"{v:>16.3f}" if isinstance(v, (int, float)) else f"{'':>16}")
        lines.append(f"{n:<{width}} " + " ".join(cells))
    return "\n".join(lines) + f"\nROUGE over {scores['tokenization'].split(':')[0]} morphemes (see scores.json)"
