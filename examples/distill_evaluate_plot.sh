#!/usr/bin/env bash
# Teacher answers, GFT vs SFT, and a comparison, on the built-in arithmetic task.
# TEACHER: any mlx-lm model (Hub id, local folder or .gguf) stronger than the student.
set -euo pipefail
TEACHER=${TEACHER:?set TEACHER to a model path or Hub id}

# Everything goes under distill_demo/ (data/ is where the GSM8K configs read from).
OUT=distill_demo

# 1. Write the task with 4 verified teacher answers per prompt (train and valid;
#    test.jsonl is copied unchanged). Rows whose samples are all wrong keep none.
python -c "from mlx_gft.tasks.arithmetic import write_dataset; write_dataset('$OUT/data')"
python -m mlx_gft.distill --teacher "$TEACHER" --data "$OUT/data" --num-responses 4 \
    --keep-correct --temperature 0.7 --max-tokens 128 --output "$OUT/data-distilled"

# 2. Train two students on it (same config, different loss; SFT on the answer tokens
#    only, as GFT trains: the baseline every comparison here uses), each with its
#    group log for the report.
python -m mlx_gft.lora -c examples/quickstart.yaml --data "$OUT/data-distilled" --loss gft \
    --adapter-path "$OUT/gft" --log-completions
python -m mlx_gft.lora -c examples/quickstart.yaml --data "$OUT/data-distilled" --loss sft \
    --mask-prompt --adapter-path "$OUT/sft"

# 3. Held-out accuracy: avg@4, pass@4 and greedy (written to $OUT/*/eval_results.json).
for run in "$OUT/gft" "$OUT/sft"; do
    python -m mlx_gft.evaluate --data "$OUT/data-distilled" --adapter-path "$run" \
        --samples 4 --temperature 1.0 --max-tokens 64 --limit 64
done

# 4. The two runs side by side in one HTML page (entropy on held-out expert answers,
#    gradient norm, KL per token, accuracy) with GFT's logged groups.
python -m mlx_gft.report "$OUT/gft" "$OUT/sft" -o "$OUT/report.html"
