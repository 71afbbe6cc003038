#!/usr/bin/env bash
# Set up spade on a fresh machine and run the example workflow.
#   scripts/setup.sh            Rust wasm target + release build + example run
#   scripts/setup.sh --with-languages [python] [js] [c]
#                               also the toolchains for Python/JS/C operators
#                               (scripts/install-guest-toolchains.sh; all three by default)
# Installs only what is missing; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

with_languages=0
languages=()
for arg in "$@"; do
  case "$arg" in
    --with-languages) with_languages=1 ;;
    python | js | c) [ "$with_languages" = 1 ] && languages+=("$arg") ||
      { echo "setup: '$arg' only goes after --with-languages" >&2; exit 2; } ;;
    *) echo "setup: unknown argument '$arg' (expected --with-languages [python] [js] [c])" >&2; exit 2 ;;
  esac
done
if [ "$with_languages" = 1 ]; then
  echo "setup: installing the guest-language toolchains (${languages[*]:-python js c})" >&2
  scripts/install-guest-toolchains.sh ${languages[@]+"${languages[@]}"}
fi

if ! command -v cargo >/dev/null 2>&1; then
  echo "setup: cargo not found; install Rust with rustup (https://rustup.rs) first" >&2
  exit 1
fi
if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    echo "setup: adding the wasm32-wasip2 target" >&2
    rustup target add wasm32-wasip2
  fi
fi

# bubblewrap: the sandbox that sh>, py> and rb> scripts run in (and Python for py>).
scripts/install-script-runtimes.sh --no-ruby

echo "setup: building spade and its plugins (release)" >&2
cargo build --release

echo "setup: running examples/hello/hello.dig" >&2
set +e
target/release/spade run hello.dig --project examples/hello --session 2024-01-01 --rerun
code=$?
set -e
if [ "$code" -ne 0 ]; then
  echo "setup: the example ended with its deliberate fail> task (exit $code), as intended." >&2
fi
echo "setup: done. Try: target/release/spade run --help" >&2
