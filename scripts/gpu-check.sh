#!/usr/bin/env bash
# Every GPU check in one command, under 8 minutes on one GPU (an H200 here): the tests marked
# `cuda` (tests/gpu: bf16, fused AdamW, torch.compile, FSDP2 on one device, the jax backend on
# the GPU, continuous batching), benchmarks/gpu_figures.py (training MFU of the 124m preset,
# batch-1 decoding of the 1b preset against the memory-bandwidth roofline), rung serve at 32
# clients (benchmarks/serve_vs_transformers.py), then the older CUDA-relevant test files and GPU
# benchmarks while time is left. Each runs under `timeout` within one budget; a table of
# results and figures goes to $OUT/summary.md (or ./gpu-out), the whole output to gpu-check.log.
#
#   bash scripts/gpu-check.sh --fetch-wheels   # here, with the package registry reachable: what the
#                                              # device image lacks, as wheels in .whl/ (at .venv's versions)
#   bash scripts/gpu-check.sh                  # on the GPU machine (its python3 holds torch; no network)
#   bash scripts/gpu-check.sh --smoke          # on a CPU, in seconds to a minute (CI: tests/gpu):
#                                              # .venv's python, no nvidia-smi, no installs; the cuda
#                                              # tests on the CPU, gpu_figures.py --smoke, and every
#                                              # other benchmark's command line checked against its --help
#
# GPU_CHECK_BUDGET_S (default 450) is the time the steps may take together; a step that would
# start with under 15 s left is skipped and says so.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"

# What the device image lacks (its python3 holds torch, jax, transformers, peft, ...): rung's core
# needs pydantic; rung serve fastapi, starlette, uvicorn (and fastapi opentelemetry-api); trl
# (the DPO/GRPO baselines) datasets, dill, multiprocess. Fallback pins where .venv lacks one.
wheels=(pydantic==2.14.* pydantic-core annotated-types typing-inspection array-api-compat==1.16.* trl==1.16.*
        datasets==5.2.* dill multiprocess fastapi==0.165.* starlette==1.10.* uvicorn==0.54.* opentelemetry-api)

mode=gpu
case "${1:-}" in
  --fetch-wheels) mode=fetch ;;
  --smoke) mode=smoke ;;
  "") ;;
  *) echo "usage: bash scripts/gpu-check.sh [--smoke | --fetch-wheels]" >&2; exit 2 ;;
esac

if [ "$mode" = fetch ]; then
  exclude="$(git rev-parse --git-common-dir)/info/exclude"
  mkdir -p "$(dirname "$exclude")"
  grep -qx '/.whl/' "$exclude" 2>/dev/null || echo '/.whl/' >> "$exclude"
  if [ -x .venv/bin/python ]; then  # the exact versions CI tests, where .venv has them
    mapfile -t wheels < <(.venv/bin/python - "${wheels[@]}" <<'EOF'
import importlib.metadata as metadata
import re
import sys

for spec in sys.argv[1:]:
    name = re.split(r"[=<>!~]", spec)[0]
    try:
        print(f"{name}=={metadata.version(name)}")
    except metadata.PackageNotFoundError:
        print(spec)
EOF
    )
  fi
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_27_x86_64 --platform manylinux_2_17_x86_64 \
    --platform manylinux2014_x86_64 --platform manylinux1_x86_64 -d .whl "${wheels[@]}"
  exit $?
fi

if [ "$mode" = smoke ]; then
  out="${OUT:-$(mktemp -d -t gpu-check-smoke.XXXXXX)}"
  py="$root/.venv/bin/python"
  [ -x "$py" ] || { echo "gpu-check --smoke: no $py; run bash scripts/ensure-venv.sh first"; exit 1; }
  budget="${GPU_CHECK_BUDGET_S:-600}"
else
  out="${OUT:-$root/gpu-out}"
  py=python3
  budget="${GPU_CHECK_BUDGET_S:-450}"
