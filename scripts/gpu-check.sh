#!/usr/bin/env bash
# Every CUDA test and GPU benchmark, in one run under 8 minutes, on a machine with an NVIDIA
# GPU and its own PyTorch (the device machine's image: python3 holds torch, nothing can be
# downloaded there). Prepare the wheels it lacks here first (they travel in .whl/):
#
#   bash scripts/gpu-check.sh --fetch-wheels      # here, with the package registry reachable
#   bash scripts/gpu-check.sh                     # there; figures and logs go to $OUT (or ./gpu-out)
#
# It installs rung and its plugins without dependencies (editable), runs the test files that
# exercise CUDA paths (backends on device "auto" pick the GPU), then the GPU
# benchmarks at short sizes; each benchmark prints its ratio against a baseline of the same run.
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$root"
wheels=(pydantic==2.14.* pydantic-core annotated-types typing-inspection array-api-compat==1.16.* trl==1.16.*)

if [ "${1:-}" = "--fetch-wheels" ]; then
  grep -qx '/.whl/' .git/info/exclude 2>/dev/null || echo '/.whl/' >> .git/info/exclude
  python3 -m pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
    --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 --platform manylinux2014_x86_64 \
    -d .whl "${wheels[@]}"
  exit $?
fi

out="${OUT:-$root/gpu-out}"
mkdir -p "$out"
log="$out/gpu-check.log"
exec > >(tee "$log") 2>&1
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv,noheader || { echo "no NVIDIA GPU"; exit 1; }
py=python3
if ls .whl/*.whl >/dev/null 2>&1; then
  $py -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl
  export PYTHONPATH=/tmp/site${PYTHONPATH:+:$PYTHONPATH}
fi
targets=(-e .)
for plugin in plugins/*/; do targets+=(-e "$plugin"); done
$py -m pip install -q --no-deps --no-build-isolation --no-index "${targets[@]}" || exit 1
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 PYTHONUNBUFFERED=1
status=0
step() { echo; echo "== $*"; timeout 150 "$@" || { echo "!! failed ($?): $*"; status=1; }; }

# Tests whose CUDA paths run when a GPU is there (QLoRA's 4-bit base, device placement, fused AdamW).
step $py -m pytest -q -x tests/torch tests/lora/test_train.py -p no:cacheprovider
step $py -m pytest -q -x tests/rlhf -p no:cacheprovider -k "not jax"
# GPU benchmarks at short sizes (each prints rung's figure as a ratio against its baseline).
step $py benchmarks/torch_train.py --device cuda --preset small --steps 20 --rounds 2
step $py benchmarks/torch_decode.py --device cuda
step $py benchmarks/lora_train.py --device cuda --preset small --steps 20 --rounds 2
for bench in benchmarks/dpo_vs_trl.py benchmarks/grpo_vs_trl.py; do
  [ -f "$bench" ] && step $py "$bench" --device cuda
done
echo; echo "gpu-check: $([ $status = 0 ] && echo all passed || echo FAILURES above); log in $log"
exit $status
