"""Rebuild a Hugging Face tokenizer from the vocabulary inside a GGUF file.

GGUF stores one of two kinds of vocabulary (``tokenizer.ggml.model``):

- ``gpt2``: byte-level BPE with explicit merges (SmolLM, Llama 3, Qwen, Mistral Nemo,
  Phi-4-mini);
- ``llama``: SentencePiece (Llama 2, Mistral 7B, Gemma, Phi-3): tokens with scores and
  types but no merges. llama.cpp tokenizes it by repeatedly merging the adjacent pair
  whose concatenation is the highest-scoring token, and spells characters missing from
  the vocabulary as <0xXX> byte tokens. A BPE whose merges are ranked by those scores,
  with byte fallback, does exactly that.

Both become a tokenizer.json that transformers runs as is (tokenizer_class
PreTrainedTokenizerFast adds no behaviour of its own). A SentencePiece vocabulary is also
written back as tokenizer.model, for tools that want one: llama.cpp's convert_hf_to_gguf.py
needs it to export a fine-tuned model to GGUF again.
"""

from __future__ import annotations

import json
from collections.abc import Collection
from pathlib import Path
from typing import Any

# GGUF token types (llama.cpp's llama_token_type; SentencePiece numbers its types alike).
_NORMAL, _UNKNOWN, _CONTROL, _USER_DEFINED, _UNUSED, _BYTE = 1, 2, 3, 4, 5, 6
# SentencePiece's word-boundary marker: " hello" is the token "▁hello".
_SPACE = "\u2581"
TOKENIZER_MODELS = ("gpt2", "llama")

# Pre-tokenizer split patterns, as in the models' own tokenizer.json files.
_QWEN2_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_LLAMA3_SPLIT = (
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}"
    r"| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
