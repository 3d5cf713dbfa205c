#!/usr/bin/env bash
# The whole test suite: sets up .venv on first use, then runs pytest (args pass through).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
bash "$root/scripts/ensure-venv.sh"
cd "$root"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1 TOKENIZERS_PARALLELISM=false
# One OpenMP thread in every thread of the suite. tests/conftest.py sets torch's count in the
# main thread, but OpenMP keeps it per thread: a backend's agenerate runs generate in a worker
# thread that would use every core, sum in another order and, on a tiny random model with
# near-tied logits, pick another greedy token than the same call made synchronously.
export OMP_NUM_THREADS="${OMP_NUM_THREADS:-1}"
# One pytest worker per core (pytest-xdist, from the test extra), each test file whole on one
# worker (its module fixtures built once), so the cores share the suite instead of one running
# it all. RUNG_TEST_WORKERS=0 runs in this process (a debugger, -s, pdb); a given -n wins.
workers=(-n "${RUNG_TEST_WORKERS:-auto}" --dist loadfile)
if [ "${RUNG_TEST_WORKERS:-auto}" = "0" ] || printf '%s\n' "$@" | grep -qE '^(-n|--numprocesses)'; then
  workers=()
fi
exec "$root/.venv/bin/python" -m pytest "${workers[@]}" "$@"