fi
mkdir -p "$out"
log="$out/gpu-check.log"
work="$(mktemp -d -t gpu-check.XXXXXX)"  # each step's own output, for its figures
exec > >(tee "$log") 2>&1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
export XLA_PYTHON_CLIENT_PREALLOCATE=false  # jax and torch share the GPU in one pytest process

if [ "$mode" = gpu ]; then
  device_name="$(nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader)" \
    || { echo "gpu-check: no NVIDIA GPU (nvidia-smi failed); on a CPU: bash scripts/gpu-check.sh --smoke"; exit 1; }
  echo "$device_name"
  if ls .whl/*.whl >/dev/null 2>&1; then
    $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
    export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
  fi
  targets=(-e .)
  for plugin in plugins/*/; do targets+=(-e "$plugin"); done
  $py -m pip install -q --no-deps --no-build-isolation --no-index "${targets[@]}" || exit 1
else
  device_name="CPU (smoke: $(getconf _NPROCESSORS_ONLN) cores; figures mean nothing)"
  export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
fi

deadline=$(( SECONDS + budget ))
status=0
count=0
rows=()

# step NAME LIMIT_S FIGURES_REGEX COMMAND...: COMMAND under `timeout`, at most LIMIT_S and never
# past the budget; its lines matching FIGURES_REGEX (grep -E) go into the summary table.
step() {
  local name=$1 limit=$2 pattern=$3
  shift 3
  local left=$(( deadline - SECONDS ))
  if (( left < 15 )); then
    echo; echo "== $name: skipped, the budget of ${budget} s is spent"
    rows+=("| $name | skipped: the ${budget} s budget was spent | 0 | |")
    return
  fi
  (( limit > left )) && limit=$left
  count=$(( count + 1 ))
  local part="$work/$count.log" started=$SECONDS
  echo; echo "== $name (at most $limit s): $*"
  timeout -k 10 "$limit" "$@" 2>&1 | tee "$part"
  local rc=${PIPESTATUS[0]} result=passed
  if (( rc == 124 || rc == 137 )); then
    result="timed out after $limit s"; status=1
  elif (( rc != 0 )); then
    result="FAILED (exit $rc)"; status=1
  fi
  local figures=""
  if [ -n "$pattern" ]; then
    figures="$(tr '\r' '\n' < "$part" | grep -E -- "$pattern" | sed -e 's/|/\//g' -e 's/  */ /g' | paste -sd $'\x1f' -)"
  fi
  rows+=("| $name | $result | $(( SECONDS - started )) | ${figures//$'\x1f'/<br>} |")
}

# skip NAME WHY: a row that says why a step did not run (not a failure).
skip() {
  echo; echo "== $1: skipped, $2"
  rows+=("| $1 | skipped: $2 | 0 | |")
}

