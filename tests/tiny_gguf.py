"""Tiny GGUF files written the way llama.cpp's convert_hf_to_gguf.py writes them.

`write_gguf` exports an mlx-lm model with gguf-py's GGUFWriter: tensor names come from
gguf-py's own Hugging Face -> GGUF name map, and the two changes llama.cpp makes to the
numbers are redone here independently of mlx_gft (llama's q/k row permutation, Gemma's
norm weights stored as 1 + w, in Gemma 2 and 3 too). Converting the file back must give
the model's logits.

Vocabularies: `bpe_vocab` (a byte-level BPE as in Qwen / SmolLM files) and `spm_vocab`,
the GGUF view of a real SentencePiece BPE model trained here in a few milliseconds (as
in Llama 2 / Mistral / Phi-3 files, or Gemma's with ``style="gemma"``).
"""

from __future__ import annotations

import io
from dataclasses import dataclass, field

import numpy as np

# Written for these tests; spaces, tabs, newlines and digits give the vocabulary
# whitespace pieces and single-digit tokens.
CORPUS = [
    "The water cycle describes how water moves between the oceans, the air and the land.",
    "When the sun heats the ocean, water evaporates and rises into the air as vapor.",
    "def square(x: int) -> int:\n    return x ** 2  # squared\n",
    "In 2024, 1234567890 apples cost $3.50 each, or 3,50 euros.",
    "  indented   text with  many spaces\tand\ttabs  ",
    "I'm sure they'll say we've done it, isn't it?",
] * 3


@dataclass
class Vocab:
    """A GGUF vocabulary: the tokenizer.ggml.* metadata llama.cpp writes."""

    model: str  # "gpt2" or "llama"
    tokens: list[str]
    types: list[int]
    scores: list[float] | None = None
    merges: list[str] = field(default_factory=list)
    pre: str = "default"
    special: dict[str, int] = field(default_factory=dict)  # bos / eos / unk / pad / eot
    add_bos: bool = False
    add_space_prefix: bool | None = None
    chat_template: str | None = None
    reference: bytes | None = None  # the SentencePiece model it came from

    def write(self, writer) -> None:
        writer.add_tokenizer_model(self.model)
        writer.add_tokenizer_pre(self.pre)
        writer.add_token_list(self.tokens)
        writer.add_token_types(self.types)
        if self.scores is not None:
            writer.add_token_scores(self.scores)
        if self.merges:
            writer.add_token_merges(self.merges)
        adders = {
            "bos": writer.add_bos_token_id,
            "eos": writer.add_eos_token_id,
            "unk": writer.add_unk_token_id,
            "pad": writer.add_pad_token_id,
            "eot": writer.add_eot_token_id,
        }
        for key, index in self.special.items():
            adders[key](index)
        writer.add_add_bos_token(self.add_bos)
        if self.add_space_prefix is not None:
            writer.add_add_space_prefix(self.add_space_prefix)
        if self.chat_template is not None:
            writer.add_chat_template(self.chat_template)


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies spell)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return dict(sorted(chars.items()))


def bpe_vocab(pre: str = "gpt-2") -> Vocab:
    """258 tokens: the 256 bytes, "Ġt" (one merge) and a control <|endoftext|>."""
    tokens = [*bytes_to_unicode().values(), "Ġt", "<|endoftext|>"]
    return Vocab(
        model="gpt2",
        tokens=tokens,
        types=[1] * (len(tokens) - 1) + [3],
        merges=["Ġ t"],
        pre=pre,
        special={"eos": len(tokens) - 1},
    )


def train_sentencepiece(style: str = "llama", vocab_size: int = 360) -> bytes:
    """A SentencePiece BPE model with byte fallback, laid out like Llama 2's or Gemma's.

    Identity normalization and kept whitespace, as in those models' tokenizer.model.
    """
    import sentencepiece as spm

    if style == "llama":
        ids = dict(unk_id=0, bos_id=1, eos_id=2, pad_id=-1, add_dummy_prefix=True)
        extra = dict(user_defined_symbols=["<tool>"])
    else:  # Gemma: <pad> <eos> <bos> <unk>, turn markers, no leading word marker
        ids = dict(pad_id=0, eos_id=1, bos_id=2, unk_id=3, add_dummy_prefix=False)
        extra = dict(user_defined_symbols=["<start_of_turn>", "<end_of_turn>"])
    out = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(CORPUS),
        model_writer=out,
        model_type="bpe",
        vocab_size=vocab_size,
        hard_vocab_limit=False,
        byte_fallback=True,
        split_digits=True,
        allow_whitespace_only_pieces=True,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        num_threads=1,
        minloglevel=2,
        **ids,
        **extra,
    )
    return out.getvalue()


