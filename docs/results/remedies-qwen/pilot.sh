#!/usr/bin/env bash
# Issue 23 pilot: does a gentler vanilla LoRA on more GSM8K problems raise the target on the Qwen seed?
set -euo pipefail
cd "$(dirname "$0")/../../.."
# run at commit 7d63995 (the code before the layout change; same stage keys)
S=.venv/bin/sdft
M=qwen2.5-coder-0.5b-instruct
P=runs/pilot23  # results: docs/results/remedies-qwen/pilot_scores.py runs/pilot23
EV="--tasks gsm8k,advbench --data gsm8k=../shared/data/sdft-paper/gsm8k_test.json --limit 200 --max-new-tokens 384 --batch-size 64 --system-prompt model --backend vllm --precision bf16 --offline"
$S setup --model $M --offline
$S eval --model $M $EV --out $P/seed-eval
train() {  # name, then flags
  local name=$1; shift
  $S train --model $M --data ../shared/data/sdft-paper/gsm8k_train.json --task math --system-prompt model \
    --seed 42 --batch-size 4 --grad-accum 2 --max-length 640 --lr-scheduler cosine --warmup-ratio 0.03 \
    --lora-targets all-linear --precision bf16 --save-steps 25 --logging-steps 5 --resume --offline \
    --out $P/$name "$@"
  $S eval --model $M --adapter $P/$name $EV --out $P/$name-eval
}
train A-n1000-e1-lr1e-4-r16 --limit 1000 --epochs 1 --learning-rate 1e-4 --lora-r 16 --lora-alpha 32
