#!/usr/bin/env bash
# The Level 2 ladder, end to end, on a CPU in minutes: an sft base that adds 2-digit numbers
# imperfectly, a reward model from preference pairs, then DPO, GRPO and PPO from that base,
# and one table that scores every model the same way (examples/ladder/evaluate.py: greedy
# answers to the same 200 held-out questions, exact match against the sum; the reward model's
# mean score of those answers; the online runs' sampled training reward, first quarter against
# last). Every run writes under runs/ladder/, which is emptied first. The configs are in
# examples/ladder/, one a rung; the README's "Learning from feedback" shows the figures.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
[ -x "$root/.venv/bin/rung" ] || bash "$root/scripts/ensure-venv.sh"  # sets up .venv on first use
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# As scripts/demo.sh: freed tensor memory stays in the heap (fewer page faults a step), and one
# OpenMP thread for these tiny models on a shared CPU (export OMP_NUM_THREADS=2 to try both).
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}"
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
python="$root/.venv/bin/python"
rung="$root/.venv/bin/rung"

rm -rf runs/ladder
start=$(date +%s)
timings=()
step() {  # step NAME COMMAND...: run it, keep its wall time
  local name=$1 began
  shift
  began=$(date +%s)
  echo "== $name: $*"
  "$@"
  timings+=("$name $(( $(date +%s) - began ))s")
}

step data "$python" -m rung_lora.synthetic arithmetic --train 5000 --eval 200 --out runs/ladder/data
step feedback "$python" -m rung_rlhf.synthetic arithmetic --eval 200 --out runs/ladder/feedback
step sft "$rung" run examples/ladder/sft.yaml
step reward "$rung" run examples/ladder/reward.yaml
step dpo "$rung" run examples/ladder/dpo.yaml
step grpo "$rung" run examples/ladder/grpo.yaml
step ppo "$rung" run examples/ladder/ppo.yaml
step ppo-verifiable "$rung" run examples/ladder/ppo_verifiable.yaml
step evaluate "$python" examples/ladder/evaluate.py \
  --prompts runs/ladder/feedback/prompts_eval.jsonl \
  --reward-model runs/ladder/reward/model --pairs runs/ladder/feedback/preferences_eval.jsonl \
  --json runs/ladder/table.json \
  sft=runs/ladder/sft/model dpo=runs/ladder/dpo/model grpo=runs/ladder/grpo/model \
  ppo=runs/ladder/ppo/model ppo-verifiable=runs/ladder/ppo-verifiable/model

echo
echo "wall time per step: ${timings[*]}"
echo "total: $(( $(date +%s) - start ))s on $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
     "$(getconf _NPROCESSORS_ONLN) cores, OMP_NUM_THREADS=$OMP_NUM_THREADS"
