#!/usr/bin/env bash
# Run every check of the workspace: formatting (rustfmt.toml), clippy with warnings as
# errors (the lints in Cargo.toml's [workspace.lints]), then every test: unit tests, the
# sandbox escape suite, the end-to-end runs of the spade binary and the Digdag conformance
# corpus (tests/conformance, or $SPADE_CONFORMANCE_DIR). .ci/run calls exactly this.
set -euo pipefail
cd "$(dirname "$0")/.."
if command -v rustup >/dev/null 2>&1; then
  if ! rustup target list --installed | grep -qx wasm32-wasip2; then
    rustup target add wasm32-wasip2
  fi
  for component in rustfmt clippy; do
    if ! rustup component list --installed | grep -q "^$component"; then
      rustup component add "$component"
    fi
  done
fi
echo "test.sh: cargo fmt --check" >&2
cargo fmt --all --check
echo "test.sh: cargo clippy (warnings are errors)" >&2
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
