#!/usr/bin/env bash
# Run every check of the workspace: formatting (rustfmt.toml), clippy with warnings as
# errors (the lints in Cargo.toml's [workspace.lints]), then every test: unit tests, the
# sandbox escape suites (wasm plugins and scripts), the end-to-end runs of the spade binary,
# the scripting operators (sh>, py>, rb> in the bubblewrap sandbox), operators built in Python,
# JavaScript and C, and the Digdag conformance corpus (tests/conformance, or
# $SPADE_CONFORMANCE_DIR). .ci/run calls exactly this.
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
# The Python, JavaScript and C guest toolchains (idempotent: a few minutes the first time,
# nothing after), so that tests/languages.rs builds and runs an operator in every language
# and fails, rather than skips, when one does not work. SPADE_SKIP_GUEST_TOOLCHAINS=1 skips
# the install (and lets that test skip what is missing) where the registries are not reachable.
if [ "${SPADE_SKIP_GUEST_TOOLCHAINS:-0}" != 1 ]; then
  echo "test.sh: guest toolchains (scripts/install-guest-toolchains.sh)" >&2
  scripts/install-guest-toolchains.sh
  export SPADE_REQUIRE_LANGUAGES=python,js,c
fi
# bubblewrap (the sandbox of sh>, py>, rb>), Python and Ruby: tests/scripting.rs and
# tests/script_escape.rs fail, rather than skip, without them.
echo "test.sh: script runtimes (scripts/install-script-runtimes.sh)" >&2
scripts/install-script-runtimes.sh
# The SMTP server tests/mail.rs talks to (aiosmtpd from PyPI).
echo "test.sh: test peers (scripts/install-test-peers.sh)" >&2
scripts/install-test-peers.sh
echo "test.sh: cargo fmt --check" >&2
cargo fmt --all --check
echo "test.sh: cargo clippy (warnings are errors)" >&2
cargo clippy --release --workspace --all-targets -- -D warnings
cargo test --release --workspace
