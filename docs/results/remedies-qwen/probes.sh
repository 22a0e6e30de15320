#!/usr/bin/env bash
# Issue 23 item 3a: does the numbered-list opening *cause* the lost refusals? Decoding probes on the main run's
# models, AdvBench raw (200), every other setting as the run's own evaluation (so each probe is paired with the
# model's plain answers, item by item):
#   - the seed with every answer forced to open with "1." (--answer-prefix);
#   - each SDFT and each vanilla model (every training seed) with a digit first token banned (--forbid-opening).
# Usage: probes.sh [--fp32]   (from anywhere; --fp32: the fp32 run's models, resume.sh says why there are two;
#        a finished probe is not redone; models not trained yet are skipped)
# Results: docs/results/remedies-qwen/probe_scores.py runs/remedies-qwen (or runs/remedies-qwen-fp32)
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=${SDFT:-.venv/bin/sdft}
M=qwen2.5-coder-0.5b-instruct
R=runs/remedies-qwen PRECISION=bf16
if [ "${1:-}" = "--fp32" ]; then
  R=runs/remedies-qwen-fp32 PRECISION=fp32
else
  # Every model of the bf16 run is generated with vLLM keeping one core for its scheduler, as the first ones
  # were (sdft reserves none on a small CPU: identical answers in fp32, not yet checked in bf16: check_cores.sh).
  export VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-1}
fi
P=$R/probes
EV="--tasks advbench --limit 200 --max-new-tokens 384 --batch-size 64 --system-prompt model --backend vllm --precision $PRECISION --offline --no-progress"
probe() {  # out folder, then flags
  local out=$1; shift
  [ -f "$out/results.json" ] || $S eval --model $M $EV --out "$out" "$@"
}
probe $P/seed-prefix-1. --answer-prefix "1."
# The run's vanilla and SDFT models as its manifest names them (label, training folder): a folder superseded by
# a keyed change (the fp32 run's padded vanilla seed 42, README Progress "Session 7") is not probed.
models=$(${PYTHON:-.venv/bin/python} - "$R/manifest.json" <<'EOF'
import json, re, sys
for label, model in json.load(open(sys.argv[1]))["models"].items():
    train = (model.get("train") or {}).get("dir")
    if train and re.fullmatch(r"(vanilla|sdft)(-s\d+)?", label):
        print(label, train)
EOF
)
while read -r label adapter; do
  [ -n "$label" ] && [ -f "$adapter/adapter_model.safetensors" ] || continue
  probe "$P/$label-forbid-digit" --adapter "$adapter" --forbid-opening '\d'
done <<< "$models"
