#!/usr/bin/env bash
# build.sh [OUT.wasm]: hello.c + spade.c -> a WASI 0.2 component (default hello_c.wasm).
# Needs wit-bindgen, clang with a wasm32-wasi sysroot (Debian: clang-19 lld-19 wasi-libc
# libclang-rt-19-dev-wasm32), wasm-tools and the WASI preview1 reactor adapter:
# scripts/install-guest-toolchains.sh c installs them all.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
out=$(realpath -m "${1:-$here/hello_c.wasm}")
prefix=${SPADE_TOOLCHAINS:-${XDG_DATA_HOME:-$HOME/.local/share}/spade-toolchains}
PATH="$PATH:$prefix/bin"
adapter=${SPADE_WASI_ADAPTER:-$prefix/share/adapters/wasi_snapshot_preview1.reactor.wasm}
cc=${CC:-$(command -v clang-19 || command -v clang || true)}
missing=()
command -v wit-bindgen >/dev/null || missing+=(wit-bindgen)
command -v wasm-tools >/dev/null || missing+=(wasm-tools)
[ -n "$cc" ] || missing+=(clang)
[ -f "$adapter" ] || missing+=("$adapter")
[ ${#missing[@]} -eq 0 ] ||
  { echo "build.sh: missing ${missing[*]} (run scripts/install-guest-toolchains.sh c)" >&2; exit 1; }

gen=$(mktemp -d)
trap 'rm -rf "$gen"' EXIT
cd "$here"
wit-bindgen c wit --world guest --out-dir "$gen" >/dev/null
# Reactor: a library-style module (no main); wasi-libc is the preview1 build, adapted to
# WASI 0.2 by `component new --adapt`.
"$cc" --target=wasm32-wasi -O2 -mexec-model=reactor -Wall -Wno-unused-function \
  -I"$here" -I"$gen" hello.c spade.c "$gen/guest.c" "$gen/guest_component_type.o" \
  -Wl,--strip-all -o "$gen/core.wasm"
wasm-tools component new "$gen/core.wasm" --adapt "wasi_snapshot_preview1=$adapter" -o "$out"
wasm-tools validate "$out"
echo "$out"
