"""Training examples: a prepared split's summary/original pairs as token ids, with the prompt masked out of the
labels, pairs too long for max_length dropped (never truncated) and counted, and the result cached by the
datasets library so a second run or another rank loads it instead of tokenizing again.

    python -c "from writemypaper import examples; help(examples.tokenize_split)"
"""

from __future__ import annotations

import os
import weakref

TOKENIZE_VERSION = 3  # part of the tokenization cache key: bump it whenever tokenize_split's output changes
DROP_WARN = 0.05  # warn when more than this share of a split is longer than max_length


def stratified_subset(ds, n: int | None, seed: int, column: str = "ipc"):
    """`n` rows of `ds` drawn by a seeded shuffle, stratified by `column` (the field of study): within each field
    the rows are shuffled and spread evenly over [0, 1) from a random offset, and the n lowest positions over all
    fields are kept, so every field gets its share within one row (as `prepare` splits by document). Kept rows stay
    in their original order. Without `n`, or with n >= len(ds), `ds` itself."""
    import random
    from collections import defaultdict

    if not n or n >= len(ds):
        return ds
    groups: dict[str, list[int]] = defaultdict(list)
    keys = ds[column] if column in ds.column_names else [""] * len(ds)
    for i, key in enumerate(keys):
        groups[key].append(i)
    rng = random.Random(seed)
    keyed = []
    for key in sorted(groups):
        rows = groups[key]
        rng.shuffle(rows)
        offset = rng.random()
        keyed += [((j + offset) / len(rows), key, i) for j, i in enumerate(rows)]
    keyed.sort()
    return ds.select(sorted(i for _, _, i in keyed[:n]))


def _encode_texts(tokenizer, texts: list[str]) -> list[list[int]]:
    """`tokenizer(texts, add_special_tokens=False)["input_ids"]`, through the Rust tokenizer's encode_batch_fast where
    there is one: the same ids, in parallel, without the offsets and masks (a third of the time) that we never use."""
    backend = getattr(tokenizer, "backend_tokenizer", None) if getattr(tokenizer, "is_fast", False) else None
    if backend is None or backend.truncation or backend.padding:  # a left-over truncation would change the ids
        return tokenizer(texts, add_special_tokens=False)["input_ids"]
    encode = getattr(backend, "encode_batch_fast", backend.encode_batch)
    return [e.ids for e in encode(texts, add_special_tokens=False)]


def _encode_batch(batch, tokenizer, instruction, max_length):
    """prompts.encode_example for a batch of pairs, with the tokenizer called once per list (the fast tokenizer
    encodes a list in parallel), dropping the pairs longer than max_length."""
    from writemypaper import prompts

    suffix, eos = prompts.completion_suffix(tokenizer), prompts.eos_ids(tokenizer)
    pairs = list(zip(batch["summary"], batch["original"]))
    render = prompts.prompt_renderer(tokenizer, instruction)
    prompt_ids = _encode_texts(tokenizer, [render(s) for s, _ in pairs])
    answer_ids = _encode_texts(tokenizer, [o.strip() + suffix for _, o in pairs])
    out = {"input_ids": [], "labels": []}
    for p, a in zip(prompt_ids, answer_ids):
        p, a = prompts.bos_once(tokenizer, p), a + eos
        if max_length and len(p) + len(a) > max_length:
            continue
        out["input_ids"].append(p + a)
        out["labels"].append([-100] * len(p) + a)
    return out


# The digest per tokenizer object, kept beside it rather than set on it, and dropped with it.
_TOKENIZER_KEYS: "weakref.WeakKeyDictionary" = weakref.WeakKeyDictionary()


def _tokenizer_key(tokenizer) -> str:
    """A digest of everything about the tokenizer that changes the ids, computed once per tokenizer. Hashing the
    tokenizer object itself (what datasets does for a map's arguments) took 12 s on the embedded Gemma 3 tokenizer
    here; hashing its serialized form takes about 1 s."""
    import hashlib

    try:
        key = _TOKENIZER_KEYS.get(tokenizer)
    except TypeError:  # a tokenizer that cannot be weakly referenced: no cache
        key = None
    if key is None:
        backend = getattr(tokenizer, "backend_tokenizer", None)
        if backend is not None:
            h = hashlib.sha256(backend.to_str().encode("utf-8"))
        else:  # a slow (Python) tokenizer: datasets' own hash of it
            from datasets.fingerprint import Hasher

            h = hashlib.sha256(Hasher.hash(tokenizer).encode("utf-8"))
        h.update(repr((tokenizer.bos_token, tokenizer.eos_token_id, type(tokenizer).__name__,
                       tokenizer.chat_template)).encode("utf-8"))
        key = h.hexdigest()
        try:
            _TOKENIZER_KEYS[tokenizer] = key
        except TypeError:
            pass
    return key


def tokenize_split(ds, tokenizer, instruction, max_length: int | None, limit: int | None = None, seed: int = 42):
    """Token ids and prompt-masked labels, in one batched map. Pairs longer than max_length are dropped, not
    truncated: a truncated example would lose its end-of-turn token and teach the model never to stop. `limit` takes a
    seeded subset stratified by field (stratified_subset). Returns (dataset, pairs dropped for length).

    A dataset read from disk (load_split) caches the result in the datasets cache under a key made of the source's
    fingerprint, the tokenizer's content, the instruction and max_length, so a second run (or another rank, see
    main_process_first) loads it instead of tokenizing again."""
    from datasets.fingerprint import Hasher

    ds = stratified_subset(ds, limit, seed)
    before = len(ds)
    if before == 0:  # nothing to tokenize (the caller refuses an empty split)
        return ds, 0
    fingerprint = Hasher.hash([ds._fingerprint, TOKENIZE_VERSION, _tokenizer_key(tokenizer), instruction, max_length])
    # One process: the Rust tokenizer encodes each batch on every core itself. Worker processes (num_proc) were
    # slower at every count measured, since each one is sent the 262k-entry tokenizer (bench/RESULTS.md: 400k pairs
    # in 84 s with one process on 2 cores against 108 s with 2; 52 s on 8 cores against 131 s with 4 and 123 s with 8)
    ds = ds.map(
        _encode_batch, batched=True, batch_size=1000, remove_columns=ds.column_names,
        fn_kwargs={"tokenizer": tokenizer, "instruction": instruction, "max_length": max_length},
        new_fingerprint=fingerprint, desc="tokenizing",
    )
    return ds, before - len(ds)


def main_process_first():
    """Under `accelerate launch`, the main process of each machine tokenizes first and the other ranks wait, then
    load its cached result: the corpus is tokenized once per machine, not once per rank."""
    import contextlib

    if int(os.environ.get("WORLD_SIZE", "1")) <= 1:
        return contextlib.nullcontext()
    from accelerate import PartialState

    return PartialState().local_main_process_first()


def report_dropped(split: str, dropped: int, total: int, max_length: int | None) -> None:
    """One line on stderr with the pairs a split lost to max_length; a warning above DROP_WARN of them."""
    import sys

    if not total or int(os.environ.get("RANK", "0")) != 0:
        return
    share = dropped / total
    line = (f"{split}: {dropped:,} of {total:,} pairs ({100 * share:.1f}%) are longer than max_length={max_length} "
            f"and were dropped")
    if share > DROP_WARN:
        print(f"writemypaper: warning: {line}; raise training.max_length to keep them", file=sys.stderr)
    else:
        print(f"writemypaper: {line}", file=sys.stderr)
