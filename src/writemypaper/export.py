"""Merge a training run's LoRA adapter into its base model and write a directory that plain
`AutoModelForCausalLM.from_pretrained` loads, and/or one GGUF file with an Ollama Modelfile, with the run's
instruction in the chat template and a model card.

    writemypaper export runs/demo --out exported/demo [--gguf q8_0] [--scores eval/scores.json] [--push-to-hub user/repo]
"""

from __future__ import annotations

import json
from pathlib import Path

from writemypaper.errors import UserError


def _card(run: Path, base_model: str, scores: dict | None, push_repo: str | None, gguf_file: str | None = None,
          safetensors: bool = True, is_run: bool = True, merged_base: str | None = None, family: str = "chat",
          licence: tuple[str, str | None] | None = None, stops: str = "the end-of-turn token and eos") -> str:
    """The model card. `licence` is (what the card says of the base model's licence, its Hub licence id or None)."""
    import yaml

    from writemypaper.settings import GenerationSettings

    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if (run / "metrics.json").is_file() else {}
    stats = json.loads((run / "data_stats.json").read_text(encoding="utf-8")) if (run / "data_stats.json").is_file() else {}
    recipe = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else ""
    if push_repo:
        recipe = _portable_recipe(recipe)
    hub_base = base_model if "/" in base_model and not Path(base_model).exists() else None
    front = {"language": ["ko"], "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["writemypaper", "korean", "abstract-generation", "lora", family.split()[0].lower()]}
    licence_text, licence_id = licence or (_licence(base_model, None))
    if licence_id:
        front["license"] = licence_id
    if hub_base:
        front["base_model"] = hub_base
    lines = ["---", yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {push_repo or run.name}: Korean paper summary → full abstract", "",
             (f"A {family} chat model fine-tuned with LoRA by [writemypaper] to turn the short summary of a Korean academic "
              f"paper into its full abstract. Base model: `{base_model}`. The adapter is merged into the weights."
              if is_run else f"The base model `{base_model}`, not fine-tuned, exported by [writemypaper] with the "
              f"abstract-writing prompt in its chat template."), "",
             "The chat template holds the instruction: send the bare summary as the user's message and it renders "
             "the training prompt (a message that already starts with the instruction is left as it is).", "",
             "## Licence", "", licence_text, ""]
    if merged_base and merged_base != "as saved":
        lines += [f"The adapter was merged into the base weights {merged_base}: a QLoRA run is trained and validated "
                  "on NF4-rounded weights, so that is the model that was measured.", ""]
    if gguf_file:
        lines += ["## llama.cpp and Ollama", "",
                  f"`{gguf_file}` is the same model as one GGUF file for llama.cpp, Ollama and LM Studio; "
                  f"`Modelfile` sets Ollama's template, stop token and sampling:", "", "```bash",
                  f"llama-server -m {gguf_file} --jinja   # the chat template adds the instruction",
                  "ollama create writemypaper -f Modelfile && ollama run writemypaper \"<a summary>\"", "```", ""]
    if not safetensors:
        return "\n".join(lines + _card_tail(run, scores, metrics, stats, recipe)) + "\n"
    g = GenerationSettings()  # the snippet decodes as `writemypaper generate` does, without grounding or candidates
    lines += ["## Use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "tok = AutoTokenizer.from_pretrained(PATH)",
             "model = AutoModelForCausalLM.from_pretrained(PATH)",
             "msg = [{'role': 'user', 'content': summary}]  # the template adds the instruction",
             "ids = tok.apply_chat_template(msg, add_generation_prompt=True, return_tensors='pt', return_dict=True)",
             "from transformers import RepetitionPenaltyLogitsProcessor",
             "# penalise repeats of the model's own words only: copying the summary's figures is the job",
             f"keep = RepetitionPenaltyLogitsProcessor({g.repetition_penalty}, "
             "prompt_ignore_length=ids['input_ids'].shape[1])",
             f"out = model.generate(**ids, max_new_tokens={g.max_new_tokens}, do_sample=True, "
             f"temperature={g.temperature}, top_p={g.top_p}, top_k={g.top_k}, logits_processor=[keep])",
             "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))",
             "```", "",
             f"The generation config stops on {stops}. Check the figures in what it writes: the model "
             "can add numbers that its summary does not support (`writemypaper evaluate` flags them).", ""]
    return "\n".join(lines + _card_tail(run, scores, metrics, stats, recipe)) + "\n"


def _card_tail(run: Path, scores: dict | None, metrics: dict, stats: dict, recipe: str) -> list[str]:
    lines = ["## Training", ""] if metrics or recipe else []
    for k in ("global_step", "train_loss_first", "train_loss_last", "eval_loss", "eval_perplexity",
              "trainable_parameters", "precision", "device", "train_runtime_s"):
        if metrics.get(k) is not None:
            v = metrics[k]
            lines.append(f"- {k}: {v:.4f}" if isinstance(v, float) else f"- {k}: {v}")
    if recipe:
        lines += ["", "Recipe (the resolved writemypaper config):", "", "```yaml", recipe.strip(), "```"]
    if stats:
        lines += ["", "## Data", "", "AIHub 논문자료 요약 layout (summary → original pairs), split by document:", ""]
        for split, c in (stats.get("splits") or stats.get("counts") or {}).items():
            lines.append(f"- {split}: {json.dumps(c, ensure_ascii=False)}")
        if stats.get("skipped"):
            lines.append(f"- skipped: {json.dumps(stats['skipped'], ensure_ascii=False)}")
    if scores:
        lines += ["", "## Evaluation", "", f"Tokenization: {scores.get('tokenization')}", "",
                  "| model | ROUGE-1 | ROUGE-2 | ROUGE-L | ROUGE-L (char) | unsupported facts | coverage | loss |",
                  "|---|---|---|---|---|---|---|---|"]
        for name, a in scores.get("aggregate", {}).items():
            cells = [a.get(k) for k in ("rouge1", "rouge2", "rougeL", "rougeL_char", "unsupported_rate", "coverage", "loss")]
            lines.append(f"| {name} | " + " | ".join(f"{c:.3f}" if isinstance(c, (int, float)) else "" for c in cells) + " |")
    return lines


def _licence(base_model: str, fam) -> tuple[str, str | None]:
    """What the card says of the base model's licence, which the tuned weights inherit, and its Hub id where known:
    an embedded model's from weights.py, a family's restriction (EXAONE's non-commercial licence) from families.py."""
    from writemypaper import weights

    embedded = weights.EMBEDDED_MODELS.get(base_model)
    if embedded is not None:
        return (f"The weights derive from `{base_model}`, released under {embedded.licence}; its terms apply to this "
                f"model too.", embedded.hub_licence)
    if fam is not None and fam.licence:
        return f"The base model's licence restricts use: {fam.licence}.", "other"
    return (f"The weights derive from `{base_model}`: its licence (see its model card) applies to this model too.",
            None)


def export(run_dir: str, out: str, scores: str | None = None, precision: str = "auto",
           push_to_hub: str | None = None, private: bool = True, gguf: str | None = None,
           safetensors: bool = True, overwrite: bool = False) -> Path:
    """Merge RUN_DIR's adapter (or take a base model as it is: an embedded name, a directory, a Hub id) and write OUT:
    the safetensors model for transformers unless `safetensors` is false, and with `gguf` a TYPE.gguf file plus an
    Ollama Modelfile. Both carry the run's instruction in their chat template. OUT follows the output policy
    (outputs.check_out): an earlier export is replaced only with `overwrite`, any other folder never."""
    from writemypaper import record, weights
    from writemypaper.outputs import check_out

    run = Path(run_dir)
    is_run = weights.is_run_dir(run)
    base_ok = run.is_dir() and (run / "config.json").is_file() or run_dir in weights.EMBEDDED_MODELS or (
        not run.exists() and run_dir.count("/") == 1 and not run_dir.startswith((".", "/", "~")))
    if not is_run and not base_ok:
        raise UserError(f"{run_dir}: not a finished training run (no adapter_config.json) nor a model; train one "
                        f"first, or name a base model ({', '.join(weights.EMBEDDED_MODELS)}, a model directory, a Hub id)")
    if Path(out).resolve() == run.resolve() or Path(out).resolve() in run.resolve().parents:
        raise UserError(f"--out {out} holds the run {run_dir}; pick an --out outside it")
    if is_run and not record.is_finished(run):
        raise UserError(f"{run_dir}: the run did not finish (its writemypaper.json says so); finish it with "
                        f"`writemypaper train ... --out {run_dir} --resume`")
    if gguf is not None:
        from writemypaper.gguf_export import GGUF_TYPES

        if gguf not in GGUF_TYPES:
            raise UserError(f"--gguf {gguf}: use one of {', '.join(GGUF_TYPES)}")
    if not safetensors and not gguf:
        raise UserError("--no-safetensors leaves nothing to write: add --gguf TYPE")
    score_data = None
    if scores:
        if not Path(scores).is_file():
            raise UserError(f"--scores {scores}: no such file")
        score_data = json.loads(Path(scores).read_text(encoding="utf-8"))
    check_out(out, "export", overwrite)  # before the minutes of loading and merging
    base_model = weights.run_base_model(run) if is_run else run_dir
    info = _run_info(run) if is_run else {}
    _write_export(run_dir, out, base_model, info, is_run, score_data, precision, push_to_hub, gguf, safetensors,
                  overwrite)
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=weights.hub_token())
        with weights.hub_errors(push_to_hub):
            api.create_repo(push_to_hub, private=private, exist_ok=True)
            api.upload_folder(folder_path=out, repo_id=push_to_hub, commit_message="writemypaper export")
        print(f"pushed to https://huggingface.co/{push_to_hub}")
    return Path(out)


