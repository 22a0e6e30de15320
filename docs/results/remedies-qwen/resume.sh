#!/usr/bin/env bash
# The remedy run spans sessions on machines whose disk does not outlive them: its folder is committed as an
# archive (docs/results/remedies-qwen/run: no weights, no answer text) and resumed from it.
#   resume.sh [ARMS]     restore the run folder from the archive (unless it is here) and resume the run
#                        (default arms: the whole config; e.g. resume.sh '[vanilla,sdft,interp]')
#   resume.sh --archive  archive the run folder back (while it runs or after; then commit the folder)
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=${SDFT:-.venv/bin/sdft}
RUN=runs/remedies-qwen
KEEP=docs/results/remedies-qwen/run
if [ "${1:-}" = "--archive" ]; then
  exec $S archive $RUN $KEEP
fi
if [ ! -d $RUN ]; then
  mkdir -p runs && cp -r $KEEP $RUN
fi
exec $S run configs/experiments/remedies-qwen.yaml ${1:+"arms=$1"}
