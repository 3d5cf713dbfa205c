#!/usr/bin/env bash
# llama-cpp-python (rung-llamacpp's optional dependency) in .venv, built from the registry's
# source distribution for this machine's CPU, once. CI runs it after ensure-venv.sh.
#
# GGML_NATIVE=ON compiles for the build machine's CPU (-march=native): a wheel built on another
# machine (AVX-512/AMX on one, AVX2 only on the next) can die of an illegal instruction. So the
# wheel is kept in a cache of our own, one folder per CPU: the package version, the machine
# and a hash of /proc/cpuinfo's `flags` line, e.g.
# ~/.cache/rung/llama-cpp/0.3.36-x86_64-1a2b3c4d5e6f/ (never pip's shared wheel cache: its key
# is the source, not the CPU). A stamp in the venv records the key of what is installed, so a
# later run on the same CPU does nothing; another CPU gets its own build.
#
# Only the libraries the Python package loads are built: llama.cpp's tests, examples, tools and
# server are off (they are off already when llama.cpp is built as a subproject; said again
# here), curl is off (llama-cpp-python forces it), and so are OpenSSL and the mtmd/llava
# library (multimodal models: rung does not need them).
#
# A build that fails (no compiler, no network for the build tools, a full disk) does not fail
# the caller: one line says the llamacpp tests will skip and where the log is, and it exits 0.
#
#   bash scripts/ensure-llamacpp.sh       # RUNG_VENV: another venv; RUNG_LLAMACPP_CACHE: another cache
set -uo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv="${RUNG_VENV:-$root/.venv}"
version="0.3.36"
python="$venv/bin/python"
log="${RUNG_LLAMACPP_LOG:-$venv/llama-cpp-build.log}"

installed() {
  "$python" -c "import sys, llama_cpp; sys.exit(llama_cpp.__version__ != '$version')" 2>/dev/null
}
skip() {
  if installed; then
    echo "llama-cpp-python $version was not built for this CPU ($1; log: $log): the one installed stays"
  else
    echo "llama-cpp-python $version is not installed ($1; log: $log): the llamacpp tests will skip"
  fi
  exit 0
}

[ -x "$python" ] || skip "no Python environment at $venv: run scripts/ensure-venv.sh first"
cpu_flags="$(grep -m1 '^flags' /proc/cpuinfo 2>/dev/null || uname -a)"
key="$version-$(uname -m)-$(printf '%s' "$cpu_flags" | sha256sum | cut -c1-12)"
stamp="$venv/.rung-llamacpp-stamp"
if [ "$(cat "$stamp" 2>/dev/null)" = "$key" ] && installed; then
  exit 0
fi

cache="${RUNG_LLAMACPP_CACHE:-${XDG_CACHE_HOME:-$HOME/.cache}/rung/llama-cpp}/$key"
mkdir -p "$(dirname "$log")" && : > "$log" || skip "cannot write the log"
wheel="$(ls "$cache"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1)"
if [ -z "$wheel" ]; then
  command -v c++ >/dev/null || command -v g++ >/dev/null || skip "no C++ compiler (apt-get install g++)"
  echo "building llama-cpp-python $version from source for this CPU ($key; 10-20 minutes on one shared core)" >&2
  mkdir -p "$(dirname "$cache")" || skip "cannot create $(dirname "$cache")"
  partial="$(mktemp -d "$cache.partial-XXXXXX")" || skip "cannot create a build folder beside $cache"
  trap 'rm -rf "$partial"' EXIT
  trap 'exit 143' TERM INT  # (a timeout's signal: the EXIT trap still removes the partial build)
  started=$SECONDS
  CMAKE_ARGS="-DGGML_NATIVE=ON -DLLAVA_BUILD=OFF -DLLAMA_BUILD_TESTS=OFF -DLLAMA_BUILD_EXAMPLES=OFF \
-DLLAMA_BUILD_TOOLS=OFF -DLLAMA_BUILD_SERVER=OFF -DLLAMA_OPENSSL=OFF ${CMAKE_ARGS:-}" \
    nice -n 10 "$python" -m pip wheel --disable-pip-version-check --no-deps --no-binary llama-cpp-python \
    --no-cache-dir -w "$partial" "llama-cpp-python==$version" >>"$log" 2>&1 || skip "the build failed"
  built="$(ls "$partial"/llama_cpp_python-"$version"-*.whl 2>/dev/null | head -n 1)"
  [ -n "$built" ] || skip "the build wrote no wheel"
  mkdir -p "$cache" && mv "$built" "$cache/" || skip "cannot move the wheel into $cache"
  wheel="$cache/$(basename "$built")"
  echo "built $wheel in $((SECONDS - started)) s" >>"$log"
fi

# The wheel itself (replacing any other build of it), then its Python dependencies as pinned.
"$python" -m pip install --disable-pip-version-check -q --no-deps --force-reinstall "$wheel" >>"$log" 2>&1 \
  || skip "installing $wheel failed"
"$python" -m pip install --disable-pip-version-check -q -c "$root/constraints.txt" "$wheel" >>"$log" 2>&1 \
  || skip "installing the dependencies of $wheel failed"
# Loading the library runs llama.cpp's CPU code: a wheel that does not suit this CPU fails here.
"$python" -c "import llama_cpp; llama_cpp.llama_backend_init()" >>"$log" 2>&1 \
  || skip "the installed package does not load on this CPU"
echo "$key" > "$stamp"
echo "llama-cpp-python $version installed for this CPU ($key)" >&2