_TEKKEN_SPLIT = (  # Mistral Nemo / Small: splits CamelCase words, no contractions
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# tiktoken's o200k_base (GPT-4o, Phi-4-mini): Tekken's CamelCase split plus contractions
# glued to the word and numbers in threes. llama.cpp's "gpt-4o" pre-tokenizer is this regex.
_O200K_SPLIT = (
    r"[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*"
    r"(?i:'s|'t|'re|'ve|'m|'ll|'d)?"
    r"|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n/]*|\s*[\r\n]+|\s+(?!\S)|\s+"
)
# Chat turn enders that SentencePiece GGUFs do not name in their metadata (Gemma's eos is
# <eos>, Phi-3's <|endoftext|>); llama.cpp recognises them by their text and stops there.
_END_OF_TURN = ("<end_of_turn>", "<|end|>", "<|im_end|>", "<|eot_id|>", "<EOT>")
PRE_TOKENIZERS = (
    "default",
    "gpt-2",
    "gpt2",
    "smollm",
    "qwen2",
    "llama-bpe",
    "llama3",
    "tekken",
    "gpt-4o",
)
# Pre-tokenizers for which llama.cpp adds BOS when the file does not say.
_BOS_BY_DEFAULT = ("llama-bpe", "llama3", "tekken")


# ---------------------------------------------------------------------------- metadata


def _kind(meta: dict[str, Any]) -> str:
    kind = meta.get("tokenizer.ggml.model")
    if kind not in TOKENIZER_MODELS:
        raise ValueError(
            f"unsupported GGUF tokenizer {kind!r}; supported: 'gpt2' (byte-level BPE) "
            "and 'llama' (SentencePiece)"
        )
    return kind


def special_token_id(meta: dict[str, Any], key: str) -> int | None:
    """Id of a special token ("bos", "eos", "unknown", "padding", "eot", "eom").

    llama.cpp gives SentencePiece vocabularies Llama 2's ids when the file has none.
    """
    value = meta.get(f"tokenizer.ggml.{key}_token_id")
    if value is None and meta.get("tokenizer.ggml.model") == "llama":
        value = {"bos": 1, "eos": 2, "unknown": 0}.get(key)
    return value


def adds_bos(meta: dict[str, Any]) -> bool:
    """Whether encoding prepends BOS: the file's flag, else llama.cpp's default."""
    flag = meta.get("tokenizer.ggml.add_bos_token")
    if flag is not None:
        return bool(flag)
    return meta.get("tokenizer.ggml.model") == "llama" or (
        meta.get("tokenizer.ggml.pre") in _BOS_BY_DEFAULT
    )


def _token_types(meta: dict[str, Any]) -> list[int]:
    tokens = meta["tokenizer.ggml.tokens"]
    return meta.get("tokenizer.ggml.token_type") or [_NORMAL] * len(tokens)


def _turn_enders(meta: dict[str, Any]) -> list[int]:
    """Ids of a SentencePiece vocabulary's control or user-defined end-of-turn tokens."""
    if meta.get("tokenizer.ggml.model") != "llama":
        return []
    types = _token_types(meta)
    return [
        i
        for i, token in enumerate(meta["tokenizer.ggml.tokens"])
        if token in _END_OF_TURN and types[i] in (_CONTROL, _USER_DEFINED)
    ]


def end_of_generation_ids(meta: dict[str, Any]) -> list[int]:
    """EOS first, then every other token that ends generation (as llama.cpp decides).

    That is GGUF's eot / eom / eos_token_ids and, for SentencePiece vocabularies, the
    end-of-turn tokens found by their text: without them a Gemma or Phi-3 chat model
    would run on past the end of its answer.
    """
    ids = [special_token_id(meta, key) for key in ("eos", "eot", "eom")]
    ids += [*(meta.get("tokenizer.ggml.eos_token_ids") or []), *_turn_enders(meta)]
    return list(dict.fromkeys(i for i in ids if i is not None))


# ---------------------------------------------------------------------------- shared pieces


def _add_vocab_tokens(
    tokenizer: Any, meta: dict[str, Any], special_types: tuple, special_ids: Collection[int] = ()
) -> None:
    """Make control (and user-defined) tokens match whole, never split by the model.

    Like llama.cpp, they match the raw text: normalized=False. special_ids: user-defined
    tokens to treat as control ones, as llama.cpp does with end-of-turn tokens.
    """
    from tokenizers import AddedToken

    tokens, types = meta["tokenizer.ggml.tokens"], _token_types(meta)
    added = [
        AddedToken(tokens[i], special=kind in special_types or i in special_ids, normalized=False)
        for i, kind in enumerate(types)
        if kind in (*special_types, _USER_DEFINED)
    ]
    tokenizer.add_special_tokens([t for t in added if t.special])
    tokenizer.add_tokens([t for t in added if not t.special])


def _bos_eos_template(meta: dict[str, Any], add_eos: bool) -> Any | None:
    """A post-processor adding BOS (and EOS) as the GGUF asks, or None if it adds neither."""
    from tokenizers import processors

    tokens = meta["tokenizer.ggml.tokens"]
    bos, eos = special_token_id(meta, "bos"), special_token_id(meta, "eos")
    add_bos = adds_bos(meta) and bos is not None
    add_eos = add_eos and eos is not None
    if not (add_bos or add_eos):
        return None
    start = [tokens[bos]] if add_bos else []
    end = [tokens[eos]] if add_eos else []

    def side(text: str, segment: int) -> str:
        return " ".join(f"{piece}:{segment}" for piece in [*start, text, *end])

    special = {tokens[i]: i for i, used in ((bos, add_bos), (eos, add_eos)) if used}
    return processors.TemplateProcessing(
        single=side("$A", 0),
        pair=f"{side('$A', 0)} {side('$B', 1)}",
        special_tokens=list(special.items()),
    )


# ---------------------------------------------------------------------------- byte-level BPE


def _pre_tokenizer(kind: str) -> tuple[Any, bool]:
    """Hugging Face pre-tokenizer for GGUF's `tokenizer.ggml.pre`, and BPE's ignore_merges."""
    from tokenizers import Regex, pre_tokenizers

    def split_then_bytes(pattern: str) -> Any:
        return pre_tokenizers.Sequence(
            [
                pre_tokenizers.Split(Regex(pattern), behavior="isolated"),
                pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
            ]
        )

    gpt2 = pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=True)
    if kind in ("default", "gpt-2", "gpt2"):
        return gpt2, False
    if kind == "smollm":  # SmolLM splits every digit on its own before the GPT-2 regex
        return pre_tokenizers.Sequence([pre_tokenizers.Digits(individual_digits=True), gpt2]), False
    if kind == "qwen2":
        return split_then_bytes(_QWEN2_SPLIT), False
    if kind in ("llama-bpe", "llama3"):
        return split_then_bytes(_LLAMA3_SPLIT), True
    if kind == "tekken":
        return split_then_bytes(_TEKKEN_SPLIT), True
    if kind == "gpt-4o":  # llama.cpp applies every merge here (no ignore_merges)
        return split_then_bytes(_O200K_SPLIT), False
    raise ValueError(
        f"unsupported GGUF pre-tokenizer {kind!r}; supported: {', '.join(PRE_TOKENIZERS)}"
    )