# options_known NAME SCRIPT ARGS...: every --option of the command line is one SCRIPT's --help
# lists (smoke mode: the GPU run's command lines stay valid; their smoke runs are tests/benchmarks').
options_known() {
  local name=$1 script=$2 arg missing=()
  shift 2
  local help
  help="$(timeout 120 "$py" "$script" --help 2>&1)" || { rows+=("| $name | FAILED: $script --help | 0 | |"); status=1; return; }
  for arg in "$@"; do
    [[ $arg == --* ]] || continue
    grep -qE -- "(^|[[:space:][,])${arg}([][[:space:]=,]|$)" <<< "$help" || missing+=("$arg")
  done
  if (( ${#missing[@]} )); then
    echo "== $name: $script has no option ${missing[*]}"
    rows+=("| $name | FAILED: no option ${missing[*]} | 0 | |"); status=1
  else
    echo "== $name: $script takes every option of: $*"
    rows+=("| $name | passed (options checked) | 0 | |")
  fi
}

pytest_figures='^[0-9]+ (passed|failed|skipped|deselected|errors?)\b'

# rung serve on the GPU needs serve_vs_transformers.py to take --device; without it its servers
# run on the CPU, which says nothing about a GPU.
serve=(benchmarks/serve_vs_transformers.py --rung-only --clients 32 --requests 4 --new 64 --preset 124m)
serve_on_device=no
if timeout 120 "$py" benchmarks/serve_vs_transformers.py --help 2>/dev/null | grep -qE -- '--device\b'; then
  serve+=(--device cuda)
  serve_on_device=yes
fi
benches=(
  "torch_train|^  engine / plain|benchmarks/torch_train.py --device cuda --preset small --steps 20 --rounds 2"
  "torch_decode|^ratio rung / transformers|benchmarks/torch_decode.py --device cuda"
  "lora_train|^ratio rung/plain|benchmarks/lora_train.py --device cuda --preset small --steps 20 --rounds 2"
  "dpo_vs_trl|^rung-torch/trl|benchmarks/dpo_vs_trl.py --device cuda"
  "grpo_vs_trl|^rung-torch/trl|benchmarks/grpo_vs_trl.py --device cuda"
  "eval_vs_harness|harness-hf.*: tokens/s|benchmarks/eval_vs_harness.py --device cuda --rounds 3"
)

if [ "$mode" = smoke ]; then
  step "cuda tests (on the CPU)" 300 "$pytest_figures" "$py" -m pytest -q -m cuda tests/gpu -p no:cacheprovider
  step "gpu_figures --smoke" 120 '^gpu_figures:' "$py" benchmarks/gpu_figures.py --smoke
  options_known "serve, 32 clients (options)" "${serve[@]}"
  [ "$serve_on_device" = yes ] || echo "note: serve_vs_transformers.py has no --device: the GPU run skips rung serve"
  for bench in "${benches[@]}"; do
    IFS='|' read -r name _ command <<< "$bench"
    read -ra words <<< "$command"
    options_known "$name (options)" "${words[@]}"
  done
else
  step "cuda tests" 180 "$pytest_figures" $py -m pytest -q -m cuda tests/gpu -p no:cacheprovider
  step "gpu_figures" 200 '^(training|decoding|gpu_figures):' $py benchmarks/gpu_figures.py
  if [ "$serve_on_device" = yes ]; then
    step "rung serve, 32 clients" 90 '^(server +clients|rung serve +32 |1 client:)' $py "${serve[@]}"
  else
    skip "rung serve, 32 clients" "serve_vs_transformers.py has no --device option (its servers would run on the CPU)"
  fi
  # The older files whose CUDA paths run when a GPU is there (QLoRA's 4-bit base, device placement).
  step "tests/torch + tests/lora/test_train.py" 150 "$pytest_figures" \
    $py -m pytest -q -x tests/torch tests/lora/test_train.py -p no:cacheprovider
  step "tests/rlhf (not jax)" 120 "$pytest_figures" $py -m pytest -q -x tests/rlhf -p no:cacheprovider -k "not jax"
  for bench in "${benches[@]}"; do
    IFS='|' read -r name pattern command <<< "$bench"
    read -ra words <<< "$command"
    if [ -f "${words[0]}" ]; then
      step "$name" 60 "$pattern" $py "${words[@]}"
    else
      skip "$name" "${words[0]} is not in this checkout"
    fi
  done
fi

summary="$out/summary.md"
{
  echo "# gpu-check$([ "$mode" = smoke ] && echo ' --smoke'): $device_name"
  echo
  echo "$(date -u '+%Y-%m-%d %H:%M UTC'), commit $(git rev-parse --short HEAD 2>/dev/null || echo '?')$(git diff --quiet HEAD 2>/dev/null || echo ' (with changes)'), ${SECONDS} s in all"
  echo
  echo "| step | result | seconds | figures |"
  echo "|---|---|---:|---|"
  printf '%s\n' "${rows[@]}"
} > "$summary"
echo; cat "$summary"
echo; echo "gpu-check: $([ $status = 0 ] && echo all passed || echo FAILURES above); log in $log, table in $summary"
rm -rf "$work"
exit $status
