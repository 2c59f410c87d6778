"""A tiny random Llama with a real sentencepiece tokenizer, written in Hugging Face layout.

Tests need a model that goes through exactly the code paths a real checkpoint does
(`mlx_lm.load`, transformers' tokenizer, the chat template, EOS handling) but builds in
about a second and needs no network. `build_tiny_model` writes one to a folder:

    config.json, model.safetensors (HF weight names, float32),
    tokenizer.model (sentencepiece BPE, byte fallback), tokenizer.json,
    tokenizer_config.json (with a chat template), tiny_model_meta.json

Everything is a pure function of the arguments (fixed corpus, seeded numpy RNG,
single-threaded tokenizer training), so a folder built earlier with the same arguments
is reused as is.
"""

from __future__ import annotations

import io
import json
import random
from pathlib import Path

import numpy as np

# Bump when the output format changes so stale cached folders are rebuilt.
_FORMAT_VERSION = 1

ROLE_TOKENS = ["<|system|>", "<|user|>", "<|assistant|>"]

# Each message is "<|role|>\n content </s>\n"; the generation prompt opens the
# assistant turn so sampling continues right after it.
CHAT_TEMPLATE = (
    "{{ bos_token }}"
    "{% for message in messages %}"
    "{{ '<|' + message['role'] + '|>\n' + message['content'] + eos_token + '\n' }}"
    "{% endfor %}"
    "{% if add_generation_prompt %}{{ '<|assistant|>\n' }}{% endif %}"
)

_NAMES = ["Tom", "Ann", "Sam", "Lily", "Max", "Eva", "Ben", "Mia", "Leo", "Zoe", "Omar", "Nina"]
_ITEMS = [
    "apples",
    "pens",
    "books",
    "coins",
    "cards",
    "eggs",
    "marbles",
    "stickers",
    "cookies",
    "pencils",
    "flowers",
    "shells",
    "stamps",
    "balloons",
    "candies",
    "toys",
]
_VERBS_GAIN = ["buys", "finds", "gets", "receives", "wins", "collects"]
_VERBS_LOSE = ["gives away", "loses", "eats", "sells", "breaks", "uses"]
_PLACES = ["at the store", "in the park", "at school", "at home", "on the bus", "at the fair"]


def arithmetic_corpus(n: int = 3000, seed: int = 1234) -> list[str]:
    """GSM8K-flavoured lines: a word problem, its step-by-step answer, then '#### N'."""
    rng = random.Random(seed)
    lines = []
    for _ in range(n):
        name, item, place = rng.choice(_NAMES), rng.choice(_ITEMS), rng.choice(_PLACES)
        a, b = rng.randint(1, 999), rng.randint(1, 99)
        kind = rng.randrange(4)
        if kind == 0:
            verb, ans, op = rng.choice(_VERBS_GAIN), a + b, "+"
        elif kind == 1:
            a = max(a, b)
            verb, ans, op = rng.choice(_VERBS_LOSE), a - b, "-"
        elif kind == 2:
            a = a % 20 + 1
            line = (
                f"{name} has {a} bags {place}. Each bag holds {b} {item}. "
                f"How many {item} are there in total? "
                f"There are {a} * {b} = {a * b} {item}. The answer is {a * b}. #### {a * b}"
            )
            lines.append(line)
            continue
        else:
            a = b * rng.randint(1, 20)
            line = (
                f"{name} shares {a} {item} equally among {b} friends {place}. "
                f"How many {item} does each friend get? "
                f"Each friend gets {a} / {b} = {a // b} {item}. #### {a // b}"
            )
            lines.append(line)
            continue
        lines.append(
            f"{name} has {a} {item} {place} and {verb} {b} of them. "
            f"How many {item} does {name} have now? "
            f"{name} has {a} {op} {b} = {ans} {item}. The answer is {ans}. #### {ans}"
        )
    return lines


def _train_tokenizer(out: Path, vocab_size: int) -> None:
    """Train a sentencepiece BPE model and save it as a transformers Llama tokenizer."""
    import sentencepiece as spm
    from transformers import AutoTokenizer

    buf = io.BytesIO()
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(arithmetic_corpus()),
        model_writer=buf,
        vocab_size=vocab_size,
        model_type="bpe",
        byte_fallback=True,  # any text encodes, so decode(encode(s)) == s
        split_digits=True,
        num_threads=1,  # deterministic merges
        unk_id=0,
        bos_id=1,
        eos_id=2,
        pad_id=-1,
        user_defined_symbols=ROLE_TOKENS,
        hard_vocab_limit=False,
        minloglevel=2,
    )
    (out / "tokenizer.model").write_bytes(buf.getvalue())
    config = {
        "tokenizer_class": "LlamaTokenizer",
        "bos_token": "<s>",
        "eos_token": "</s>",
        "unk_token": "<unk>",
        "add_bos_token": True,
        "add_eos_token": False,
        "model_max_length": 4096,
    }
    (out / "tokenizer_config.json").write_text(json.dumps(config, indent=2))
    # transformers converts the sentencepiece model; saving writes tokenizer.json so
    # mlx-lm picks its sentencepiece streaming detokenizer and loading needs no conversion.
    tok = AutoTokenizer.from_pretrained(out)
    tok.chat_template = CHAT_TEMPLATE
    tok.save_pretrained(out)
    # Keep the chat template inside tokenizer_config.json (what older tools read).
    saved = json.loads((out / "tokenizer_config.json").read_text())
    saved["chat_template"] = CHAT_TEMPLATE
    (out / "tokenizer_config.json").write_text(json.dumps(saved, indent=2))
    (out / "chat_template.jinja").unlink(missing_ok=True)


