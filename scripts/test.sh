#!/usr/bin/env bash
# Run every test of the workspace: unit tests, the sandbox escape suite, the end-to-end
# runs of the spade binary and the Digdag conformance corpus (../shared/conformance, or
# $SPADE_CONFORMANCE_DIR). .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1 && ! rustup target list --installed | grep -qx wasm32-wasip2; then
  rustup target add wasm32-wasip2
fi
cargo test --release --workspace
