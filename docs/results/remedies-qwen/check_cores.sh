#!/usr/bin/env bash
# Before unpinning VLLM_CPU_NUM_OF_RESERVED_CPU=1 in resume.sh and probes.sh: are this run's answers (bf16, vLLM,
# task by task) the same with one core kept for vLLM's scheduler, as every model so far was generated, and with
# none, sdft's default on a small CPU (1.67x faster generation on 2 cores, identical answers in fp32 on a CPU
# without bf16 units: docs/performance.md)? The seed on 48 GSM8K and 48 AdvBench prompts, both ways, one after
# the other (about 10 minutes on a 2-core CPU with bf16 units); run it with nothing else running.
# Prints how many answers differ, and how many of each equal the run's archived seed answers (by hash);
# "0 of 96 differ" on this run's CPU kind is the evidence to unpin.
# PRECISION=fp32 asks the fp32 run's question instead: its seed answers (made on a CPU without bf16 units) against
# this CPU's, both ways (on a CPU with AVX512-BF16: 96 of 96 equal, docs/results/arm-cost/). LIMIT=N (default 48).
set -euo pipefail
cd "$(dirname "$0")/../../.."
S=${SDFT:-.venv/bin/sdft}
O=runs/cores-check-${PRECISION:-bf16}-${LIMIT:-48}
EV="--model qwen2.5-coder-0.5b-instruct --tasks gsm8k,advbench --data gsm8k=../shared/data/sdft-paper/gsm8k_test.json
    --limit ${LIMIT:-48} --max-new-tokens 384 --batch-size 64 --system-prompt model --backend vllm --precision ${PRECISION:-bf16}
    --no-stream-answers --offline --no-progress"
mkdir -p $O
for n in 1 0; do
  [ -f $O/reserved-$n/results.json ] || $S eval $EV --backend-option reserved_cpus=$n --out $O/reserved-$n > $O/reserved-$n.log 2>&1
done
{ lscpu | grep -o -E 'avx512_bf16|amx_bf16' || true; } | sort -u | tr '\n' ' '; echo "(bf16 units of this CPU; empty: none)"
.venv/bin/python - "$O" <<'PY'
import json, sys
from pathlib import Path
folder, differ, total = Path(sys.argv[1]), 0, 0
for task in ("gsm8k", "advbench"):
    one, none = ({json.loads(l)["id"]: json.loads(l)["completion"] for l in (folder / f"reserved-{n}" / "generations"
                  / f"{task}.jsonl").open()} for n in (1, 0))
    changed = sorted(i for i in one if one[i] != none.get(i))
    differ, total = differ + len(changed), total + len(one)
    print(f"{task}: {len(changed)} of {len(one)} answers differ" + (f" (ids {changed[:10]})" if changed else ""))
print(f"all: {differ} of {total} differ")
# The run's own seed answers at this precision (archived as hashes: the bf16 run's made on a CPU with bf16 units,
# the fp32 run's on one without) against both.
kept = Path("docs/results/remedies-qwen") / ("run-fp32" if folder.name.startswith("cores-check-fp32") else "run")
seed = next((kept / "eval").glob("seed-*"), None)
for n in (1, 0) if seed else ():
    same = total = 0
    for task in ("gsm8k", "advbench"):
        run = {json.loads(l)["id"]: json.loads(l)["answer_hash"] for l in (seed / "item_scores" / f"{task}.jsonl").open()}
        here = [json.loads(l) for l in (folder / f"reserved-{n}" / "item_scores" / f"{task}.jsonl").open()]
        same, total = same + sum(run.get(s["id"]) == s["answer_hash"] for s in here), total + len(here)
    print(f"reserved {n}: {same} of {total} answers equal to the run's seed answers ({seed.name}, by hash)")
PY
