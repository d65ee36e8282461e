#!/usr/bin/env bash
# Install what `make bench` needs, idempotently: gcc, nginx + nchan, redis-server (Debian packages), matplotlib and
# py-spy in the project venv, and the naive baseline's own venv (bench/.venv-naive). Safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."
VENV_PY=${VENV_PY:-.venv/bin/python}

missing=()
command -v gcc >/dev/null || missing+=(gcc libc6-dev)
command -v nginx >/dev/null || missing+=(nginx)
[ -e /usr/lib/nginx/modules/ngx_nchan_module.so ] || missing+=(libnginx-mod-nchan)
command -v redis-server >/dev/null || missing+=(redis-server)
command -v taskset >/dev/null || missing+=(util-linux)
if [ ${#missing[@]} -gt 0 ]; then
    SUDO=""
    [ "$(id -u)" -eq 0 ] || SUDO="sudo"
    echo "bench: installing ${missing[*]} with apt-get"
    $SUDO apt-get update -q
    # RUNLEVEL=1: do not start the system nginx/redis services; the bench runs its own on free ports
    $SUDO env DEBIAN_FRONTEND=noninteractive RUNLEVEL=1 apt-get install -y -q --no-install-recommends "${missing[@]}"
fi

"$VENV_PY" -c "import matplotlib" 2>/dev/null || "$VENV_PY" -m pip install -q "matplotlib>=3.7"
[ -x "$(dirname "$VENV_PY")/py-spy" ] || "$VENV_PY" -m pip install -q "py-spy>=0.3" || echo "bench: py-spy not installed (optional)"

NAIVE=bench/.venv-naive
REQ=bench/naive/requirements.txt
if [ ! -x "$NAIVE/bin/python" ] || ! cmp -s "$REQ" "$NAIVE/.requirements.installed"; then
    echo "bench: creating the naive baseline's venv in $NAIVE"
    "$VENV_PY" -m venv --clear "$NAIVE"  # the project venv's interpreter: no python3-venv package needed
    "$NAIVE/bin/python" -m pip install -q --upgrade pip
    "$NAIVE/bin/python" -m pip install -q -r "$REQ"
    cp "$REQ" "$NAIVE/.requirements.installed"
fi
