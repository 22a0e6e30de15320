#!/usr/bin/env bash
# Issue 23 pilot: does a gentler vanilla LoRA on more GSM8K problems raise the target on the Qwen seed?
# Usage: pilot.sh [PILOT...]   (default: every pilot; a finished training or evaluation is not redone)
set -euo pipefail
cd "$(dirname "$0")/../../.."
# pilot 1 ran at commit 7d63995 (before the layout change), pilot 2 at f77362c, pilot 3 at 59d1c81: the stage keys
# are the same
S=${SDFT:-.venv/bin/sdft}
M=qwen2.5-coder-0.5b-instruct
P=runs/pilot23  # results: docs/results/remedies-qwen/pilot_scores.py runs/pilot23
EV="--tasks gsm8k,advbench --data gsm8k=../shared/data/sdft-paper/gsm8k_test.json --limit 200 --max-new-tokens 384 --batch-size 64 --system-prompt model --backend vllm --precision bf16 --offline"
evaluate() {  # out folder, then flags
  local out=$1; shift
  [ -f "$out/results.json" ] || $S eval --model $M $EV --out "$out" "$@"
}
train() {  # name, then flags
  local name=$1; shift
  [ -f "$P/$name/adapter_model.safetensors" ] || \
  $S train --model $M --data ../shared/data/sdft-paper/gsm8k_train.json --task math --system-prompt model \
    --seed 42 --batch-size 4 --grad-accum 2 --max-length 640 --lr-scheduler cosine --warmup-ratio 0.03 \
    --lora-targets "${LORA_TARGETS:-all-linear}" --precision bf16 --save-steps 25 --logging-steps 5 --resume --offline \
    --out $P/$name "$@"
  evaluate $P/$name-eval --adapter $P/$name
}
pilot1() { train A-n1000-e1-lr1e-4-r16 --limit 1000 --epochs 1 --learning-rate 1e-4 --lora-r 16 --lora-alpha 32; }
# pilot 2: twice the problems at twice the learning rate, in the main run's common batch order
pilot2() { train B-n2000-e1-lr2e-4-r16 --limit 2000 --epochs 1 --learning-rate 2e-4 --lora-r 16 --lora-alpha 32 \
  --batch-order index; }
# pilot 3: the paper's LoRA (r=8, alpha 16, q_proj and v_proj only, lr 1e-4), two epochs of pilot 1's problems
pilot3() { LORA_TARGETS=q_proj,v_proj train C-n1000-e2-lr1e-4-r8qv --limit 1000 --epochs 2 --learning-rate 1e-4 \
  --lora-r 8 --lora-alpha 16 --batch-order index; }
$S setup --model $M --offline
evaluate $P/seed-eval
for p in ${@:-pilot1 pilot2 pilot3}; do "$p"; done
