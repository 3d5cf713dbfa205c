#!/usr/bin/env bash
# The Level 3 demo: build a language model from scratch on the Python standard library's own
# source, on a CPU, in about 10 minutes: prepare the corpus (progress bars), train a BPE
# tokenizer, pretrain a small model, print generated Python, write runs/stdlib/loss.png.
# Sets up .venv on first use. Arguments are config overrides, e.g. trainer.steps=100 or
# backend.name=jax (the same run on the other framework).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure-venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
# Keep freed tensor memory in the heap instead of returning it to the kernel after every
# step: ~30% less CPU time per training step on a CPU (far fewer page faults).
export GLIBC_TUNABLES="${GLIBC_TUNABLES:-glibc.malloc.mmap_threshold=4294967296:glibc.malloc.trim_threshold=17179869184}"
# One intra-op thread for this small model: on a shared or busy CPU, two OpenMP threads were
# several times slower here (960 vs 4500+ tokens/s); export OMP_NUM_THREADS=2 to try both cores.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
exec "$root/.venv/bin/rung" run examples/pretrain_stdlib.yaml "$@"