def _run_info(run: Path):
    """The run's record (None for an adapter folder without one)."""
    from writemypaper import record

    try:
        return record.read(run)
    except record.RecordError as e:
        raise UserError(str(e)) from None


def portable(ref: str) -> str:
    """A model reference as it may leave this machine (a Hub push): the embedded name or a Hub id as it is, a local
    path by its folder's name only."""
    from writemypaper import weights

    p = Path(ref).expanduser()
    if ref not in weights.EMBEDDED_MODELS and (p.is_absolute() or p.exists() or ref.startswith((".", "~"))):
        return p.resolve().name
    return ref


def _portable_recipe(recipe: str) -> str:
    """config.yaml for a pushed card: its preset by name, its model by portable(), no other local path."""
    import yaml

    from writemypaper import record

    cfg = yaml.safe_load(recipe) if recipe else None
    if not isinstance(cfg, dict):
        return recipe
    if cfg.get("source"):
        cfg["source"] = portable(record.preset_name(cfg["source"]))
    if isinstance(cfg.get("model"), str):
        cfg["model"] = portable(cfg["model"])
    return yaml.safe_dump(cfg, allow_unicode=True, sort_keys=False)


def _export_record(ref: str, info, is_run: bool, base_model: str, instruction, push_to_hub, safetensors: bool,
                   gguf, merged_base):
    """The export's record: the run's (what it was built from, how it ended) with what the export holds. Where the
    run is (exported_from, which evaluate follows to the training curve) stays off a folder pushed to the Hub."""
    import dataclasses

    from writemypaper import record

    source = info if info else record.RunRecord(kind="export", base_model=base_model, instruction=instruction)
    exported_from = (str(Path(ref).resolve()) if is_run else ref) if not push_to_hub else (
        None if is_run else portable(ref))
    extra = {**source.extra, "exported_from": exported_from, "safetensors": safetensors, "gguf": gguf,
             "merged_base": merged_base}
    return dataclasses.replace(source, kind="export", base_model=base_model, instruction=instruction, extra=extra,
                               versions=record.versions())


