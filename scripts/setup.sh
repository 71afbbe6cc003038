#!/usr/bin/env bash
# Set up spade on a fresh machine and run the example workflow.
#   scripts/setup.sh            Rust wasm target + release build + example run
# Installs only what is missing; safe to run again.
set -euo pipefail
cd "$(dirname "$0")/.."

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
