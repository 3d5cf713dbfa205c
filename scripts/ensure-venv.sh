#!/usr/bin/env bash
# Create .venv and install the core and every plugin in plugins/ (editable), once.
# A second run installs nothing unless a pyproject.toml or constraints.txt changed.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RUNG_VENV:-$root/.venv}"
python="${PYTHON:-python3}"

"$python" -c 'import sys; sys.exit(sys.version_info < (3, 10))' || {
  echo "rung needs Python 3.10 or newer ($python is $("$python" --version 2>&1))" >&2; exit 1; }

stamp_of() {
  cat "$root/constraints.txt" "$root/pyproject.toml" "$root"/plugins/*/pyproject.toml "$root/scripts/ensure-venv.sh" \
    2>/dev/null | sha256sum | cut -d' ' -f1
}
want="$(stamp_of)"
if [ -f "$venv/.rung-stamp" ] && [ "$(cat "$venv/.rung-stamp")" = "$want" ]; then
  exit 0
fi

echo "setting up $venv: installing rung and its plugins (first run, ~2 minutes; later runs skip this)" >&2
[ -x "$venv/bin/python" ] || "$python" -m venv "$venv"
log="$venv/install.log"
install() {
  "$venv/bin/python" -m pip install --disable-pip-version-check "$@" >>"$log" 2>&1 || {
    tail -n 30 "$log" >&2; echo "installing into $venv failed; the whole log is $log" >&2; exit 1; }
}
: > "$log"
install -q --upgrade pip "setuptools>=68" wheel
targets=(-e "$root[test]")
for plugin in "$root"/plugins/*/; do
  [ -f "$plugin/pyproject.toml" ] && targets+=(-e "$plugin")
done
# constraints.txt pins what CI tests (torch 2.13.0 is a CPU wheel on the CI disk).
# editable_mode=compat: plain path entries instead of import-hook finders, which cost
# start-up time for every plugin on every `rung` call.
install -q --no-build-isolation --config-settings editable_mode=compat \
  -c "$root/constraints.txt" "${targets[@]}"
echo "$want" > "$venv/.rung-stamp"