def _llama_weights(
    rng: np.random.Generator,
    vocab: int,
    hidden: int,
    inter: int,
    layers: int,
    heads: int,
    kv_heads: int,
    logit_scale: float,
) -> dict[str, np.ndarray]:
    """Random weights with HF names; linear weights are (out, in) like torch."""
    head_dim = hidden // heads

    def linear(n_out: int, n_in: int, scale: float = 1.0) -> np.ndarray:
        return (rng.standard_normal((n_out, n_in)) * scale / np.sqrt(n_in)).astype(np.float32)

    def norm(n: int) -> np.ndarray:
        return (1.0 + 0.1 * rng.standard_normal(n)).astype(np.float32)

    w = {"model.embed_tokens.weight": rng.standard_normal((vocab, hidden)).astype(np.float32)}
    for i in range(layers):
        p = f"model.layers.{i}."
        w[p + "self_attn.q_proj.weight"] = linear(heads * head_dim, hidden)
        w[p + "self_attn.k_proj.weight"] = linear(kv_heads * head_dim, hidden)
        w[p + "self_attn.v_proj.weight"] = linear(kv_heads * head_dim, hidden)
        w[p + "self_attn.o_proj.weight"] = linear(hidden, heads * head_dim)
        w[p + "mlp.gate_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.up_proj.weight"] = linear(inter, hidden)
        w[p + "mlp.down_proj.weight"] = linear(hidden, inter)
        w[p + "input_layernorm.weight"] = norm(hidden)
        w[p + "post_attention_layernorm.weight"] = norm(hidden)
    w["model.norm.weight"] = norm(hidden)
    # logit_scale sets how peaked the next-token distributions are (std of the logits).
    w["lm_head.weight"] = linear(vocab, hidden, logit_scale)
    return w


def build_tiny_model(
    path: Path,
    seed: int = 0,
    vocab_size: int = 512,
    num_layers: int = 2,
    hidden: int = 64,
    intermediate: int = 128,
    num_heads: int = 4,
    num_kv_heads: int = 2,
    max_position_embeddings: int = 512,
    logit_scale: float = 2.0,
) -> Path:
    """Write (or reuse) a tiny random Llama + tokenizer at `path`; returns `path`.

    `vocab_size` is the tokenizer's target size; the model's embedding size is the
    tokenizer's actual length (a little smaller if the corpus cannot fill the target).
    """
    path = Path(path)
    meta = {
        "format": _FORMAT_VERSION,
        "seed": seed,
        "vocab_size": vocab_size,
        "num_layers": num_layers,
        "hidden": hidden,
        "intermediate": intermediate,
        "num_heads": num_heads,
        "num_kv_heads": num_kv_heads,
        "max_position_embeddings": max_position_embeddings,
        "logit_scale": logit_scale,
    }
    meta_file = path / "tiny_model_meta.json"
    if meta_file.exists() and json.loads(meta_file.read_text()) == meta:
        return path
    path.mkdir(parents=True, exist_ok=True)

    _train_tokenizer(path, vocab_size)
    from transformers import AutoTokenizer

    vocab = len(AutoTokenizer.from_pretrained(path))

    config = {
        "architectures": ["LlamaForCausalLM"],
        "model_type": "llama",
        "hidden_size": hidden,
        "intermediate_size": intermediate,
        "num_hidden_layers": num_layers,
        "num_attention_heads": num_heads,
        "num_key_value_heads": num_kv_heads,
        "vocab_size": vocab,
        "max_position_embeddings": max_position_embeddings,
        "rms_norm_eps": 1e-5,
        "rope_theta": 10000.0,
        "hidden_act": "silu",
        "tie_word_embeddings": False,
        "attention_bias": False,
        "mlp_bias": False,
        "bos_token_id": 1,
        "eos_token_id": 2,
        "torch_dtype": "float32",
    }
    (path / "config.json").write_text(json.dumps(config, indent=2))

    from safetensors.numpy import save_file

    rng = np.random.default_rng(seed)
    weights = _llama_weights(
        rng, vocab, hidden, intermediate, num_layers, num_heads, num_kv_heads, logit_scale
    )
    save_file(weights, str(path / "model.safetensors"), metadata={"format": "pt"})
    # Written last: its presence means the folder is complete.
    meta_file.write_text(json.dumps(meta, indent=2))
    return path


if __name__ == "__main__":
    import sys

    print(build_tiny_model(Path(sys.argv[1] if len(sys.argv) > 1 else "tiny_model")))