def spm_vocab(style: str = "llama") -> Vocab:
    """The GGUF vocabulary llama.cpp writes for a SentencePiece model: pieces, scores, types."""
    from sentencepiece import sentencepiece_model_pb2 as pb

    reference = train_sentencepiece(style)
    proto = pb.ModelProto()
    proto.ParseFromString(reference)
    spec = proto.trainer_spec
    special = {"bos": spec.bos_id, "eos": spec.eos_id, "unk": spec.unk_id}
    if spec.pad_id >= 0:
        special["pad"] = spec.pad_id
    # Like llama.cpp's Gemma files, no eot id: <end_of_turn> is known by its text only.
    return Vocab(
        model="llama",
        tokens=[piece.piece for piece in proto.pieces],
        types=[piece.type for piece in proto.pieces],
        scores=[piece.score for piece in proto.pieces],
        special=special,
        add_bos=True,
        # llama.cpp writes the flag for Gemma only; Llama 2 files rely on its default (true).
        add_space_prefix=False if style == "gemma" else None,
        reference=reference,
    )


def _gguf_tensors(model, args, arch: str) -> dict[str, np.ndarray]:
    """The model's parameters under GGUF names, with llama.cpp's changes to the numbers."""
    import gguf
    from mlx.utils import tree_flatten
    from mlx_lm.gguf import permute_weights

    names = gguf.get_tensor_name_map(gguf.MODEL_ARCH[arch.upper()], args.num_hidden_layers)
    tensors = {}
    for name, value in tree_flatten(model.parameters()):
        gguf_name = names.get_name(name, try_suffixes=(".weight", ".bias"))
        assert gguf_name is not None, name
        value = np.array(value, dtype=np.float32)
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            kv = args.num_key_value_heads if "k_proj" in name else args.num_attention_heads
            value = np.array(permute_weights(value, args.num_attention_heads, kv))
        if arch.startswith("gemma") and name.endswith("norm.weight"):
            value = value + 1  # convert_hf_to_gguf.py's Gemma*Model.modify_tensors
        tensors[gguf_name] = value
    return tensors


def write_gguf(path, arch: str, model, args, vocab: Vocab, context: int = 128) -> None:
    """Write `model` (an mlx-lm model of GGUF architecture `arch`) as an F32 GGUF file."""
    import gguf

    writer = gguf.GGUFWriter(str(path), arch)
    writer.add_block_count(args.num_hidden_layers)
    writer.add_context_length(context)
    writer.add_embedding_length(args.hidden_size)
    writer.add_feed_forward_length(args.intermediate_size)
    writer.add_head_count(args.num_attention_heads)
    writer.add_head_count_kv(args.num_key_value_heads)
    writer.add_layer_norm_rms_eps(args.rms_norm_eps)
    if arch not in ("gemma", "gemma2"):  # these leave the rope base at llama.cpp's 10000
        writer.add_rope_freq_base(args.rope_theta)
    head_dim = getattr(args, "head_dim", None) or args.hidden_size // args.num_attention_heads
    if head_dim != args.hidden_size // args.num_attention_heads or arch.startswith("gemma"):
        writer.add_key_length(head_dim)
        writer.add_value_length(head_dim)
    tensors = _gguf_tensors(model, args, arch)
    if arch == "phi3":
        _write_phi3_rope(writer, args, head_dim, tensors)
    if arch in ("gemma2", "gemma3"):
        _write_gemma_attention(writer, args, arch)
    vocab.write(writer)
    for name, value in tensors.items():
        writer.add_tensor(name, value)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def _write_gemma_attention(writer, args, arch: str) -> None:
    """Gemma 2's softcapping and sliding window; Gemma 3's window (none: all layers global).

    Like convert_hf_to_gguf.py, nothing says query_pre_attn_scalar: readers derive it.
    """
    if arch == "gemma2":
        writer.add_attn_logit_softcapping(args.attn_logit_softcapping)
        writer.add_final_logit_softcapping(args.final_logit_softcapping)
        writer.add_sliding_window(4096)
    elif args.sliding_window_pattern > 1:
        assert args.sliding_window_pattern == 6, "llama.cpp fixes Gemma 3's pattern at 6"
        writer.add_sliding_window(args.sliding_window)


def _write_phi3_rope(writer, args, head_dim: int, tensors: dict) -> None:
    """Phi-3's rotary dimensions and, for LongRoPE models, its factor tensors."""
    writer.add_rope_dimension_count(int(head_dim * args.partial_rotary_factor))
    scaling = args.rope_scaling
    if scaling:
        writer.add_rope_scaling_orig_ctx_len(args.original_max_position_embeddings)
        for kind in ("long", "short"):
            tensors[f"rope_factors_{kind}.weight"] = np.array(
                scaling[f"{kind}_factor"], dtype=np.float32
            )
