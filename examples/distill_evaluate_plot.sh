#!/usr/bin/env bash
# Teacher answers, GFT vs SFT, and a comparison, on the built-in arithmetic task.
# TEACHER: any mlx-lm model (Hub id, local folder or .gguf) stronger than the student.
set -euo pipefail
TEACHER=${TEACHER:?set TEACHER to a model path or Hub id}

# 1. Write the task with 4 verified teacher answers per prompt (train and valid;
#    test.jsonl is copied unchanged). Rows whose samples are all wrong keep none.
python -c "from mlx_gft.tasks.arithmetic import write_dataset; write_dataset('data')"
python -m mlx_gft.distill --teacher "$TEACHER" --data data --num-responses 4 \
    --keep-correct --temperature 0.7 --max-tokens 128 --output data-distilled

# 2. Train two students on it (same config, different loss).
python -m mlx_gft.lora -c examples/quickstart.yaml --data data-distilled --loss gft \
    --adapter-path runs/gft
python -m mlx_gft.lora -c examples/quickstart.yaml --data data-distilled --loss sft \
    --adapter-path runs/sft

# 3. Held-out accuracy: avg@4, pass@4 and greedy (written to runs/*/eval_results.json).
for run in runs/gft runs/sft; do
    python -m mlx_gft.evaluate --data data-distilled --adapter-path "$run" \
        --samples 4 --temperature 1.0 --max-tokens 64 --limit 64
done

# 4. Entropy, gradient norm, KL to the base, reward and val_acc curves, one PNG each
#    (needs pip install "mlx-gft[plot]"), and a summary table.
python -m mlx_gft.plots runs/gft runs/sft --out runs/plots
