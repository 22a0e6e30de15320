#!/usr/bin/env bash
# The remedy run spans sessions on machines whose disk does not outlive them: its folder is committed as an
# archive (docs/results/remedies-qwen/run: no weights, no answer text) and resumed from it.
#   resume.sh [ARMS]     restore the run folder from the archive (unless it is here) and resume the run
#                        (default arms: the whole config; e.g. resume.sh '[vanilla,sdft,interp]')
#   resume.sh --archive  archive the run folder back (while it runs or after; then commit the folder)
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=${SDFT:-.venv/bin/sdft}
# Every model of the run is generated with vLLM keeping one core for its scheduler, as the first ones were
# (sdft now reserves none on a small CPU: identical answers in fp32 on a CPU without bf16 units, not yet
# checked in bf16; docs/performance.md). Set here, so it holds for every stage, replay's answers included.
export VLLM_CPU_NUM_OF_RESERVED_CPU=${VLLM_CPU_NUM_OF_RESERVED_CPU:-1}
RUN=runs/remedies-qwen
KEEP=docs/results/remedies-qwen/run
if [ "${1:-}" = "--archive" ]; then
  exec $S archive $RUN $KEEP
fi
if [ ! -d $RUN ]; then
  mkdir -p runs && cp -r $KEEP $RUN
fi
exec $S run configs/experiments/remedies-qwen.yaml ${1:+"arms=$1"}
