"""Merge a training run's LoRA adapter into its base model and write a directory that plain
`AutoModelForCausalLM.from_pretrained` loads, with the chat template set and a model card.

    writemypaper export runs/demo --out exported/demo [--scores eval/scores.json] [--push-to-hub user/repo]
"""

from __future__ import annotations

import json
from pathlib import Path

from writemypaper.errors import UserError


def _card(run: Path, base_model: str, scores: dict | None, push_repo: str | None) -> str:
    import yaml

    from writemypaper import prompts

    metrics = json.loads((run / "metrics.json").read_text(encoding="utf-8")) if (run / "metrics.json").is_file() else {}
    stats = json.loads((run / "data_stats.json").read_text(encoding="utf-8")) if (run / "data_stats.json").is_file() else {}
    recipe = (run / "config.yaml").read_text(encoding="utf-8") if (run / "config.yaml").is_file() else ""
    info = json.loads((run / "writemypaper.json").read_text(encoding="utf-8")) if (run / "writemypaper.json").is_file() else {}
    hub_base = base_model if "/" in base_model and not Path(base_model).exists() else None
    front = {"language": ["ko"], "library_name": "transformers", "pipeline_tag": "text-generation",
             "tags": ["writemypaper", "korean", "abstract-generation", "lora", "gemma"]}
    if hub_base:
        front["base_model"] = hub_base
    lines = ["---", yaml.safe_dump(front, allow_unicode=True, sort_keys=False).strip(), "---", "",
             f"# {push_repo or run.name}: Korean paper summary → full abstract", "",
             f"A Gemma chat model fine-tuned with LoRA by [writemypaper] to turn the short summary of a Korean academic "
             f"paper into its full abstract. Base model: `{base_model}`. The adapter is merged into the weights.", "",
             "## Use", "", "```python",
             "from transformers import AutoModelForCausalLM, AutoTokenizer",
             "tok = AutoTokenizer.from_pretrained(PATH)",
             "model = AutoModelForCausalLM.from_pretrained(PATH)",
             f"msg = [{{'role': 'user', 'content': {(info.get('instruction') or prompts.DEFAULT_INSTRUCTION)!r} + '\\n\\n' + summary}}]",
             "ids = tok.apply_chat_template(msg, add_generation_prompt=True, return_tensors='pt', return_dict=True)",
             "out = model.generate(**ids, max_new_tokens=512, do_sample=True, temperature=0.7, repetition_penalty=1.15)",
             "print(tok.decode(out[0, ids['input_ids'].shape[1]:], skip_special_tokens=True))",
             "```", "",
             "The generation config stops on `<end_of_turn>` and eos. Check the figures in what it writes: the model "
             "can add numbers that its summary does not support (`writemypaper evaluate` flags them).", ""]
    lines += ["## Training", ""]
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
    return "\n".join(lines) + "\n"


def export(run_dir: str, out: str, scores: str | None = None, precision: str = "auto",
           push_to_hub: str | None = None, private: bool = True) -> Path:
    import torch

    from writemypaper import models, prompts
    from writemypaper.atomic import atomic_dir, atomic_write_text

    run = Path(run_dir)
    if not models.is_run_dir(run):
        raise UserError(f"{run_dir}: not a finished training run (no adapter_config.json); train one first")
    if Path(out).resolve() == run.resolve():
        raise UserError("--out must differ from the run directory")
    score_data = None
    if scores:
        if not Path(scores).is_file():
            raise UserError(f"--scores {scores}: no such file")
        score_data = json.loads(Path(scores).read_text(encoding="utf-8"))
    base_model = models.run_base_model(run)
    # Merge in full or half precision, never into 4-bit weights: merging into quantized weights loses the adapter.
    model, tokenizer = models.load_for_inference(str(run), precision=precision, device="cpu")
    merged = model.merge_and_unload()
    merged.config.name_or_path = base_model
    merged.generation_config.eos_token_id = prompts.stop_token_ids(tokenizer)
    merged.generation_config.pad_token_id = tokenizer.pad_token_id
    tokenizer.chat_template = tokenizer.chat_template or prompts.CHAT_TEMPLATE
    tokenizer.padding_side = "left"
    with atomic_dir(out) as tmp:
        merged.save_pretrained(tmp, safe_serialization=True)
        tokenizer.save_pretrained(tmp)
        atomic_write_text(tmp / "README.md", _card(run, base_model, score_data, push_to_hub))
    del merged, model
    torch.cuda.empty_cache() if torch.cuda.is_available() else None
    if push_to_hub:
        from huggingface_hub import HfApi

        api = HfApi(token=models._token())
        with models.hub_errors(push_to_hub):
            api.create_repo(push_to_hub, private=private, exist_ok=True)
            api.upload_folder(folder_path=out, repo_id=push_to_hub, commit_message="writemypaper export")
        print(f"pushed to https://huggingface.co/{push_to_hub}")
    return Path(out)
