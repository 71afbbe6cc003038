#!/usr/bin/env bash
# build.sh [OUT.wasm]: operator.js + spade.js -> a WASI 0.2 component (default hello_js.wasm).
# Needs componentize-js (scripts/install-guest-toolchains.sh js) and Node.js.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/hello_js.wasm}")
prefix=${SPADE_TOOLCHAINS:-${XDG_DATA_HOME:-$HOME/.local/share}/spade-toolchains}
PATH="$PATH:$prefix/bin"
command -v componentize-js >/dev/null ||
  { echo "build.sh: componentize-js not found (run scripts/install-guest-toolchains.sh js)" >&2; exit 1; }
cd "$here"
# -d http fetch-event: leave out StarlingMonkey's fetch(), which would import wasi:http
# (only plugins granted http may link it). Drop it from -d, and use world http-plugin's
# import in wit/world.wit, for an operator that needs fetch().
componentize-js operator.js --wit wit --world-name guest -d http fetch-event -o "$out" >&2
echo "$out"
