#!/usr/bin/env bash
# build.sh [OUT.wasm]: app.py + spade.py -> a WASI 0.2 component (default hello_py.wasm).
# Needs componentize-py (scripts/install-guest-toolchains.sh python).
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/hello_py.wasm}")
tools=${SPADE_TOOLCHAINS:-${XDG_DATA_HOME:-$HOME/.local/share}/spade-toolchains}/bin
PATH="$PATH:$tools"
command -v componentize-py >/dev/null ||
  { echo "build.sh: componentize-py not found (run scripts/install-guest-toolchains.sh python)" >&2; exit 1; }
cd "$here"
# -d wit: operator.wit + world.wit (the capabilities this operator imports) + WASI deps.
componentize-py -d wit -w guest componentize app -p . -o "$out" >&2
echo "$out"