def _bpe_tokenizer(meta: dict[str, Any]) -> Any:
    """A byte-level BPE `tokenizers.Tokenizer` from GGUF's vocabulary, merges and token types."""
    from tokenizers import Tokenizer, decoders, models, normalizers, processors

    tokens = meta["tokenizer.ggml.tokens"]
    merges = [tuple(merge.split(" ", 1)) for merge in meta["tokenizer.ggml.merges"]]
    pre, ignore_merges = _pre_tokenizer(meta.get("tokenizer.ggml.pre", "default"))
    model = models.BPE(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=merges,
        ignore_merges=ignore_merges,
    )
    tokenizer = Tokenizer(model)
    tokenizer.pre_tokenizer = pre
    tokenizer.decoder = decoders.ByteLevel()
    if meta.get("tokenizer.ggml.pre") == "qwen2":
        tokenizer.normalizer = normalizers.NFC()
    _add_vocab_tokens(tokenizer, meta, special_types=(_CONTROL,))
    template = _bos_eos_template(meta, add_eos=False)
    tokenizer.post_processor = template or processors.ByteLevel(trim_offsets=False)
    return tokenizer


# ---------------------------------------------------------------------------- SentencePiece


def _spm_merges(tokens: list[str], scores: list[float], types: list[int]) -> list[tuple]:
    """BPE merges equivalent to llama.cpp's score-driven SentencePiece tokenizer.

    Every split of a normal token into two normal tokens is a merge; merges rank by the
    merged token's score, highest first, so the BPE merges pairs in llama.cpp's order.
    (Ties, rare in practice, go to the lower token id where llama.cpp takes the leftmost.)
    """
    ids = {token: i for i, token in enumerate(tokens) if types[i] == _NORMAL}
    ranked = []
    for token, merged in ids.items():
        for cut in range(1, len(token)):
            left, right = ids.get(token[:cut]), ids.get(token[cut:])
            if left is not None and right is not None:
                ranked.append((-scores[merged], merged, left, right))
    ranked.sort()
    return [(tokens[left], tokens[right]) for _, _, left, right in ranked]


def _spm_tokenizer(meta: dict[str, Any]) -> Any:
    """A SentencePiece-style BPE `tokenizers.Tokenizer` (Hugging Face's Llama 2 layout)."""
    from tokenizers import Tokenizer, decoders, models, normalizers

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    unknown = special_token_id(meta, "unknown")
    model = models.BPE(
        vocab={token: i for i, token in enumerate(tokens)},
        merges=_spm_merges(tokens, scores, _token_types(meta)),
        unk_token=None if unknown is None else tokens[unknown],
        fuse_unk=True,
        byte_fallback=True,
    )
    tokenizer = Tokenizer(model)
    # Llama 2 / Mistral / Phi-3 start the text (and each piece after a special token, as
    # llama.cpp does) with the word marker; Gemma does not (add_space_prefix false).
    prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    normalize = [normalizers.Replace(" ", _SPACE)]
    decode = [decoders.Replace(_SPACE, " "), decoders.ByteFallback(), decoders.Fuse()]
    if prefix:
        normalize.insert(0, normalizers.Prepend(_SPACE))
        decode.append(decoders.Strip(" ", 1, 0))
    # These exact decoder sequences make mlx-lm pick its SentencePiece stream detokenizer.
    tokenizer.normalizer = normalizers.Sequence(normalize)
    tokenizer.decoder = decoders.Sequence(decode)
    _add_vocab_tokens(tokenizer, meta, (_CONTROL, _UNKNOWN), special_ids=_turn_enders(meta))
    add_eos = bool(meta.get("tokenizer.ggml.add_eos_token", False))
    template = _bos_eos_template(meta, add_eos=add_eos)
    if template is not None:
        tokenizer.post_processor = template
    return tokenizer


