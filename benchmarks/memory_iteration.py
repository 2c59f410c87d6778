"""Peak memory of one whole training iteration, GFT (`python -m mlx_gft.lora`) against
SFT (`mlx_lm.lora`), as whole processes (`/usr/bin/time -v`, maximum resident set).

Both read the same model folder: random weights in the exact shape of a Hub model
(benchmarks/memory.py's SHAPES) with the embedded SmolLM2's tokenizer, and the same
data: batch_size rows of a `prompt_len`-word prompt and an `answer_len`-word expert
answer (one token per word; the chat template adds about 30). Each CLI runs at its
defaults but for what the comparison fixes: one iteration, LoRA on every layer, batch
4, float32, prompt-masked SFT. GFT samples K = 8 answers of up to `answer_len` tokens
per prompt (random weights never stop early: the worst case), validates once and keeps
a KL probe, as a real run does.

    python benchmarks/memory_iteration.py                 # Qwen2.5-0.5B shape, 2 layers
    python benchmarks/memory_iteration.py --layers 24
"""

import argparse
import json
import os
import re
import subprocess
import sys
import tempfile
from pathlib import Path

import mlx_gft  # noqa: F401, E402  (OpenBLAS before MLX: then LD_PRELOAD can pass it on)

sys.path.insert(0, str(Path(__file__).resolve().parent))

from memory import SHAPES, build_model  # noqa: E402

TOKENIZER_FILES = ("tokenizer.json", "tokenizer_config.json", "special_tokens_map.json")


def write_model(folder: Path, shape: str, layers: int) -> None:
    """Random weights in the shape, and the embedded SmolLM2's byte-level BPE tokenizer
    (49k tokens; the model's larger vocabulary only means samples hold ids it decodes
    to nothing, which changes no array's shape)."""
    import shutil

    import mlx.core as mx
    from mlx.utils import tree_flatten

    sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "tests"))
    from real_model import smollm_path

    config = {**SHAPES[shape], "num_hidden_layers": layers or SHAPES[shape]["num_hidden_layers"]}
    model = build_model(shape, layers)
    folder.mkdir(parents=True, exist_ok=True)
    mx.save_safetensors(str(folder / "model.safetensors"), dict(tree_flatten(model.parameters())))
    (folder / "config.json").write_text(json.dumps(config))
    source = smollm_path()
    for name in TOKENIZER_FILES:
        if (source / name).exists():
            shutil.copyfile(source / name, folder / name)


def write_data(folder: Path, rows: int, prompt_len: int, answer_len: int) -> None:
    """Texts of words that are one token each, so a row is prompt_len + answer_len tokens."""
    import numpy as np
    from transformers import AutoTokenizer

    tokenizer = AutoTokenizer.from_pretrained(str(folder.parent / "model"))
    vocab = [w[1:] for w in tokenizer.get_vocab() if w.startswith("Ġ") and w[1:].isalpha()]
    words = sorted(
        w for w in vocab if len(tokenizer.encode(" " + w, add_special_tokens=False)) == 1
    )
    rng = np.random.default_rng(0)
    folder.mkdir(parents=True, exist_ok=True)

    def text(n):
        return " ".join(words[i] for i in rng.integers(0, len(words), n))

    lines = [
        json.dumps({"prompt": text(prompt_len), "completion": text(answer_len)})
        for _ in range(rows)
    ]
    for split in ("train", "valid"):
        (folder / f"{split}.jsonl").write_text("\n".join(lines) + "\n")


def max_rss_gb(cmd: list[str]) -> tuple[float, str]:
    """The command's maximum resident set; mlx_lm gets the BLAS `import mlx_gft` loads."""
    from mlx_gft import _blas

    env = dict(os.environ)
    if _blas.preload():
        env["LD_PRELOAD"] = _blas.loaded
    out = subprocess.run(["/usr/bin/time", "-v", *cmd], capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(f"{' '.join(cmd)} failed:\n{out.stdout[-3000:]}\n{out.stderr[-3000:]}")
    kb = int(re.search(r"Maximum resident set size \(kbytes\): (\d+)", out.stderr).group(1))
    return kb / 1e6, out.stdout + out.stderr


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--shape", choices=SHAPES, default="qwen2.5-0.5b")
    ap.add_argument("--layers", type=int, default=2, help="layers to build, 0 = all")
    ap.add_argument("--batch", type=int, default=4)
    ap.add_argument("--group-size", type=int, default=8)
    ap.add_argument("--prompt-len", type=int, default=100)
    ap.add_argument("--answer-len", type=int, default=256)
    ap.add_argument("--folder", help="where the model and data go (default: a temp dir)")
    args = ap.parse_args()
    root = Path(args.folder or tempfile.mkdtemp(prefix="mlx_gft_mem_"))
    model, data = root / "model", root / "data"
    if not (model / "config.json").exists():
        write_model(model, args.shape, args.layers)
    write_data(data, args.batch, args.prompt_len, args.answer_len)
    common = ["--model", str(model), "--data", str(data), "--train", "--iters", "1"]
    common += ["--batch-size", str(args.batch), "--num-layers", "-1", "--val-batches", "1"]
    common += ["--steps-per-report", "1", "--max-seq-length", "2048"]
    runs = {
        "mlx_lm.lora (SFT)": [
            sys.executable, "-m", "mlx_lm", "lora", *common, "--mask-prompt",
            "--adapter-path", str(root / "ad-sft"),
        ],
        "mlx_gft.lora (GFT)": [
            sys.executable, "-m", "mlx_gft.lora", *common, "--group-size", str(args.group_size),
            "--max-completion-length", str(args.answer_len), "--adapter-path", str(root / "ad-gft"),
        ],
    }  # fmt: skip
    layers = args.layers or SHAPES[args.shape]["num_hidden_layers"]
    print(
        f"{args.shape}, {layers} layers, float32, LoRA on all; batch {args.batch}, "
        f"K = {args.group_size}, prompt {args.prompt_len} / answer {args.answer_len} words\n"
    )
    print("| run | max RSS GB | x mlx_lm.lora |\n|---|---|---|")
    base = None
    for name, cmd in runs.items():
        gb, log = max_rss_gb(cmd)
        base = base or gb
        peak = re.findall(r"Peak mem ([\d.]+) GB", log)
        print(
            f"| {name} | {gb:.2f} | {gb / base:.2f}x |"
            + (f" report: Peak mem {peak[-1]} GB" if peak else "")
        )


if __name__ == "__main__":
    main()