def gguf_name(out: str | Path, kind: str) -> str:
    return f"{Path(out).resolve().name}-{kind}.gguf"


def _write_export(ref: str, out: str, base_model: str, info, is_run: bool, score_data, precision: str,
                  push_to_hub: str | None, gguf: str | None, safetensors: bool, overwrite: bool = False) -> None:
    import torch

    from writemypaper import families, gguf_export, models, prompts
    from writemypaper.atomic import atomic_write_text
    from writemypaper.outputs import output_dir

    instruction = info.instruction if info else None
    # The vocabulary is checked before the minutes of loading and merging, so a model it cannot write fails fast.
    tokenizer = models.load_tokenizer(ref, padding_side="left")
    vocab = gguf_export.vocabulary(tokenizer, base_model) if gguf else None
    # Merge in full or half precision, never into 4-bit weights: merging into quantized weights loses the adapter.
    model, tokenizer = models.load_for_inference(ref, precision=precision, device="cpu")
    merged_base = models.base_weights(ref)  # a QLoRA run merges into its NF4-rounded base
    merged = model.merge_and_unload() if is_run else model
    # A pushed folder names no path of this machine: the base model by its Hub id or its folder's name.
    shown_base = portable(base_model) if push_to_hub else base_model
    merged.config.name_or_path = shown_base
    stop_ids = prompts.stop_token_ids(tokenizer)  # the family's end of turn and eos, looked up by name
    merged.generation_config.eos_token_id = stop_ids
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    # The instruction travels in the chat template, so a consumer that sends only the summary (a pipeline, vLLM,
    # llama.cpp, Ollama) gets the training prompt; writemypaper.json tells our own generate/serve the same.
    modelfile = gguf_export.modelfile(gguf_name(out, gguf), instruction, tokenizer=tokenizer,
                                      add_bos=vocab.add_bos) if gguf else None  # from the training template
    template = prompts.export_chat_template(instruction, tokenizer)
    tokenizer.chat_template = template
    fam = families.of_config(merged.config)
    card = dict(family=fam.name, licence=_licence(portable(base_model) if push_to_hub else base_model, fam),
                stops=" and ".join(f"`{t}`" for t in tokenizer.convert_ids_to_tokens(stop_ids)))
    tokenizer.padding_side = "left"
    name = Path(out).resolve().name
    rec = _export_record(ref, info, is_run, shown_base, instruction, push_to_hub, safetensors, gguf, merged_base)
    with output_dir(out, "export", overwrite, record=rec) as tmp:
        if safetensors:
            merged.save_pretrained(tmp, safe_serialization=True)
            tokenizer.save_pretrained(tmp)
        if gguf:
            gguf_file = gguf_name(out, gguf)
            gguf_export.write_gguf(merged, tokenizer, tmp / gguf_file, gguf, template, vocab, name=name,
                                   stop_ids=stop_ids)
            atomic_write_text(tmp / "Modelfile", modelfile)
        atomic_write_text(tmp / "README.md", _card(Path(ref), shown_base, score_data, push_to_hub, gguf and
                                                   gguf_name(out, gguf), safetensors, is_run, merged_base, **card))
    del merged, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None

