#!/usr/bin/env bash
# Creates or reuses .venv with the pinned TFX 1.16 stack. Never downloads a Python:
# it uses a local CPython 3.10 (pyenv's, or python3.10 on PATH) and fails with the fix otherwise.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=.venv
STAMP="$VENV/.driftline-installed"

find_python() {
  if command -v pyenv >/dev/null 2>&1; then
    local prefix
    prefix=$(pyenv prefix 3.10 2>/dev/null || pyenv prefix 3.10.13 2>/dev/null || true)
    if [ -n "$prefix" ] && [ -x "$prefix/bin/python3.10" ]; then echo "$prefix/bin/python3.10"; return; fi
  fi
  if command -v python3.10 >/dev/null 2>&1; then command -v python3.10; return; fi
  echo "driftline needs CPython 3.10 (TFX 1.16 supports no newer Python). Install it, e.g. 'pyenv install 3.10.13', then rerun." >&2
  exit 1
}

find_uv() {
  if command -v uv >/dev/null 2>&1; then echo uv; return; fi
  for candidate in "$HOME/.local/bin/uv" "$HOME/.cargo/bin/uv"; do
    [ -x "$candidate" ] && { echo "$candidate"; return; }
  done
  local host_python
  host_python=$(command -v python3 || command -v python)
  if ! "$host_python" -m uv --version >/dev/null 2>&1; then
    echo "bootstrap: installing uv with pip" >&2
    "$host_python" -m pip install --quiet --disable-pip-version-check uv >&2
  fi
  echo "$host_python -m uv"
}

# Reinstall only when the inputs changed: a re-run of make test costs nothing.
# --compile-bytecode matters: with PYTHONDONTWRITEBYTECODE set (as in CI), every
# process would otherwise recompile TF/TFX/TFMA sources, about 45 s per import.
if [ -f "$STAMP" ] && [ "$STAMP" -nt setup.py ] && [ "$STAMP" -nt constraints.txt ] && [ -x "$VENV/bin/python" ]; then
  exit 0
fi

PY=$(find_python)
UV=$(find_uv)
if [ ! -x "$VENV/bin/python" ]; then
  echo "bootstrap: creating $VENV with $PY" >&2
  # --seed puts pip in the venv; TFX shells out to 'python -m pip' for module wheels.
  $UV venv --seed --python "$PY" "$VENV" >&2
fi
echo "bootstrap: installing the pinned stack into $VENV (a few minutes on a fresh machine)" >&2
$UV pip install --python "$VENV/bin/python" --compile-bytecode -c constraints.txt -e '.[test,bench]' >&2
touch "$STAMP"