def sentencepiece_model(meta: dict[str, Any]) -> bytes | None:
    """The vocabulary as a SentencePiece model (tokenizer.model), or None if it cannot be one.

    SentencePiece rejects vocabularies with repeated pieces or no unknown token, which
    some hand-edited GGUF files have; tokenizer.json does not need this file.
    """
    import sentencepiece
    from sentencepiece import sentencepiece_model_pb2 as pb

    tokens = meta["tokenizer.ggml.tokens"]
    scores = meta.get("tokenizer.ggml.scores") or [0.0] * len(tokens)
    types = _token_types(meta)
    proto = pb.ModelProto()
    for token, score, kind in zip(tokens, scores, types, strict=True):
        proto.pieces.add(piece=token, score=score, type=kind if 1 <= kind <= 6 else _NORMAL)
    spec = proto.trainer_spec
    spec.model_type = pb.TrainerSpec.BPE
    spec.vocab_size = len(tokens)
    spec.byte_fallback = _BYTE in types
    for key, name in (("unknown", "unk"), ("bos", "bos"), ("eos", "eos"), ("padding", "pad")):
        index = special_token_id(meta, key)
        setattr(spec, f"{name}_id", -1 if index is None else index)
        if index is not None:
            setattr(spec, f"{name}_piece", tokens[index])
    normalizer = proto.normalizer_spec
    normalizer.name = "identity"
    normalizer.add_dummy_prefix = bool(meta.get("tokenizer.ggml.add_space_prefix", True))
    normalizer.remove_extra_whitespaces = False
    normalizer.escape_whitespaces = True
    data = proto.SerializeToString()
    try:
        sentencepiece.SentencePieceProcessor(model_proto=data)
    except RuntimeError:
        return None
    return data


# ---------------------------------------------------------------------------- public API


def build_tokenizer(meta: dict[str, Any]) -> Any:
    """A `tokenizers.Tokenizer` from GGUF metadata; ValueError for unsupported vocabularies."""
    if _kind(meta) == "gpt2":
        return _bpe_tokenizer(meta)
    return _spm_tokenizer(meta)


def tokenizer_config(meta: dict[str, Any]) -> dict[str, Any]:
    """tokenizer_config.json: special tokens, BOS/EOS flags and the GGUF's chat template."""
    tokens = meta["tokenizer.ggml.tokens"]

    def token(key: str) -> str | None:
        index = special_token_id(meta, key)
        return None if index is None else tokens[index]

    arch = meta.get("general.architecture", "")
    config = {
        "tokenizer_class": "PreTrainedTokenizerFast",
        "bos_token": token("bos"),
        "eos_token": token("eos"),
        "pad_token": token("padding"),
        "unk_token": token("unknown"),
        "add_bos_token": adds_bos(meta),
        "add_eos_token": bool(meta.get("tokenizer.ggml.add_eos_token", False)),
        "clean_up_tokenization_spaces": False,
        "model_max_length": meta.get(f"{arch}.context_length", 2048),
    }
    if "tokenizer.chat_template" in meta:
        config["chat_template"] = meta["tokenizer.chat_template"]
    return {key: value for key, value in config.items() if value is not None}


def write_tokenizer(meta: dict[str, Any], out_dir: str | Path, tokenizer: Any = None) -> None:
    """Write tokenizer.json, tokenizer_config.json and, for SentencePiece, tokenizer.model.

    tokenizer: one `build_tokenizer` already made from the same metadata (saves rebuilding).
    """
    out_dir = Path(out_dir)
    (tokenizer or build_tokenizer(meta)).save(str(out_dir / "tokenizer.json"))
    with open(out_dir / "tokenizer_config.json", "w") as f:
        json.dump(tokenizer_config(meta), f, indent=2, ensure_ascii=False)
    if _kind(meta) == "llama":
        data = sentencepiece_model(meta)
        if data is not None:
            (out_dir / "tokenizer.model").write_bytes(data)
